"""Placement without Ray: the cards a cluster has or can start, each trial's share sized for its card, which
card a trial goes to, and what a GPU sweep does where no GPU can ever come."""

from pathlib import Path

import pytest

from frugalray import FrugalrayError
from frugalray.cluster.placement import (Card, CpuPlacer, GpuPlacer, cards_of, launcher_node_types, placer_for,
                                         read_launcher_config)
from frugalray.config import ResourceRule

ROOT = Path(__file__).resolve().parents[2]
A10G = {"CPU": 8, "GPU": 1, "accelerator_type:A10G": 1, "gpu_memory_gib:24": 1}
H100 = {"CPU": 16, "GPU": 1, "accelerator_type:H100": 1, "gpu_memory_gib:80": 1}
RULE = ResourceRule(gpus=True, cpus_per_trial=2, safety=1.0, step=0.05, min_fraction=0.05)


def test_cards_come_from_node_types_and_live_nodes():
    types = {"head": ({"CPU": 4, "GPU": 0}, 1), "a10g": (A10G, 8), "h100": (H100, 2)}
    live = [{"CPU": 4}, dict(A10G)]  # the head and one A10G worker are up; no H100 yet
    cards = cards_of(live, types, default_memory_gib=80)
    assert [(c.model, c.memory_gib, c.max_gpus, c.node_types, c.cpus_per_node) for c in cards] == [
        ("A10G", 24, 8, ("a10g",), 8), ("H100", 80, 2, ("h100",), 16)]
    # a static cluster (no node types): its live GPU nodes, a known card's memory without a declared one
    static = cards_of([{"CPU": 8, "GPU": 4, "accelerator_type:A100": 1}, {"CPU": 8, "GPU": 4, "accelerator_type:A100": 1}],
                      {}, default_memory_gib=12)
    assert [(c.model, c.memory_gib, c.gpus_per_node, c.max_gpus) for c in static] == [("A100", 40, 4, 8)]
    unknown = cards_of([{"CPU": 2, "GPU": 1}], {}, default_memory_gib=12)  # a GPU that names no model
    assert [(c.model, c.memory_gib, c.pin) for c in unknown] == [(None, 12, {})]
    assert cards_of([{"CPU": 2}], {"cpu": ({"CPU": 8}, 4)}, 80) == []


def test_a_share_is_sized_for_the_card_and_pins_the_trial_to_it():
    cards = cards_of([], {"a10g": (A10G, 1), "h100": (H100, 1)}, 80)
    placer = GpuPlacer(RULE, cards, estimate=lambda planned: 6.0)  # 6 GiB: a quarter of an A10G
    assert [(card.model, share) for card, share in placer.options(None)] == [("A10G", 0.25), ("H100", 0.1)]
    first = placer("t1")
    assert first.resources == {"CPU": 2, "GPU": 0.1, "accelerator_type:H100": 0.001}  # least loaded: 0.1 < 0.25
    assert first.columns() == {"node_type": "h100", "accelerator_type": "H100", "gpu_memory_gib": 80}
    loads = [placer(f"t{i}").card.model for i in range(2, 9)]
    # each goes where its share loads the card least; ties to the smaller card
    assert loads == ["H100", "A10G", "H100", "H100", "A10G", "H100", "H100"]
    assert placer.load == pytest.approx({cards[0]: 0.5, cards[1]: 0.6})
    placer.release("t1")
    assert placer.load[cards[1]] == pytest.approx(0.5)


def test_a_trial_too_big_for_the_small_card_goes_to_the_big_one_only():
    cards = cards_of([], {"a10g": (A10G, 8), "h100": (H100, 1)}, 80)
    placer = GpuPlacer(RULE, cards, estimate=lambda planned: 30.0)  # more than an A10G holds
    assert [(card.model, share) for card, share in placer.options(None)] == [("H100", 0.4)]
    assert {placer(f"t{i}").card.model for i in range(5)} == {"H100"}
    huge = GpuPlacer(RULE, cards, estimate=lambda planned: 100.0)
    with pytest.raises(FrugalrayError, match=r"needs about 100.0 GiB of GPU memory .* A10G \(24 GiB\) x1, 8 CPUs"):
        huge.check(["t"])
    greedy = GpuPlacer(ResourceRule(gpus=True, cpus_per_trial=12), cards, estimate=lambda planned: 1.0)
    assert [card.model for card, _ in greedy.options(None)] == ["H100"]  # 12 CPUs: only the H100 nodes have them


def test_a_gpu_sweep_where_no_gpu_can_come_fails_or_falls_back_when_told():
    said = []
    cpu_only = dict(live=lambda: [{"CPU": 4}], node_types={"head": ({"CPU": 4}, 1)}, say=said.append)
    with pytest.raises(FrugalrayError, match=r"runs its trials on GPUs .* no GPU node and its node types \(head\) "
                                             r"have no GPU.*--resources.cpu-fallback"):
        placer_for(RULE, lambda p: 1.0, **cpu_only)
    with pytest.raises(FrugalrayError, match="no autoscaler that could start GPU nodes"):
        placer_for(RULE, lambda p: 1.0, live=lambda: [{"CPU": 4}], node_types={})
    fallback = placer_for(ResourceRule(gpus=True, cpu_fallback=True), lambda p: 1.0, **cpu_only)
    assert isinstance(fallback, CpuPlacer) and fallback("t").resources == {"CPU": 1.0}
    assert said and "run on CPUs instead (resources.cpu_fallback)" in said[0]
    # GPU workers that start at zero: the demand is for GPUs though none is alive
    on_gpus = placer_for(RULE, lambda p: 1.0, live=lambda: [{"CPU": 4}], node_types={"a10g": (A10G, 2)})
    assert on_gpus("t").resources["GPU"] > 0
    assert isinstance(placer_for(ResourceRule(), lambda p: 1.0, live=lambda: [dict(A10G)]), CpuPlacer)  # gpus off
    with pytest.raises(FrugalrayError, match="cpu_fallback is the fallback of a GPU sweep"):
        ResourceRule(cpu_fallback=True)


def test_the_shipped_cluster_config_gives_every_gpu_type_its_card():
    types = launcher_node_types(read_launcher_config(str(ROOT / "cluster.yaml")))
    cards = cards_of([], types, default_memory_gib=1)
    assert all(card.model and card.memory_declared for card in cards)
    # the A100 and H100 types ship with max_workers 0 (raise it to use them): only the A10G can start
    assert {card.model: card.memory_gib for card in cards} == {"A10G": 24}
    raised = {name: (resources, 1) for name, (resources, _) in types.items()}
    assert {card.model: card.memory_gib for card in cards_of([], raised, 1)} == {"A10G": 24, "A100": 40, "H100": 80}
    head = read_launcher_config(str(ROOT / "cluster.yaml"))["head_node_type"]
    assert types[head][0].get("GPU", 0) == 0  # the head trains nothing


def test_an_unreadable_launcher_config_is_a_clear_error(tmp_path):
    with pytest.raises(FrugalrayError, match=r"resources.autoscaling_config '.*missing.yaml' cannot be read"):
        read_launcher_config(str(tmp_path / "missing.yaml"))
    (tmp_path / "bad.yaml").write_text("a: [")
    with pytest.raises(FrugalrayError, match="is not YAML/JSON"):
        read_launcher_config(str(tmp_path / "bad.yaml"))


def test_a_card_without_a_model_is_pinned_by_its_declared_memory():
    card = Card(None, 48, 1, 1, ("l40",), memory_declared=True)
    assert card.pin == {"gpu_memory_gib:48": 0.001}
