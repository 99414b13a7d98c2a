"""Models: loading encoders by alias, folder or hub id (``loading``), deleting layers (``surgery``), LoRA
(``lora``), layer and block importance from the pretrained model (``importance``), exporting a trained trial
(``export``) and its int8 / ONNX Runtime forms (``variants``, ``quantize``, ``onnx``), and timing inference
(``latency``; the isolated grid: ``grid``)."""
