"""Command line: parses arguments and calls the Python API function of the same name. Nothing else.

Each command body is one call to :mod:`melanet.api` (``melanet ingest`` ->
``melanet.ingest(...)``), which loads the config and runs the stage, so the
shell and Python cannot drift.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from melanet import api
from melanet.console import console
from melanet.errors import MelanetError

app = typer.Typer(
    name="melanet",
    help="Hybrid image + DICOM-metadata classification: ingest, train-fusion, train-gbdt, blend, predict.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"verbose": False}

ConfigOpt = Annotated[Optional[str], typer.Option("--config", "-c", help="YAML config file or packaged config name.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a config key: --set train.epochs=3 (repeatable).")]
DataOpt = Annotated[Path, typer.Option("--data", "-d", help="Data folder written by `melanet ingest`.")]
RunOutOpt = Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")]
ExcludeOpt = Annotated[Optional[Path], typer.Option(help="CSV with image_id of rows to leave out of training (still predicted out of fold).")]
TrackOpt = Annotated[Optional[str], typer.Option(help="Experiment tracking: none, mlflow or tensorboard.")]
TrackUriOpt = Annotated[Optional[str], typer.Option(help="MLflow tracking URI (default: a local file store in the run).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace another run found in --out (otherwise refused).")]


def _folds_arg(folds: str | None) -> list[int] | None:
    if folds is None:
        return None
    try:
        return [int(f) for f in folds.split(",") if f.strip() != ""]
    except ValueError:
        raise MelanetError(f"--folds {folds!r}: give fold numbers separated by commas, e.g. --folds 0,1") from None


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug output.")] = False) -> None:
    _state["verbose"] = verbose
    from melanet.runtime import prepare_process

    prepare_process()


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write dicom/, labels.csv and truth.csv into.")],
    patients: Annotated[Optional[int], typer.Option(help="Number of patients.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (same seed, same files).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Image side in pixels.")] = None,
    prevalence: Annotated[Optional[float], typer.Option(help="Approximate fraction of malignant lesions.")] = None,
    faults: Annotated[bool, typer.Option(help="Add broken inputs (truncated, non-DICOM, no pixels, no file meta).")] = False,
    grayscale: Annotated[Optional[float], typer.Option(help="Fraction of grayscale MONOCHROME1/2 files with rescale and window tags.")] = None,
    image_cues: Annotated[Optional[str], typer.Option(help="Cues that carry the image term: all, colour or shape (the others are drawn as nuisance).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write a synthetic DICOM cohort with known true probabilities."""
    api.synth(out_dir, patients=patients, seed=seed, image_size=image_size, prevalence=prevalence, faults=faults,
              grayscale=grayscale, image_cues=image_cues, config=config, set=set_)


