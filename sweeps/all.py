"""The study's whole pipeline: four tasks on camembert-base, three seeds, every stage.

    ray submit cluster.yaml sweeps/all.py                       # on the cluster (results: see below)
    ray submit cluster.yaml sweeps/all.py --tasks allocine --seeds 0
    python sweeps/all.py --results /tmp/study --resources.cpu-fallback   # locally, on CPUs if no GPU
    ray submit cluster.yaml sweeps/all.py --full-model-epochs 10   # the full model trained to convergence

Re-running the same command resumes: trials whose configuration already has a row are skipped.
``--full-model-epochs 10`` trains the full model (the baseline of every table and the teacher of the recover
stage) until dev F1 has not improved for 2 epochs, at most 10, where the study cut it at 3 epochs like every
trial; the pruned models keep the study's 3 epochs.
"""

import os

from frugalray.cli import sweep_main

SWEEP = dict(
    name="camembert-study",
    tasks=["wikiner", "ftb_ner", "ftb_pos", "allocine"],
    model="camembert-base",
    seeds=[0, 1, 2],  # the study ran each configuration once; three seeds give a spread
    training=dict(
        epochs=3,  # as the study
        learning_rate=5e-5,  # the study's full fine-tuning rate
        lora_learning_rate=5e-4,  # ~10x: at 5e-5 LoRA collapses on token tasks (docs/recovery.md)
        batch_size=16,
        max_length=256,
    ),
    lora=dict(r=8, alpha=32, dropout=0.1, train_head=True),  # on the query and value projections (the
    # architecture's own names: query/value for BERT and RoBERTa, q/v for MPNet)
    # The study's four stages, then students of the fine-tuned full model on the LoRA stage's layer sets and
    # on the first half: pruned after fine-tuning, distilled, partially fine-tuned, from both starts.
    stages=["single", "strategies", "lora", "balanced", "recover"],
    recovery=dict(temperature=2.0, alpha=0.5, beta=0.0, partial_layers=2),
    # French Treebank files are licensed: each folder holds train.conll, dev.conll, test.conll.
    data_dirs={"ftb_ner": "/data/ftb/ner", "ftb_pos": "/data/ftb/pos"},
    # Every node must reach the results: an S3/GCS bucket (pyarrow filesystems) or an NFS mount. On the cluster,
    # cluster.yaml sets FRUGALRAY_RESULTS to s3://<your bucket>/camembert-study on every node.
    results=os.environ.get("FRUGALRAY_RESULTS", "results/camembert-study"),
    save_models=["lora", "balanced"],  # the models worth exporting: the selection, LoRA and balanced
    report="report/camembert-study",  # written on the head when the sweep ends
    resources=dict(
        gpus=True,  # every trial on a GPU share sized from the card it gets (cluster.yaml declares each node type's)
        cpus_per_trial=2,
    ),
    retries=1,  # one more attempt for a trial that raises (e.g. CUDA OOM beside a neighbour)
    max_failures=3,  # reschedules of a trial whose worker or node died (spot preemption)
)

if __name__ == "__main__":
    sweep_main(SWEEP)
