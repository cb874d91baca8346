"""Boosting on a Dask cluster (``backend: dask``): the frames the engines' Dask interfaces take, the client,
and why LightGBM's cannot stop early. See docs/distributed.md."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from melanet.optional import require

if TYPE_CHECKING:
    from melanet.train.gbdt.config import GBDTConfig

# Name of the label column while it travels with the features to the Dask workers.
_DASK_LABEL = "__melanet_label__"


def dask_frames(client: Any, X: pd.DataFrame, y: np.ndarray) -> tuple[Any, Any]:
    """``X`` and ``y`` as row-aligned Dask collections on ``client``'s cluster, about one partition per worker.

    Categorical columns keep ``X``'s categories in every partition (both Dask
    interfaces require that); :func:`apply_schema` already fixed them from the
    whole table.
    """
    dd = require("dask.dataframe", "train-gbdt backend: dask")

    n_partitions = max(1, min(len(client.nthreads()), len(X)))
    frame = dd.from_pandas(X.assign(**{_DASK_LABEL: np.asarray(y)}).reset_index(drop=True), npartitions=n_partitions)
    # Persist before splitting, so that the features and the labels of a partition are one piece of data on one
    # worker rather than two computations that the engines must line up again (LightGBM issue #6920).
    frame = client.persist(frame)
    return frame[list(X.columns)], frame[_DASK_LABEL]


def dask_early_stopping_error(engine: str) -> str:
    """Why ``engine`` cannot stop early on a Dask cluster, and what to set instead."""
    return (f"{engine}'s Dask interface cannot stop early (its workers would each judge a different share of the "
            f"early-stopping rows); with backend: dask set early_stopping_rounds: null and choose num_boost_round "
            f"(e.g. the `rounds` in fold_<k>/DONE of a local run on a sample), or use engine: xgboost, whose Dask "
            f"interface stops early")


@contextlib.contextmanager
def backend_client(cfg: GBDTConfig, n_jobs: int) -> Iterator[Any]:
    """The Dask client that fold models boost on (``backend: dask``), or None to boost in this process."""
    if cfg.backend == "local":
        yield None
        return
    from melanet.cluster import dask_client

    with dask_client(cfg.scheduler, cfg.dask_workers, n_jobs // cfg.dask_workers, needed_by="train-gbdt backend: dask") as client:
        yield client
