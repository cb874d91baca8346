"""The Python API: one function per CLI command, the same work and the same messages.

Exported from the package itself (``melanet.ingest(...)``, ``melanet.train_gbdt(...)``),
and the only thing each CLI command calls, so the two cannot drift::

    import melanet

    src = melanet.synth("synth", patients=40, image_size=32)
    data = melanet.ingest(src.dicom_dir, out="data", labels=src.labels_path)
    gbdt = melanet.train_gbdt(data, out="runs/gbdt", num_boost_round=200)
    fusion = melanet.train_fusion(data, out="runs/fusion", config="fusion-cpu-small",
                                  **{"train.epochs": 1, "model.use_meta": True})
    blend = melanet.blend([fusion, gbdt], out="runs/blend", method="rank")
    blend.metrics["overall"]["auc"], blend.oof.head(), blend.report()

Configuration, lowest to highest precedence: the stage's defaults, ``config``
(a packaged config name such as ``"fusion-cpu-small"``, a YAML path, or a
dict), the named arguments (``None`` leaves the config's value), then
``overrides`` / keyword arguments (``section.key`` names, dotted or nested,
Python values: ``**{"model.use_meta": False}`` or ``overrides={"train": {"epochs": 1}}``),
then ``set`` (the CLI's ``--set`` strings, YAML-parsed: ``set=["train.epochs=1"]``).

Every function first calls :func:`melanet.runtime.prepare_process` (offline
Hugging Face hub, OpenMP wait policy), as every CLI command does, and checks
the optional packages its options need before any work
(:func:`melanet.optional.require`). Errors a user can fix are
:class:`melanet.errors.MelanetError`\\s; the CLI prints them as one line.
Stage modules are imported inside the functions, so ``import melanet`` stays
cheap (no torch, no pandas).
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from melanet.results import Cohort, Predictions, Run, Synth
from melanet.runtime import prepare_process

PathLike = str | os.PathLike
ConfigArg = str | os.PathLike | Mapping[str, Any] | None


# --------------------------------------------------------------------------- helpers


def _stage(name: str) -> Any:
    """A stage module (``melanet.ingest``...) imported on use; the function names here shadow the module names."""
    return importlib.import_module(f"melanet.{name}")


def _flag(value: Any) -> Any:
    """A named argument as the config takes it: paths as text (the CLI passes text), lists element-wise."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_flag(v) for v in value]
    return value


def _config(model_cls: type, config: ConfigArg, set: Iterable[str] | None, flags: Mapping[str, Any],
            overrides: Mapping[str, Any] | None, options: Mapping[str, Any]) -> Any:
    """defaults < ``config`` < named arguments (None = unset) < ``overrides`` and keyword options < ``set``."""
    from melanet.config import load_config

    if isinstance(config, os.PathLike):
        config = os.fspath(config)
    if isinstance(set, str):  # one override given as a string, not a list of characters
        set = [set]
    return load_config(model_cls, config, list(set) if set else None,
                       extra={k: _flag(v) for k, v in flags.items()},
                       values={**(overrides or {}), **options})


def _require_tracking(track: str) -> None:
    from melanet.tracking import require_backend

    require_backend(track)


