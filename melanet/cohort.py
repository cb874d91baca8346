"""The cohort table contract (``data/cohort.parquet``) shared by every stage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from melanet.errors import ArtifactError
from melanet.io import read_table

COHORT_FILE = "cohort.parquet"
ERRORS_FILE = "ingest_errors.csv"
# Present only while (or if killed while) an ingest swaps its files in: see melanet.ingest_write.
INGEST_JOURNAL = ".ingest-commit.json"

# Column order of cohort.parquet before the labels-table columns and ``fold``.
DICOM_COLUMNS = [
    "image_id", "sop_instance_uid", "patient_id", "sex", "age", "site", "modality",
    "photometric", "rows", "cols", "frames", "bits_stored", "transfer_syntax", "sha256", "image_path",
]
REQUIRED_COLUMNS = DICOM_COLUMNS + ["fold"]
# Columns that name or locate an image or patient (or its fold): never features, never summarised as data.
IDENTIFIER_COLUMNS = ["image_id", "sop_instance_uid", "patient_id", "sha256", "image_path", "fold"]


def read_cohort(data_dir: str | Path) -> pd.DataFrame:
    """Read and validate ``DATA_DIR/cohort.parquet`` written by ``melanet ingest``."""
    path = Path(data_dir) / COHORT_FILE
    if (Path(data_dir) / INGEST_JOURNAL).is_file():
        raise ArtifactError(f"{data_dir}: an ingest was stopped while replacing its files, so they may come from "
                            f"two runs; re-run `melanet ingest ... --out {data_dir}` (it completes the swap first)")
    if not path.is_file():
        raise ArtifactError(
            f"{path} not found; run `melanet ingest DICOM_DIR --out {data_dir}` first"
        )
    cohort = read_table(path, REQUIRED_COLUMNS, what="cohort")
    if cohort["image_id"].duplicated().any():
        dup = cohort.loc[cohort["image_id"].duplicated(), "image_id"].iloc[0]
        raise ArtifactError(f"{path}: image_id {dup!r} appears twice; re-run ingest")
    return cohort


def labelled_mask(cohort: pd.DataFrame, target: str = "target") -> np.ndarray:
    """Rows with a label (the training set); the rest are the test set."""
    if target not in cohort.columns:
        raise ArtifactError(
            f"cohort has no column {target!r}; labelled columns are: "
            f"{[c for c in cohort.columns if c not in REQUIRED_COLUMNS]}"
        )
    return (cohort[target].notna() & (cohort["fold"] >= 0)).to_numpy()


def age_bins(age: pd.Series, edges: Sequence[float] | None = None, labels: Sequence[str] | None = None, *,
             years: int = 10, unknown: str | None = None) -> pd.Series:
    """Ages (years) as ordered categorical bins (the report's subgroups and the EDA's rate table).

    With ``edges`` (bin starts, last one the open end, e.g. ``[0, 30, 45, 60, 75, inf]``) the bins are
    ``[edge_i, edge_i+1)`` named by ``labels`` (all bins are categories). Without, they are ``years`` wide,
    named ``"40-49"``, and only the bins that occur are categories. A missing (or non-numeric) age is
    ``unknown`` (appended as the last category) or, when ``unknown`` is None, stays missing.
    """
    age = pd.to_numeric(age, errors="coerce")
    if edges is not None:
        binned = pd.cut(age, list(edges), right=False, labels=list(labels) if labels is not None else None)
    else:
        low = (np.floor(age / years) * years).dropna().astype(int)
        names = {lo: f"{lo}-{lo + years - 1}" for lo in sorted(low.unique())}
        binned = pd.Series(pd.Categorical(low.map(names).reindex(age.index), categories=list(names.values()),
                                          ordered=True), index=age.index, name="age_bin")
    return binned.cat.add_categories(unknown).fillna(unknown) if unknown is not None else binned


def image_file(data_dir: str | Path, image_path: str) -> Path:
    """Absolute path of a cached image (``image_path`` is relative to DATA_DIR)."""
    return Path(data_dir) / image_path


def load_image(data_dir: str | Path, image_path: str) -> np.ndarray:
    """Load one cached image: uint8 array (H, W, 3), RGB."""
    return np.load(image_file(data_dir, image_path), allow_pickle=False)
