"""The tables of ``benchmarks/search_efficiency.py report``: rank agreement of early dev scores with final test
F1, the noise floor between seeds, and the compute each replayed search method needed.

A method's compute to come within the target of the exhaustive answer: replay by replay, the training steps of
every row the search had finished (trained to the end or stopped) when, for the first time, the mask with the
best dev F1 among those trained to the end has a test F1 within the target of the exhaustive answer's (the
mask with the best dev F1 of the whole space). As a fraction of training every mask of the space to the end.
"Needed in >= 90% of repeats" is the 90th percentile of that over repeats (nearest rank), with a bootstrap
interval; a search that never got there counts as infinite.
"""

from __future__ import annotations

import math
import random
import statistics
from types import SimpleNamespace

from frugalray import ResultsStore
from frugalray.cluster.simulated import depth_timing, dev_share
from frugalray.study.masks import rung_score

# the goal: within the target at <= 12% of exhaustive compute in >= 90% of repeats (the interval's upper end
# <= 15%), and >= 2.5x less compute than random search (the interval's lower end >= 1.5x)
GOAL_FRACTION, GOAL_FRACTION_HIGH, GOAL_RATE, GOAL_VS_RANDOM, GOAL_VS_RANDOM_LOW = 0.12, 0.15, 0.9, 2.5, 1.5


def _table(args):
    rows = [r for r in ResultsStore(args.results).table().to_pylist() if r["status"] == "ok" and r["checkpoint_steps"]]
    by_seed: dict[tuple, dict[int, dict]] = {}
    for row in rows:
        by_seed.setdefault(tuple(row["kept_layers"]), {})[row["seed"]] = row
    space = {kept: seeds[args.seed] for kept, seeds in by_seed.items() if len(kept) <= args.max_layers and args.seed in seeds}
    return space, by_seed


def _noise_floor(by_seed, max_layers: int) -> tuple[float, int]:
    """Pooled standard deviation of test F1 between seeds, over the masks trained on several seeds."""
    spread = [statistics.variance([r["f1"] for r in seeds.values()]) for kept, seeds in by_seed.items()
              if len(seeds) >= 3 and len(kept) <= max_layers]
    return (math.sqrt(statistics.mean(spread)) if spread else float("nan")), len(spread)


def _ranks(space: dict) -> None:
    import warnings

    from scipy.stats import ConstantInputWarning, kendalltau, spearmanr

    warnings.simplefilter("ignore", ConstantInputWarning)  # all-tied early steps: nan, as printed

    masks = sorted(space)
    final = [space[m]["f1"] for m in masks]
    steps = sorted(set.intersection(*(set(space[m]["checkpoint_steps"]) for m in masks)))
    planned = space[masks[0]]["planned_steps"]
    losses = all(space[m].get("checkpoint_dev_loss") for m in masks)  # tables recorded since the column exists
    print(f"\nRank agreement with the final test F1, over the {len(masks)} masks of the space (dev F1 at each step"
          + (", minus dev loss, and dev F1 with ties broken by dev loss: the rung scores of --rung-score)" if losses else ")"))
    print("| step | share of training | Spearman | Kendall | masks at dev F1 0 |"
          + (" Spearman, -dev loss | Kendall, -dev loss | Spearman, F1 then loss |" if losses else "")
          + "\n|---|---|---|---|---|" + ("---|---|---|" if losses else ""))
    for step in steps + [planned]:
        score = [_at(space[m], step, planned, "checkpoint_dev_f1", "dev_f1") for m in masks]
        line = (f"| {step} | {step / planned:.0%} | {spearmanr(score, final).statistic:+.3f} | "
                f"{kendalltau(score, final).statistic:+.3f} | {sum(value == 0 for value in score)} |")
        if losses:
            loss = [_at(space[m], step, planned, "checkpoint_dev_loss", "dev_eval_loss") for m in masks]
            tied = [rung_score("dev_f1_then_loss", f1, value) for f1, value in zip(score, loss)]
            minus = [-value for value in loss]
            line += (f" {spearmanr(minus, final).statistic:+.3f} | {kendalltau(minus, final).statistic:+.3f} | "
                     f"{spearmanr(tied, final).statistic:+.3f} |")
        print(line)


def _at(row: dict, step: int, planned: int, curve: str, final: str) -> float:
    """A mask's ``curve`` value at ``step`` (its ``final`` column at the end of training)."""
    return row[final] if step == planned else dict(zip(row["checkpoint_steps"], row[curve]))[step]


def _to_target(runs: list[dict], space: dict, target: float) -> float:
    """Compute spent (training steps and dev evaluations, ``timeline``) when the search's answer first came
    within the target, the trials still running at that moment counted as far as they had got (inf: never)."""
    best = None
    for index in sorted(range(len(runs)), key=lambda i: (runs[i]["end"], i)):
        run = runs[index]
        if run["status"] == "ok" and (best is None or run["dev_f1"] > best["dev_f1"]):
            best = run
        if best is not None and space[tuple(best["kept_layers"])]["f1"] >= target:
            return sum(_cost_at(other, run["end"]) for other in runs)
    return math.inf


def _cost_at(run: dict, moment: float) -> float:
    """A trial run's compute at ``moment`` on the replay's clock, linear between the points of its timeline."""
    points = run["timeline"]
    if moment <= points[0][0]:
        return 0.0
    for (t0, c0), (t1, c1) in zip(points, points[1:]):
        if moment < t1:
            return c0 + (c1 - c0) * (moment - t0) / (t1 - t0)
    return points[-1][1]


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _interval(draw, resamples: int) -> tuple[float, float]:
    values = sorted(draw() for _ in range(resamples))
    return values[int(0.025 * resamples)], values[int(0.975 * resamples) - 1]