def _paths(value: PathLike | Iterable[PathLike] | None) -> list[str] | None:
    """One path or many, as a list of text paths (``with_oof=run`` or ``with_oof=[run1, run2]``)."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    return [os.fspath(v) for v in value]


def _folds(folds: str | Iterable[int] | None) -> list[int] | None:
    if folds is None or not isinstance(folds, str):
        return None if folds is None else [int(k) for k in folds]
    from melanet.errors import ConfigError

    try:
        return [int(f) for f in folds.split(",") if f.strip() != ""]
    except ValueError:
        raise ConfigError(f"folds {folds!r}: give fold numbers separated by commas, e.g. 0,1") from None


# --------------------------------------------------------------------------- stages


def synth(out_dir: PathLike, *, patients: int | None = None, seed: int | None = None,
          image_size: int | None = None, prevalence: float | None = None, faults: bool | None = None,
          grayscale: float | None = None, image_cues: str | None = None, config: ConfigArg = None,
          set: Iterable[str] | None = None, overrides: Mapping[str, Any] | None = None, **options: Any) -> Synth:
    """Write a synthetic DICOM cohort with known true probabilities (``melanet synth``).

    ``out_dir`` receives ``dicom/``, ``labels.csv``, ``truth.csv`` and ``synth.json``.
    ``image_size`` is the image side in pixels; ``prevalence`` and ``grayscale``
    are fractions in 0-1. Other :class:`melanet.synth.SynthConfig` keys go as
    keyword arguments (``test_fraction=0.2``). Returns a :class:`~melanet.results.Synth`.
    """
    prepare_process()
    stage = _stage("synth")
    cfg = _config(stage.SynthConfig, config, set, {
        "out_dir": out_dir, "patients": patients, "seed": seed, "image_size": image_size,
        "prevalence": prevalence, "faults": faults or None, "grayscale_fraction": grayscale,
        "image_cues": image_cues}, overrides, options)
    result = stage.run(cfg)
    return Synth(result.out_dir)


def ingest(dicom_dir: PathLike, out: PathLike, *, labels: PathLike | None = None, label_key: str | None = None,
           target: str | None = None, folds: int | None = None, image_size: int | None = None,
           workers: int | None = None, reader: str | None = None, engine: str | None = None,
           scheduler: str | None = None, positive_class: str | None = None,
           keep_columns: Iterable[str] | None = None, follow_symlinks: bool | None = None,
           config: ConfigArg = None, set: Iterable[str] | None = None,
           overrides: Mapping[str, Any] | None = None, **options: Any) -> Cohort:
    """Read a DICOM folder into ``out``: cohort table, image cache, patient-grouped folds (``melanet ingest``).

    ``dicom_dir`` may be a :class:`~melanet.results.Synth`: its ``dicom/`` folder
    is read and its ``labels.csv`` is the default ``labels``. ``image_size`` is the
    cached image side in pixels; ``workers`` 0 means all cores. Returns a
    :class:`~melanet.results.Cohort` (``.table``, ``.errors``).
    """
    prepare_process()
    if isinstance(dicom_dir, Synth):
        labels = dicom_dir.labels_path if labels is None else labels
        dicom_dir = dicom_dir.dicom_dir
    stage = _stage("ingest")
    cfg = _config(stage.IngestConfig, config, set, {
        "dicom_dir": dicom_dir, "out_dir": out, "labels": labels, "label_key": label_key, "target": target,
        "folds": folds, "image_size": image_size, "workers": workers, "reader": reader, "engine": engine,
        "scheduler": scheduler, "positive_class": positive_class, "follow_symlinks": follow_symlinks,
        "keep_columns": list(keep_columns) if keep_columns is not None else None}, overrides, options)
    from melanet.optional import require

    if cfg.engine == "dask":
        require("dask.distributed", "ingest --engine dask")
    if cfg.reader == "sitk":
        require("SimpleITK", "ingest --reader sitk")
    stage.run(cfg)
    return Cohort(cfg.out_dir)


def train_fusion(data: PathLike, out: PathLike, *, config: ConfigArg = "fusion",
                 folds: str | Iterable[int] | None = None, resume: bool = False, exclude: PathLike | None = None,
                 track: str | None = None, track_uri: str | None = None, overwrite: bool | None = None,
                 set: Iterable[str] | None = None, overrides: Mapping[str, Any] | None = None,
                 **options: Any) -> Run:
    """Train the timm CNN + metadata MLP k-fold on ``data`` into ``out`` (``melanet train-fusion``).

    ``config`` defaults to the packaged ``fusion``; ``fusion-cpu-small`` is the
    CPU-sized one. ``folds`` runs a subset (``[0, 1]`` or ``"0,1"``; finish with
    :func:`merge`); ``resume`` skips finished folds; ``exclude`` is a CSV of
    ``image_id``s left out of training; ``overwrite`` replaces a different run
    already in ``out``. Returns the :class:`~melanet.results.Run`.
    """
    prepare_process()  # before torch loads: the OpenMP wait policy is read then
    stage = importlib.import_module("melanet.train.fusion")
    cfg = _config(stage.FusionConfig, config, set, {
        "data_dir": data, "out_dir": out, "exclude": exclude, "track": track, "track_uri": track_uri,
        "overwrite": overwrite}, overrides, options)
    _require_tracking(cfg.track)
    return Run(stage.run(cfg, folds=_folds(folds), resume=resume))


def train_gbdt(data: PathLike, out: PathLike, *, config: ConfigArg = "gbdt", engine: str | None = None,
               backend: str | None = None, scheduler: str | None = None,
               with_oof: PathLike | Iterable[PathLike] | None = None, tune: int | None = None,
               exclude: PathLike | None = None, track: str | None = None, track_uri: str | None = None,
               resume: bool = False, overwrite: bool | None = None, set: Iterable[str] | None = None, overrides: Mapping[str, Any] | None = None,
               **options: Any) -> Run:
    """Train LightGBM/XGBoost k-fold on ``data``'s metadata (+ patient context) into ``out`` (``melanet train-gbdt``).

    ``with_oof`` names image-model runs whose OOF/test scores become features;
    ``tune`` is a number of Optuna trials (needs ``melanet[scale]``);
    ``backend="dask"`` boosts on a Dask cluster (needs ``melanet[scale]``);
    ``resume`` keeps the folds an interrupted run of the same settings finished;
    ``overwrite`` replaces a different run already in ``out``. Returns the :class:`~melanet.results.Run`.
    """
    prepare_process()
    stage = importlib.import_module("melanet.train.gbdt")
    cfg = _config(stage.GBDTConfig, config, set, {
        "data_dir": data, "out_dir": out, "engine": engine, "backend": backend, "scheduler": scheduler,
        "with_oof": _paths(with_oof), "tune": tune, "exclude": exclude, "track": track, "track_uri": track_uri,
        "overwrite": overwrite}, overrides, options)
    from melanet.optional import require

    if cfg.tune:
        require("optuna", "train-gbdt --tune")
    if cfg.backend == "dask":
        require("dask.distributed", "train-gbdt --backend dask")
        require("dask.dataframe", "train-gbdt --backend dask")
    _require_tracking(cfg.track)
    stage.run(cfg, resume=resume)
    return Run(cfg.out_dir)


def merge(run_dir: PathLike) -> Run:
    """Merge a fusion run's per-fold outputs (folds run as separate jobs) into its OOF/test/metrics files."""
    prepare_process()
    importlib.import_module("melanet.train.fusion").merge(Path(os.fspath(run_dir)))
    return Run(run_dir)


