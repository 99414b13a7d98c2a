"""Optuna's samplers as a search uses them, picklable.

Ray Tune pickles its searcher and callbacks into the experiment's folder when a run starts, and both hold
the search's Optuna study. Optuna's genetic samplers (NSGA-II) keep a thread lock, which does not pickle;
the sampler here leaves its locks out of the pickled state and makes new ones when it is loaded.

>>> pickle.loads(pickle.dumps(NSGAIISampler(seed=0)))   # doctest: +SKIP
"""

from __future__ import annotations

import threading

import optuna

_LOCK = type(threading.Lock())


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """``optuna.samplers.NSGAIISampler``, picklable: its locks are made anew on loading."""

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if not isinstance(v, _LOCK)}
        state["_unpickled_locks"] = [k for k, v in self.__dict__.items() if isinstance(v, _LOCK)]
        return state

    def __setstate__(self, state: dict) -> None:
        locks = state.pop("_unpickled_locks", [])
        self.__dict__.update(state)
        for name in locks:
            setattr(self, name, threading.Lock())
