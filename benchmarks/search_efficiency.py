"""Search efficiency on MiniLM (6 layers: 63 non-empty masks, so the exhaustive answer is known).

    python benchmarks/search_efficiency.py [--epochs 1] [--repeats 10] [--results results/masks]

1. Exhaustive: every mask is trained (a real frugalray trial on the shipped POS data, short training);
   resumable, the rows land in --results.
2. Each search is then replayed against those results (training is deterministic per mask and seed, so a
   search that trained mask m would get exactly the stored score): random search, and frugalray's search
   (Optuna TPE over the same constrained space ``frugalray.study.search.mask_space``) without help, with the
   proxy prior, and with a warm start from the study's hand-made strategies (their masks are already
   trained: they cost nothing new).
For each it counts the new trainings needed to come within 0.5 F1 point (dev F1) of the best exhaustive
mask, averaged over --repeats seeds. Target: the search needs at most a third of the exhaustive trials
and fewer than random.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import optuna

from frugalray import ResultsStore, TrainingSettings, TrialConfig, execute_trial
from frugalray.model.importance import proxy_prior, proxy_scores
from frugalray.study.search import mask_params, mask_space
from frugalray.study.strategies import STRATEGIES, alternate_family, kept_layers

LAYERS = 6
TOLERANCE = 0.005  # 0.5 F1 point


def exhaustive(store: ResultsStore, settings: TrainingSettings) -> dict[tuple[int, ...], float]:
    done = {tuple(r["kept_layers"]): r["dev_f1"] for r in store.table().to_pylist() if r["status"] == "ok"} \
        if store.files() else {}
    masks = [m for n in range(1, LAYERS + 1) for m in itertools.combinations(range(LAYERS), n)]
    for i, mask in enumerate(masks):
        if mask not in done:
            row = execute_trial(TrialConfig(task="demo_pos", model="minilm", strategy="mask", layers=mask,
                                            training=settings, sweep="exhaustive"), store)
            assert row["status"] == "ok", row["error"]
            done[mask] = row["dev_f1"]
            print(f"  exhaustive {i + 1}/{len(masks)}: {mask} dev F1 {row['dev_f1']:.4f}", flush=True)
    return {m: done[m] for m in masks}


def trials_to_target(order, scores: dict, target: float) -> int:
    """New trainings until a mask within the tolerance is found (duplicates cost nothing)."""
    seen = set()
    for mask in order:
        if mask in seen:
            continue
        seen.add(mask)
        if scores[mask] >= target:
            return len(seen)
    return len(seen) + 1  # not reached


def random_order(seed: int, scores: dict):
    masks = list(scores)
    random.Random(seed).shuffle(masks)
    return masks


def tpe_order(seed: int, scores: dict, first: list[tuple[int, ...]], free: set, target: float,
              max_asks: int = 3000) -> list[tuple[int, ...]]:
    """New masks in the order TPE trains them, up to the first within the target.

    ``first`` are enqueued; ``free`` already have results (told, not trained). Duplicates are told again
    without training, as ``frugalray.study.search.MaskSearch`` does.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    for mask in first:
        study.enqueue_trial(mask_params(mask, LAYERS))
    space = mask_space(LAYERS, 1, LAYERS)
    order, evaluated = [], set()
    for _ in range(max_asks):
        trial = study.ask()
        mask = tuple(space(trial)["layers"])
        study.tell(trial, scores[mask])
        if mask in evaluated:
            continue
        evaluated.add(mask)
        if mask not in free:
            order.append(mask)
        if scores[mask] >= target or len(evaluated) == len(scores):
            break
    return order


def handmade(scores: dict) -> list[tuple[int, ...]]:
    """The study's hand-made strategies on 6 layers (stage 1 and 2 of the pipeline)."""
    singles = [scores[(k,)] for k in range(LAYERS)]
    masks = [tuple(range(LAYERS))] + [(k,) for k in range(LAYERS)]
    for name, n in [("first", n) for n in range(1, LAYERS)] + [("last", n) for n in range(1, LAYERS)] + \
            alternate_family(LAYERS) + [("drop_middle", 2), ("drop_middle", 4), ("drop_ends", 2), ("drop_ends", 4)] + \
            [("best", n) for n in (2, 3, 4, 5)] + [("drop_worst", n) for n in (1, 2, 3, 4, 5)]:
        needs = STRATEGIES.get(name).needs_scores
        masks.append(kept_layers(name, LAYERS, n=n, scores=singles if needs else None))
    return list(dict.fromkeys(masks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--results", default="results/masks")
    args = parser.parse_args()
    settings = TrainingSettings(epochs=args.epochs, learning_rate=2e-4, batch_size=8, max_length=64)
    print(f"exhaustive: 63 masks, MiniLM on demo_pos, {args.epochs} epoch(s) each", flush=True)
    scores = exhaustive(ResultsStore(args.results), settings)
    best_mask = max(scores, key=scores.get)
    target = scores[best_mask] - TOLERANCE
    near = sorted(m for m, s in scores.items() if s >= target)
    print(f"best mask {best_mask}: dev F1 {scores[best_mask]:.4f}; {len(near)} mask(s) within 0.5 point")

    proxy = proxy_prior(proxy_scores("demo_pos", "minilm"), 1, LAYERS)
    known = handmade(scores)
    runs = {
        "random search": [trials_to_target(random_order(s, scores), scores, target) for s in range(args.repeats)],
        "search (TPE)": [len(tpe_order(s, scores, [], set(), target)) for s in range(args.repeats)],
        "search + proxy prior": [len(tpe_order(s, scores, proxy, set(), target)) for s in range(args.repeats)],
        # the hand-made masks are trained already: only masks beyond them count
        "search + warm start (new trainings)": [
            0 if max(scores[m] for m in known) >= target else len(tpe_order(s, scores, known, set(known), target))
            for s in range(args.repeats)
        ],
    }
    print(f"\n{'method':40}{'trials to within 0.5 F1 (mean, min-max)':>42}")
    print(f"{'exhaustive':40}{63:>30}")
    for name, counts in runs.items():
        print(f"{name:40}{statistics.mean(counts):>30.1f}   ({min(counts)}-{max(counts)})")
    print(f"\nhand-made strategies tried by the study: {len(known)} masks; best of them: "
          f"{max(scores[m] for m in known):.4f} (exhaustive best {scores[best_mask]:.4f})")
    print(f"target: search <= 21 trials (a third of 63) and fewer than random "
          f"({statistics.mean(runs['random search']):.1f})")


if __name__ == "__main__":
    main()
