"""``melanet ingest``: a DICOM folder (+ labels table) -> cohort table, image cache, folds.

Outputs in DATA_DIR (DESIGN.md "Ingest"):

- ``cohort.parquet``: one row per decoded image (columns in :data:`melanet.cohort.DICOM_COLUMNS`,
  then the labels table's columns, then ``fold``);
- ``images/<settings>/<sha256[:2]>/<sha256>.npy``: uint8 RGB cache, side ``image_size``;
- ``ingest_errors.csv``: ``path, stage, error`` for every file that did not become a row;
- ``labels_report.csv``: labels that matched no image, or matched a file that failed;
- ``ingest_summary.json``: counts and timings;
- ``cohort_parts/part-<i>.parquet`` (``--engine dask`` only): the decoded header rows, written
  every ``part_rows`` rows as they arrive, before de-duplication, labels and folds. A run that
  dies midway leaves its finished parts, and the parts are a dataset a Dask job can read;
  ``cohort.parquet`` remains the table every stage reads.

Every regular file under DICOM_DIR is seen: files seen = rows + error rows.

The cache is content-addressed (sha256 of the file) under a folder named by the
pixel settings, with the header columns in a ``.json`` beside each ``.npy``, so a
re-run skips decoding any file whose bytes and settings are unchanged, and two
byte-identical files share one cache entry. ``.npy`` was chosen
by ``scripts/bench_ingest.py``: loading it is ~50x faster than decoding the DICOM
again and several times faster than PNG.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pandas as pd
from pydantic import Field
from sklearn.model_selection import StratifiedGroupKFold

from melanet.cohort import COHORT_FILE, DICOM_COLUMNS, ERRORS_FILE
from melanet.descriptors import (DESCRIPTOR_VERSION, LESION_COLUMNS, descriptor_rule, empty_descriptors,
                                 lesion_descriptors, rule_summary)
from melanet.config import StageConfig, config_to_yaml
from melanet.console import console, progress
from melanet.errors import DicomError, InputDataError, did_you_mean, unknown_choice
from melanet.io import atomic_path, write_csv, write_json, write_parquet, write_text

# Only these suffixes are stripped from file names to make image_id: DICOM file
# names are often UIDs ("1.2.840.113619.2.55.3") whose dots are not extensions.
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic", ".ima"}
ENGINES = ("local", "dask")
KEY_FILE = ".pseudonym_key"
PARTS_DIR = "cohort_parts"
# Column types of the decoded rows; the other DICOM columns are text.
INT_COLUMNS = ("rows", "cols", "frames", "bits_stored")
FLOAT_COLUMNS = ("age",)


class IngestConfig(StageConfig):
    """Settings of ``melanet ingest``; pixel settings are reused by ``melanet predict``."""

    dicom_dir: Path
    out_dir: Path
    labels: Path | None = Field(None, description="Labels table (CSV or parquet).")
    label_key: str = Field("image_id", description="Key column: file stem, relative path or SOPInstanceUID.")
    target: str = Field("target", description="Label column that stratifies the folds.")
    folds: int = Field(5, ge=2, description="Number of patient-grouped folds.")
    fold_column: str | None = Field(None, description="Use this labels-table column as the fold instead.")
    seed: int = Field(42, description="Seed of the fold split.")
    image_size: int = Field(256, ge=8, le=4096, description="Side of cached images, pixels.")
    resize: Literal["squash", "pad"] = Field(
        "squash", description="squash: resize to a square ignoring aspect; pad: pad to square first.")
    multiframe: Literal["first", "middle", "mip", "mean"] = Field(
        "middle", description="Which frame of a multi-frame file becomes the image (mip = max projection).")
    reader: str = Field("pydicom", description="DICOM reader: pydicom or sitk.")
    workers: int = Field(0, ge=0, description="Worker processes; 0 = all cores.")
    chunk_size: int = Field(16, ge=1, description="Files per task sent to a worker.")
    part_rows: int = Field(50_000, ge=1, description="Decoded rows packed into one table (with engine dask, one "
                                                     "cohort_parts/ file) as they arrive.")
    engine: str = Field("local", description="local (processes) or dask.")
    scheduler: str | None = Field(None, description="Dask scheduler address; none = a local cluster.")
    eda: bool = Field(True, description="Write DATA_DIR/eda.html after ingest.")
    descriptors: bool = Field(True, description="Measure lesion_* descriptors from the cached pixels "
                                                "(melanet.descriptors); kept with the cache entry.")

    def pixel_settings(self) -> dict[str, Any]:
        """The settings that change cached pixels (predict reuses them)."""
        return {"image_size": self.image_size, "resize": self.resize,
                "multiframe": self.multiframe, "reader": self.reader}


@dataclass
class IngestResult:
    """What an ingest run produced."""

    out_dir: Path
    n_files: int
    n_rows: int
    n_errors: int
    n_labelled: int
    n_skipped: int
    seconds: float
    unmatched_labels: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- pure helpers

def list_files(dicom_dir: Path, exclude: Path | None = None) -> list[Path]:
    """Every regular file under ``dicom_dir`` (any extension), sorted; ``exclude`` subtree skipped."""
    exclude = exclude.resolve() if exclude is not None else None
    files = []
    for root, dirs, names in os.walk(dicom_dir):
        root_path = Path(root)
        if exclude is not None:
            dirs[:] = [d for d in dirs if (root_path / d).resolve() != exclude]
        dirs.sort()
        for name in sorted(names):
            path = root_path / name
            if path.is_file():
                files.append(path)
    return files


def image_id_for(rel_path: str) -> str:
    """``image_id`` of a file: its POSIX path relative to DICOM_DIR, DICOM suffix removed."""
    path = Path(rel_path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        path = path.with_suffix("")
    return path.as_posix()


def pseudonymise(raw: str, key: bytes) -> str:
    """Keyed hash (HMAC-SHA256) of an identifier: stable for one key, not reversible without it."""
    return "pt_" + hmac.new(key, raw.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def resize_square(pixels: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """Resize uint8 (H, W, 3) to (size, size, 3); ``pad`` pads to square with the edge mean first."""
    if mode == "pad":
        h, w = pixels.shape[:2]
        side = max(h, w)
        if h != w:
            fill = pixels.reshape(-1, pixels.shape[2]).mean(axis=0).astype(np.uint8)
            canvas = np.empty((side, side, pixels.shape[2]), np.uint8)
            canvas[:] = fill
            top, left = (side - h) // 2, (side - w) // 2
            canvas[top:top + h, left:left + w] = pixels
            pixels = canvas
    if pixels.shape[0] == size and pixels.shape[1] == size:
        return np.ascontiguousarray(pixels)
    shrinking = pixels.shape[0] > size or pixels.shape[1] > size
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(pixels, (size, size), interpolation=interp)


def settings_tag(settings: dict[str, Any]) -> str:
    """Short stable name of a pixel-settings dict (the cache sub-folder)."""
    text = ",".join(f"{k}={settings[k]}" for k in sorted(settings))
    return f"s{settings['image_size']}-" + hashlib.sha1(text.encode()).hexdigest()[:8]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- per-file work

def process_file(path: Path, rel: str, out_dir: Path, settings: dict[str, Any], key: bytes,
                 descriptors: bool = True) -> dict[str, Any]:
    """Turn one file into a cohort row (``{"row": ...}``) or an error (``{"error": ...}``).

    Pure apart from writing the cache entry; safe in a worker process or on a Dask
    worker. A cache entry is the image (``<sha>.npy``) plus its header columns
    (``<sha>.json``); when both exist for the same settings and key the file is not
    decoded again. With ``descriptors`` the ``lesion_*`` columns are measured from the
    cached pixels and kept in the ``.json`` too (re-measured only when
    :data:`melanet.descriptors.DESCRIPTOR_VERSION` changes).
    """
    from melanet.dicom.readers import read_dicom

    try:
        sha = _sha256(path)
    except OSError as exc:
        return {"error": {"path": rel, "stage": "read", "error": f"cannot read file: {exc}"}}
    image_path = f"images/{settings_tag(settings)}/{sha[:2]}/{sha}.npy"
    cache_file = out_dir / image_path
    sidecar = cache_file.with_suffix(".json")
    image_id = image_id_for(rel)
    key_id = hashlib.sha256(key).hexdigest()[:12]
    if cache_file.is_file() and sidecar.is_file():
        cached = json.loads(sidecar.read_text())
        if cached.pop("key_id", None) == key_id:
            lesion = cached.pop("lesion", None)
            if descriptors and (lesion is None or lesion.get("version") != DESCRIPTOR_VERSION):
                lesion = _lesion_row(np.load(cache_file, allow_pickle=False), cached)
                write_text(sidecar, json.dumps({**cached, "key_id": key_id, "lesion": lesion}, default=_jsonable))
            row = {**cached, "image_id": image_id, "image_path": image_path}
            if descriptors:
                row.update({k: v for k, v in lesion.items() if k != "version"})
            return {"row": row, "skipped": True}
    try:
        rec = read_dicom(path, reader=settings["reader"], multiframe=settings["multiframe"])
    except DicomError as exc:
        return {"error": {"path": rel, "stage": exc.stage, "error": str(exc)}}
    except Exception as exc:  # a reader bug must not lose the file: record it with its type
        return {"error": {"path": rel, "stage": "decode", "error": f"{type(exc).__name__}: {exc}"}}
    image = resize_square(rec.pixels, settings["image_size"], settings["resize"])
    with atomic_path(cache_file) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, image, allow_pickle=False)
    meta = dict(rec.meta)
    raw_patient = meta.pop("patient_id_raw", None)
    study_uid = meta.pop("study_instance_uid", None)
    if raw_patient:
        patient = pseudonymise(f"patient:{raw_patient}", key)
    else:  # no PatientID: each study (else each image) stands for its own patient
        patient = pseudonymise(f"study:{study_uid or meta.get('sop_instance_uid') or sha}", key)
    row = {col: meta.get(col) for col in DICOM_COLUMNS}
    row.update(image_id=image_id, patient_id=patient, sha256=sha, image_path=image_path)
    header = {k: v for k, v in row.items() if k not in ("image_id", "image_path")}
    lesion = _lesion_row(image, row) if descriptors else None
    write_text(sidecar, json.dumps({**header, "key_id": key_id, **({"lesion": lesion} if lesion else {})},
                                   default=_jsonable))
    if lesion:
        row.update({k: v for k, v in lesion.items() if k != "version"})
    return {"row": row, "skipped": False}


def _lesion_row(image: np.ndarray, header: dict[str, Any]) -> dict[str, Any]:
    """The ``lesion_*`` values of one cached image (by the grayscale rule of its header), with their version."""
    rule = descriptor_rule(header.get("modality"), header.get("photometric"))
    try:
        values = lesion_descriptors(image, rule)
    except Exception:  # a measurement bug must not lose the file: the row keeps NaN descriptors
        values = empty_descriptors()
    return {**values, "version": DESCRIPTOR_VERSION}


def _jsonable(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


def _process_chunk(items: list[tuple[str, str]], out_dir: str, settings: dict[str, Any],
                   key: bytes, descriptors: bool = True) -> list[dict[str, Any]]:
    return [process_file(Path(p), rel, Path(out_dir), settings, key, descriptors) for p, rel in items]


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _run_local(chunks: list[list], workers: int, args: tuple) -> Iterator[list[dict]]:
    """Yield chunk results as they finish; at most ``4 * workers`` chunks in flight (flat memory)."""
    if workers <= 1:
        for chunk in chunks:
            yield _process_chunk(chunk, *args)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: set = set()
        todo = iter(chunks)
        for chunk in todo:
            pending.add(pool.submit(_process_chunk, chunk, *args))
            if len(pending) >= 4 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        for fut in pending:
            yield fut.result()


def _run_dask(chunks: list[list], scheduler: str | None, workers: int, args: tuple) -> Iterator[list[dict]]:
    """The same per-chunk function on a Dask cluster (``scheduler`` address, or a local cluster)."""
    from melanet.cluster import dask_client

    with dask_client(scheduler, workers, needed_by="--engine dask") as client:
        from dask.distributed import as_completed

        futures = [client.submit(_process_chunk, chunk, *args, pure=False) for chunk in chunks]
        for fut in as_completed(futures):
            yield fut.result()
            fut.release()


# --------------------------------------------------------------------------- labels and folds

def read_labels(path: Path) -> pd.DataFrame:
    """Read a labels table (CSV, TSV or parquet); all columns kept."""
    if not path.is_file():
        raise InputDataError(f"labels table {path} not found; pass --labels with an existing CSV or parquet file")
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep=None, engine="python", dtype={0: str})
    except Exception as exc:
        raise InputDataError(f"cannot read labels table {path}: {exc}") from None


def join_labels(cohort: pd.DataFrame, labels: pd.DataFrame, key: str, target: str,
                failed_ids: dict[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attach label columns to the cohort; return (cohort, report of labels that matched no row).

    A label's key may be the image_id, the relative path with its extension, the
    file name stem, or the SOPInstanceUID. Columns the cohort already has (e.g.
    ``site``) fill missing values only: DICOM header values win.
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
    matched_row = []
    for value in keys:
        if value in ambiguous:
            raise InputDataError(f"labels key {value!r} matches several images (same file name in different "
                                 f"folders); key the labels table by the relative path instead")
        matched_row.append(lookup.get(value, rel_with_ext.get(value, rel_with_ext.get(value.lower(), -1))))
    matched_row = np.asarray(matched_row)
    report = pd.DataFrame({"key": keys[matched_row < 0].to_numpy()})
    failed_ids = failed_ids or {}
    report["status"] = ["label_for_failed_file" if image_id_for(k) in failed_ids or k in failed_ids
                        else "label_without_image" for k in report["key"]]
    extra_cols = [c for c in labels.columns if c != key]
    joined = labels.loc[matched_row >= 0, extra_cols].copy()
    joined.index = cohort.index[matched_row[matched_row >= 0]]
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
    return out, report


def assign_folds(cohort: pd.DataFrame, target: str, n_folds: int, seed: int) -> np.ndarray:
    """StratifiedGroupKFold fold per row (grouped by patient_id); -1 where ``target`` is missing."""
    fold = np.full(len(cohort), -1, dtype=int)
    if target not in cohort.columns:
        return fold
    labelled = cohort[target].notna().to_numpy()
    if not labelled.any():
        return fold
    sub = cohort.loc[labelled]
    n_patients = sub["patient_id"].nunique()
    if n_patients < n_folds:
        raise InputDataError(f"only {n_patients} labelled patients for {n_folds} patient-grouped folds; "
                             f"use --folds {max(2, n_patients)} or add data")
    y = sub[target].astype(str).to_numpy()
    # Name each patient by its first image_id, not by the keyed pseudonym: the splitter orders
    # groups by label, so folds then depend on the files alone, not on the pseudonymisation key.
    groups = sub.groupby("patient_id")["image_id"].transform("min").to_numpy()
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    positions = np.flatnonzero(labelled)
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(sub)), y, groups=groups)):
        fold[positions[val]] = k
    return fold


def folds_from_column(cohort: pd.DataFrame, column: str) -> np.ndarray:
    """Use a fold column from the labels table, checking that no patient spans two folds."""
    if column not in cohort.columns:
        raise InputDataError(f"fold_column {column!r} is not a column of the labels table")
    fold = pd.to_numeric(cohort[column], errors="coerce").fillna(-1).astype(int)
    spread = cohort.assign(_f=fold)[fold >= 0].groupby("patient_id")["_f"].nunique()
    if (spread > 1).any():
        raise InputDataError(f"fold column {column!r} puts patient {spread[spread > 1].index[0]} in "
                             f"{spread.max()} folds; folds must be grouped by patient")
    return fold.to_numpy()


# --------------------------------------------------------------------------- runner

def load_key(out_dir: Path) -> bytes:
    """The pseudonymisation key: $MELANET_PSEUDONYM_KEY, else DATA_DIR/.pseudonym_key (made once)."""
    env = os.environ.get("MELANET_PSEUDONYM_KEY")
    if env:
        return env.encode()
    path = out_dir / KEY_FILE
    if not path.is_file():
        write_text(path, secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip().encode()


def decode_folder(cfg: IngestConfig, out_dir: Path, key: bytes, label: str = "ingest") -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    """Decode every file under ``cfg.dicom_dir`` into (rows, errors, files seen, skipped)."""
    from melanet.dicom.readers import READERS

    if cfg.reader not in READERS:
        raise unknown_choice("reader", cfg.reader, READERS)
    if cfg.engine not in ENGINES:
        raise unknown_choice("engine", cfg.engine, ENGINES)
    dicom_dir = Path(cfg.dicom_dir)
    if not dicom_dir.is_dir():
        raise InputDataError(f"DICOM folder {dicom_dir} does not exist or is not a folder")
    files = list_files(dicom_dir, exclude=out_dir if out_dir.resolve().is_relative_to(dicom_dir.resolve()) else None)
    items = [(str(p), p.relative_to(dicom_dir).as_posix()) for p in files]
    workers = cfg.workers or os.cpu_count() or 1
    settings = cfg.pixel_settings()
    args = (str(out_dir), settings, key, cfg.descriptors)
    columns = DICOM_COLUMNS + (LESION_COLUMNS if cfg.descriptors else [])
    chunks = list(_chunks(items, cfg.chunk_size if workers > 1 or cfg.engine == "dask" else len(items) or 1))
    parts_dir = out_dir / PARTS_DIR if cfg.engine == "dask" else None
    if parts_dir is not None:  # parts of an earlier run would mix with this one's
        for stale in parts_dir.glob("part-*.parquet"):
            stale.unlink()
    # Rows arrive as dicts (~1 KB each); every part_rows of them are packed into a typed table (~0.4 KB a row),
    # so the driver's memory stays near the size of the final cohort however many files there are.
    packed: list[pd.DataFrame] = []
    rows, errors, skipped = [], [], 0

    def pack() -> None:
        part = _typed(pd.DataFrame(rows, columns=columns))
        if parts_dir is not None and len(part):
            write_part(parts_dir / f"part-{len(packed):05d}.parquet", part)
        packed.append(part)
        rows.clear()

    results = (_run_dask(chunks, cfg.scheduler, workers, args) if cfg.engine == "dask"
               else _run_local(chunks, min(workers, len(chunks)) if chunks else 1, args))
    with progress() as bar:
        task = bar.add_task(label, total=len(items), status="")
        for chunk_result in results:
            for res in chunk_result:
                if "row" in res:
                    rows.append(res["row"])
                    skipped += res.get("skipped", False)
                else:
                    errors.append(res["error"])
            if len(rows) >= cfg.part_rows:
                pack()
            bar.update(task, advance=len(chunk_result), status=f"{len(errors)} errors")
    if rows or not packed:
        pack()
    table = pd.concat(packed, ignore_index=True) if len(packed) > 1 else packed[0]
    errs = pd.DataFrame(errors, columns=["path", "stage", "error"])
    dup = table["image_id"].duplicated(keep="first")
    if dup.any():  # "a.dcm" and "a" in one folder: keep the first, account for the second
        for iid in table.loc[dup, "image_id"]:
            errs.loc[len(errs)] = [iid, "ingest", f"image_id {iid!r} is produced by two files (same name with "
                                                  f"and without a DICOM suffix); rename one"]
        table = table.loc[~dup]
    table = table.sort_values("image_id", kind="stable").reset_index(drop=True)
    return table, errs.sort_values("path", kind="stable").reset_index(drop=True), len(items), skipped


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    for col in INT_COLUMNS:
        table[col] = pd.to_numeric(table[col], errors="coerce").astype("Int64")
    for col in FLOAT_COLUMNS:
        table[col] = pd.to_numeric(table[col], errors="coerce").astype(float)
    for col in DICOM_COLUMNS:
        if col not in INT_COLUMNS and col not in FLOAT_COLUMNS:
            table[col] = table[col].astype(object).where(table[col].notna(), None)
    for col in LESION_COLUMNS:
        if col in table.columns:
            values = pd.to_numeric(table[col], errors="coerce")
            table[col] = values.fillna(0).astype(bool) if col == "lesion_mask_ok" else values.astype(float)
    return table


def write_part(path: Path, part: pd.DataFrame) -> None:
    """Write decoded rows (typed by :func:`_typed`) as one file of ``cohort_parts/``, atomically.

    Every part gets the same Arrow schema, so a part in which some column is
    all missing (no ``site`` in any of its files) still reads as text beside the others.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = DICOM_COLUMNS + [c for c in LESION_COLUMNS if c in part.columns]
    schema = pa.schema([(c, pa.int64() if c in INT_COLUMNS else pa.bool_() if c == "lesion_mask_ok"
                         else pa.float64() if c in FLOAT_COLUMNS or c in LESION_COLUMNS else pa.string())
                        for c in columns])
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pandas(part[columns], schema=schema, preserve_index=False), tmp)


