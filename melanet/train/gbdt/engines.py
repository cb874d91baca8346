"""The registry of tree engines (``engine:``) and compute backends (``backend:``)."""

from __future__ import annotations

from melanet.errors import unknown_choice
from melanet.runs import TargetSpec
from melanet.train.gbdt.lightgbm_model import LightGBMModel
from melanet.train.gbdt.model import TreeModel
from melanet.train.gbdt.xgboost_model import XGBoostModel

ENGINES: dict[str, type[TreeModel]] = {m.name: m for m in (LightGBMModel, XGBoostModel)}
# Where boosting runs: in this process, or on a Dask cluster through the engine's Dask interface.
COMPUTE_BACKENDS = ("local", "dask")


def get_engine(name: str) -> type[TreeModel]:
    """The tree model class registered under ``name`` (``lightgbm``, ``xgboost``)."""
    if name not in ENGINES:
        raise unknown_choice("GBDT engine", name, ENGINES)
    return ENGINES[name]


def n_classes_of(spec: TargetSpec) -> int:
    return 2 if spec.is_binary else len(spec.classes)
