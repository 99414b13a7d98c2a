"""Models: loading encoders by alias, folder or hub id (``loading``), deleting layers (``surgery``), LoRA
(``lora``), layer importance from the pretrained model (``importance``), exporting a trained trial
(``export``) and timing inference (``latency``)."""
