"""What a stage wrote, as small objects for Python users: :class:`Run`, :class:`Cohort`, :class:`Synth`, :class:`Predictions`.

Each is a view of a folder (or file) on disk, not a copy: attributes read the
files when asked (``run.oof`` reads ``oof.parquet`` each time), so an object
stays true when the folder is re-run, and ``melanet.Run("runs/gbdt")`` opens
any existing run. Every one is ``os.PathLike``: pass it wherever a path goes
(``melanet.blend([fusion, gbdt], out=...)``, ``pd.read_parquet(run.path / ...)``).
File names are the contracts of ``docs/architecture.md``; :mod:`melanet.runs` reads them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported when a table is read, not with ``import melanet``
    import pandas as pd


def _path(value: str | os.PathLike) -> Path:
    return Path(os.fspath(value))


class _Folder(os.PathLike):
    """A folder written by a stage; ``os.fspath(obj)`` is its path."""

    def __init__(self, path: str | os.PathLike):
        self.path = _path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.path.resolve() == self.path.resolve()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.path.resolve()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class Run(_Folder):
    """A fusion, gbdt or blend run folder (``RUN_DIR``).

    ``oof``: out-of-fold predictions of the labelled rows (``image_id, patient_id,
    fold, target, pred`` or ``pred_<class>``); ``test``: fold-averaged predictions
    of the unlabelled rows; ``metrics``: ``metrics.json`` (``overall``,
    ``per_fold``...); ``config``: the resolved ``config.yaml`` as a dict.
    """

    @property
    def kind(self) -> str:
        """``fusion``, ``gbdt`` or ``blend`` (which trainer wrote the folder)."""
        from melanet.runs import check_run

        return check_run(self.path).kind

    @property
    def oof(self) -> pd.DataFrame:
        from melanet.io import read_table

        return read_table(self.path / "oof.parquet", ["image_id", "fold"], what="OOF table")

    @property
    def test(self) -> pd.DataFrame:
        from melanet.io import read_table

        return read_table(self.path / "test.parquet", ["image_id"], what="test predictions")

    @property
    def metrics(self) -> dict[str, Any]:
        from melanet.io import read_json

        return read_json(self.path / "metrics.json")

    @property
    def config(self) -> dict[str, Any]:
        from melanet.runs import read_config

        return read_config(self.path)

    @property
    def score(self) -> float | None:
        """The headline OOF score: AUC for binary and scored-class runs, else macro AUC (None if absent)."""
        overall = self.metrics.get("overall", {})
        value = overall.get("auc", overall.get("macro_auc"))
        return None if value is None else float(value)

    def report(self, refresh: bool = False) -> Path:
        """Path of ``report.html``; written now if absent (or ``refresh``), as ``melanet report`` does."""
        path = self.path / "report.html"
        if refresh or not path.is_file():
            from melanet.api import report

            return report(self.path)
        return path

    def predict(self, dicom_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                workers: int | None = None) -> Predictions:
        """Apply this run to new DICOM files (see :func:`melanet.api.predict`)."""
        from melanet.api import predict

        return predict(self, dicom_dir, out=out, workers=workers)

    def __repr__(self) -> str:
        score = None
        try:
            score = self.score
        except Exception:  # an unfinished folder still prints
            pass
        return f"Run({str(self.path)!r}" + (f", auc={score:.4f})" if score is not None else ")")


class Cohort(_Folder):
    """A data folder written by ``ingest``: ``table`` (``cohort.parquet``), ``errors`` (files that did not become rows)."""

    @property
    def table(self) -> pd.DataFrame:
        from melanet.cohort import read_cohort

        return read_cohort(self.path)

    @property
    def errors(self) -> pd.DataFrame:
        """``path, stage, error`` of every file that did not become a row (empty when all did)."""
        from melanet.cohort import ERRORS_FILE
        from melanet.io import read_table

        return read_table(self.path / ERRORS_FILE, ["path", "stage", "error"], what="ingest error list")

    @property
    def labels_report(self) -> pd.DataFrame:
        """Labels that matched no image, and why (``key, status``)."""
        from melanet.io import read_table

        return read_table(self.path / "labels_report.csv", what="labels report")

    @property
    def summary(self) -> dict[str, Any]:
        """``ingest_summary.json``: files seen, rows, errors, labelled/unlabelled counts, seconds."""
        from melanet.io import read_json

        return read_json(self.path / "ingest_summary.json")

    @property
    def eda(self) -> Path:
        """Path of ``eda.html`` (written by ingest, or by ``melanet.eda``)."""
        return self.path / "eda.html"


class Synth(_Folder):
    """A synthetic cohort written by ``synth``: ``dicom_dir``, ``labels`` (``labels.csv``), ``truth`` (``truth.csv``)."""

    @property
    def dicom_dir(self) -> Path:
        return self.path / "dicom"

    @property
    def labels_path(self) -> Path:
        return self.path / "labels.csv"

    @property
    def truth_path(self) -> Path:
        return self.path / "truth.csv"

    @property
    def labels(self) -> pd.DataFrame:
        from melanet.io import read_table

        return read_table(self.labels_path, ["image_id", "target"], what="labels table")

    @property
    def truth(self) -> pd.DataFrame:
        """True probability and logit terms of every image (``p_true``, ``image_term``...)."""
        from melanet.io import read_table

        return read_table(self.truth_path, ["image_id", "p_true"], what="truth table")

    @property
    def summary(self) -> dict[str, Any]:
        from melanet.io import read_json

        return read_json(self.path / "synth.json")


class Predictions(os.PathLike):
    """What ``predict`` wrote: ``table`` (``image_id, pred``...), ``errors`` (files not usable), ``path`` (the CSV)."""

    def __init__(self, path: str | os.PathLike, table: pd.DataFrame, errors: pd.DataFrame):
        self.path, self.table, self.errors = _path(path), table, errors

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Predictions({str(self.path)!r}, rows={len(self.table)}, errors={len(self.errors)})"
