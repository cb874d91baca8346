"""A Dask client for the stages that can run on a cluster (``ingest --engine dask``, ``train-gbdt --backend dask``).

Either connect to a running scheduler by address, or start a
``dask.distributed.LocalCluster`` for the duration of the stage (handy on one
big machine, and how the tests run). Dask is an optional dependency: without
it the stage fails with a :class:`~melanet.errors.MissingDependencyError` naming
the extra to install (:func:`melanet.optional.require`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from melanet.optional import require


@contextlib.contextmanager
def dask_client(scheduler: str | None, n_workers: int, threads_per_worker: int = 1, *,
                needed_by: str) -> Iterator[Any]:
    """Yield a ``dask.distributed.Client``; closed (with the local cluster, if one was started) on exit.

    ``scheduler`` is an address (``tcp://host:8786``); ``None`` starts a local
    cluster of ``n_workers`` worker processes with ``threads_per_worker``
    threads each. ``needed_by`` names the option in the missing-dependency error.
    """
    distributed = require("dask.distributed", needed_by)
    Client, LocalCluster = distributed.Client, distributed.LocalCluster
    with contextlib.ExitStack() as stack:
        if scheduler:
            client = stack.enter_context(Client(scheduler))
        else:
            cluster = stack.enter_context(LocalCluster(n_workers=max(1, n_workers),
                                                       threads_per_worker=max(1, threads_per_worker),
                                                       processes=True, dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        yield client