def blend(runs: Iterable[PathLike], out: PathLike, *, method: str | None = None, config: ConfigArg = None,
          track: str | None = None, track_uri: str | None = None, overwrite: bool | None = None,
          set: Iterable[str] | None = None, overrides: Mapping[str, Any] | None = None, **options: Any) -> Run:
    """Blend runs' OOF and test predictions into ``out`` (``melanet blend``); ``method``: rank, weights or stack.

    Prints whether the blend beats each input (cross-validated on the OOF
    table). Returns the blend :class:`~melanet.results.Run`.
    """
    prepare_process()
    stage = _stage("blend")
    cfg = _config(stage.BlendConfig, config, set, {
        "runs": _paths(runs), "out_dir": out, "method": method, "track": track, "track_uri": track_uri,
        "overwrite": overwrite}, overrides, options)
    _require_tracking(cfg.track)
    stage.run(cfg)
    return Run(cfg.out_dir)


def predict(run: PathLike, dicom_dir: PathLike, out: PathLike | None = None, *,
            workers: int | None = None) -> Predictions:
    """Apply a trained fusion, gbdt or blend run to new DICOM files (``melanet predict``).

    The files are ingested with the run's own pixel settings. ``out`` is the
    CSV to write (``image_id, pred`` + per-class columns); by default a new
    temporary folder's ``predictions.csv``. Files that could not be used are
    listed in ``<out>.errors.csv`` and in ``.errors``.
    """
    prepare_process()
    import pandas as pd

    out_path = Path(os.fspath(out)) if out is not None else Path(
        tempfile.mkdtemp(prefix="melanet-predictions-")) / "predictions.csv"
    errors_path = out_path.with_suffix(".errors.csv")
    table = _stage("predict").run(Path(os.fspath(run)), Path(os.fspath(dicom_dir)), out_path, workers=workers)
    errors = pd.read_csv(errors_path) if errors_path.is_file() else pd.DataFrame(columns=["path", "stage", "error"])
    return Predictions(out_path, table, errors)


def report(run: PathLike) -> Path:
    """Write ``RUN_DIR/report.html`` (curves, calibration, per-fold metrics, error analysis); return its path."""
    prepare_process()
    return Path(_stage("report").run(Path(os.fspath(run))))


def eda(data: PathLike) -> Path:
    """Write ``DATA_DIR/eda.html`` (cohort overview, metadata, thumbnails, duplicates); return its path."""
    prepare_process()
    return Path(_stage("eda").run(Path(os.fspath(data))))


def suspects(run: PathLike, top: int = 50, out: PathLike | None = None) -> Path:
    """Write the ``top`` labelled rows whose OOF prediction disagrees most with the label; return the CSV path."""
    prepare_process()
    return Path(_stage("suspects").run(Path(os.fspath(run)), top=top,
                                       out=None if out is None else Path(os.fspath(out))))


def demo(out: PathLike = "melanet-demo", *, patients: int | None = None, config: ConfigArg = None,
         set: Iterable[str] | None = None, overrides: Mapping[str, Any] | None = None, **options: Any) -> Any:
    """synth -> ingest -> train-fusion -> train-gbdt -> blend -> report on a synthetic cohort; the summary table."""
    prepare_process()
    stage = _stage("demo")
    cfg = _config(stage.DemoConfig, config, set, {"out_dir": out, "patients": patients}, overrides, options)
    return stage.run(cfg)