def run(cfg: IngestConfig) -> IngestResult:
    """Ingest ``cfg.dicom_dir`` into ``cfg.out_dir`` (see module docstring)."""
    start = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = read_labels(Path(cfg.labels)) if cfg.labels else None
    key = load_key(out_dir)
    cohort, errors, n_files, skipped = decode_folder(cfg, out_dir, key)

    report = pd.DataFrame(columns=["key", "status"])
    if labels is not None:
        # a label may name a failed file by id, name, stem or path without any suffix
        failed = {alias: p for p in errors["path"]
                  for alias in (image_id_for(p), Path(p).name, Path(p).stem, Path(p).with_suffix("").as_posix())}
        cohort, report = join_labels(cohort, labels, cfg.label_key, cfg.target, failed)
    elif cfg.target not in cohort.columns:
        cohort[cfg.target] = np.nan
    if cfg.fold_column:
        cohort["fold"] = folds_from_column(cohort, cfg.fold_column if cfg.fold_column != "fold" else "label_fold")
    else:
        cohort["fold"] = assign_folds(cohort, cfg.target, cfg.folds, cfg.seed)

    write_parquet(out_dir / COHORT_FILE, cohort)
    write_csv(out_dir / ERRORS_FILE, errors)
    write_csv(out_dir / "labels_report.csv", report)
    write_text(out_dir / "ingest_config.yaml", config_to_yaml(cfg))
    n_labelled = int((cohort["fold"] >= 0).sum())
    seconds = time.perf_counter() - start
    write_json(out_dir / "ingest_summary.json", {
        "files_seen": n_files, "rows": len(cohort), "errors": len(errors), "labelled": n_labelled,
        "unlabelled": len(cohort) - n_labelled, "skipped_unchanged": skipped,
        "labels_without_image": int((report["status"] == "label_without_image").sum()),
        "labels_for_failed_files": int((report["status"] == "label_for_failed_file").sum()),
        "errors_by_stage": errors["stage"].value_counts().to_dict(),
        "pixel_settings": cfg.pixel_settings(), "seconds": round(seconds, 3),
    })
    _print_summary(cfg, n_files, cohort, errors, report, skipped, seconds)
    if cfg.descriptors and len(cohort):
        rules = pd.Series([descriptor_rule(m, p) for m, p in zip(cohort["modality"], cohort["photometric"])])
        failed = int((~cohort["lesion_mask_ok"].to_numpy(bool) & rules.ne("none").to_numpy()).sum())
        console.print(f"{rule_summary(rules.value_counts().to_dict())}; no lesion found on {failed}", highlight=False)
    if cfg.eda:
        _write_eda(out_dir)
    return IngestResult(out_dir, n_files, len(cohort), len(errors), n_labelled, skipped, seconds,
                        report["key"].tolist())


