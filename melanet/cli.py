"""Command line: parses arguments, loads the config, calls a stage runner. Nothing else.

Each command mirrors a Python call (``melanet.ingest.run(cfg)``...), so a stage is
usable from Python exactly as from the shell.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

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
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write dicom/, labels.csv and truth.csv into.")],
    patients: Annotated[Optional[int], typer.Option(help="Number of patients.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (same seed, same files).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Image side in pixels.")] = None,
    prevalence: Annotated[Optional[float], typer.Option(help="Approximate fraction of malignant lesions.")] = None,
    faults: Annotated[bool, typer.Option(help="Add broken inputs (truncated, non-DICOM, no pixels, no file meta).")] = False,
    grayscale: Annotated[Optional[float], typer.Option(help="Fraction of grayscale MONOCHROME1/2 files with rescale and window tags.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write a synthetic DICOM cohort with known true probabilities."""
    from melanet import synth as stage
    from melanet.config import load_config

    cfg = load_config(stage.SynthConfig, config, set_, extra={
        "out_dir": str(out_dir), "patients": patients, "seed": seed, "image_size": image_size,
        "prevalence": prevalence, "faults": faults or None, "grayscale_fraction": grayscale})
    stage.run(cfg)


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
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Read a DICOM folder into a cohort table, an image cache and patient-grouped folds."""
    from melanet import ingest as stage
    from melanet.config import load_config

    cfg = load_config(stage.IngestConfig, config, set_, extra={
        "dicom_dir": str(dicom_dir), "out_dir": str(out), "labels": str(labels) if labels else None,
        "label_key": label_key, "target": target, "folds": folds, "image_size": image_size,
        "workers": workers, "reader": reader, "engine": engine, "scheduler": scheduler})
    stage.run(cfg)


def main() -> None:
    """Console-script entry point: user errors print one message, no traceback."""
    try:
        app()
    except MelanetError as exc:
        if _state["verbose"]:
            console.print_exception()
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