@app.command()
def ingest(
    dicom_dir: Annotated[Path, typer.Argument(help="Folder of DICOM files (searched recursively, any extension).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Data folder to write cohort.parquet, images/ and ingest_errors.csv into.")],
    labels: Annotated[Optional[Path], typer.Option(help="Labels table (CSV or parquet) with a key column and at least `target`.")] = None,
    label_key: Annotated[Optional[str], typer.Option(help="Key column of the labels table: file stem, relative path or SOPInstanceUID.")] = None,
    target: Annotated[Optional[str], typer.Option(help="Label column used to stratify the folds.")] = None,
    folds: Annotated[Optional[int], typer.Option(help="Number of patient-grouped folds.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Side of cached images in pixels.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes (0 = all cores).")] = None,
    reader: Annotated[Optional[str], typer.Option(help="DICOM reader: pydicom or sitk.")] = None,
    engine: Annotated[Optional[str], typer.Option(help="Execution engine: local or dask.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Dask scheduler address (with --engine dask).")] = None,
    positive_class: Annotated[Optional[str], typer.Option(help="Binarise the target: this value is 1, any other 0 (e.g. yes, melanoma).")] = None,
    keep_columns: Annotated[Optional[str], typer.Option(help="Comma-separated label columns to keep although they look like identifiers.")] = None,
    follow_symlinks: Annotated[bool, typer.Option("--follow-symlinks", help="Follow symbolic links to files outside DICOM_DIR.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Read a DICOM folder into a cohort table, an image cache and patient-grouped folds."""
    api.ingest(dicom_dir, out, labels=labels, label_key=label_key, target=target, folds=folds,
               image_size=image_size, workers=workers, reader=reader, engine=engine, scheduler=scheduler,
               positive_class=positive_class, follow_symlinks=follow_symlinks or None,
               keep_columns=[c.strip() for c in keep_columns.split(",") if c.strip()] if keep_columns else None,
               config=config, set=set_)


@app.command("train-fusion")
def train_fusion(
    data: DataOpt,
    out: RunOutOpt,
    config: ConfigOpt = "fusion",
    set_: SetOpt = None,
    folds: Annotated[Optional[str], typer.Option(help="Run only these folds, e.g. 0,1 (merge later with `melanet merge`).")] = None,
    resume: Annotated[bool, typer.Option(help="Skip folds that already finished.")] = False,
    exclude: ExcludeOpt = None,
    track: TrackOpt = None,
    track_uri: TrackUriOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train a timm CNN fused with a metadata MLP, k-fold, writing OOF and test predictions."""
    api.train_fusion(data, out, config=config, folds=_folds_arg(folds), resume=resume, exclude=exclude, track=track,
                     track_uri=track_uri, overwrite=overwrite or None, set=set_)


@app.command("train-gbdt")
def train_gbdt(
    data: DataOpt,
    out: RunOutOpt,
    config: ConfigOpt = "gbdt",
    set_: SetOpt = None,
    engine: Annotated[Optional[str], typer.Option(help="lightgbm (default) or xgboost.")] = None,
    backend: Annotated[Optional[str], typer.Option(help="Where boosting runs: local (default) or dask.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Dask scheduler address (with --backend dask; default: a local cluster).")] = None,
    with_oof: Annotated[Optional[list[Path]], typer.Option("--with-oof", help="Image-model run whose OOF/test scores become features (repeatable).")] = None,
    tune: Annotated[Optional[int], typer.Option(help="Optuna trials to tune hyper-parameters on the fold CV (0 = off).")] = None,
    exclude: ExcludeOpt = None,
    track: TrackOpt = None,
    track_uri: TrackUriOpt = None,
    resume: Annotated[bool, typer.Option(help="Keep the folds an interrupted run of the same settings finished.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train LightGBM/XGBoost on metadata (+ patient context) on the same folds."""
    api.train_gbdt(data, out, config=config, engine=engine, backend=backend, scheduler=scheduler,
                   with_oof=with_oof or None, tune=tune, exclude=exclude, track=track, track_uri=track_uri,
                   resume=resume, overwrite=overwrite or None, set=set_)


@app.command()
def merge(run_dir: Annotated[Path, typer.Argument(help="A train-fusion run whose folds ran as separate jobs.")]) -> None:
    """Merge per-fold outputs into oof.parquet / test.parquet / metrics.json (refuses if a fold is missing)."""
    api.merge(run_dir)


@app.command()
def blend(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to blend (each with oof.parquet and test.parquet).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Blend run folder to write.")],
    method: Annotated[Optional[str], typer.Option(help="rank, weights or stack.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    track: TrackOpt = None,
    track_uri: TrackUriOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Blend runs' OOF and test predictions; report whether the blend beats each part."""
    api.blend(runs, out, method=method, config=config, track=track, track_uri=track_uri,
              overwrite=overwrite or None, set=set_)


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A trained fusion, gbdt or blend run.")],
    dicom_dir: Annotated[Path, typer.Argument(help="Folder of new DICOM files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV to write: image_id,pred (+ per-class columns).")] = Path("predictions.csv"),
    workers: Annotated[Optional[int], typer.Option(help="Ingest worker processes (0 = all cores).")] = None,
) -> None:
    """Apply a trained run to new DICOM files with the preprocessing it was trained with."""
    api.predict(run_dir, dicom_dir, out, workers=workers)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the synthetic cohort, data and runs.")] = Path("melanet-demo"),
    patients: Annotated[Optional[int], typer.Option(help="Synthetic patients (default: the synth default).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run synth -> ingest -> train-fusion -> train-gbdt -> blend -> report on a synthetic cohort."""
    api.demo(out, patients=patients, config=config, set=set_)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A fusion, gbdt or blend run folder.")]) -> None:
    """Write RUN_DIR/report.html: curves, calibration, per-fold metrics, error analysis."""
    path = api.report(run_dir)
    console.print(f"wrote {path}")


@app.command()
def eda(data_dir: Annotated[Path, typer.Argument(help="Data folder written by `melanet ingest`.")]) -> None:
    """Write DATA_DIR/eda.html: cohort overview, metadata, image thumbnails, duplicates."""
    path = api.eda(data_dir)
    console.print(f"wrote {path}")


@app.command()
def suspects(
    run_dir: Annotated[Path, typer.Argument(help="A run folder with oof.parquet.")],
    top: Annotated[int, typer.Option(help="How many rows to list.")] = 50,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="CSV to write (default RUN_DIR/suspects.csv).")] = None,
) -> None:
    """List labelled rows whose OOF prediction disagrees most confidently with the label."""
    path = api.suspects(run_dir, top=top, out=out)
    console.print(f"wrote {path}")


def main() -> None:
    """Console-script entry point: user errors print one message, no traceback.

    Ctrl-C (SIGINT) and SIGTERM end the command after its clean-up (worker processes
    stopped, half-written files removed) with one line and exit 130 / 143.
    """
    from melanet.processes import Interrupted, install_interrupt_handlers

    install_interrupt_handlers()
    try:
        app()
    except MelanetError as exc:
        if _state["verbose"]:
            console.print_exception()
        # escaped: a message is plain text ("melanet[scale]", "--set x=[16,8]"), not console markup;
        # soft_wrap: one line however narrow the terminal, so it can be grepped and copied whole
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (Interrupted, KeyboardInterrupt) as exc:
        code = getattr(exc, "exit_code", 130)
        console.print(f"[yellow]interrupted[/] by {exc or 'SIGINT'}; re-run the command to finish", highlight=False)
        sys.exit(code)