def _write_eda(out_dir: Path) -> None:
    try:
        from melanet import eda
    except ImportError:  # the EDA page is optional for ingest
        return
    try:
        path = eda.run(out_dir)
    except Exception as exc:  # the cohort is written; a broken page must not fail the ingest
        console.print(f"[yellow]EDA page not written[/] ({type(exc).__name__}: {exc}); run `melanet eda {out_dir}`")
        return
    console.print(f"EDA page: {path}")


def _print_summary(cfg: IngestConfig, n_files: int, cohort: pd.DataFrame, errors: pd.DataFrame,
                   report: pd.DataFrame, skipped: int, seconds: float) -> None:
    n_lab = int((cohort["fold"] >= 0).sum())
    console.print(
        f"[bold]ingest[/]: {n_files} files seen = {len(cohort)} rows + {len(errors)} errors "
        f"({skipped} unchanged, reused) in {seconds:.1f} s; {n_lab} labelled, {len(cohort) - n_lab} unlabelled "
        f"(test set); {cohort['patient_id'].nunique()} patients, {cfg.folds} folds -> {cfg.out_dir}")
    if len(errors):
        by_stage = ", ".join(f"{k}: {v}" for k, v in errors["stage"].value_counts().items())
        console.print(f"[yellow]{len(errors)} file(s) not ingested[/] ({by_stage}); see "
                      f"{Path(cfg.out_dir) / ERRORS_FILE}")
    if len(report):
        sample = ", ".join(report["key"].astype(str).head(5))
        console.print(f"[yellow]{len(report)} label(s) matched no ingested image[/] (e.g. {sample}); see "
                      f"{Path(cfg.out_dir) / 'labels_report.csv'}")
