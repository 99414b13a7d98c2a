"""Which Ray a sweep runs on: the cluster it was told to join, or a private Ray of its own.

A sweep joins a cluster only when ``RAY_ADDRESS`` names one (``cluster.yaml`` sets it in the head's login
shell, so ``ray submit`` and ``ray attach`` join that cluster). Otherwise it starts its own Ray in its own
temp folder, listening on 127.0.0.1 only, with Ray's token authentication as Ray sets it up. It never
looks for "any Ray on this machine" (``address="auto"``): that would join another user's or a notebook's.

>>> connect_or_start_ray(num_cpus=2)  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from frugalray._registry import FrugalrayError

LOOPBACK = "127.0.0.1"


def connect_or_start_ray(**local) -> None:
    """Join the cluster named by ``RAY_ADDRESS``; without it, start a private local Ray (``local``: its options).

    >>> connect_or_start_ray(num_cpus=4, num_gpus=0)  # doctest: +SKIP
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address:
        join_cluster(address)
    else:
        start_local_ray(**local)


def ensure_ray(ray_init: dict | None = None, connect=None) -> None:
    """Ray for a sweep or a search: the one already initialized; else ``ray.init(**ray_init)`` when given,
    else ``connect()``, else :func:`connect_or_start_ray`.

    >>> ensure_ray(ray_init=dict(address="local", num_cpus=2))  # doctest: +SKIP
    """
    import ray

    if ray.is_initialized():
        return
    if ray_init is not None:
        ray.init(**ray_init)
    else:
        (connect or connect_or_start_ray)()


def join_cluster(address: str) -> None:
    """Connect to the Ray cluster at ``address``; failing to is an error that says how to run locally instead."""
    import ray
    from ray.exceptions import AuthenticationError

    try:
        ray.init(address=address)
    except (ConnectionError, AuthenticationError) as error:
        raise FrugalrayError(
            f"RAY_ADDRESS={address!r} names a Ray cluster this sweep cannot join: {error}. Start that cluster "
            f"(ray up cluster.yaml), fix RAY_ADDRESS, or unset it to run on a private local Ray"
        ) from None


def start_local_ray(**options) -> str:
    """Start a Ray of this process only, on 127.0.0.1, in a temp folder of its own; returns that folder.

    ``options`` go to ``ray.init`` (``num_cpus``, ``num_gpus``...). The folder (Ray's sockets, logs and
    session files) is removed when the process ends.

    >>> start_local_ray(num_cpus=2)  # doctest: +SKIP
    '/tmp/frugalray-ray-k2x9'
    """
    import ray
    from ray._private import ray_constants

    # Short, under /tmp: Ray's socket paths inside it must stay under 108 characters.
    temp_dir = tempfile.mkdtemp(prefix="frugalray-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    # Ray swaps a loopback node address for the machine's network address (its processes then listen on
    # every interface) unless it runs as on macOS and Windows, where a Ray is no cluster. Ray reads that
    # setting (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER) when it is imported, so set it here for this start only.
    as_cluster = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", _node_ip_address=LOOPBACK, _temp_dir=temp_dir, include_dashboard=False, **options)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = as_cluster
    atexit.register(_stop_and_remove, temp_dir)
    return temp_dir


def _stop_and_remove(temp_dir: str) -> None:
    """At exit: stop this Ray (Ray's own exit hook would run only after this one), then remove its folder."""
    import ray

    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
