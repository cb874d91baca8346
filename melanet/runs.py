"""Run directories shared by every trainer: targets, per-fold artifacts, OOF assembly, metrics.

Layout (DESIGN.md "Runs")::

    RUN_DIR/config.yaml            resolved config
    RUN_DIR/fold_<k>/...           weights, history, oof.parquet, test.parquet, DONE
    RUN_DIR/oof.parquet            merged from the folds
    RUN_DIR/test.parquet           fold-averaged
    RUN_DIR/metrics.json

A fold is finished when ``fold_<k>/DONE`` exists (written last, atomically);
``--resume`` skips such folds and :func:`merge_folds` refuses to merge while a
fold is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from melanet import metrics as M
from melanet.errors import ArtifactError, ConfigError, InputDataError, did_you_mean
from melanet.io import read_json, read_table, write_json, write_parquet

ID_COLUMNS = ["image_id", "patient_id", "fold", "target"]


@dataclass
class TargetSpec:
    """What is predicted: a binary 0/1 column, or a multiclass column scored on one class.

    ``classes`` is None for binary targets. For multiclass targets
    ``positive_class`` (if set) names the class whose probability is the binary
    score used by AUC/pAUC and by the blend (the 2020 winners scored melanoma
    out of 9 diagnoses).
    """

    column: str = "target"
    classes: list[str] | None = None
    positive_class: str | None = None

    @property
    def is_binary(self) -> bool:
        return self.classes is None

    @property
    def pred_columns(self) -> list[str]:
        return ["pred"] if self.is_binary else [f"pred_{c}" for c in self.classes]

    @property
    def score_column(self) -> str | None:
        if self.is_binary:
            return "pred"
        return f"pred_{self.positive_class}" if self.positive_class is not None else None

    def encode(self, values: pd.Series) -> np.ndarray:
        """Labels as int: 0/1 (binary) or class index (multiclass)."""
        if self.is_binary:
            return values.astype(float).astype(int).to_numpy()
        index = {c: i for i, c in enumerate(self.classes)}
        return values.astype(str).map(index).to_numpy().astype(int)

    def binary_labels(self, values: pd.Series) -> np.ndarray | None:
        """0/1 labels for the scored class (None for multiclass without positive_class)."""
        if self.is_binary:
            return self.encode(values)
        if self.positive_class is None:
            return None
        return (values.astype(str) == str(self.positive_class)).astype(int).to_numpy()


def resolve_target(labels: pd.Series, column: str, positive_class: str | None = None,
                   target_type: str = "auto") -> TargetSpec:
    """Binary vs multiclass from the labelled values of ``column``, validated (rules: :mod:`melanet.targets`)."""
    from melanet.targets import target_kind

    kind, classes, positive = target_kind(labels, column, target_type, positive_class,
                                          where="cohort.parquet")
    if kind == "binary":
        return TargetSpec(column=column)
    return TargetSpec(column=column, classes=classes, positive_class=positive)


def predictions_frame(rows: pd.DataFrame, prob: np.ndarray, spec: TargetSpec) -> pd.DataFrame:
    """``image_id, patient_id, fold, target`` of ``rows`` plus the prediction columns."""
    prob = np.asarray(prob, dtype=float)
    if not spec.is_binary and len(rows) == 0:
        prob = prob.reshape(0, len(spec.classes))
    if spec.is_binary:
        prob = prob.reshape(len(rows), -1)[:, -1:] if len(rows) else prob.reshape(0, 1)
    out = pd.DataFrame({
        "image_id": rows["image_id"].astype(str).to_numpy(),
        "patient_id": rows["patient_id"].astype(str).to_numpy(),
        "fold": rows["fold"].astype(int).to_numpy(),
        "target": rows[spec.column].to_numpy(),
    })
    for j, col in enumerate(spec.pred_columns):
        out[col] = prob[:, j]
    return out


def evaluate(oof: pd.DataFrame, spec: TargetSpec) -> dict:
    """Overall and per-fold metrics of an OOF table (DESIGN.md "Metrics")."""

    def one(df: pd.DataFrame) -> dict:
        out: dict = {}
        if not spec.is_binary:
            out.update(M.multiclass_metrics(spec.encode(df["target"]), df[spec.pred_columns].to_numpy(),
                                            spec.classes))
        y_bin = spec.binary_labels(df["target"])
        if y_bin is not None:
            out.update(M.binary_metrics(y_bin, df[spec.score_column].to_numpy()))
        return out

    per_fold = {str(int(k)): one(g) for k, g in oof.groupby("fold")}
    primary = "auc" if spec.score_column else "macro_auc"
    return {
        "task": "binary" if spec.is_binary else "multiclass",
        "target": spec.column,
        "classes": spec.classes,
        "positive_class": spec.positive_class,
        "primary_metric": primary,
        "overall": one(oof),
        "per_fold": per_fold,
    }


@dataclass
class RunDir:
    """A run directory and its per-fold artifacts."""

    path: Path
    folds: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    def fold_dir(self, k: int) -> Path:
        return self.path / f"fold_{k}"

    def is_done(self, k: int) -> bool:
        return (self.fold_dir(k) / "DONE").is_file()

    def mark_done(self, k: int, info: dict | None = None) -> None:
        write_json(self.fold_dir(k) / "DONE", info or {})

    def write_fold_predictions(self, k: int, oof: pd.DataFrame, test: pd.DataFrame) -> None:
        """Write the fold's validation (OOF) and test predictions (before :meth:`mark_done`)."""
        write_parquet(self.fold_dir(k) / "oof.parquet", oof)
        write_parquet(self.fold_dir(k) / "test.parquet", test)

    def done_folds(self) -> list[int]:
        return sorted(int(p.parent.name.split("_")[1]) for p in self.path.glob("fold_*/DONE"))


