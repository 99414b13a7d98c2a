"""Results: the typed result row and its Arrow schema (``schema``), the Parquet store (``store``, ``files``,
``filters``, ``health``, ``metadata``), the aggregation and the study's tables (``aggregate``, ``rows``: what
every view shares, ``views``, ``payoff``, ``recovery_view``, ``reference``, ``tables``), the latency grid's
stored rows (``grid_rows``), search fronts (``fronts``), the end-of-sweep summary (``summary``) and the HTML
report (``report``). Imports data, config and below; none of it imports torch or Ray."""
