"""What halving compares at a rung (``rung_score``, ``rung_curve``), on checkpoints whose dev F1 is not 0, with
every expected value written out: a score that ranked by the wrong column, or the right one the wrong way
round, would give other numbers and another order."""

import math

import pytest

from frugalray import FrugalrayError
from frugalray.config import RUNG_SCORES
from frugalray.study.masks import rung_curve, rung_score

# Four masks at one rung: a and b tie on dev F1, b with the lower dev loss; c has the lowest loss but a lower F1.
CHECKPOINTS = {"a": (0.70, 1.20), "b": (0.70, 0.80), "c": (0.65, 0.30), "d": (0.40, 2.00)}


@pytest.mark.parametrize("name,dev_f1,dev_loss,expected", [
    ("dev_f1", 0.70, 1.20, 0.70),
    ("dev_f1", 0.65, None, 0.65),  # the loss plays no part
    ("dev_loss", 0.70, 1.20, -1.20),
    ("dev_loss", 0.00, 0.30, -0.30),
    ("dev_f1_then_loss", 0.70, 1.20, 0.6999999988),  # 0.70 - 1e-9 * 1.20
    ("dev_f1_then_loss", 0.65, 0.30, 0.6499999997),
    ("dev_f1_then_loss", 0.40, 2000.0, 0.399999),  # a loss past 1e3 counts as 1e3: at most 1e-6 off the F1
])
def test_each_rung_score_of_a_checkpoint(name, dev_f1, dev_loss, expected):
    assert rung_score(name, dev_f1, dev_loss) == pytest.approx(expected, rel=0, abs=1e-13)


@pytest.mark.parametrize("loss", [None, math.nan, math.inf])
def test_a_missing_or_non_finite_loss_ranks_last(loss):
    assert rung_score("dev_loss", 0.9, loss) == -1000.0
    assert rung_score("dev_f1_then_loss", 0.9, loss) == pytest.approx(0.899999, rel=0, abs=1e-13)
    assert rung_score("dev_loss", 0.9, loss) < rung_score("dev_loss", 0.1, 999.0)  # below any finite loss
    assert rung_score("dev_f1_then_loss", 0.9, loss) < rung_score("dev_f1_then_loss", 0.9, 999.0)


@pytest.mark.parametrize("name,best_first", [
    ("dev_f1", ["a", "b", "c", "d"]),  # a and b tie: the sort keeps their order
    ("dev_loss", ["c", "b", "a", "d"]),  # lower loss first, whatever the F1
    ("dev_f1_then_loss", ["b", "a", "c", "d"]),  # F1 first; between equal F1s, the lower loss
])
def test_each_rung_score_ranks_the_masks_of_a_rung(name, best_first):
    scores = {mask: rung_score(name, f1, loss) for mask, (f1, loss) in CHECKPOINTS.items()}
    assert sorted(scores, key=lambda mask: -scores[mask]) == best_first
    if name == "dev_f1":
        assert scores["a"] == scores["b"]  # a tie halving cannot break
    else:
        assert len(set(scores.values())) == 4


def test_a_rows_curve_scores_each_checkpoint_by_its_step():
    row = {"checkpoint_steps": [2, 4, 6], "checkpoint_dev_f1": [0.25, 0.5, 0.5],
           "checkpoint_dev_loss": [1.5, 0.9, 0.7]}
    assert rung_curve(row, "dev_f1") == {2: 0.25, 4: 0.5, 6: 0.5}
    assert rung_curve(row, "dev_loss") == {2: -1.5, 4: -0.9, 6: -0.7}
    curve = rung_curve(row, "dev_f1_then_loss")
    assert list(curve) == [2, 4, 6]
    assert list(curve.values()) == pytest.approx([0.2499999985, 0.4999999991, 0.4999999993], rel=0, abs=1e-13)
    assert curve[6] > curve[4]  # the same F1 at a lower loss: the later checkpoint ranks higher
    # a row recorded before dev losses were: every checkpoint's loss is missing
    older = {"checkpoint_steps": [2, 4], "checkpoint_dev_f1": [0.25, 0.5]}
    assert rung_curve(older, "dev_loss") == {2: -1000.0, 4: -1000.0}
    assert rung_curve(older, "dev_f1") == {2: 0.25, 4: 0.5}
    assert rung_curve({}, "dev_loss") == {}


def test_an_unknown_rung_score_names_those_that_exist():
    assert RUNG_SCORES == ("dev_f1", "dev_loss", "dev_f1_then_loss")
    with pytest.raises(FrugalrayError, match="Unknown rung_score 'dev_los'. Did you mean 'dev_loss'"):
        rung_score("dev_los", 0.5, 1.0)


def test_dev_f1_then_loss_orders_by_f1_first_and_breaks_ties_by_the_lower_loss():
    """For any two checkpoints: a higher dev F1 (by a thousandth of a point or more) ranks higher whatever the
    losses; equal F1s rank by the lower loss; the score is never more than 1e-6 below the F1."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    f1 = st.floats(0, 1)
    loss = st.one_of(st.none(), st.floats(0, 1e4), st.just(math.nan), st.just(math.inf))

    @hypothesis.given(f1, f1, loss, loss)
    def ranks(f1_a, f1_b, loss_a, loss_b):
        a, b = rung_score("dev_f1_then_loss", f1_a, loss_a), rung_score("dev_f1_then_loss", f1_b, loss_b)
        if f1_a - f1_b >= 1e-5:
            assert a > b
        if f1_a == f1_b:  # a loss missing, non-finite or past 1e3 counts as 1e3
            counted = lambda loss: min(loss, 1e3) if loss is not None and math.isfinite(loss) else 1e3
            if counted(loss_b) - counted(loss_a) >= 1e-3:
                assert a > b
            elif counted(loss_a) == counted(loss_b):
                assert a == b
        assert f1_a - 1.000001e-6 <= a <= f1_a

    ranks()
