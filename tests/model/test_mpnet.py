"""MPNet (all-mpnet-base-v2's architecture) through layer surgery, LoRA and its own tokenizer, on tiny random
MPNets built from a config (hidden 32); and LoRA's default targets, resolved per architecture, leaving the
configuration hashes of earlier results as they were."""

import dataclasses
import json

import pytest
import torch
from transformers import AutoModel, AutoModelForTokenClassification

from frugalray import FrugalrayError, LoraSettings, TrialConfig
from frugalray.data.encoding import IGNORE, encode_examples
from frugalray.data.readers import Example
from frugalray.model.lora import apply_lora, default_targets
from frugalray.model.surgery import layer_lists, prune_layers
from frugalray.testing import conll_words, tiny_config, tiny_model_dir
from frugalray.training.columns import base_row
from frugalray.training.identity import config_hash, recorded_hash
from frugalray.training.prepared import prepare_trial

INPUT = {"input_ids": torch.tensor([[0, 7, 9, 12, 40, 2], [0, 33, 8, 2, 1, 1]]),
         "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])}


def _mpnet(head=AutoModel, num_layers: int = 4):
    torch.manual_seed(0)
    return head.from_config(tiny_config("mpnet", num_layers)).eval()


def _hidden(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**INPUT).last_hidden_state


@pytest.fixture(scope="module")
def mpnet_dir(tmp_path_factory, data_dir) -> str:
    words = conll_words(*data_dir.glob("ner_*.conll"))
    return str(tiny_model_dir(tmp_path_factory.mktemp("tiny_mpnet"), words, "mpnet", num_layers=4))


# -- surgery --------------------------------------------------------------------------------------------
def test_pruning_keeps_the_relative_position_bias_every_layer_shares(tmp_path):
    full = _mpnet()
    bias = full.encoder.relative_attention_bias.weight.detach().clone()
    originals = [layer.state_dict() for layer in full.encoder.layer]
    pruned = prune_layers(_mpnet(), [1, 3])
    assert layer_lists(pruned) == [(pruned.encoder, "layer")]  # the bias is not a layer's: it stays whole
    assert torch.equal(pruned.encoder.relative_attention_bias.weight, bias)
    for new_index, old_index in enumerate([1, 3]):
        for key, value in pruned.encoder.layer[new_index].state_dict().items():
            assert torch.equal(value, originals[old_index][key]), key

    before = _hidden(pruned)
    pruned.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert (loaded.config.num_hidden_layers, loaded.config.frugalray_kept_layers) == (2, [1, 3])
    assert len(loaded.encoder.layer) == 2
    assert torch.equal(loaded.encoder.relative_attention_bias.weight, bias)
    assert torch.allclose(_hidden(loaded), before, atol=1e-6)


def test_the_first_layers_kept_compute_what_they_computed_in_the_full_model():
    """The kept layers still get the shared position bias: keeping 0 and 1 gives the full model's layer-1 output."""
    with torch.no_grad():
        full = _mpnet()(**INPUT, output_hidden_states=True).hidden_states
    assert torch.allclose(_hidden(prune_layers(_mpnet(), [0, 1])), full[2], atol=1e-6)


# -- LoRA -----------------------------------------------------------------------------------------------
def _adapted(model) -> set[str]:
    return {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in model.named_parameters() if ".lora_A" in name}


def test_lora_goes_on_mpnets_query_and_value_projections_by_default():
    assert default_targets(tiny_config("mpnet")) == ("q", "v")
    model = apply_lora(prune_layers(_mpnet(AutoModelForTokenClassification), [0, 2]), LoraSettings())
    assert _adapted(model) == {"q", "v"}
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("classifier" in name for name in trained)
    assert all("lora_" in name or "classifier" in name for name in trained)
    named = apply_lora(prune_layers(_mpnet(AutoModelForTokenClassification), [0, 2]),
                       LoraSettings(target_modules=("q", "k", "v", "o")))
    assert _adapted(named) == {"q", "k", "v", "o"}


def test_an_architecture_without_default_targets_is_an_error_naming_its_linear_layers():
    from transformers import AlbertConfig

    config = AlbertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          embedding_size=16, vocab_size=50)
    with pytest.raises(FrugalrayError, match=r"no default target modules for model type 'albert'.*name them with "
                                             r"--lora.target-modules, from its linear layers: .*key.*query.*value"):
        default_targets(config)


