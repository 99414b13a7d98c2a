import math

import pyarrow as pa
import pytest
from scipy import stats

from frugalray import FrugalrayError, ResultsStore
from frugalray.cli import main
from frugalray.results.reference import find, load_reference
from frugalray.strategies import balanced_epochs
from frugalray.testing import SYNTHETIC_NOISE, synthetic_catalog, synthetic_table
from frugalray.results.aggregate import aggregate
from frugalray.results.views import compute_view

SEEDS = 3
HALF_CI = stats.t.ppf(0.975, SEEDS - 1) * SYNTHETIC_NOISE / math.sqrt(SEEDS)  # std of the seed shifts is NOISE


@pytest.fixture()
def store(tmp_path):
    store = ResultsStore(tmp_path / "results")
    store.write_table(synthetic_table(synthetic_catalog(), seeds=SEEDS), "trials", "synthetic.parquet")
    return store


def _rows(view, **match):
    return [r for r in view.table.to_pylist() if all(r[k] == v for k, v in match.items())]


def test_seeds_aggregate_to_mean_std_and_student_interval(store):
    [row] = [r for r in aggregate(store).to_pylist() if r["task"] == "pos" and r["strategy"] == "first"
             and r["strategy_n"] == 2]
    assert row["seeds"] == 3 and row["kept_layers"] == [0, 1]
    assert row["f1"] == pytest.approx(0.6875)
    assert row["f1_std"] == pytest.approx(SYNTHETIC_NOISE)
    assert (row["f1_ci_low"], row["f1_ci_high"]) == pytest.approx((0.6875 - HALF_CI, 0.6875 + HALF_CI))


def test_mean_ci_is_the_mean_and_the_student_t_half_width_written_out():
    from frugalray.results.aggregate import mean_ci

    # std of 1, 2, 3, 4 = sqrt(5/3); t(0.975, 3 d.f.) = 3.182446; half-width = t * std / sqrt(4)
    assert mean_ci([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, 3.182446 * math.sqrt(5 / 3) / 2), rel=1e-6)
    assert mean_ci([1.0, 3.0]) == pytest.approx((2.0, 12.706205), rel=1e-6)  # t(0.975, 1) * sqrt(2) / sqrt(2)
    mean, half = mean_ci([0.7])
    assert mean == 0.7 and math.isnan(half)  # one value: no interval


def test_two_seeds_get_an_interval_and_one_seed_a_typed_null(tmp_path):
    table = synthetic_table(synthetic_catalog(), seeds=2)
    store = ResultsStore(tmp_path / "two")
    store.write_table(table, "trials", "synthetic.parquet")
    rows = aggregate(store).to_pylist()
    assert rows and all(r["seeds"] == 2 and r["f1_ci_low"] < r["f1"] < r["f1_ci_high"] for r in rows)
    row = rows[0]
    assert row["f1_ci_high"] - row["f1"] == pytest.approx(12.706205 * row["f1_std"] / math.sqrt(2), rel=1e-6)
    single = ResultsStore(tmp_path / "one")
    single.write_table(synthetic_table(synthetic_catalog(), seeds=1), "trials", "synthetic.parquet")
    one = aggregate(single)
    assert one.schema.field("f1_ci_low").type == pa.float64() == one.schema.field("f1_ci_high").type
    assert set(one.column("f1_ci_low").to_pylist()) == {None}


def test_a_rerun_trial_counts_once_with_its_latest_result_and_failures_are_ignored(store):
    table = store.table()
    first = table.filter(pa.compute.equal(table.column("trial_id"), "t0")).to_pylist()[0]  # pos, full, seed 0
    older = first | {"trial_id": "old", "f1": 0.0, "finished_at": first["finished_at"].replace(year=2020)}
    failed = first | {"trial_id": "bad", "config_hash": "other", "status": "failed", "f1": None}
    store.append(older), store.append(failed)
    [full] = [r for r in aggregate(store).to_pylist() if (r["task"], r["strategy"], r["lora"]) == ("pos", "full", False)]
    assert full["seeds"] == 3 and full["f1"] == pytest.approx(0.8625)


