"""The study, without Ray: a sweep's stages (``stages``) and the plan that grows from results (``plan``),
per-layer scores (``scores``), and the Optuna layer-mask search (``search``). A planner hands ``planned``
trials to the cluster. The strategies themselves are shared vocabulary (``frugalray.strategies``). Imports
training and below."""
