import re

import pytest

from frugalray import FrugalrayError, ResultsStore
from frugalray.cli import main
from frugalray.results import report_figures as plots
from frugalray.results.grid_rows import latency_axis
from frugalray.results.report import write_report
from frugalray.results.report_figures import FAMILIES, family, pareto_front
from frugalray.results.aggregate import aggregate
from frugalray.results.rows import at_base
from frugalray.results.views import compute_view
from frugalray.testing import synthetic_catalog, synthetic_table


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = ResultsStore(tmp_path_factory.mktemp("results"))
    store.write_table(synthetic_table(synthetic_catalog(tasks=("pos", "ner")), seeds=3), "trials", "synthetic.parquet")
    return store


def test_report_writes_every_figure_of_every_task_and_references_it(store, tmp_path):
    reference = tmp_path / "ref.csv"
    reference.write_text("dataset,strategy,f1,layers,num_layers\nPOS,best_2,0.9,\"0,1\",4\n")
    assert main(["report", store.location, "--out", str(tmp_path / "report"), "--reference", str(reference)]) == 0
    html = (tmp_path / "report" / "index.html").read_text()
    expected = {f"{task}-tiny-{kind}.png" for task in ("pos", "ner")
                for kind in ("single", "first-last", "best-worst", "symmetric-alternate", "pareto", "lora")}
    expected -= {"pos-tiny-symmetric-alternate.png", "ner-tiny-symmetric-alternate.png"}  # none in the catalog
    written = {p.name for p in (tmp_path / "report" / "figures").iterdir()}
    assert written == expected
    for name in expected:
        png = (tmp_path / "report" / "figures" / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000, name  # a real plot, not an empty canvas
        assert f'src="figures/{name}"' in html
    assert "Not shown: symmetric and alternate (no such trials)" in html
    for task in ("pos", "ner"):
        for block in ("baselines", "single", "first-last", "best-worst", "pareto", "lora", "balanced"):
            assert f'<section class="block" id="{task}-tiny-{block}">' in html and f'href="#{task}-tiny-{block}"' in html
    assert "0.6875 ± 0.0100 [" in html  # best_2 with its seeds
    assert "<th>study_f1</th>" in html and "<td>0.9000</td>" in html and "<td>POS best_2, study: 2/4 layers</td>" in html
    assert not re.search(r"(src|href)=\"https?://", html)  # nothing fetched from outside


def test_embedded_report_is_one_file(store, tmp_path):
    path = write_report(store, tmp_path / "one", embed=True, where=["task=pos"])
    html = path.read_text()
    assert html.count("data:image/png;base64,") == 5 and not (tmp_path / "one" / "figures").exists()
    assert "<h2>ner (tiny)" not in html and "<h2>pos (tiny)" in html


def test_report_of_nothing_is_an_error(store, tmp_path):
    with pytest.raises(FrugalrayError, match="No results in"):
        write_report(ResultsStore(tmp_path / "none"), tmp_path / "out")
    with pytest.raises(FrugalrayError, match="No successful trials in .* match"):
        write_report(store, tmp_path / "out", where=["task=absent"])


def test_every_strategy_has_one_family_colour_and_fronts_are_non_dominated():
    from frugalray.strategies import STRATEGIES

    for name in STRATEGIES:
        assert family(name)[0] != "other", name
    assert len(set(FAMILIES.values())) == len(FAMILIES)
    assert family("best") == family("drop_worst") and family("first") == family("last")
    assert {STRATEGIES.get(name).family for name in STRATEGIES} <= set(FAMILIES)
    assert pareto_front([(3, 0.9), (1, 0.5), (2, 0.5), (2, 0.8), (4, 0.85)]) == [(1, 0.5), (2, 0.8), (3, 0.9)]


def test_a_sweep_writes_its_report_and_a_report_failure_never_fails_it(store, tmp_path, capsys):
    from frugalray.study.plan import SweepConfig
    from frugalray.results.summary import write_sweep_report

    sweep = SweepConfig(tasks=("demo_pos",), results=store.location, report=str(tmp_path / "report"),
                        reference_tasks={"pos": "FTB_POS"})
    write_sweep_report(sweep)
    html = (tmp_path / "report" / "index.html").read_text()
    # Our best 2 of 4 layers is beside the study's best 6 of 12 (0.976), not its best 2 (0.949).
    assert "<td>0.9760</td>" in html and "FTB_POS best_6, study: 6/12 layers" in html and "0.9490" not in html
    empty = SweepConfig(tasks=("demo_pos",), results=str(tmp_path / "none"), report=str(tmp_path / "r2"))
    write_sweep_report(empty)
    assert "the report was not written: FrugalrayError: No results in" in capsys.readouterr().err


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _figures(rows, lora):
    yield "single", plots.single_profile(rows)
    yield "curves", plots.strategy_curves(rows, ("best", "drop_worst"), "best / drop_worst N")
    yield "cost", plots.quality_vs_cost(rows)
    yield "lora", plots.lora_bars(lora)


@pytest.mark.parametrize("seeds", [1, 3])
def test_figures_keep_legends_off_the_data_and_draw_intervals_only_over_two_seeds_or_more(tmp_path, seeds):
    from matplotlib.container import ErrorbarContainer

    store = ResultsStore(tmp_path / "results")
    store.write_table(synthetic_table(synthetic_catalog(tasks=("pos",)), seeds=seeds), "trials", "s.parquet")
    aggregated = aggregate(store)
    reference = [{"task": "pos", "dataset": "POS", "strategy": "best", "n": 2, "kept_layers": None, "lora": False,
                  "num_layers": 4, "n_kept": 2, "f1": 0.9}]
    rows = at_base(aggregated.to_pylist(), reference)
    lora = compute_view(store, "lora", aggregated=aggregated).table.to_pylist()
    for name, figure in _figures(rows, lora):
        figure.canvas.draw()
        legends = figure.legends + [axis.get_legend() for axis in figure.axes if axis.get_legend()]
        assert len(legends) == 1, name
        legend = legends[0].get_window_extent()
        for axis in figure.axes:  # the legend is below every axes, never over the plotted area
            assert not _overlaps(legend, axis.get_window_extent()), name
        labels = [text.get_text() for text in legends[0].get_texts()] + [axis.get_title() for axis in figure.axes]
        assert any(f"n={seeds}" in label for label in labels), (name, labels)  # the seeds behind the points
        bars = [c for axis in figure.axes for c in axis.containers if isinstance(c, ErrorbarContainer)]
        assert bool(bars) is (seeds >= 2 and name != "cost"), name
    assert any("reference study, same fraction of layers" in t.get_text()
               for t in plots.strategy_curves(rows, ("best",), "best").legends[0].get_texts())


def test_latency_axis_says_what_the_rows_measured():
    row = {"latency_ms": 3.0, "latency_batch_size": 16, "latency_seq_len": 64, "latency_isolated": False}
    assert latency_axis([row], [])[1] == "latency in a sweep (ms per batch of 16 x 64 tokens)"
    assert latency_axis([row, row | {"latency_seq_len": 128}], [])[1] == (
        "latency in a sweep (ms per batch of 16 x 128 or 16 x 64 tokens)")
    assert latency_axis([row | {"latency_batch_size": None}], [])[1] == "latency in a sweep (ms per batch of ? tokens)"
    rows = [{"strategy": "full", "n_kept_layers": 4, "num_layers": 4, "f1": 0.9, "seeds": 1, **row},
            {"strategy": "first", "n_kept_layers": 2, "num_layers": 4, "f1": 0.7, "seeds": 1, **row}]
    figure = plots.quality_vs_cost(rows)
    assert [axis.get_xlabel() for axis in figure.axes] == ["kept layers (of 4)",
                                                            "latency in a sweep (ms per batch of 16 x 64 tokens)"]


def test_the_pareto_plots_draw_each_recovery_family_and_the_front_counts_its_students(tmp_path):
    from frugalray.results.recovery_view import students

    catalog = synthetic_catalog(tasks=("ner",))
    first2 = next(r for r in catalog if r["strategy"] == "first" and r["strategy_n"] == 2)
    # students of the first two layers: pruned after fine-tuning (better than the study's first_2), distilled
    catalog += [first2 | {"strategy": "mask", "strategy_n": None, "init": "finetuned", "recovery": "finetune",
                          "f1": 0.86, "dev_f1": 0.86},
                first2 | {"strategy": "mask", "strategy_n": None, "init": "pretrained", "recovery": "distill",
                          "distill_temperature": 2.0, "distill_alpha": 0.5, "distill_beta": 0.0, "f1": 0.6,
                          "dev_f1": 0.6},
                first2 | {"strategy": "mask", "strategy_n": None, "init": "finetuned", "recovery": "finetune",
                          "lora": True, "learning_rate": 5e-4, "f1": 0.9, "dev_f1": 0.9}]  # LoRA: its own figure
    columns = dict.fromkeys(k for r in catalog for k in r)
    catalog = [columns | r for r in catalog]
    store = ResultsStore(tmp_path / "results")
    store.write_table(synthetic_table(catalog, seeds=2), "trials", "s.parquet")
    aggregated = aggregate(store).to_pylist()
    others = students(aggregated)
    assert sorted((r["init"], r["recovery"]) for r in others) == [("finetuned", "finetune"), ("pretrained", "distill")]
    rows = at_base(aggregated, [])
    assert all(r.get("init") in (None, "pretrained") and r.get("recovery") in (None, "finetune") for r in rows)

    figure = plots.quality_vs_cost(rows, [], others)
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert "fine-tuned start + finetune" in labels and "pretrained start + distill" in labels
    assert "first / last" in labels and "Pareto front" in labels
    for axis in figure.axes:
        [front] = [line for line in axis.get_lines() if line.get_label() == "Pareto front"]
        assert 0.86 == pytest.approx(max(y for x, y in front.get_xydata() if x == (2 if axis is figure.axes[0] else 3)))
    # the study's curves alone: no student on the plot, a lower front at 2 layers
    alone = plots.quality_vs_cost(rows, [])
    assert not any("start +" in t.get_text() for t in alone.legends[0].get_texts())
    [front] = [line for line in alone.axes[0].get_lines() if line.get_label() == "Pareto front"]
    assert max(y for x, y in front.get_xydata() if x == 2) < 0.86

    html = write_report(store, tmp_path / "report").read_text()
    assert "triangles: pruned models that recovered otherwise than the study" in html
    assert "compare it with a full model trained as many epochs in all" in html  # students of the fine-tuned model
    assert set(plots.RECOVERY_FAMILIES.values()).isdisjoint(FAMILIES.values())
    assert len(set(plots.RECOVERY_FAMILIES.values())) == len(plots.RECOVERY_FAMILIES)
