import re

import pytest

from frugalray import FrugalrayError, ResultsStore
from frugalray.cli import main
from frugalray.results.report import FAMILIES, family, pareto_front, write_report
from frugalray.testing import synthetic_catalog, synthetic_table


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = ResultsStore(tmp_path_factory.mktemp("results"))
    store.write_table(synthetic_table(synthetic_catalog(tasks=("pos", "ner")), seeds=3), "trials", "synthetic.parquet")
    return store


def test_report_writes_every_figure_of_every_task_and_references_it(store, tmp_path):
    reference = tmp_path / "ref.csv"
    reference.write_text("dataset,strategy,f1,layers\nPOS,best_2,0.9,\"0,1\"\n")
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
    for view in ("baselines", "budget", "best_worst", "lora", "balanced"):
        assert f"<h3>{view}:" in html
    assert "0.6875 ± 0.0100 [" in html  # best_2 with its seeds
    assert "<th>study_f1</th>" in html and "<td>0.9000</td>" in html
    assert not re.search(r"(src|href)=\"https?://", html)  # nothing fetched from outside


def test_embedded_report_is_one_file(store, tmp_path):
    path = write_report(store, tmp_path / "one", embed=True, where=["task=pos"])
    html = path.read_text()
    assert html.count("data:image/png;base64,") == 5 and not (tmp_path / "one" / "figures").exists()
    assert "<h2>ner" not in html and "<h2>pos" in html


def test_report_of_nothing_is_an_error(store, tmp_path):
    with pytest.raises(FrugalrayError, match="No results in"):
        write_report(ResultsStore(tmp_path / "none"), tmp_path / "out")
    with pytest.raises(FrugalrayError, match="No successful trials in .* match"):
        write_report(store, tmp_path / "out", where=["task=absent"])


def test_every_strategy_has_one_family_colour_and_fronts_are_non_dominated():
    from frugalray.study.strategies import STRATEGIES

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
    assert "<td>0.9490</td>" in html  # the study's FTB_POS best_2, beside our pos best_2
    empty = SweepConfig(tasks=("demo_pos",), results=str(tmp_path / "none"), report=str(tmp_path / "r2"))
    write_sweep_report(empty)
    assert "the report was not written: FrugalrayError: No results in" in capsys.readouterr().err
