"""Search layer masks beyond the hand-made strategies: Optuna through Ray Tune, on the cluster or locally.

    python sweeps/search.py                                  # the demo: MiniLM, POS, <= 3 layers
    ray submit cluster.yaml sweeps/search.py --task ftb_pos --model camembert-base --budget 100

Re-running with the same name continues the same Optuna study: masks already trained (by earlier
searches or by the study's strategies) are told to Optuna from the results, never retrained.
"""

from frugalray.cli import search_main

SEARCH = dict(
    task="demo_pos",
    model="minilm",
    budget=12,  # new masks to train in this run
    min_layers=1,
    max_layers=3,  # the layer budget: quality at <= 3 of 6 layers
    objective="f1_vs_layers",  # Pareto front of dev F1 against kept layers
    training=dict(epochs=3, learning_rate=2e-4, batch_size=8, max_length=64),  # the demo's settings
    results="results/quick",  # beside the quick sweep: its strategies warm-start the search
    # Stop masks early (ASHA over training steps, rungs on dev loss), TPE after 2 random masks, no prior: the
    # configuration with the lowest need in the search-cost replays on wnut16 and on the held-out conll2003_small
    # (docs/benchmarks.md, "Search cost", has the tables and the commands that print them); the defaults, written
    # out.
    halving=True,
    rung_score="dev_loss",
    startup_trials=2,
    prior="none",
    resources=dict(cpus_per_trial=1),
)

if __name__ == "__main__":
    search_main(SEARCH)
