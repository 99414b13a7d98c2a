"""Where the trials ran: per node, its trials, failures and seconds (the ``nodes`` view).

Every row of a trial that ran counts (failed and lost ones too), not the aggregated successful ones: a node
whose trials fail stands out. Rows written before rows said where they ran count under no node.

    frugalray results s3://bucket/study --view nodes
"""

from __future__ import annotations

from frugalray.results.rows import view
from frugalray.results.store import ResultsStore

NODE_SQL = """
SELECT coalesce(node_host, '-') AS host, coalesce(node_id, '-') AS node_id, node_type, accelerator_type,
       count(*) AS trials,
       count(*) FILTER (WHERE status = 'ok') AS ok,
       count(*) FILTER (WHERE status = 'failed' AND coalesce(error_kind, '') != 'lost') AS failed,
       count(*) FILTER (WHERE error_kind = 'lost') AS lost,
       round(sum(coalesce(train_seconds, 0) + coalesce(eval_seconds, 0)), 1) AS seconds,
       round(avg(gpu_share), 4) AS mean_gpu_share,
       list_distinct(flatten(list(coalesce(gpu_ids, [])))) AS gpu_ids,
       min(started_at) AS first_started, max(finished_at) AS last_finished
FROM trials
WHERE reused_from IS NULL AND source_trial_id IS NULL {where}
GROUP BY ALL ORDER BY host, node_id
"""


@view("nodes", raw=True)
def nodes(store: ResultsStore, where: list[str] | None = None, **_) -> list[dict]:
    """Per node: trials that ran there (ok, failed, lost), their seconds, its GPU model and the shares granted."""
    from frugalray.results.filters import where_clauses

    clauses, params = where_clauses(where or [])
    sql = NODE_SQL.format(where="".join(f" AND {c}" for c in clauses))
    return store.query(sql=sql, params=params).to_pylist()
