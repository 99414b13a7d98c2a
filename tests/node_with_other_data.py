"""A sweep runner for tests, imported by name inside Ray workers: the node it runs on has other data.

``tune_trial`` imports the runner before it prepares the trial, so from then on this worker reads every
file-based task from the folder in FRUGALRAY_TEST_NODE_DATA instead of the task's own folder, as a node
whose copy of the data differs would. The driver never imports this module and keeps the real data.
"""

import dataclasses
import os

from frugalray.data import tasks
from frugalray.testing import simulated_trial  # noqa: F401  (the runner, when the node agrees with the driver)

_read_files = tasks._load_files


def _read_this_nodes_copy(spec):
    return _read_files(dataclasses.replace(spec, data_dir=os.environ["FRUGALRAY_TEST_NODE_DATA"]))


tasks._load_files = _read_this_nodes_copy
