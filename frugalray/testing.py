"""Test helpers: tiny random encoders and word-level tokenizers built from constants, never downloaded.

>>> path = tiny_model_dir(tmp_path, words=["le", "chat"], num_layers=4)  # doctest: +SKIP
>>> TrialConfig(task="demo_pos", model=str(path))                       # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]

# Per-architecture config keys for a tiny model: hidden 32, 2 heads.
_ARCHITECTURES = {
    "camembert": lambda n, v: dict(hidden_size=32, num_hidden_layers=n, num_attention_heads=2,
                                   intermediate_size=64, vocab_size=v, max_position_embeddings=130,
                                   pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "roberta": lambda n, v: dict(hidden_size=32, num_hidden_layers=n, num_attention_heads=2,
                                 intermediate_size=64, vocab_size=v, max_position_embeddings=130,
                                 pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "xlm-roberta": lambda n, v: dict(hidden_size=32, num_hidden_layers=n, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=v, max_position_embeddings=130,
                                     pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "bert": lambda n, v: dict(hidden_size=32, num_hidden_layers=n, num_attention_heads=2,
                              intermediate_size=64, vocab_size=v, max_position_embeddings=128, pad_token_id=0),
    "distilbert": lambda n, v: dict(dim=32, n_layers=n, n_heads=2, hidden_dim=64, vocab_size=v,
                                    max_position_embeddings=128, pad_token_id=0),
    "flaubert": lambda n, v: dict(emb_dim=32, n_layers=n, n_heads=2, vocab_size=v, max_position_embeddings=128,
                                  pad_index=0),
}
ARCHITECTURES = sorted(_ARCHITECTURES)


def tiny_tokenizer(words: Iterable[str]):
    """A word-level fast tokenizer over ``words`` (+ specials), as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for word in sorted(set(words)):
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        mask_token="<mask>", cls_token="<s>", sep_token="</s>",
    )


def tiny_config(architecture: str = "camembert", num_layers: int = 4, vocab_size: int = 100):
    from transformers import AutoConfig

    return AutoConfig.for_model(architecture, **_ARCHITECTURES[architecture](num_layers, vocab_size))


def tiny_model_dir(path: str | Path, words: Iterable[str], architecture: str = "camembert",
                   num_layers: int = 4, seed: int = 0) -> Path:
    """Save a tiny random encoder + tokenizer to ``path``; returns the folder, loadable by name."""
    import torch
    from transformers import AutoModel

    path = Path(path)
    tokenizer = tiny_tokenizer(words)
    torch.manual_seed(seed)
    model = AutoModel.from_config(tiny_config(architecture, num_layers, len(tokenizer)))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def conll_words(*paths: str | Path) -> set[str]:
    """Every word of some CoNLL files (first column), to build a tokenizer that knows them."""
    words = set()
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("-DOCSTART-"):
                words.add(line.split()[0])
    return words


def simulated_trial(prepared, device=None, gpu_memory_fraction=None) -> dict:
    """A stand-in for ``run_trial`` that trains nothing: for testing scheduling, packing and resume.

    Its F1 grows with the number of kept layers and favours low layers, so best/drop_worst are
    well defined; a layer set containing layer 1 alone raises a simulated CUDA OOM when the task is
    named ``*_oom``. It sleeps ``FRUGALRAY_SIMULATED_SECONDS`` (default 0.2) and reports the GPU ids
    Ray gave it in ``device``.
    """
    import os
    import time

    kept, layers = prepared.kept_layers, prepared.num_layers
    if prepared.task.name.endswith("_oom") and kept == (1,):
        raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB (simulated)")
    started = time.time()
    time.sleep(float(os.environ.get("FRUGALRAY_SIMULATED_SECONDS", "0.2")))
    try:
        import ray

        gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", []) if ray.is_initialized() else []
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except Exception:  # outside Ray
        gpus, node = [], "local"
    score = 0.5 * len(kept) / layers + 0.4 * sum(1 - k / layers for k in kept) / len(kept)
    seconds = 1.0 + len(kept) * (2.0 if prepared.config.lora is None else 1.2) * prepared.config.training.epochs / 3
    return {
        "accuracy": score, "precision": score, "recall": score, "f1": score, "eval_loss": 1 - score,
        "dev_accuracy": score, "dev_f1": score, "dev_eval_loss": 1 - score,
        "train_seconds": seconds, "seconds_per_epoch": seconds / prepared.config.training.epochs,
        "eval_seconds": 0.1, "total_seconds": time.time() - started,
        "device": f"simulated gpus={','.join(gpus)} node={node} start={started:.3f} end={time.time():.3f}",
    }
