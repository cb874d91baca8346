"""Replace an ingest's output files in DATA_DIR all at once, so they never come from two runs.

An ingest writes its files (``cohort.parquet``, ``ingest_errors.csv``,
``labels_report.csv``, ``ingest_summary.json``, ``ingest_config.yaml``,
``eda.html``, ``duplicates.csv``, ``cohort_parts/``) into a staging folder
``DATA_DIR/.ingest-staging-<id>/``. Nothing in DATA_DIR changes until all of
them are there; then :meth:`Staging.commit`

1. writes the journal ``DATA_DIR/.ingest-commit.json`` (atomically): which
   files replace which, and which old ones go (a file of the set that this
   run did not write, e.g. an old ``eda.html`` after ``eda: false``);
2. renames each staged file over its old version (``cohort.parquet`` last);
3. deletes the journal.

A kill before step 1 leaves the old set (the staging folder is removed by the
next run); a kill during step 2 leaves the journal, which readers refuse
(:func:`melanet.cohort.read_cohort`) and the next ingest completes before it
does anything else (:func:`recover`). The image cache under ``images/`` is
content-addressed and shared by all runs, so it is written in place; partial
``*.tmp`` files that a kill leaves there are removed by the next run.

One ingest at a time writes a DATA_DIR: :func:`locked` holds an exclusive
``flock`` on the folder (released by the kernel when the process dies).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from melanet.cohort import COHORT_FILE, ERRORS_FILE, INGEST_JOURNAL
from melanet.errors import InputDataError
from melanet.io import write_json

STAGING_PREFIX = ".ingest-staging-"
#: Every file (or folder) of an ingest's output set; replaced together. ``cohort.parquet`` goes last.
OUTPUT_SET = (ERRORS_FILE, "labels_report.csv", "ingest_summary.json", "ingest_config.yaml", "eda.html",
              "duplicates.csv", "cohort_parts", COHORT_FILE)


@contextlib.contextmanager
def locked(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``data_dir`` (a folder), or fail at once if another ingest holds it."""
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputDataError(f"another `melanet ingest` is writing {data_dir}; wait for it to finish or "
                                 f"give another --out") from None
        yield
    finally:
        os.close(fd)


class Staging:
    """A staging folder in ``data_dir`` for one run's output set (a context manager; removed on failure)."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Staging:
        self.path.mkdir(parents=True)
        return self

    def __exit__(self, *exc_info) -> None:
        shutil.rmtree(self.path, ignore_errors=True)  # after commit() it is gone already

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def commit(self) -> None:
        """Swap the staged set in (see the module notes)."""
        present = [n for n in OUTPUT_SET if (self.path / n).exists()]
        write_json(self.data_dir / INGEST_JOURNAL, {
            "staging": self.path.name, "replace": present, "remove": [n for n in OUTPUT_SET if n not in present]})
        apply_journal(self.data_dir)


def apply_journal(data_dir: Path) -> bool:
    """Finish the swap a journal describes (idempotent: safe to re-run after a kill); False if none."""
    journal_path = Path(data_dir) / INGEST_JOURNAL
    if not journal_path.is_file():
        return False
    journal = json.loads(journal_path.read_text())
    staging = Path(data_dir) / journal["staging"]
    for name in journal["replace"]:
        src, dst = staging / name, Path(data_dir) / name
        if not src.exists():  # moved before the kill
            continue
        if src.is_dir() and dst.exists():  # a folder cannot be renamed over a non-empty one
            old = staging / f".old-{name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dst, old)
        os.replace(src, dst)
    for name in journal["remove"]:
        _remove(Path(data_dir) / name)
    shutil.rmtree(staging, ignore_errors=True)
    journal_path.unlink()
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def recover(data_dir: Path) -> int:
    """Before an ingest writes: finish an interrupted swap, drop stale staging folders and ``*.tmp`` files.

    Returns how many leftovers were removed. Call only while holding :func:`locked`.
    """
    data_dir = Path(data_dir)
    removed = int(apply_journal(data_dir))
    for stale in data_dir.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
        removed += 1
    # io.atomic_path and io.atomic_open name their temporaries ".<name>.<pid>-<n>.tmp" beside the target.
    for tmp in data_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    images = data_dir / "images"
    if images.is_dir():
        for root, _, names in os.walk(images):
            for name in names:
                if name.startswith(".") and name.endswith(".tmp"):
                    Path(root, name).unlink(missing_ok=True)
                    removed += 1
    return removed