def _wilson(hits: int, n: int) -> tuple[float, float]:
    z, p = 1.96, hits / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def report(args) -> None:
    space, by_seed = _table(args)
    if not space:
        raise SystemExit(f"{args.results} holds no recorded masks: run `record` first")
    planned = next(iter(space.values()))["planned_steps"]
    timing = depth_timing([r for seeds in by_seed.values() for r in seeds.values()], dev_share(args.task))  # as the replays' clock
    evals = sum(timing(row, SimpleNamespace(kept_layers=kept)).eval_steps for kept, row in space.items())
    exhaustive = planned * len(space) + evals  # every mask trained to the end and its dev scored once
    answer = max(space.values(), key=lambda r: r["dev_f1"])
    floor, masks = _noise_floor(by_seed, args.max_layers)
    margin = max(0.005, floor) if not math.isnan(floor) else 0.005
    target = answer["f1"] - margin
    print(f"space: {len(space)} masks of at most {args.max_layers} layers, {planned} steps each, and a dev evaluation "
          f"(~{evals / len(space):.1f} steps of the same mask): {exhaustive:.0f} step-equivalents in all")
    print(f"exhaustive answer (best dev F1): layers {answer['kept_layers']}, dev F1 {answer['dev_f1']:.4f}, test F1 "
          f"{answer['f1']:.4f}; best test F1 of the space {max(r['f1'] for r in space.values()):.4f}")
    print(f"noise floor: test F1 std between seeds {floor:.4f} (pooled over {masks} masks on 3 seeds); target: within "
          f"{margin:.4f} of the answer's test F1 ({'the floor, wider than 0.005' if margin > 0.005 else '0.5 point'})")
    print(f"masks within the target: {sum(r['f1'] >= target for r in space.values())} of {len(space)}")
    _ranks(space)
    from search_efficiency import read_log

    runs = read_log(args.log)
    costs: dict[str, list[float]] = {}
    totals: dict[str, list[float]] = {}
    saved: dict[str, list[float]] = {}
    for run in runs:
        costs.setdefault(run["method"], []).append(_to_target(run["events"], space, target) / exhaustive)
        totals.setdefault(run["method"], []).append(sum(e["timeline"][-1][1] for e in run["events"]) / exhaustive)
        saved.setdefault(run["method"], []).append(sum(e["resumed_from"] for e in run["events"]) / exhaustive)
    settings = sorted({(r.get("slots"), r.get("resume")) for r in runs})
    described = ", ".join(f"{slots} trials at once, promoted masks {'resume' if resume else 'retrain'}"
                          for slots, resume in settings)
    print(f"\nReplays on a virtual clock ({described}); compute = training steps + dev evaluations (at checkpoints "
          f"and at the end), the trials still running counted as far as they had got")
    if not costs:
        return
    rng = random.Random(0)  # seeded again per method below: a method's intervals do not depend on the others
    resample = lambda values: [rng.choice(values) for _ in values]  # noqa: E731
    need = {m: _quantile(v, GOAL_RATE) for m, v in costs.items()}
    baseline = costs.get("random, full fidelity")
    print(f"\nCompute to come within {margin:.4f} of the answer's test F1, as a share of training all {len(space)} "
          f"masks ({args.bootstrap} bootstrap resamples)")
    print("| method | repeats | needed in >= 90% of repeats [95% CI] | median | hit by 12% [95% CI] | "
          "random's need / this one's [95% CI] | whole search | not retrained (resumed) |")
    print("|---|---|---|---|---|---|---|---|")
    intervals, ratios = {}, {}
    for method, values in costs.items():
        rng.seed(method)
        low, high = _interval(lambda: _quantile(resample(values), GOAL_RATE), args.bootstrap) if len(values) > 1 else (need[method],) * 2
        intervals[method] = (low, high)
        hits = sum(v <= GOAL_FRACTION for v in values)
        rate_low, rate_high = _wilson(hits, len(values))
        versus = ""
        if baseline and method != "random, full fidelity":
            ratio = lambda: _quantile(resample(baseline), GOAL_RATE) / _quantile(resample(values), GOAL_RATE)  # noqa: E731
            r_low, r_high = _interval(ratio, args.bootstrap) if len(values) > 1 else (float("nan"),) * 2
            ratios[method] = (need["random, full fidelity"] / need[method], r_low)
            versus = f"{ratios[method][0]:.2f}x [{r_low:.2f}, {r_high:.2f}]"
        print(f"| {method} | {len(values)} | {need[method]:.1%} [{low:.1%}, {high:.1%}] | "
              f"{statistics.median(values):.1%} | {hits / len(values):.0%} [{rate_low:.0%}, {rate_high:.0%}] | {versus} | "
              f"{statistics.mean(totals[method]):.0%} | {statistics.mean(saved[method]):.1%} |")
    for method in (m for m in costs if m.startswith("halving")):
        met = need[method] <= GOAL_FRACTION and intervals[method][1] <= GOAL_FRACTION_HIGH
        ratio, ratio_low = ratios.get(method, (math.nan, math.nan))
        vs = ratio >= GOAL_VS_RANDOM and ratio_low >= GOAL_VS_RANDOM_LOW
        print(f"goal, {method}: within the target at <= {GOAL_FRACTION:.0%} of exhaustive in >= 90% of repeats, the "
              f"interval's upper end <= {GOAL_FRACTION_HIGH:.0%}: {'met' if met else 'NOT met'} ({need[method]:.1%}, "
              f"upper end {intervals[method][1]:.1%}); >= {GOAL_VS_RANDOM}x less than random, the interval's lower "
              f"end >= {GOAL_VS_RANDOM_LOW}x: {'met' if vs else 'NOT met'} ({ratio:.2f}x, lower end {ratio_low:.2f}x)")