def merge_folds(run: RunDir, all_folds: list[int], spec: TargetSpec) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Merge per-fold predictions into ``oof.parquet``, ``test.parquet`` and ``metrics.json``.

    Refuses while any of ``all_folds`` is unfinished, naming the folds to run.
    """
    missing = [k for k in all_folds if not run.is_done(k)]
    if missing:
        raise ArtifactError(
            f"{run.path}: fold(s) {missing} are not finished; run them "
            f"(e.g. --folds {','.join(map(str, missing))}) before merging"
        )
    oofs = [read_table(run.fold_dir(k) / "oof.parquet", ID_COLUMNS, "fold OOF") for k in all_folds]
    oof = pd.concat(oofs, ignore_index=True).sort_values("image_id", kind="stable").reset_index(drop=True)
    if oof["image_id"].duplicated().any():
        raise ArtifactError(f"{run.path}: an image appears in two folds' OOF; the run mixes fold assignments")
    tests = [read_table(run.fold_dir(k) / "test.parquet", ["image_id"], "fold test") for k in all_folds]
    if tests and len(tests[0]):
        stacked = pd.concat(tests, ignore_index=True)
        keys = ["image_id", "patient_id", "fold", "target"]
        test = stacked.groupby(keys, sort=True, dropna=False)[spec.pred_columns].mean().reset_index()
    else:
        test = tests[0] if tests else pd.DataFrame(columns=ID_COLUMNS + spec.pred_columns)
    metrics = evaluate(oof, spec)
    write_parquet(run.path / "oof.parquet", oof)
    write_parquet(run.path / "test.parquet", test)
    write_json(run.path / "metrics.json", metrics)
    return oof, test, metrics


def read_run(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Read a finished run's ``oof.parquet``, ``test.parquet`` and ``metrics.json``."""
    run_dir = Path(run_dir)
    oof = read_table(run_dir / "oof.parquet", ID_COLUMNS, "OOF predictions")
    test = read_table(run_dir / "test.parquet", ["image_id"], "test predictions")
    metrics = read_json(run_dir / "metrics.json")
    return oof, test, metrics


def spec_from_metrics(metrics: dict) -> TargetSpec:
    """Rebuild the TargetSpec a run used from its ``metrics.json``."""
    return TargetSpec(column=metrics.get("target", "target"), classes=metrics.get("classes"),
                      positive_class=metrics.get("positive_class"))


def read_exclude(path: str | Path | None, cohort: pd.DataFrame) -> np.ndarray:
    """Rows of ``cohort`` listed (by ``image_id``) in the CSV at ``path``; all False without one."""
    if path is None:
        return np.zeros(len(cohort), bool)
    listed = read_table(path, ["image_id"], "exclude list")["image_id"].astype(str)
    ids = cohort["image_id"].astype(str)
    unknown = sorted(set(listed) - set(ids))
    if unknown:
        raise InputDataError(f"exclude list {path}: {len(unknown)} image_id(s) are not in the cohort, e.g. "
                             f"{unknown[0]!r}{did_you_mean(unknown[0], ids)}; fix or remove them")
    return ids.isin(set(listed)).to_numpy()
