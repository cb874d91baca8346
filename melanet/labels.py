"""The labels table of ``melanet ingest``: read, checked before any pixel is decoded, joined to the cohort.

Checks, in order, each a one-line :class:`~melanet.errors.InputDataError` naming
the table, column and value (:func:`prepare_labels`):

- the table has rows, the key column and the target column;
- no key appears twice;
- the target holds labels a classifier can use (:mod:`melanet.targets`: 0/1,
  or a positive class to binarise on, or an explicit multiclass choice; more
  than one class; not all empty). Empty targets are counted: those images are
  the test set, and the summary and ``labels_report.csv`` say so;
- columns whose names look like direct identifiers (:mod:`melanet.privacy`)
  are dropped, with a warning naming them, unless kept by name.

:func:`precheck_keys` then refuses a table whose keys match none of the files
(unless they look like SOPInstanceUIDs, which only the headers can match).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from melanet.console import console
from melanet.errors import InputDataError, did_you_mean
from melanet.privacy import identifier_columns, looks_like_uid, pseudonymise_uid
from melanet.targets import binarise, target_kind

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic", ".ima"}
EMPTY_TARGET = "empty_target_test_row"


def image_id_for(rel_path: str) -> str:
    """``image_id`` of a file: its POSIX path relative to DICOM_DIR, DICOM suffix removed."""
    path = Path(rel_path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        path = path.with_suffix("")
    return path.as_posix()


def read_labels(path: Path, key: str | None = None) -> pd.DataFrame:
    """Read a labels table (CSV, TSV or parquet); all columns kept, the ``key`` column (default: the first) as text."""
    if not path.is_file():
        raise InputDataError(f"labels table {path} not found; pass --labels with an existing CSV or parquet file")
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        if key is not None and key in pd.read_csv(path, sep=None, engine="python", nrows=0).columns:
            return pd.read_csv(path, sep=None, engine="python", dtype={key: str})
        return pd.read_csv(path, sep=None, engine="python", dtype={0: str})
    except Exception as exc:
        raise InputDataError(f"cannot read labels table {path}: {exc}") from None


@dataclass
class PreparedLabels:
    """A checked labels table and what the checks found."""

    table: pd.DataFrame
    kind: str                                   # "binary" or "multiclass"
    n_empty_target: int                         # rows whose target is empty (their images are test rows)
    dropped_columns: list[str] = field(default_factory=list)
    binarised_on: str | None = None             # positive class the target was binarised on


def prepare_labels(labels: pd.DataFrame, key: str, target: str, *, target_type: str = "auto",
                   positive_class: str | None = None, keep_columns: list[str] | tuple = (),
                   protected: list[str] | tuple = (), where: str = "labels table") -> PreparedLabels:
    """Check ``labels`` (see the module notes) and return it cleaned; no pixels involved."""
    if len(labels) == 0:
        raise InputDataError(f"{where} has no rows; give a table with a {key!r} and a {target!r} column")
    for column, option in ((key, "--label-key"), (target, "--target")):
        if column not in labels.columns:
            kind = "key" if column == key else "target"
            raise InputDataError(
                f"{where} has no {kind} column {column!r}{did_you_mean(column, labels.columns)}; "
                f"its columns are {list(labels.columns)}; pass {option}")
    keys = labels[key].astype(str).str.strip()
    if keys.duplicated().any():
        dup = keys[keys.duplicated()].iloc[0]
        raise InputDataError(f"{where}: key {dup!r} appears {int((keys == dup).sum())} times in column {key!r} "
                             f"({int(keys.duplicated().sum())} duplicate row(s) in all); keep one row per image")
    unknown_keep = [c for c in keep_columns if c not in labels.columns]
    if unknown_keep:
        raise InputDataError(f"keep_columns names {unknown_keep[0]!r}, which is not a column of the {where}"
                             f"{did_you_mean(unknown_keep[0], labels.columns)}")
    dropped = identifier_columns(labels.columns, keep=keep_columns, protected=[key, target, *protected])
    if dropped:
        console.print(f"[yellow]warning:[/] label column(s) {', '.join(map(repr, dropped))} look like direct "
                      f"identifiers and are not copied to the cohort; keep one with --keep-columns NAME",
                      highlight=False)
        labels = labels.drop(columns=dropped)
    labels = labels.copy()
    binarised_on = None
    if positive_class is not None and target_type != "multiclass":
        labels[f"{target}_original"] = labels[target]
        labels[target] = binarise(labels[target], positive_class, target, where)
        binarised_on = str(positive_class)
    kind, _, _ = target_kind(labels[target], target, target_type, None, where=where)
    return PreparedLabels(labels, kind, int(labels[target].isna().sum()), dropped, binarised_on)


def precheck_keys(labels: pd.DataFrame, key: str, rel_paths: list[str], where: str = "labels table") -> None:
    """Refuse a labels table whose keys match no file by id, path, name or stem (UID keys excepted)."""
    keys = labels[key].astype(str).str.strip()
    if keys.map(looks_like_uid).any():
        return  # SOPInstanceUIDs are matched after the headers are read
    aliases: set[str] = set()
    for rel in rel_paths:
        path = Path(rel)
        aliases.update((image_id_for(rel), rel, path.name, path.stem, path.with_suffix("").as_posix()))
    if not keys.isin(aliases).any():
        raise InputDataError(
            f"{where}: none of its {len(keys)} keys in column {key!r} names a file of the DICOM folder (keys look "
            f"like {', '.join(map(repr, keys.head(3)))}; files like "
            f"{', '.join(repr(image_id_for(r)) for r in rel_paths[:3])}); check the folder, or --label-key")


def join_labels(cohort: pd.DataFrame, labels: pd.DataFrame, key: str, target: str,
                failed_ids: dict[str, str] | None = None,
                pseudonym_key: bytes | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attach label columns to the cohort; return (cohort, report of labels that matched no row).

    A label's key may be the image_id, the relative path with its extension, the
    file name stem, or the SOPInstanceUID (matched through its keyed pseudonym,
    ``pseudonym_key``, as the cohort holds only that). Columns the cohort already
    has (e.g. ``site``) fill missing values only: DICOM header values win. The
    report has ``key`` (UIDs pseudonymised), ``status`` and ``row`` (1-based row of
    the labels table, to find the raw key).
    """
    if key not in labels.columns:
        raise InputDataError(
            f"labels table has no key column {key!r}{did_you_mean(key, labels.columns)}; "
            f"its columns are {list(labels.columns)}; pass --label-key")
    if target not in labels.columns:
        raise InputDataError(
            f"labels table has no target column {target!r}{did_you_mean(target, labels.columns)}; "
            f"its columns are {list(labels.columns)}; pass --target")
    keys = labels[key].astype(str).str.strip()
    if keys.duplicated().any():
        raise InputDataError(f"labels table: key {keys[keys.duplicated()].iloc[0]!r} appears twice in "
                             f"column {key!r}; keep one row per image")
    if "fold" in labels.columns:
        labels = labels.rename(columns={"fold": "label_fold"})
    lookup: dict[str, int] = {}
    ambiguous: set[str] = set()
    stems = cohort["image_id"].str.rsplit("/", n=1).str[-1]
    for candidates in (stems, cohort["sop_instance_uid"].astype(str)):
        for i, value in enumerate(candidates):
            if value in lookup and lookup[value] != i:
                ambiguous.add(value)
            lookup.setdefault(value, i)
    for i, value in enumerate(cohort["image_id"]):  # exact ids beat stems
        lookup[value] = i
        ambiguous.discard(value)
    rel_with_ext = {f"{iid}{ext}": i for i, iid in enumerate(cohort["image_id"]) for ext in DICOM_SUFFIXES}
    uid_keys = keys.map(looks_like_uid).to_numpy() if pseudonym_key is not None else np.zeros(len(keys), bool)
    matched_row = []
    for value, is_uid in zip(keys, uid_keys):
        if is_uid and value not in lookup:
            value = pseudonymise_uid(value, pseudonym_key)
        if value in ambiguous:
            raise InputDataError(f"labels key {value!r} matches several images (same file name in different "
                                 f"folders); key the labels table by the relative path instead")
        matched_row.append(lookup.get(value, rel_with_ext.get(value, rel_with_ext.get(value.lower(), -1))))
    matched_row = np.asarray(matched_row, dtype=int)
    unmatched = matched_row < 0
    shown_keys = [pseudonymise_uid(k, pseudonym_key) if u else k for k, u in zip(keys, uid_keys)]
    report = pd.DataFrame({"key": np.asarray(shown_keys, dtype=object)[unmatched]})
    failed_ids = failed_ids or {}
    report["status"] = ["label_for_failed_file" if image_id_for(k) in failed_ids or k in failed_ids
                        else "label_without_image" for k in keys[unmatched]]
    report["row"] = np.flatnonzero(unmatched) + 1
    extra_cols = [c for c in labels.columns if c != key]
    joined = labels.loc[~unmatched, extra_cols].copy()
    joined.index = cohort.index[matched_row[~unmatched]]
    if joined.index.duplicated().any():
        raise InputDataError("two label rows match the same image (e.g. by stem and by SOPInstanceUID); "
                             "keep one label per image")
    out = cohort.copy()
    for col in extra_cols:
        values = joined[col].reindex(out.index)
        if col in out.columns:
            out[col] = out[col].where(out[col].notna(), values)
        else:
            out[col] = values
    empty = ~unmatched & labels[target].isna().to_numpy()
    if empty.any():  # matched, but no label: the image is a test row; say so
        report = pd.concat([report, pd.DataFrame({
            "key": np.asarray(shown_keys, dtype=object)[empty], "status": EMPTY_TARGET,
            "row": np.flatnonzero(empty) + 1})], ignore_index=True)
    return out, report