def test_peft_adapter_config_without_targets_means_the_architectures_own(tmp_path):
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                                "target_modules": None, "task_type": "TOKEN_CLS"}))
    assert LoraSettings.from_json(path) == LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=(), train_head=True)


def test_a_prepared_trial_names_the_lora_targets_that_train(mpnet_dir, ner_task_file):
    config = TrialConfig(task=ner_task_file, model=mpnet_dir, strategy="first", n=2, lora=LoraSettings())
    prepared = prepare_trial(config)
    assert prepared.config.lora.target_modules == ("q", "v")
    row = base_row(config, prepared)
    assert row["lora_target_modules"] == ["q", "v"]
    assert json.loads(row["config_json"])["lora"]["target_modules"] == ["q", "v"]
    named = prepare_trial(dataclasses.replace(config, lora=LoraSettings(target_modules=("q", "v"))))
    assert named.config_hash == prepared.config_hash  # the same modules train: the same run


def test_hashes_of_results_stored_with_query_value_do_not_change(tiny_model, ner_task_file):
    """``query``/``value`` were the default before the architecture's own: rows that name them, and BERT-like
    models' default LoRA, hash as they did (the literal: this configuration's hash before the change)."""
    explicit = TrialConfig(task="demo_pos", strategy="first", n=2, lora=LoraSettings(target_modules=("query", "value")))
    assert config_hash(explicit, (0, 1), "sha256:abc") == "19e93e85b3053ee4"

    default = prepare_trial(TrialConfig(task=ner_task_file, model=tiny_model, strategy="first", n=2,
                                        lora=LoraSettings()))
    named = prepare_trial(dataclasses.replace(default.config, lora=LoraSettings(target_modules=("query", "value"))))
    assert default.config.lora.target_modules == ("query", "value") and default.config_hash == named.config_hash
    stored = base_row(named.config, named) | {"config_version": 2}  # re-read and hashed again, as older rows are
    assert json.loads(stored["config_json"])["lora"]["target_modules"] == ["query", "value"]
    assert recorded_hash(stored) == default.config_hash


# -- tokenizer ------------------------------------------------------------------------------------------
def test_mpnets_own_tokenizer_puts_each_word_label_on_its_first_word_piece(tmp_path):
    from transformers import MPNetTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["<s>", "<pad>", "</s>", "<unk>", "[UNK]", "<mask>", "jean", "hab", "##ite", "a",
                                "par", "##is", "."]) + "\n")
    tokenizer = MPNetTokenizerFast(str(vocab))
    assert tokenizer.is_fast and (tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.sep_token_id) == (0, 1, 2)
    example = Example(labels=("B-PER", "O", "O", "B-LOC", "O"), origin="test:1",
                      words=("Jean", "habite", "à", "Paris", "."))
    [encoded] = encode_examples([example], tokenizer, {"O": 0, "B-PER": 1, "B-LOC": 2}, max_length=32)
    # lower-cased, accents stripped (BERT's normaliser), words cut in word pieces, <s> ... </s> around them
    assert tokenizer.convert_ids_to_tokens(encoded.input_ids) == ["<s>", "jean", "hab", "##ite", "a", "par", "##is",
                                                                  ".", "</s>"]
    assert encoded.labels == [IGNORE, 1, 0, IGNORE, 0, 2, IGNORE, 0, IGNORE]
    assert encoded.word_positions == [1, 2, 4, 5, 7]


def test_the_tiny_mpnet_pads_with_id_1_as_all_mpnet_base_v2_does(mpnet_dir):
    from frugalray.model.loading import load_model_config, load_tokenizer

    tokenizer, config = load_tokenizer(mpnet_dir), load_model_config(mpnet_dir)
    assert (config.model_type, config.pad_token_id) == ("mpnet", 1)
    assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id) == (1, 0, 2)
