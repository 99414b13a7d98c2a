
import pytest
import torch
from transformers import AutoModel, AutoModelForTokenClassification

from frugalray import FrugalrayError
from frugalray.model.surgery import layer_importance, layer_lists, original_layers, parameter_count, prune_layers
from frugalray.testing import ARCHITECTURES, tiny_config

torch.manual_seed(0)
INPUT = {"input_ids": torch.tensor([[1, 7, 9, 12, 40, 2], [1, 33, 8, 2, 0, 0]]),
         "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])}


def _model(architecture="camembert", num_layers=6):
    torch.manual_seed(0)
    return AutoModel.from_config(tiny_config(architecture, num_layers)).eval()


def _hidden(model):
    with torch.no_grad():
        return model(**INPUT).last_hidden_state


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_pruned_model_round_trips_with_identical_outputs(architecture, tmp_path):
    model = prune_layers(_model(architecture), [1, 4])
    before = _hidden(model)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.num_hidden_layers == 2
    assert loaded.config.frugalray_kept_layers == [1, 4]
    assert all(len(getattr(parent, name)) == 2 for parent, name in layer_lists(loaded))
    assert torch.allclose(_hidden(loaded), before, atol=1e-6)


def test_kept_layers_are_the_chosen_ones_not_the_first_k():
    full = _model("camembert", 6)
    original = [layer.state_dict() for layer in full.encoder.layer]
    pruned = prune_layers(_model("camembert", 6), [2, 5])
    for new_index, old_index in enumerate([2, 5]):
        for key, value in pruned.encoder.layer[new_index].state_dict().items():
            assert torch.equal(value, original[old_index][key]), key
    # Keeping layers 0 and 1 (the trap) gives different outputs from keeping 2 and 5.
    trap = prune_layers(_model("camembert", 6), [0, 1])
    assert not torch.allclose(_hidden(pruned), _hidden(trap))


def test_pruning_twice_records_original_indices():
    model = prune_layers(_model("camembert", 6), [1, 3, 5])
    prune_layers(model, [0, 2])
    assert original_layers(model.config) == [1, 5]
    assert model.config.frugalray_original_num_layers == 6


def test_head_model_prunes_and_parameters_drop():
    model = AutoModelForTokenClassification.from_config(tiny_config("camembert", 6))
    before = parameter_count(model)
    per_layer = sum(p.numel() for p in model.roberta.encoder.layer[0].parameters())
    prune_layers(model, [0])
    assert parameter_count(model) == before - 5 * per_layer


@pytest.mark.parametrize("layers", [[], [6], [1, 1]])
def test_bad_kept_layers_are_refused(layers):
    with pytest.raises(FrugalrayError):
        prune_layers(_model(), layers)


def test_pruned_model_does_a_fraction_of_the_work():
    """Counted in multiply-adds, not timed: speed itself is measured by `frugalray bench-latency` and benchmarks/payoff.py."""
    from torch.utils.flop_counter import FlopCounterMode

    config = tiny_config("bert", 12)
    config.hidden_size, config.intermediate_size, config.num_attention_heads = 128, 512, 4
    torch.manual_seed(0)
    full = AutoModel.from_config(config).eval()
    pruned = prune_layers(AutoModel.from_config(config).eval(), [0, 1])
    batch = {"input_ids": torch.randint(5, 100, (16, 64)), "attention_mask": torch.ones(16, 64, dtype=torch.long)}

    def flops(model) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(**batch)
        return counter.get_total_flops()

    assert flops(pruned) < flops(full) / 5  # 2 of 12 layers (and the pooler): ~1/6 of the work


def test_importance_ranks_identity_layers_least_important():
    model = _model("camembert", 6)
    with torch.no_grad():
        for index in (1, 4):  # zero output projections: the residual passes the input through unchanged
            layer = model.encoder.layer[index]
            for linear in (layer.attention.output.dense, layer.output.dense):
                linear.weight.zero_()
                linear.bias.zero_()
            # LayerNorm after the residual would still rescale: make it the identity too
            for norm in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
                norm.weight.fill_(1.0)
                norm.bias.zero_()
    scores = layer_importance(model, [INPUT])
    least = sorted(range(6), key=lambda k: scores[k])[:2]
    assert sorted(least) == [1, 4]


def test_a_block_that_passes_its_input_through_is_the_closest():
    from frugalray.model.surgery import block_distances

    model = _model("camembert", 6)
    with torch.no_grad():
        for index in (2, 3):  # zero output projections: the residual passes the input through unchanged
            layer = model.encoder.layer[index]
            for linear in (layer.attention.output.dense, layer.output.dense):
                linear.weight.zero_()
                linear.bias.zero_()
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(5, 60, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long)}
    distances = block_distances(model, [batch])
    assert [len(row) for row in distances] == [6, 5, 4, 3, 2, 1]
    sizes_two = {start: distances[start][1] for start in range(5)}
    assert min(sizes_two, key=sizes_two.get) == 2  # layers 2-3 change nothing...
    assert sizes_two[2] < min(v for k, v in sizes_two.items() if k != 2) / 10  # ...and the others do
