"""Mutation testing of the modules that decide results: how many mutants of each the fast tests kill.

    pip install -e ".[test]" mutmut pytest-timeout
    python benchmarks/mutation.py                       # every module below (long: not part of CI)
    python benchmarks/mutation.py results/health.py     # some of them
    python benchmarks/mutation.py --report              # the counts so far, mutating nothing
    python benchmarks/mutation.py deploy/variants.py --sample 120   # a random 120 of its mutants, with an interval

mutmut (3.x) changes one thing at a time in a copy of a module (an operator, a constant, a comparison, a
returned value...) and runs the tests that reach the changed function; a mutant that no test fails on
*survived*. Each module is mutated in a scratch copy of this checkout (``--work``, kept between runs: mutmut
resumes there) with the module's fast tests only (``-m "not slow"``: no Ray, no real model). The script prints
mutants, killed and survivors per module and in all, and the survivors' names with ``--survivors``. Each
module's last counts and survivors are kept in ``benchmarks/tables/mutation/counts.json`` (shipped: ``--report``
prints from it where the scratch copy is gone); ``benchmarks/tables/mutation/README.md`` explains the survivors.

Not part of CI: it takes far longer than the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "benchmarks" / "tables" / "mutation" / "counts.json"

# module (under frugalray/) -> its fast tests
MODULES = {
    "results/store.py": ["tests/results"],
    "results/health.py": ["tests/results/test_health.py", "tests/test_cli.py"],
    "results/aggregate.py": ["tests/results"],
    "study/search.py": ["tests/study"],
    "study/masks.py": ["tests/study/test_masks.py", "tests/study/test_strategies.py"],
    "study/plan.py": ["tests/study/test_plan.py", "tests/test_sweep_files.py"],
    "cluster/driver.py": ["tests/cluster/test_driver.py", "tests/cluster/test_driver_worker.py",
                          "tests/cluster/test_placement.py"],
    "deploy/variants.py": ["tests/deploy/test_export.py"],
}
# what a module needs of its own: the export tests run torch's quantized kernels and ONNX Runtime, and the plan's
# tests a model's forward pass (a layer proxy), which crash or hang in a process forked after torch ran threads
# there, so each mutant's run starts from a fork server that has run no test; the plan's fast tests take seconds,
# so a mutant that makes one of its loops endless need not wait a minute
OWN = {
    # its ONNX and int8-choice tests are marked slow, and only they reach some of its functions
    "deploy/variants.py": {"process_isolation": "forkserver", "marker": "slow or not slow"},
    "study/plan.py": {"process_isolation": "forkserver", "timeout": 20},
}
# mutmut's statuses, by what they mean here: a mutant no test reaches ("no tests") counts as a survivor
KILLED = {"killed", "timeout", "caught by type check"}
SURVIVED = {"survived", "no tests"}


def _workdir(base: Path, module: str) -> Path:
    return base / module.replace("/", "_").removesuffix(".py")


def _prepare(work: Path, module: str) -> None:
    """A copy of the tracked files (once), its pyproject.toml telling mutmut what to mutate and which tests run."""
    if not (work / "pyproject.toml").exists():
        work.mkdir(parents=True, exist_ok=True)
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        for name in filter(None, files.decode().split("\0")):
            target = work / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / name).is_file():
                shutil.copy2(ROOT / name, target)
    pyproject = (ROOT / "pyproject.toml").read_text()
    tests = MODULES[module]
    own = dict(OWN.get(module, {}))
    timeout = str(own.pop("timeout", 60))
    marker = own.pop("marker", "not slow")
    settings = {
        "source_paths": ["frugalray"],
        "only_mutate": [f"frugalray/{module}"],
        # --timeout: a mutant that makes a loop endless fails its test within a minute (mutmut's own limit scales
        # with the whole selection's duration: minutes per such mutant)
        "pytest_add_cli_args": ["-q", "-x", "-m", marker, "-p", "no:randomly", "-p", "no:cacheprovider",
                                "--timeout", timeout],
        "pytest_add_cli_args_test_selection": tests,
        "also_copy": ["frugalray", "benchmarks", "sweeps", "cluster.yaml", "README.md"],
    } | own
    lines = ["", "[tool.mutmut]"] + [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    (work / "pyproject.toml").write_text(pyproject.split("\n[tool.mutmut]")[0].rstrip() + "\n" + "\n".join(lines) + "\n")


def _codes(work: Path, module: str) -> dict | None:
    meta = work / "mutants" / "frugalray" / (module + ".meta")
    return json.loads(meta.read_text()).get("exit_code_by_key", {}) if meta.exists() else None


def _counts(work: Path, module: str, sample: list[str] | None = None) -> dict:
    """Mutants, killed, survivors (names) and those not run, from mutmut's record of the module (of ``sample``
    alone when given)."""
    codes = _codes(work, module)
    if codes is None:
        return {}
    from mutmut.stats import status_by_exit_code

    if sample is not None:
        codes = {name: codes.get(name) for name in sample}
    statuses = {name: status_by_exit_code[code] for name, code in codes.items()}
    survivors = sorted(name for name, status in statuses.items() if status in SURVIVED)
    killed = sum(status in KILLED for status in statuses.values())
    return {"mutants": len(statuses), "killed": killed, "survived": len(survivors),
            "not_run": len(statuses) - killed - len(survivors), "unchecked": sum(c is None for c in codes.values()),
            "survivors": survivors}


def _testing_a_mutant(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE and "mutmut" in " ".join(process.cmdline())
    except psutil.Error:  # ended meanwhile
        return False


def _run_mutmut(work: Path, module: str, env: dict, children: int, names: list[str] | None = None) -> None:
    """``mutmut run`` in ``work`` (of ``names`` alone when given), ended once every mutant has its verdict: a
    test that started a Ray in mutmut's own process can leave it hanging at exit (Ray's shutdown after fork)."""
    import time

    import psutil

    log = open(work / "mutmut.log", "a")
    run = subprocess.Popen([sys.executable, "-m", "mutmut", "run", "--max-children", str(children)] + (names or []),
                           cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    idle_since = None
    while run.poll() is None:
        time.sleep(10)
        try:
            counts = _counts(work, module, names)
        except ValueError:  # mutmut is rewriting its record
            continue
        busy = any(_testing_a_mutant(p) for p in psutil.Process(run.pid).children(recursive=True))
        finished = counts and counts["unchecked"] == 0
        idle_since = (idle_since or time.monotonic()) if finished and not busy else None
        if idle_since and time.monotonic() - idle_since > 60:
            run.terminate()
            try:
                run.wait(timeout=30)
            except subprocess.TimeoutExpired:
                run.kill()
    log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=list(MODULES), help=f"of: {', '.join(MODULES)}")
    parser.add_argument("--work", default="/tmp/frugalray-mutation", help="scratch copies (mutmut resumes in them)")
    parser.add_argument("--report", action="store_true", help="print the last run's counts, mutating nothing")
    parser.add_argument("--survivors", action="store_true", help="also list the surviving mutants by name")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--sample", type=int, help="test this many of each module's mutants, drawn at random (the "
                                                      "share of survivors then comes with its 95%% interval)")
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--save", default=str(SHIPPED), help="the counts per module, as JSON (a module run replaces its "
                                                             "entry; --report reads it for modules without a scratch copy)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}")
    base = Path(args.work)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CI", None)  # a test that would skip for a missing tool must not count as a kill
    saved = Path(args.save)
    kept = json.loads(saved.read_text()) if saved.exists() else {}
    results = {}
    for module in args.modules:
        work = _workdir(base, module)
        names = kept.get(module, {}).get("sample") if args.report else None
        if not args.report:
            _prepare(work, module)
            print(f"== mutating frugalray/{module} with {' '.join(MODULES[module])}", flush=True)
            names = _sample(work, module, env, args) if args.sample else None
            codes = _codes(work, module) or {}
            untested = [n for n in names if codes.get(n) is None] if names else None  # mutmut reruns a name given
            if untested is None or untested:
                _run_mutmut(work, module, env, args.max_children, untested)
        results[module] = _counts(work, module, names) or kept.get(module, {})
        if results[module] and names:
            results[module] |= {"sample": names, "sampled_from": len(_codes(work, module) or {}) or
                                kept[module]["sampled_from"]}
        if results[module] and not args.report:  # read again: another run may have saved a module meanwhile
            kept = json.loads(saved.read_text()) if saved.exists() else {}
            kept[module] = results[module] | {"tests": MODULES[module]}
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
    print("\n| module | mutants | killed | survived | not run | survivors of those run |\n|---|---|---|---|---|---|")
    total = {"mutants": 0, "killed": 0, "survived": 0, "not_run": 0}
    for module, counts in results.items():
        if not counts:
            print(f"| {module} | - | - | - | - | not run yet |")
            continue
        for key in total:
            total[key] += counts[key]
        run = counts["killed"] + counts["survived"]
        share = f"{100 * counts['survived'] / run if run else 0:.1f}%"
        if counts.get("sample") and run:
            from search_report import _wilson  # the search report's interval of a share (this folder's script)

            low, high = _wilson(counts["survived"], run)
            share += f" (a random {run} of {counts['sampled_from']}: 95% CI {100 * low:.1f}-{100 * high:.1f}%)"
        print(f"| {module} | {counts['mutants']} | {counts['killed']} | {counts['survived']} | {counts['not_run']} | "
              f"{share} |")
    run = total["killed"] + total["survived"]
    print(f"| all | {total['mutants']} | {total['killed']} | {total['survived']} | {total['not_run']} | "
          f"{100 * total['survived'] / run if run else 0:.1f}% |")
    if args.survivors:
        for module, counts in results.items():
            for name in counts.get("survivors", []):
                print(f"survived: {name}")
    return 0


def _sample(work: Path, module: str, env: dict, args) -> list[str]:
    """``args.sample`` of the module's mutants, drawn with ``args.sample_seed`` (mutmut generates them first)."""
    import random

    if _codes(work, module) is None:  # a name no mutant has: mutmut generates every mutant and tests none
        _run_mutmut(work, module, env, args.max_children, ["frugalray.no-such-mutant"])
    names = sorted(_codes(work, module) or {})
    return sorted(random.Random(args.sample_seed).sample(names, min(args.sample, len(names))))


if __name__ == "__main__":
    sys.exit(main())
