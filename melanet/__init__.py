"""melanet: hybrid image + DICOM-metadata classification (CNN+metadata fusion, GBDT, blend).

The Python API mirrors the CLI, one function per command (see :mod:`melanet.api`
and ``docs/python-api.md``)::

    import melanet
    src = melanet.synth("synth", patients=40, image_size=32)
    data = melanet.ingest(src, out="data")
    run = melanet.train_gbdt(data, out="runs/gbdt")
    run.metrics["overall"], run.oof.head(), run.report()

Everything is loaded on first use: ``import melanet`` imports neither torch nor
pandas. Four of the functions share their name with the stage module that does
the work (``synth``, ``ingest``, ``blend``, ``predict``; also ``report``,
``eda``, ``suspects``, ``demo``). Python binds a submodule onto its package
when it is imported, so ``melanet.ingest`` *is* the module ``melanet/ingest.py``
(``from melanet import ingest; ingest.IngestConfig`` keeps working); calling it,
``melanet.ingest(dicom_dir, out=...)``, calls :func:`melanet.api.ingest`.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from typing import Any

__version__ = "0.1.0"

#: API functions (melanet.api) exported here.
_API = ("synth", "ingest", "train_fusion", "train_gbdt", "merge", "blend", "predict", "report", "eda",
        "suspects", "demo")
#: API functions whose name is also a stage module: the module is made callable.
_CALLABLE_MODULES = frozenset({"synth", "ingest", "blend", "predict", "report", "eda", "suspects", "demo"})
_RESULTS = ("Run", "Cohort", "Synth", "Predictions")
_ERRORS = ("MelanetError", "ConfigError", "InputDataError", "ArtifactError", "MissingDependencyError")

__all__ = [*_API, *_RESULTS, *_ERRORS, "__version__"]


def _api_function(name: str) -> Any:
    return getattr(importlib.import_module("melanet.api"), name)


class _StageModule(types.ModuleType):
    """A stage module that is also its API function: ``melanet.ingest(...)`` calls ``melanet.api.ingest(...)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _api_function(self.__name__.rpartition(".")[2])(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:  # so that help()/IDEs show the API function's arguments
        return inspect.signature(_api_function(self.__name__.rpartition(".")[2]))


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # The import system binds every submodule here when it is first imported, however it is imported.
        if name in _CALLABLE_MODULES and type(value) is types.ModuleType:
            value.__class__ = _StageModule
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    if name in _CALLABLE_MODULES:
        return importlib.import_module(f"{__name__}.{name}")  # bound (and made callable) by _Package.__setattr__
    if name in _API:
        return _api_function(name)
    if name in _RESULTS:
        return getattr(importlib.import_module("melanet.results"), name)
    if name in _ERRORS:
        return getattr(importlib.import_module("melanet.errors"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


sys.modules[__name__].__class__ = _Package
