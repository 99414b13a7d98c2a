"""Deploying a trained trial: exporting it as a plain Hugging Face folder (``export``), its int8 and ONNX
Runtime forms, re-evaluated as rows of their own (``variants``, ``onnx``), and timing inference over an
isolated grid of shapes, layer sets and forms (``latency`` runs ``grid`` in a process of its own)."""
