import json

import pytest
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from frugalray import FrugalrayError, LoraSettings
from frugalray.model.lora import apply_lora, default_targets, head_modules, merged
from frugalray.model.surgery import prune_layers
from frugalray.testing import tiny_config


def _trainable(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_study_defaults():
    settings = LoraSettings()
    assert (settings.r, settings.alpha, settings.dropout, settings.target_modules) == (8, 32, 0.1, ())
    assert settings.train_head
    assert default_targets(tiny_config("bert")) == default_targets(tiny_config("camembert")) == ("query", "value")


@pytest.mark.parametrize("auto", [AutoModelForTokenClassification, AutoModelForSequenceClassification])
def test_head_trains_by_default_and_freezes_on_request(auto):
    model = prune_layers(auto.from_config(tiny_config("camembert", 4)), [0, 3])
    assert head_modules(model) == ["classifier"]
    trained = _trainable(apply_lora(model, LoraSettings()))
    assert any("classifier" in name for name in trained)
    assert any("lora_A" in name and "query" in name for name in trained)
    assert not any("key" in name or "intermediate" in name for name in trained)

    frozen_model = prune_layers(auto.from_config(tiny_config("camembert", 4)), [0, 3])
    frozen = _trainable(apply_lora(frozen_model, LoraSettings(train_head=False)))
    assert not any("classifier" in name for name in frozen)
    assert frozen and all("lora_" in name for name in frozen)


def test_distilbert_head_has_both_layers():
    model = AutoModelForSequenceClassification.from_config(tiny_config("distilbert", 4))
    assert head_modules(model) == ["pre_classifier", "classifier"]
    trained = _trainable(apply_lora(model, LoraSettings(target_modules=("q_lin", "v_lin"))))
    assert any("pre_classifier" in name for name in trained)


def test_merge_gives_a_plain_pruned_model():
    model = apply_lora(prune_layers(AutoModelForTokenClassification.from_config(tiny_config("bert", 4)), [1]), LoraSettings())
    plain = merged(model)
    assert not any("lora" in name for name, _ in plain.named_parameters())
    assert plain.config.num_hidden_layers == 1


def test_settings_from_json_accept_peft_names(tmp_path):
    path = tmp_path / "lora.json"
    path.write_text(json.dumps({"r": 16, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["query"],
                                "train_head": False}))
    assert LoraSettings.from_json(path) == LoraSettings(16, 16, 0.05, ("query",), False)


@pytest.mark.parametrize("content,message", [
    ('{"rank": 8}', "unknown key 'rank'"),
    ('{"r": 0}', "r must be >= 1"),
    ('{"target_modules": ["query", " "]}', "has an empty name"),
    ('{"r": 8', "not valid JSON"),
])
def test_bad_settings_files(tmp_path, content, message):
    path = tmp_path / "lora.json"
    path.write_text(content)
    with pytest.raises(FrugalrayError, match=message):
        LoraSettings.from_json(path)


def test_saving_a_lora_model_never_asks_the_hub_about_its_base_model(tmp_path, monkeypatch):
    """peft looks the base model's config up on the hub to decide whether to save the embeddings, and warns
    when it cannot reach it; frugalray knows the answer (it never resizes the vocabulary) and says so."""
    import peft.utils.save_and_load as save_and_load

    from frugalray.model.saved import MANIFEST, save_trained
    from frugalray.testing import tiny_tokenizer

    asked = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # online, peft would look
    monkeypatch.setattr(save_and_load, "check_file_exists_on_hf_hub", lambda *a, **k: asked.append(a))
    model = apply_lora(prune_layers(AutoModelForTokenClassification.from_config(tiny_config("camembert", 4)), [0, 2]),
                       LoraSettings())
    save_trained(model, tiny_tokenizer(["a", "b"]), tmp_path, base_model="minilm", kept_layers=(0, 2), head="token",
                 labels=["O", "B"], lora=True, trial={})
    assert asked == []
    assert (tmp_path / "adapter_config.json").exists() and (tmp_path / MANIFEST).exists()
    saved = set(__import__("safetensors.torch", fromlist=["load_file"]).load_file(tmp_path / "adapter_model.safetensors"))
    assert not any("embed" in name for name in saved)
