"""What a target column may hold, checked once for ingest and every trainer (pure functions).

- ``target_type="auto"`` (default): a column of 0/1 (``0``/``1``, ``0.0``/``1.0``,
  ``True``/``False``) is a binary target. Any other set of values (0/1/2,
  yes/no, 0.05/0.95, -1/1, diagnoses) is an error that names the values and
  the fixes, unless ``positive_class`` is given: a trainer then fits every
  class and scores that one (the 2020 winners: 9 diagnoses, melanoma scored);
  ingest binarises the column on it (:func:`binarise`).
- ``target_type="binary"``: the values must be 0/1 (or be binarised at ingest).
- ``target_type="multiclass"``: any values; each distinct value is a class.
- One class is always an error: nothing can be learnt or scored.
- Empty (NaN) targets are not labels: those rows are the test set. They are
  counted by the caller and reported, never dropped silently.
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from melanet.config import Choice
from melanet.errors import ConfigError, InputDataError, did_you_mean

TARGET_TYPES = ("auto", "binary", "multiclass")
#: The config type of every ``target_type`` key: an unknown name fails at config load with a did-you-mean.
TargetType = Choice("target_type", TARGET_TYPES)


def is_zero_one(values: pd.Series) -> bool:
    """True when every (non-missing) value is 0 or 1."""
    numeric = pd.to_numeric(values, errors="coerce")
    return bool(numeric.notna().all()) and set(np.unique(numeric.astype(float))) <= {0.0, 1.0}


def _shown(values: pd.Series, limit: int = 6) -> str:
    uniq = sorted(values.astype(str).unique().tolist(), key=lambda v: (len(v), v))
    return ", ".join(repr(v) for v in uniq[:limit]) + (f" ... ({len(uniq)} values)" if len(uniq) > limit else "")


def target_kind(values: pd.Series, column: str, target_type: str = "auto", positive_class: str | None = None,
                where: str = "the cohort") -> tuple[str, list[str] | None, str | None]:
    """``(kind, classes, positive)`` of the labelled ``values``; raise a one-line error for anything else.

    ``kind`` is ``"binary"`` (classes None) or ``"multiclass"`` (classes: the
    sorted distinct values as text); ``positive`` is the class of ``classes``
    that ``positive_class`` names (``"1"`` names ``"1.0"``), else None. ``values``
    may contain NaN (unlabelled rows, ignored). ``where`` names the table in messages.
    """
    if target_type not in TARGET_TYPES:
        raise ConfigError(f"target_type {target_type!r}{did_you_mean(target_type, TARGET_TYPES)}; "
                          f"choose one of: {', '.join(TARGET_TYPES)}")
    labelled = values.dropna()
    if len(labelled) == 0:
        raise InputDataError(f"{where}: target column {column!r} has no values (all {len(values)} rows are "
                             f"empty); fill it with 0/1 labels or choose the label column with --target")
    classes = sorted(labelled.astype(str).unique().tolist())
    if len(classes) < 2:
        raise InputDataError(f"{where}: target column {column!r} holds a single class ({classes[0]!r} in all "
                             f"{len(labelled)} labelled rows); a classifier needs examples of at least two classes")
    zero_one = is_zero_one(labelled)
    if zero_one and target_type != "multiclass":
        if positive_class not in (None, "1", 1, 1.0, "1.0"):
            raise ConfigError(f"positive_class={positive_class!r} given, but {column!r} is a binary 0/1 target; "
                              f"drop positive_class or choose a multiclass column such as 'diagnosis'")
        return "binary", None, None
    if target_type == "multiclass" or (target_type == "auto" and positive_class is not None):
        return "multiclass", classes, _class_named(labelled, classes, positive_class, column)
    raise InputDataError(
        f"{where}: target column {column!r} holds {_shown(labelled)}, not 0/1; for a binary target write 0/1 "
        f"or name the positive value (ingest --positive-class VALUE, or --set positive_class=VALUE), "
        f"for several classes set --set target_type=multiclass")


def _class_named(labelled: pd.Series, classes: list[str], positive_class: str | None, column: str) -> str | None:
    if positive_class is None:
        return None
    hit = _matches(labelled, positive_class)
    if not hit.any():
        raise ConfigError(f"positive_class {positive_class!r} is not a class of {column!r}"
                          f"{did_you_mean(str(positive_class), classes)}; classes are {classes[:20]}")
    return str(labelled[hit].astype(str).iloc[0])


def _matches(values: pd.Series, positive_class: str | float) -> pd.Series:
    """Rows whose value is ``positive_class`` (numbers compared as numbers: ``1`` matches ``1.0``)."""
    text = values.astype(str).str.strip()
    hit = text == str(positive_class).strip()
    try:
        wanted = float(positive_class)
    except (TypeError, ValueError):
        return hit
    return hit | (pd.to_numeric(values, errors="coerce") == wanted)


def binarise(values: pd.Series, positive_class: str, column: str = "target", where: str = "labels") -> pd.Series:
    """0/1 labels: 1 where the value is ``positive_class``, 0 elsewhere, NaN stays NaN."""
    labelled = values.notna()
    hit = _matches(values[labelled], positive_class)
    if not hit.any():
        raise ConfigError(f"{where}: positive class {positive_class!r} does not occur in column {column!r}"
                          f"{did_you_mean(str(positive_class), values[labelled].astype(str).unique())}; "
                          f"its values are {_shown(values[labelled])}")
    out = pd.Series(np.nan, index=values.index, dtype=float)
    out[labelled] = hit.astype(float)
    return out
