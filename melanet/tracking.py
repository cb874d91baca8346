"""Experiment tracking: MLflow or TensorBoard, off by default, chosen by name.

Trainers call ``start_tracking(backend, run_dir, uri, params)`` and use the
returned tracker's ``log_metrics`` / ``log_artifact`` / ``close``. With
``backend="none"`` every call is a no-op; MLflow logs to a local file store
(``RUN_DIR/mlruns``) unless a URI is given, so nothing reaches the network by
default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from melanet.config import Choice
from melanet.errors import unknown_choice
from melanet.optional import require

BACKENDS = ("none", "mlflow", "tensorboard")
#: The config type of every ``track`` key.
TrackingBackend = Choice("tracking backend", BACKENDS)


class NullTracker:
    """Tracking switched off."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path) -> None:
        pass

    def close(self) -> None:
        pass


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, f"{key}."))
        else:
            out[key] = v
    return out


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in _flat(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


class MlflowTracker:
    def __init__(self, run_dir: Path, uri: str | None, params: dict[str, Any], experiment: str):
        mlflow = require_backend("mlflow")
        self._mlflow = mlflow
        if uri is None:  # recent MLflow refuses a plain file store unless asked for explicitly
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri or (Path(run_dir).resolve() / "mlruns").as_uri())
        mlflow.set_experiment(experiment)
        self._run = mlflow.start_run(run_name=Path(run_dir).name)
        flat = {k: str(v)[:500] for k, v in _flat(params).items()}
        for i in range(0, len(flat), 100):  # mlflow caps params per batch
            mlflow.log_params(dict(list(flat.items())[i:i + 100]))

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._mlflow.log_metrics(_numeric(metrics), step=step)

    def log_artifact(self, path: str | Path) -> None:
        if Path(path).exists():
            self._mlflow.log_artifact(str(path))

    def close(self) -> None:
        self._mlflow.end_run()


class TensorBoardTracker:
    def __init__(self, run_dir: Path, params: dict[str, Any]):
        SummaryWriter = require_backend("tensorboard").SummaryWriter
        self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self._writer.add_text("config", "\n".join(f"{k}: {v}" for k, v in _flat(params).items()))

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        for k, v in _numeric(metrics).items():
            self._writer.add_scalar(k, v, global_step=step)

    def log_artifact(self, path: str | Path) -> None:
        pass  # TensorBoard has no artifact store; the file stays in the run directory

    def close(self) -> None:
        self._writer.close()


#: Backend name -> (module to import, package that provides it).
_MODULES = {"mlflow": ("mlflow", "mlflow"), "tensorboard": ("torch.utils.tensorboard", "tensorboard")}


def require_backend(backend: str) -> Any:
    """Check a backend name and import its module (None for ``none``); call before any work to fail early."""
    if backend not in BACKENDS:
        raise unknown_choice("tracking backend", backend, BACKENDS)
    if backend not in _MODULES:
        return None
    module, package = _MODULES[backend]
    return require(module, f"--track {backend}", package=package)


def start_tracking(backend: str, run_dir: str | Path, uri: str | None = None,
                   params: dict[str, Any] | None = None, experiment: str = "melanet"):
    """Start a tracker by name: ``none`` (default), ``mlflow`` or ``tensorboard``."""
    if backend not in BACKENDS:
        raise unknown_choice("tracking backend", backend, BACKENDS)
    if backend == "mlflow":
        return MlflowTracker(Path(run_dir), uri, params or {}, experiment)
    if backend == "tensorboard":
        return TensorBoardTracker(Path(run_dir), params or {})
    return NullTracker()