def test_budget_view_chooses_on_dev_f1_and_reports_test_f1_against_the_full_model(store):
    view = compute_view(store, "budget", reference=[])
    assert [r["budget"] for r in _rows(view, task="pos")] == [1, 2, 3]
    [one] = _rows(view, task="pos", budget=1)
    # last_1 has the best dev F1 of the 1-layer sets, though first_1 is better on test
    assert one["strategy"] == "last_1" and one["kept_layers"] == [3] and one["f1"] == pytest.approx(0.525)
    [two] = _rows(view, task="pos", budget=2)
    assert two["kept_layers"] == [0, 1] and two["f1"] == pytest.approx(0.6875)
    assert two["f1_vs_full"] == pytest.approx(0.6875 - 0.8625)
    assert two["train_speedup"] == pytest.approx(9.0 / 5.0) and two["latency_speedup"] == pytest.approx(5 / 3)
    assert two["f1_ci_high"] - two["f1"] == pytest.approx(HALF_CI)
    assert [r["budget"] for r in compute_view(store, "budget", budgets=[2]).table.to_pylist()] == [2, 2]


def test_best_worst_lora_and_balanced_views(store):
    best_worst = compute_view(store, "best_worst")
    assert [(r["strategy"], r["kept_layers"]) for r in _rows(best_worst, task="ner")] == [
        ("best_2", [0, 1]), ("best_3", [0, 1, 2]), ("drop_worst_1", [0, 1, 2]), ("drop_worst_2", [0, 1])]

    lora = compute_view(store, "lora")
    [pruned] = _rows(lora, task="pos", n_kept_layers=2)
    assert pruned["lora_f1"] == pytest.approx(0.6375) and pruned["full_f1"] == pytest.approx(0.6875)
    assert pruned["lora_vs_full"] == pytest.approx(-0.05) and pruned["lora_f1_std"] == pytest.approx(SYNTHETIC_NOISE)
    assert pruned["trainable_params"] == 10 and pruned["lora_lr"] == 5e-4

    [balanced] = _rows(compute_view(store, "balanced"), task="pos")
    assert balanced["kept_layers"] == [0, 1] and balanced["epochs"] == 6 and balanced["base_epochs"] == 3
    assert balanced["full_train_seconds"] == pytest.approx(9.0)
    assert balanced["pruned_train_seconds"] == pytest.approx(5.0)
    assert balanced["balanced_epochs"] == balanced_epochs(9.0, 5.0, 3) == 5
    assert balanced["gain"] == pytest.approx(0.02) and balanced["balanced_f1"] == pytest.approx(0.7075)


def test_filters_apply_before_the_view(store):
    view = compute_view(store, "baselines", where=["task=ner"])
    assert {r["task"] for r in view.table.to_pylist()} == {"ner"}
    assert sorted(r["lora"] for r in view.table.to_pylist()) == [False, True]


def test_reference_rows_show_beside_ours_only_where_they_match(store, tmp_path):
    reference = tmp_path / "ref.csv"
    reference.write_text("dataset,strategy,f1,layers,num_layers\nPOS,best_2,0.9,\"0,1\",4\n"
                         "POS,del_worst_1,0.95,\"0,1,2\",4\n")
    view = compute_view(store, "best_worst", reference=load_reference([str(reference)]))
    study = {(r["task"], r["strategy"]): (r["study_f1"], r["study_row"]) for r in view.table.to_pylist()}
    assert study[("pos", "best_2")] == (0.9, "POS best_2, study: 2/4 layers")
    assert study[("pos", "drop_worst_1")] == (0.95, "POS drop_worst_1, study: 3/4 layers")
    assert study[("ner", "best_2")] == (None, None)
    assert "reference: 2 of 8 rows matched a study row" in view.notes
    paired = load_reference([str(reference)], {"ner": "POS"})
    assert {r["task"] for r in paired} == {"ner"}
    # no match at all: no study columns
    assert "study_f1" not in compute_view(store, "best_worst", reference=paired, where=["task=pos"]).table.column_names


