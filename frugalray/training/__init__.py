"""Training one trial, without Ray: the loop, the Trainer's recipe written out (``loop``); a trial prepared
(``prepared``) and run from configuration to result row (``trial``), whose columns are built in ``columns``;
its configuration hash (``identity``); the device and versions it records (``environment``); recovery from
pruning: teachers, distillation, partial fine-tuning (``recovery``); the energy it used (``energy``). Imports
model and below."""
