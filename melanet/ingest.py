"""``melanet ingest``: a DICOM folder (+ labels table) -> cohort table, image cache, folds.

Outputs in DATA_DIR (docs/architecture.md "Ingest"):

- ``cohort.parquet``: one row per decoded image (columns in :data:`melanet.cohort.DICOM_COLUMNS`,
  then the labels table's columns, then ``fold``);
- ``images/<settings>/<sha256[:2]>/<sha256>.npy``: uint8 RGB cache, side ``image_size``;
- ``ingest_errors.csv``: ``path, stage, error`` for every file that did not become a row;
- ``labels_report.csv``: labels that matched no image, or matched a file that failed;
- ``ingest_summary.json``: counts and timings;
- ``cohort_parts/part-<i>.parquet`` (``--engine dask`` only): the decoded header rows, written
  every ``part_rows`` rows as they arrive, before de-duplication, labels and folds; the parts
  are a dataset a Dask job can read; ``cohort.parquet`` remains the table every stage reads.

These files (and ``eda.html``, ``duplicates.csv``) are one set, replaced all at once
(:mod:`melanet.ingest_write`): they never come from two runs, and a run that fails or finds
nothing usable leaves an existing DATA_DIR untouched. The labels table is checked before any
pixel is decoded (:mod:`melanet.labels`). Every regular file under DICOM_DIR is seen: files
seen = rows + error rows; symbolic links out of DICOM_DIR are error rows unless
``follow_symlinks``. Identifiers leave only as keyed pseudonyms (:mod:`melanet.privacy`).

The cache is content-addressed (sha256 of the file) under a folder named by the
pixel settings, with the header columns in a ``.json`` beside each ``.npy``, so a
re-run skips decoding any file whose bytes and settings are unchanged, and two
byte-identical files share one cache entry. ``.npy`` was chosen
by ``scripts/bench_ingest.py``: loading it is ~50x faster than decoding the DICOM
again and several times faster than PNG.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field
from sklearn.model_selection import StratifiedGroupKFold

from melanet import ingest_write, privacy
from melanet.cohort import COHORT_FILE, DICOM_COLUMNS, ERRORS_FILE
from melanet.descriptors import (DESCRIPTOR_VERSION, LESION_COLUMNS, descriptor_rule, empty_descriptors,
                                 lesion_descriptors, rule_summary, warm_up)
from melanet.config import Choice, StageConfig, config_to_yaml
from melanet.console import console, progress
from melanet.dicom.pixels import MULTIFRAME_POLICIES
from melanet.dicom.readers import READERS
from melanet.errors import DicomError, InputDataError
from melanet.images import RESIZE_MODES, resize_square  # noqa: F401  (re-exported: melanet.ingest.resize_square)
from melanet.io import atomic_open, atomic_path, check_out_dir, write_csv, write_json, write_parquet, write_text
from melanet.optional import require
from melanet.labels import (DICOM_SUFFIXES, EMPTY_TARGET, image_id_for, join_labels, precheck_keys,  # noqa: F401
                            prepare_labels, read_labels)
from melanet.privacy import pseudonymise  # noqa: F401  (re-exported: melanet.ingest.pseudonymise)
from melanet.processes import imap_unordered
from melanet.runtime import available_cores
from melanet.targets import TargetType

# DICOM_SUFFIXES (melanet.labels): only these suffixes are stripped from file names to make image_id:
# DICOM file names are often UIDs ("1.2.840.113619.2.55.3") whose dots are not extensions.
ENGINES = ("local", "dask")
PARTS_DIR = "cohort_parts"
# Column types of the decoded rows; the other DICOM columns are text.
INT_COLUMNS = ("rows", "cols", "frames", "bits_stored")
FLOAT_COLUMNS = ("age",)

# Name-valued settings: an unknown name fails when the config loads (melanet.config.Choice).
ResizeMode = Choice("resize", RESIZE_MODES)
MultiframePolicy = Choice("multiframe policy", MULTIFRAME_POLICIES)
Reader = Choice("reader", READERS)
Engine = Choice("engine", ENGINES)


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
    resize: ResizeMode = Field(
        "squash", description="squash: resize to a square ignoring aspect; pad: pad to square first.")
    multiframe: MultiframePolicy = Field(
        "middle", description="Which frame of a multi-frame file becomes the image (mip = max projection).")
    reader: Reader = Field("pydicom", description="DICOM reader: pydicom or sitk.")
    workers: int = Field(0, ge=0, description="Worker processes; 0 = every core this process may run on.")
    chunk_size: int = Field(16, ge=1, description="Files per task sent to a worker.")
    part_rows: int = Field(50_000, ge=1, description="Decoded rows packed into one table (with engine dask, one "
                                                     "cohort_parts/ file) as they arrive.")
    engine: Engine = Field("local", description="local (processes) or dask.")
    scheduler: str | None = Field(None, description="Dask scheduler address; none = a local cluster.")
    eda: bool = Field(True, description="Write DATA_DIR/eda.html after ingest.")
    target_type: TargetType = Field(
        "auto", description="auto/binary: the target must be 0/1 (or positive_class given); multiclass: any values.")
    positive_class: str | None = Field(None, description="Binarise the target: this value -> 1, others -> 0 "
                                                          "(the original values kept in <target>_original).")
    keep_columns: list[str] = Field(default_factory=list, description="Label columns to keep although their "
                                                                      "names look like direct identifiers.")
    follow_symlinks: bool = Field(False, description="Follow symbolic links to files outside dicom_dir.")
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

def scan_folder(dicom_dir: Path, exclude: Path | None = None,
                follow_symlinks: bool = False) -> tuple[list[Path], list[dict[str, str]]]:
    """Every regular file under ``dicom_dir`` (any extension, sorted) and an error row for each entry skipped.

    A symbolic link is followed when its target lies inside ``dicom_dir`` (or
    always, with ``follow_symlinks``); a link out of the folder, a broken link
    and a special file (FIFO, socket, device) become ``{"path", "stage",
    "error"}`` rows, so that files seen = rows + error rows. A folder reached
    twice (a link loop) is read once; the ``exclude`` subtree is skipped.
    """
    dicom_dir = Path(dicom_dir)
    root = dicom_dir.resolve()
    exclude = exclude.resolve() if exclude is not None else None
    files: list[Path] = []
    skipped: list[dict[str, str]] = []
    seen = {root}
    stack = [dicom_dir]

    def skip(path: Path, stage: str, error: str) -> None:
        skipped.append({"path": path.relative_to(dicom_dir).as_posix(), "stage": stage, "error": error})

    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skip(folder, "read", f"cannot list folder: {exc.strerror}")
            continue
        for entry in entries:
            path = Path(entry.path)
            real = Path(os.path.realpath(path))
            if entry.is_symlink():
                if not real.exists():
                    skip(path, "symlink", f"broken symbolic link (to {os.readlink(path)}); skipped")
                    continue
                if not (real == root or real.is_relative_to(root)) and not follow_symlinks:
                    skip(path, "symlink", f"symbolic link to {real}, outside the DICOM folder; skipped "
                                          f"(pass --follow-symlinks to read it)")
                    continue
            if real.is_dir():
                if real not in seen and real != exclude:
                    seen.add(real)
                    stack.append(path)
            elif real.is_file():
                files.append(path)
            else:
                skip(path, "read", "not a regular file (FIFO, socket or device); skipped")
    return sorted(files, key=lambda p: p.relative_to(dicom_dir).as_posix()), skipped


def list_files(dicom_dir: Path, exclude: Path | None = None) -> list[Path]:
    """Every regular file under ``dicom_dir`` that :func:`scan_folder` reads, sorted."""
    return scan_folder(dicom_dir, exclude)[0]


#: Bumped whenever decoding changes cached pixels for the same settings (2: 8-bit JPEG 2000 decoded at a
#: reduced resolution level; 3: 8-bit baseline JPEG decoded at 1/2, 1/4 or 1/8 scale), so that a re-run does
#: not mix entries of two decoders in one cache folder.
PIXELS_VERSION = 3


def settings_tag(settings: dict[str, Any]) -> str:
    """Short stable name of a pixel-settings dict and :data:`PIXELS_VERSION` (the cache sub-folder)."""
    text = ",".join(f"{k}={settings[k]}" for k in sorted(settings)) + f",pixels={PIXELS_VERSION}"
    return f"s{settings['image_size']}-" + hashlib.sha1(text.encode()).hexdigest()[:8]


#: Files up to this size (bytes) are read into memory once, hashed and parsed from there; larger ones are hashed
#: in blocks and parsed from disk (a second read) so that a huge multi-frame file is not held twice.
READ_ONCE_MAX_BYTES = 64 << 20


def _read_hashed(path: Path, max_bytes: int = READ_ONCE_MAX_BYTES) -> tuple[bytes | None, str]:
    """(the file's bytes, or None when it is larger than ``max_bytes``; its sha256 hex digest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size <= max_bytes:
            data = fh.read()
            digest.update(data)
            return data, digest.hexdigest()
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return None, digest.hexdigest()


# --------------------------------------------------------------------------- per-file work

def process_file(path: Path, rel: str, out_dir: Path, settings: dict[str, Any], key: bytes,
                 descriptors: bool = True) -> dict[str, Any]:
    """Turn one file into a cohort row (``{"row": ...}``) or an error (``{"error": ...}``).

    Pure apart from writing the cache entry; safe in a worker process or on a Dask
    worker. A cache entry is the image (``<sha>.npy``) plus its header columns
    (``<sha>.json``); when both exist for the same settings and key the file is not
    decoded again. Identifiers leave as keyed pseudonyms only (PatientID,
    SOPInstanceUID; :mod:`melanet.privacy`); error messages name the file by ``rel``.
    With ``descriptors`` the ``lesion_*`` columns are measured from the
    cached pixels and kept in the ``.json`` too (re-measured only when
    :data:`melanet.descriptors.DESCRIPTOR_VERSION` changes).
    """
    from melanet.dicom.readers import read_dicom

    try:
        data, sha = _read_hashed(path)  # the bytes are parsed below: one read of the file, not two
    except OSError as exc:
        return {"error": {"path": rel, "stage": "read", "error": f"cannot read file: {exc.strerror or exc}"}}
    image_path = f"images/{settings_tag(settings)}/{sha[:2]}/{sha}.npy"
    cache_file = out_dir / image_path
    sidecar = cache_file.with_suffix(".json")
    image_id = image_id_for(rel)
    key_id = privacy.key_id(key)
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
        rec = read_dicom(path, reader=settings["reader"], multiframe=settings["multiframe"],
                         min_side=settings["image_size"], data=data)
    except DicomError as exc:
        return {"error": {"path": rel, "stage": exc.stage, "error": str(exc).replace(str(path), rel)}}
    except Exception as exc:  # a reader bug must not lose the file: record it with its type
        return {"error": {"path": rel, "stage": "decode",
                          "error": f"{type(exc).__name__}: {exc}".replace(str(path), rel)}}
    image = resize_square(rec.pixels, settings["image_size"], settings["resize"])
    with atomic_open(cache_file) as fh:
        np.save(fh, image, allow_pickle=False)
    meta = dict(rec.meta)
    raw_patient = meta.pop("patient_id_raw", None)
    study_uid = meta.pop("study_instance_uid", None)
    if raw_patient:
        patient = pseudonymise(f"patient:{raw_patient}", key)
    else:  # no PatientID: each study (else each image) stands for its own patient
        patient = pseudonymise(f"study:{study_uid or meta.get('sop_instance_uid') or sha}", key)
    row = {col: meta.get(col) for col in DICOM_COLUMNS}
    row.update(image_id=image_id, patient_id=patient, sha256=sha, image_path=image_path,
               sop_instance_uid=privacy.pseudonymise_uid(meta.get("sop_instance_uid"), key))
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
    """Yield chunk results as they finish; at most ``4 * workers`` chunks in flight (flat memory).

    The workers die with this process and are killed, not waited for, when it
    stops early (:func:`melanet.processes.imap_unordered`).
    """
    with opencv_threads(1):
        if workers <= 1:
            for chunk in chunks:
                yield _process_chunk(chunk, *args)
            return
        if args[-1]:  # descriptors: the forked workers inherit OpenCV's CIELAB tables instead of each building them
            warm_up()
        yield from imap_unordered(_process_chunk, ((chunk, *args) for chunk in chunks), workers)


@contextmanager
def opencv_threads(n: int) -> Iterator[None]:
    """OpenCV's thread count set to ``n`` in this process (and the workers it forks) for the block.

    Ingest's OpenCV calls work on one small image at a time, where OpenCV's
    own thread pool costs more than it saves (idle 2 cores, 1,063 files: 2
    workers 4.53 s with one thread each against 4.97 s, the single-process
    run 20% less CPU). Set in the parent before the fork: calling
    ``cv2.setNumThreads`` inside a forked worker can hang on the parent's
    pool lock.
    """
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _run_dask(chunks: list[list], scheduler: str | None, workers: int, args: tuple) -> Iterator[list[dict]]:
    """The same per-chunk function on a Dask cluster (``scheduler`` address, or a local cluster)."""
    from melanet.cluster import dask_client

    with dask_client(scheduler, workers, needed_by="ingest --engine dask") as client:
        as_completed = require("dask.distributed", "ingest --engine dask").as_completed

        futures = [client.submit(_process_chunk, chunk, *args, pure=False) for chunk in chunks]
        for fut in as_completed(futures):
            yield fut.result()
            fut.release()


# --------------------------------------------------------------------------- labels and folds

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
    """The pseudonymisation key (:func:`melanet.privacy.load_key`: kept outside the data folder)."""
    return privacy.load_key(out_dir, create=True)


def check_inputs(cfg: IngestConfig) -> None:
    """DICOM folder a folder, out_dir not a file: before anything is written (names are checked by IngestConfig)."""
    if not Path(cfg.dicom_dir).is_dir():
        raise InputDataError(f"DICOM folder {cfg.dicom_dir} does not exist or is not a folder; check the path")
    if Path(cfg.out_dir).exists() and not Path(cfg.out_dir).is_dir():
        raise InputDataError(f"--out {cfg.out_dir} is a file; give a folder for the data (it is made if missing)")


def scan_inputs(cfg: IngestConfig, out_dir: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """:func:`scan_folder` of ``cfg.dicom_dir`` with its settings (``out_dir`` left out when inside it)."""
    dicom_dir = Path(cfg.dicom_dir)
    inside = out_dir.resolve().is_relative_to(dicom_dir.resolve())
    return scan_folder(dicom_dir, exclude=out_dir if inside else None, follow_symlinks=cfg.follow_symlinks)


def decode_folder(cfg: IngestConfig, out_dir: Path, key: bytes, label: str = "ingest",
                  scan: tuple[list[Path], list[dict]] | None = None,
                  parts_dir: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    """Decode every file under ``cfg.dicom_dir`` into (rows, errors, files seen, skipped).

    ``scan`` is a :func:`scan_inputs` result already made; ``parts_dir`` is where
    ``--engine dask`` writes its parts (default ``out_dir/cohort_parts``).
    """
    check_inputs(cfg)
    dicom_dir = Path(cfg.dicom_dir)
    files, skipped_entries = scan if scan is not None else scan_inputs(cfg, out_dir)
    items = [(str(p), p.relative_to(dicom_dir).as_posix()) for p in files]
    workers = cfg.workers or available_cores()
    settings = cfg.pixel_settings()
    args = (str(out_dir), settings, key, cfg.descriptors)
    columns = DICOM_COLUMNS + (LESION_COLUMNS if cfg.descriptors else [])
    chunks = list(_chunks(items, cfg.chunk_size if workers > 1 or cfg.engine == "dask" else len(items) or 1))
    if cfg.engine != "dask":
        parts_dir = None
    elif parts_dir is None:
        parts_dir = out_dir / PARTS_DIR
        for stale in parts_dir.glob("part-*.parquet"):  # parts of an earlier run would mix with this one's
            stale.unlink()
    # Rows arrive as dicts (~1 KB each); every part_rows of them are packed into a typed table (~0.4 KB a row),
    # so the driver's memory stays near the size of the final cohort however many files there are.
    packed: list[pd.DataFrame] = []
    rows, errors, skipped = [], list(skipped_entries), 0

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
    n_seen = len(items) + len(skipped_entries)
    return table, errs.sort_values("path", kind="stable").reset_index(drop=True), n_seen, skipped


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
    """Ingest ``cfg.dicom_dir`` into ``cfg.out_dir`` (see module docstring).

    Everything that can be checked without decoding is checked first (options,
    folder, labels table, that the folder has files and the labels name some of
    them); nothing is written before. The output set is then built in a staging
    folder and swapped in at once (:mod:`melanet.ingest_write`): a run that
    fails, finds nothing usable or is killed leaves an existing DATA_DIR as it was.
    """
    start = time.perf_counter()
    out_dir = check_out_dir(cfg.out_dir)
    check_inputs(cfg)
    prepared = None
    if cfg.labels:
        protected = [cfg.fold_column] if cfg.fold_column else []
        prepared = prepare_labels(read_labels(Path(cfg.labels), cfg.label_key), cfg.label_key, cfg.target,
                                  target_type=cfg.target_type, positive_class=cfg.positive_class,
                                  keep_columns=cfg.keep_columns, protected=protected,
                                  where=f"labels table {cfg.labels}")
    scan = scan_inputs(cfg, out_dir)
    if not scan[0] and not scan[1]:
        raise InputDataError(f"DICOM folder {cfg.dicom_dir} holds no files; check the path (files are found in "
                             f"sub-folders too, with any extension)")
    if prepared is not None:
        precheck_keys(prepared.table, cfg.label_key, [p.relative_to(cfg.dicom_dir).as_posix() for p in scan[0]],
                      where=f"labels table {cfg.labels}")
    made_out_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with ingest_write.locked(out_dir):
            removed = ingest_write.recover(out_dir)
            if removed:
                console.print(f"removed {removed} leftover(s) of an interrupted ingest in {out_dir}")
            with ingest_write.Staging(out_dir) as stage:
                result = _ingest_into(cfg, out_dir, stage, prepared, scan, start)
    except BaseException:
        if made_out_dir and not any(out_dir.iterdir()):
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return result


def _ingest_into(cfg: IngestConfig, out_dir: Path, stage: ingest_write.Staging, prepared, scan,
                 start: float) -> IngestResult:
    """Decode, join, fold and write the output set into ``stage``, then commit it into ``out_dir``."""
    key = load_key(out_dir)
    cohort, errors, n_files, skipped = decode_folder(cfg, out_dir, key, scan=scan, parts_dir=stage / PARTS_DIR)
    if len(cohort) == 0:
        by_stage = ", ".join(f"{k}: {v}" for k, v in errors["stage"].value_counts().items())
        first = errors.iloc[0] if len(errors) else None
        raise InputDataError(
            f"none of the {n_files} file(s) under {cfg.dicom_dir} could be ingested ({by_stage}; first: "
            f"{first['path']}: {first['error']}); {out_dir} is left as it was" if first is not None else
            f"no file under {cfg.dicom_dir} could be ingested; {out_dir} is left as it was")
    report = pd.DataFrame(columns=["key", "status", "row"])
    if prepared is not None:
        # a label may name a failed file by id, name, stem or path without any suffix
        failed = {alias: p for p in errors["path"]
                  for alias in (image_id_for(p), Path(p).name, Path(p).stem, Path(p).with_suffix("").as_posix())}
        cohort, report = join_labels(cohort, prepared.table, cfg.label_key, cfg.target, failed, key)
        n_matched = len(prepared.table) - int(report["status"].isin(["label_without_image",
                                                                     "label_for_failed_file"]).sum())
        if n_matched == 0:
            raise InputDataError(f"labels table {cfg.labels}: none of its {len(prepared.table)} labels matched an "
                                 f"ingested image (by {cfg.label_key!r}: id, path, name or SOPInstanceUID); check "
                                 f"--label-key and the DICOM folder; {out_dir} is left as it was")
        if cohort[cfg.target].notna().sum() == 0:
            raise InputDataError(f"labels table {cfg.labels}: every label that matched an image has an empty "
                                 f"{cfg.target!r}; fill the target; {out_dir} is left as it was")
    elif cfg.target not in cohort.columns:
        cohort[cfg.target] = np.nan
    if cfg.fold_column:
        cohort["fold"] = folds_from_column(cohort, cfg.fold_column if cfg.fold_column != "fold" else "label_fold")
    else:
        cohort["fold"] = assign_folds(cohort, cfg.target, cfg.folds, cfg.seed)

    write_parquet(stage / COHORT_FILE, cohort)
    write_csv(stage / ERRORS_FILE, errors)
    write_csv(stage / "labels_report.csv", report)
    write_text(stage / "ingest_config.yaml", config_to_yaml(cfg))
    n_labelled = int((cohort["fold"] >= 0).sum())
    n_empty = int((report["status"] == EMPTY_TARGET).sum())
    seconds = time.perf_counter() - start
    write_json(stage / "ingest_summary.json", {
        "files_seen": n_files, "rows": len(cohort), "errors": len(errors), "labelled": n_labelled,
        "unlabelled": len(cohort) - n_labelled, "skipped_unchanged": skipped,
        "labels_without_image": int((report["status"] == "label_without_image").sum()),
        "labels_for_failed_files": int((report["status"] == "label_for_failed_file").sum()),
        "labels_with_empty_target": n_empty,
        "target": cfg.target, "target_kind": prepared.kind if prepared is not None else None,
        "target_binarised_on": prepared.binarised_on if prepared is not None else None,
        "dropped_label_columns": prepared.dropped_columns if prepared is not None else [],
        "errors_by_stage": errors["stage"].value_counts().to_dict(),
        "pixel_settings": cfg.pixel_settings(), "seconds": round(seconds, 3),
    })
    if cfg.descriptors and len(cohort):
        rules = pd.Series([descriptor_rule(m, p) for m, p in zip(cohort["modality"], cohort["photometric"])])
        failed = int((~cohort["lesion_mask_ok"].to_numpy(bool) & rules.ne("none").to_numpy()).sum())
        console.print(f"{rule_summary(rules.value_counts().to_dict())}; no lesion found on {failed}", highlight=False)
    if cfg.eda:
        _write_eda(out_dir, stage.path, cohort, cfg.target)
    stage.commit()
    _print_summary(cfg, n_files, cohort, errors, report, skipped, seconds)
    unmatched = report.loc[report["status"] != EMPTY_TARGET, "key"].tolist()
    return IngestResult(out_dir, n_files, len(cohort), len(errors), n_labelled, skipped, seconds, unmatched)


def _write_eda(out_dir: Path, write_to: Path, cohort: pd.DataFrame, target: str) -> None:
    from melanet import eda

    try:
        eda.run(out_dir, eda.EDAConfig(target=target), cohort=cohort, out_dir=write_to)
    except Exception as exc:  # a broken page must not fail the ingest
        console.print(f"[yellow]EDA page not written[/] ({type(exc).__name__}: {exc}); run `melanet eda {out_dir}`")
        return
    console.print(f"EDA page: {out_dir / 'eda.html'}")


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
    unmatched = report[report["status"] != EMPTY_TARGET]
    if len(unmatched):
        sample = ", ".join(unmatched["key"].astype(str).head(5))
        console.print(f"[yellow]{len(unmatched)} label(s) matched no ingested image[/] (e.g. {sample}); see "
                      f"{Path(cfg.out_dir) / 'labels_report.csv'}")
    n_empty = int((report["status"] == EMPTY_TARGET).sum())
    if n_empty:
        console.print(f"[yellow]{n_empty} label(s) have an empty {cfg.target!r}[/]: those images are test rows "
                      f"(fold -1), listed in {Path(cfg.out_dir) / 'labels_report.csv'}")
