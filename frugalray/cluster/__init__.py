"""Everything Ray: which Ray to run on (``session``), the one Tune driver every planner runs through
(``driver``), what a trial asks of the cluster (``resources``), live progress (``progress``), and the
sweep and search entry points (``runs``)."""
