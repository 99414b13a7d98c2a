"""A sweep runner for tests, imported by name inside Ray workers: the worker of a trial dies right after
the trial's row is in the store, before Ray Tune hears the trial finished (as a node lost at that moment).

``tune_trial`` imports the runner before it runs the trial, so from then on this worker's appends go
through ``_append_then_die``. Only the first append of the sweep dies (a marker file in
FRUGALRAY_TEST_MARKS says it happened): Tune then retries that trial in a new worker.
"""

import os
import signal
from pathlib import Path

from frugalray.results.store import ResultsStore
from frugalray.testing import simulated_trial  # noqa: F401  (the runner)

_append = ResultsStore.append


def _append_then_die(self, result):
    path = _append(self, result)
    try:
        Path(os.environ["FRUGALRAY_TEST_MARKS"], "died").touch(exist_ok=False)
    except FileExistsError:
        return path
    os.kill(os.getpid(), signal.SIGKILL)


ResultsStore.append = _append_then_die
