"""Results: the typed result row and its Arrow schema (``schema``), the Parquet store (``store``, ``files``,
``health``), the aggregation and the study's tables (``aggregate``, ``views``, ``reference``, ``tables``),
the end-of-sweep summary (``summary``) and the HTML report (``report``). None of it imports torch or Ray."""
