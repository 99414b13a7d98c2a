"""Models: loading encoders by alias, folder or hub id (``loading``; models shipped as pieces of a split zip,
``packaged``), deleting layers (``surgery``), LoRA (``lora``), dynamic int8 (``quantize``), layer and block
importance from the pretrained model (``importance``), and a trial's saved weights (``saved``)."""
