"""Search layer masks beyond the hand-made strategies: Optuna through Ray Tune, on the cluster or locally.

    python sweeps/search.py                                  # the demo: MiniLM, POS, <= 3 layers
    ray submit cluster.yaml sweeps/search.py -- --task ftb_pos --model camembert-base --budget 100

Re-running with the same name continues the same Optuna study: masks already trained (by earlier
searches or by the study's strategies) are told to Optuna from the results, never retrained.
"""

import argparse

from frugalray.search import SearchConfig, run_search
from frugalray.sweep import connect_or_start_ray

SEARCH = dict(
    task="demo_pos",
    model="minilm",
    budget=12,  # new masks to train in this run
    min_layers=1,
    max_layers=3,  # the layer budget: quality at <= 3 of 6 layers
    objective="f1_vs_layers",  # Pareto front of dev F1 against kept layers
    training=dict(epochs=3, learning_rate=2e-4, batch_size=8, max_length=64),  # the demo's settings
    results="results/quick",  # beside the quick sweep: its strategies warm-start the search
    prior="proxy",  # first try the masks that keep the most important layers by the pretrained proxy
    resources=dict(cpus_per_trial=1),
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Layer-mask search")
    for key in ("task", "model", "objective", "results", "name", "storage"):
        parser.add_argument(f"--{key}")
    for key in ("budget", "min_layers", "max_layers", "exactly"):
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int)
    args = {k: v for k, v in vars(parser.parse_args()).items() if v is not None}
    outcome = run_search(SearchConfig.from_dict(SEARCH | args), connect=connect_or_start_ray)
    for row in outcome["front"]:
        print(row)
