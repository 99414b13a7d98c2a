"""Training one trial, without Ray: the loop, the Trainer's recipe written out (``loop``); one trial from
configuration to result row (``trial``); its configuration hash (``identity``); the device and versions it
records (``environment``); recovery from pruning: teachers, distillation, partial fine-tuning (``recovery``);
the energy it used (``energy``)."""
