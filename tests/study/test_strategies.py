import csv
from pathlib import Path

import pytest

import frugalray
from frugalray import FrugalrayError, balanced_epochs, kept_layers
from frugalray.strategies import STRATEGIES, alternate_family

REFERENCE = Path(frugalray.__file__).parent / "data" / "reference"

# (strategy, L, N) -> kept layers, computed by hand from the definitions in SPEC.
CASES = {
    ("full", 4, None): (0, 1, 2, 3),
    ("full", 12, None): tuple(range(12)),
    ("single", 4, 2): (2,),
    ("single", 12, 11): (11,),
    ("first", 4, 1): (0,),
    ("first", 6, 3): (0, 1, 2),
    ("first", 12, 11): tuple(range(11)),
    ("last", 4, 1): (3,),
    ("last", 6, 2): (4, 5),
    ("last", 12, 3): (9, 10, 11),
    ("even", 4, None): (0, 2),
    ("even", 6, None): (0, 2, 4),
    ("even", 12, None): (0, 2, 4, 6, 8, 10),
    ("odd", 4, None): (1, 3),
    ("odd", 6, None): (1, 3, 5),
    ("odd", 12, None): (1, 3, 5, 7, 9, 11),
    ("drop_every", 4, 2): (0, 2),
    ("drop_every", 6, 3): (0, 1, 3, 4),
    ("drop_every", 12, 3): (0, 1, 3, 4, 6, 7, 9, 10),
    ("drop_every", 12, 4): (0, 1, 2, 4, 5, 6, 8, 9, 10),
    ("drop_middle", 4, 2): (0, 3),
    ("drop_middle", 6, 2): (0, 1, 4, 5),
    ("drop_middle", 6, 4): (0, 5),
    ("drop_middle", 12, 2): (0, 1, 2, 3, 4, 7, 8, 9, 10, 11),
    ("drop_middle", 12, 4): (0, 1, 2, 3, 8, 9, 10, 11),
    ("drop_middle", 12, 10): (0, 11),
    ("drop_ends", 4, 2): (1, 2),
    ("drop_ends", 6, 4): (2, 3),
    ("drop_ends", 12, 2): tuple(range(1, 11)),
    ("drop_ends", 12, 4): tuple(range(2, 10)),
    ("drop_ends", 12, 10): (5, 6),
}


@pytest.mark.parametrize("name,num_layers,n", list(CASES))
def test_strategy_keeps_hand_computed_layers(name, num_layers, n):
    assert kept_layers(name, num_layers, n=n) == CASES[(name, num_layers, n)]


SCORES = {
    4: [0.2, 0.9, 0.5, 0.7],
    6: [0.8, 0.1, 0.6, 0.6, 0.3, 0.9],  # a tie between layers 2 and 3: the lower index ranks first
    12: [0.80, 0.85, 0.86, 0.70, 0.40, 0.30, 0.35, 0.45, 0.60, 0.82, 0.81, 0.10],
}
SCORED = {
    ("best", 4, 2): (1, 3),
    ("best", 6, 3): (0, 2, 5),
    ("best", 12, 3): (1, 2, 9),
    ("best", 12, 5): (0, 1, 2, 9, 10),
    ("drop_worst", 4, 1): (1, 2, 3),
    ("drop_worst", 6, 2): (0, 2, 3, 5),
    ("drop_worst", 12, 1): tuple(range(11)),
    ("drop_worst", 12, 3): (0, 1, 2, 3, 4, 7, 8, 9, 10),
}


@pytest.mark.parametrize("name,num_layers,n", list(SCORED))
def test_scored_strategies_rank_single_layer_scores(name, num_layers, n):
    assert kept_layers(name, num_layers, n=n, scores=SCORES[num_layers]) == SCORED[(name, num_layers, n)]


def test_scores_may_be_a_mapping():
    assert kept_layers("best", 4, n=1, scores={0: 0.1, 1: 0.2, 2: 0.9, 3: 0.3}) == (2,)


def test_mask_keeps_explicit_layers_sorted():
    assert kept_layers("mask", 12, layers=[9, 1, 2]) == (1, 2, 9)


@pytest.mark.parametrize("layers,message", [
    ([], "empty"),
    ([0, 12], "out of range"),
    ([-1], "out of range"),
    ([3, 3], "repeats"),
])
def test_bad_masks_are_refused(layers, message):
    with pytest.raises(FrugalrayError, match=message):
        kept_layers("mask", 12, layers=layers)


@pytest.mark.parametrize("name,n", [("first", 13), ("last", 0), ("single", 12), ("drop_middle", 12),
                                    ("drop_worst", 12), ("best", 13), ("drop_every", 1)])
def test_n_outside_the_layer_count_is_refused(name, n):
    with pytest.raises(FrugalrayError, match="valid N"):
        kept_layers(name, 12, n=n, scores=SCORES[12])


def test_drop_ends_needs_an_even_n():
    with pytest.raises(FrugalrayError, match="even"):
        kept_layers("drop_ends", 12, n=3)


def test_scored_strategies_need_every_layer_score():
    with pytest.raises(FrugalrayError, match="needs per-layer scores"):
        kept_layers("best", 4, n=2)
    with pytest.raises(FrugalrayError, match=r"missing: \[3\]"):
        kept_layers("best", 4, n=2, scores={0: 1.0, 1: 1.0, 2: 1.0})


def test_unknown_strategy_suggests_the_closest():
    with pytest.raises(FrugalrayError, match="Unknown strategy 'drop_wrost'. Did you mean 'drop_worst'"):
        kept_layers("drop_wrost", 12, n=1)


def test_registry_refuses_duplicates():
    with pytest.raises(FrugalrayError, match="already registered"):
        STRATEGIES.add("first", STRATEGIES.get("first"))


def test_alternate_family_covers_even_odd_and_lighter_sparsity():
    family = alternate_family(12)
    assert family == [("even", None), ("odd", None), ("drop_every", 4), ("drop_every", 3)]
    assert {len(kept_layers(name, 12, n=n)) for name, n in family} == {6, 9, 8}


def test_balanced_epochs_match_the_study():
    with open(REFERENCE / "thesis_table_4_9_balanced.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 7
    for row in rows:
        expected = int(row["adjusted_epochs"])
        got = balanced_epochs(float(row["baseline_time_s"]), float(row["pruned_time_s_3ep"]), 3)
        assert got == expected, row


def test_balanced_epochs_refuse_non_positive_times():
    with pytest.raises(FrugalrayError, match="positive"):
        balanced_epochs(100.0, 0.0, 3)


def test_drop_block_drops_the_block_of_n_layers_with_the_smallest_distance():
    # scores[l][n-1]: distance of the block of n layers starting at l
    scores = ((0.5, 0.6, 0.9), (0.2, 0.3, 0.8), (0.4, 0.7), (0.1,))
    assert kept_layers("drop_block", 4, n=1, scores=scores) == (0, 1, 2)  # layer 3 alone: 0.1
    assert kept_layers("drop_block", 4, n=2, scores=scores) == (0, 3)  # layers 1-2: 0.3
    assert kept_layers("drop_block", 4, n=3, scores=scores) == (0,)  # layers 1-3: 0.8
    with pytest.raises(FrugalrayError, match="needs the block distances of all 4 start layers"):
        kept_layers("drop_block", 4, n=2, scores=None)