def test_reference_files_with_unknown_columns_or_bad_values_are_refused(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("dataset,strategy,f1,speed\nPOS,best_2,0.9,3\n")
    with pytest.raises(FrugalrayError, match=r"bad.csv:1: unknown column\(s\) \['speed'\]. Known columns: dataset"):
        load_reference([str(bad)])
    bad.write_text("dataset,strategy,f1,num_layers\nPOS,best_2,0.9,12\nPOS,best_3,high,12\n")
    with pytest.raises(FrugalrayError, match=r"bad.csv:3: column 'f1' has 'high', which is not a number"):
        load_reference([str(bad)])
    bad.write_text("dataset,strategy,f1\nPOS,best_2,0.9\n")  # without the study's depth nothing can be paired
    with pytest.raises(FrugalrayError, match=r"bad.csv:1: no 'num_layers' column. Known columns: .*num_layers "
                                             r"\(layer count of the model the numbers come from"):
        load_reference([str(bad)])
    with pytest.raises(FrugalrayError, match="does not exist"):
        load_reference([str(tmp_path / "missing.csv")])


def test_the_packaged_study_tables_load_and_agree_with_the_balanced_formula():
    records = load_reference(["study"])
    assert find(records, "ftb_pos", kept=2, num_layers=12, strategy="best")["f1"] == 0.949
    assert find(records, "ftb_ner", kept=9, num_layers=12, strategy="drop_worst")["kept_layers"] == (
        0, 1, 2, 3, 6, 7, 8, 9, 10)
    assert find(records, "wikiner", kept=12, num_layers=12, lora=True)["f1"] == 0.821
    assert {r["num_layers"] for r in records} == {12}
    balanced = [r for r in records if r.get("adjusted_epochs") is not None]
    assert len(balanced) == 7
    for record in balanced:
        assert balanced_epochs(record["full_train_seconds"], record["train_seconds"], 3) == record["adjusted_epochs"]


def test_views_from_the_command_line(store, capsys):
    assert main(["results", store.location, "--view", "budget", "--format", "csv", "--where", "task=pos"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0].startswith("task,model,budget,strategy,kept_layers,n_kept_layers,seeds,f1,f1_std,f1_ci_low")
    assert len(lines) == 4 and "base settings epochs=3" in out.err
    assert main(["results", store.location, "--view", "lora", "--no-reference"]) == 0
    assert "0.6375 ± 0.0100 [" in capsys.readouterr().out
    assert main(["results", store.location, "--view", "tables"]) == 2
    assert "Unknown view 'tables'. Did you mean 'baselines'? Available: balanced, baselines, best_worst" in capsys.readouterr().err


def test_empty_or_missing_results_are_clear_errors(tmp_path, capsys):
    assert main(["results", str(tmp_path / "missing"), "--view", "budget"]) == 2
    err = capsys.readouterr().err
    assert "No results in" in err and "missing' does not exist" not in err and "it does not exist" in err
    (tmp_path / "empty").mkdir()
    with pytest.raises(FrugalrayError, match="exists but has no trials"):
        compute_view(ResultsStore(tmp_path / "empty"), "budget")


def test_bad_sql_names_duckdbs_message_and_the_columns(store):
    with pytest.raises(FrugalrayError, match=r'(?s)SQL failed: .*"nope".* its columns: trial_id, config_hash'):
        store.query(sql="SELECT nope FROM trials")


def test_the_recovery_view_compares_every_recovery_and_counts_the_teachers_training():
    from frugalray.results.recovery_view import recommendation
    from frugalray.results.schema import table

    def row(trial, kept, f1, seconds, init=None, recovery=None, teacher=None, **extra):
        return {"trial_id": trial, "config_hash": trial, "status": "ok", "task": "ner", "model": "tiny",
                "num_layers": 4, "strategy": "mask" if len(kept) < 4 else "full", "kept_layers": kept,
                "n_kept_layers": len(kept), "lora": False, "learning_rate": 5e-5, "epochs": 3, "batch_size": 16,
                "max_length": 128, "seed": 0, "f1": f1, "dev_f1": f1, "train_seconds": seconds, "init": init,
                "recovery": recovery, "teacher_trial_id": teacher, "teacher_seconds": 10.0 if teacher else None,
                **extra}

    rows = table([row("full", [0, 1, 2, 3], 0.80, 10.0), row("study", [0, 1], 0.70, 5.0),
                  row("pft", [0, 1], 0.795, 5.0, "finetuned", "finetune", "full"),
                  row("kd", [0, 1], 0.75, 5.0, "pretrained", "distill", "full", distill_temperature=2.0,
                      distill_alpha=0.5, distill_beta=0.0)])
    view = compute_view(rows, "recovery")
    got = {r["recovery"]: r for r in view.table.to_pylist()}
    assert set(got) == {"pretrained+finetune", "finetuned+finetune", "pretrained+distill(T=2,a=0.5,b=0)"}
    assert got["finetuned+finetune"]["f1_vs_full"] == pytest.approx(0.795 / 0.80)
    # each of the two students carries half of the teacher's 10 s of training
    assert got["finetuned+finetune"]["compute_seconds"] == pytest.approx(5.0 + 10.0 / 2)
    assert got["pretrained+finetune"]["compute_seconds"] == pytest.approx(5.0)
    [said] = recommendation(view.table.to_pylist()).values()
    assert said.startswith("cheapest recovery keeping 99% of the full model's dev F1 over 1 seed: "
                           "finetuned+finetune on layers [0, 1]")
    strategies = compute_view(rows, "strategies").table.to_pylist()
    assert {r["kept_layers"][0] for r in strategies} == {0}  # the students stay out of the study's curves
    assert len(strategies) == 2


def test_the_recovery_recommendation_needs_the_full_models_seeds():
    from frugalray.results.recovery_view import recommendation
    from frugalray.results.schema import table

    def row(trial, kept, f1, seed, init=None, recovery=None, **extra):
        return {"trial_id": trial, "config_hash": trial, "status": "ok", "task": "ner", "model": "tiny",
                "num_layers": 4, "strategy": "mask" if len(kept) < 4 else "full", "kept_layers": kept,
                "n_kept_layers": len(kept), "lora": False, "learning_rate": 5e-5, "epochs": 3, "batch_size": 16,
                "max_length": 128, "seed": seed, "f1": f1, "dev_f1": f1, "train_seconds": 5.0, "init": init,
                "recovery": recovery, "teacher_trial_id": "full0" if init == "finetuned" else None,
                "teacher_seconds": 10.0 if init == "finetuned" else None, **extra}

    two_seeds = [row(f"full{s}", [0, 1, 2, 3], 0.80, s) for s in (0, 1)]
    two_seeds += [row(f"pft{s}", [0, 1], 0.80, s, "finetuned", "finetune") for s in (0, 1)]
    # one lucky seed on a single layer: fewer layers, but not measured like the full model
    lucky = [row("lucky0", [0], 0.81, 0, "finetuned", "partial", partial_layers=1)]
    view = compute_view(table(two_seeds + lucky), "recovery").table.to_pylist()
    assert {r["recovery"]: r["seeds"] for r in view} == {"finetuned+finetune": 2, "finetuned+partial(k=1)": 1}
    [said] = recommendation(view).values()
    assert said.startswith("cheapest recovery keeping 99% of the full model's dev F1 over 2 seeds: "
                           "finetuned+finetune on layers [0, 1]")
    # with the two-seed student gone, nothing qualifies and the recommendation says why
    view = compute_view(table(two_seeds[:2] + lucky), "recovery").table.to_pylist()
    [said] = recommendation(view).values()
    assert said == ("no recovery has been measured over the full model's 2 seeds yet (most: 1); "
                    "run the missing seeds to compare")


def test_students_compare_with_the_full_model_trained_to_convergence_when_there_is_one():
    from frugalray.results.schema import table

    def row(trial, kept, f1, epochs=3, patience=0, seed=0, **extra):
        return {"trial_id": trial, "config_hash": trial, "status": "ok", "task": "ner", "model": "tiny",
                "num_layers": 4, "strategy": "mask" if len(kept) < 4 else "full", "kept_layers": kept,
                "n_kept_layers": len(kept), "lora": False, "learning_rate": 5e-5, "epochs": epochs,
                "early_stopping_patience": patience, "batch_size": 16, "max_length": 128, "seed": seed, "f1": f1,
                "dev_f1": f1, "train_seconds": 10.0 * epochs, **extra}

    pruned = [row(f"p{k}", [0, 1], 0.70 + k / 100, seed=k) for k in range(3)]
    cut = [row("full3", [0, 1, 2, 3], 0.75)]  # the full model cut at the trials' 3 epochs
    best = [row("full10", [0, 1, 2, 3], 0.80, epochs=10, patience=2)]
    # a full model trained 3 epochs with early stopping is not a seed of the one trained without
    early3 = [row("early3", [0, 1, 2, 3], 0.60, patience=1)]
    grouped = aggregate(table(pruned + cut + early3))
    assert sorted((r["early_stopping_patience"], r["seeds"]) for r in grouped.to_pylist() if r["n_kept_layers"] == 4) \
        == [(0, 1), (1, 1)]
    student = [row("pft", [0, 1], 0.79, init="finetuned", recovery="finetune", teacher_trial_id="full10",
                   teacher_seconds=100.0, teacher_epochs=10, teacher_patience=2)]
    for rows, full in ((pruned + cut + student, 0.75), (pruned + cut + best + student, 0.80),
                       (pruned + best + student, 0.80)):
        view = compute_view(table(rows), "budget")
        assert any("epochs=3" in note for note in view.notes)  # the base settings are the trials', not the full model's
        [budget] = [r for r in view.table.to_pylist() if r["budget"] == 2]
        assert budget["f1_vs_full"] == pytest.approx(0.71 - full)
        [recovered] = [r for r in compute_view(table(rows), "recovery").table.to_pylist() if r["seeds"] == 1]
        assert recovered["recovery"] == "finetuned+finetune[teacher <=10 epochs, patience 2]"
        assert recovered["f1_vs_full"] == pytest.approx(0.79 / full)
        assert recovered["full_epochs"] == (10 if full == 0.80 else 3)
    baselines = compute_view(table(pruned + cut + best), "baselines").table.to_pylist()
    assert sorted((r["epochs"], r["early_stopping_patience"]) for r in baselines) == [(3, 0), (10, 2)]


def test_study_rows_pair_at_the_same_fraction_of_layers_never_by_n_alone(tmp_path):
    """A 6-layer model's rows meet the 12-layer study's at the same depth: our best 3 is the study's best 6, and
    our drop_worst 5 (1 layer left) has no study row, though the study has a drop_worst 5 (7 layers left)."""
    store = ResultsStore(tmp_path / "results")
    catalog = synthetic_catalog(tasks=("demo_pos",), num_layers=6, model="minilm")
    one_layer = next(r for r in catalog if r["strategy"] == "drop_worst") | {
        "strategy_n": 5, "kept_layers": [0], "n_kept_layers": 1}
    store.write_table(synthetic_table(catalog + [one_layer], seeds=2), "trials", "synthetic.parquet")
    reference = load_reference(["study"], {"demo_pos": "FTB_POS"})
    rows = {r["strategy"]: r for r in compute_view(store, "best_worst", reference=reference).table.to_pylist()}
    assert (rows["best_3"]["study_f1"], rows["best_3"]["study_row"]) == (0.976, "FTB_POS best_6, study: 6/12 layers")
    assert rows["drop_worst_1"]["study_row"] == "FTB_POS drop_worst_2, study: 10/12 layers"
    assert rows["drop_worst_5"]["study_f1"] is None and rows["drop_worst_5"]["study_row"] is None
    assert rows["best_5"]["study_f1"] is None  # 5 of 6 layers: the study has no best 10
    for name in ("budget", "baselines", "lora", "balanced", "strategies"):  # every study number names its row
        table = compute_view(store, name, reference=reference).table
        for row in table.to_pylist():
            ours = len(row["kept_layers"]) if "kept_layers" in row else 6  # baselines: the full model
            for column in [c for c in table.column_names if c.startswith("study_") and not c.endswith("_row")]:
                named = "study_row" if "study_row" in row else column.removesuffix("_f1") + "_row"
                assert (row[column] is None) == (row[named] is None), (name, column, row)
                if row[named]:  # "..., study: 6/12 layers" at our fraction
                    kept, total = map(int, row[named].rsplit(": ", 1)[1].removesuffix(" layers").split("/"))
                    assert kept * 6 == total * ours, (name, row)
