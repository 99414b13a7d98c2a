"""ONNX export of a (pruned) model, its dynamic int8 form, and ONNX Runtime sessions that answer like the
torch model, so that the same evaluation and timing code runs on both.

ONNX is an optional extra: ``pip install 'frugalray[onnx]'`` (onnx, onnxruntime, and onnxscript, which
torch's exporter needs). The graph is exported with ``torch.onnx.export(..., dynamo=True)`` with dynamic
batch and sequence axes: the older TorchScript tracer bakes the example's sequence length into the
attention mask and gives wrong logits on padded batches of another length. int8 is onnxruntime's dynamic
quantisation (``onnxruntime.quantization.quantize_dynamic``, int8 weights); static int8 is not offered
(see ``frugalray.model.quantize``).

>>> export_onnx(model, "exported/model.onnx")                   # doctest: +SKIP
>>> OnnxModel("exported/model.onnx")(**batch).logits.shape       # doctest: +SKIP
torch.Size([4, 24, 9])
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

from frugalray._registry import FrugalrayError

PACKAGES = ("onnx", "onnxruntime", "onnxscript")
IGNORE = -100  # frugalray.data.encoding.IGNORE, without importing torch-heavy modules here


def require_onnx(what: str = "ONNX export") -> None:
    """Raise a FrugalrayError naming the extra to install when an ONNX package is missing."""
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise FrugalrayError(f"{what} needs the optional 'onnx' extra ({', '.join(missing)} not installed): "
                             f"pip install 'frugalray[onnx]'")


def export_onnx(model, path: str | Path, output: str = "logits") -> Path:
    """Write ``model``'s forward (input_ids, attention_mask → ``output``: logits, or last_hidden_state for a
    bare encoder) as one ONNX file with dynamic batch and sequence axes."""
    require_onnx()
    import torch

    class Forward(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return getattr(self.inner(input_ids=input_ids, attention_mask=attention_mask), output)

    vocab = model.config.vocab_size
    ids = torch.randint(5, max(6, vocab), (2, 16), generator=torch.Generator().manual_seed(0))
    axes = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    path = Path(path)
    with _quiet(), contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        torch.onnx.export(Forward(model.cpu().eval()), (ids, torch.ones_like(ids)), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=[output],
                          dynamic_shapes={"input_ids": axes, "attention_mask": axes}, dynamo=True,
                          external_data=False, verbose=False)
    return path


def quantize_onnx(source: str | Path, target: str | Path) -> Path:
    """onnxruntime's dynamic int8 quantisation of ``source`` (int8 weights) written to ``target``."""
    require_onnx("ONNX int8")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    return Path(target)


def session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session of ``path``, with ``threads`` intra-op threads when given."""
    require_onnx("ONNX Runtime")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """An ONNX Runtime session answering like a Hugging Face classification model: called with the batch of
    ``frugalray.data.encoding.collate`` it returns ``.logits`` and, given labels, the same cross-entropy
    ``.loss`` (labels -100 ignored), so ``frugalray.training.loop.evaluate`` and ``measure_latency`` run it
    unchanged. CPU only."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.session = session(path, threads)

    def eval(self) -> "OnnxModel":
        return self

    def __call__(self, input_ids, attention_mask, labels=None, **_):
        import torch

        feeds = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
        logits = torch.from_numpy(self.session.run(["logits"], feeds)[0])
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                     labels.reshape(-1).cpu(), ignore_index=IGNORE)
        return SimpleNamespace(logits=logits, loss=loss)


def file_mib(path: str | Path) -> float:
    """Size of an ONNX file in MiB (its weights: the graph itself is a few kilobytes)."""
    return Path(path).stat().st_size / 2**20


@contextlib.contextmanager
def _quiet():
    """The exporter's and the quantiser's warnings and root-logger advice stay out of the output."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx")]  # torch.onnx: "torchvision is not installed"
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
