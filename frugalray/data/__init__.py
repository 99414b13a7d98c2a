"""Tasks as data: what a task is (``spec``), the task registry and loading (``tasks``), readers for CoNLL,
JSONL/CSV/Parquet and hub datasets (``readers``), label checks and majority baselines (``labels``), metrics
(``metrics``), and tokenisation with word-label alignment and batching (``encoding``). The shipped demo corpus
lives in ``demo/``, the reference study's published tables in ``reference/``. Imports config and below."""
