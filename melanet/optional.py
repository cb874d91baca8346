"""Optional dependencies: every import of a package that a plain ``pip install melanet`` may lack goes through here.

:func:`require` imports the module or raises :class:`~melanet.errors.MissingDependencyError`
with one line naming the feature that needs it and the install command, e.g.::

    train-gbdt --tune needs optuna, which is not installed; pip install "melanet[scale]"

The table :data:`OPTIONAL` says which extra of ``pyproject.toml`` provides each
package (README "Install" lists the same); a package that is a core dependency
but may still be broken or absent in an environment has ``extra=None`` and the
message names the package itself. Other extras (e.g. ``[weights]``) add a row.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from melanet.errors import MissingDependencyError


@dataclass(frozen=True)
class OptionalPackage:
    """Where an importable module comes from: its pip distribution and the melanet extra that installs it."""

    distribution: str
    extra: str | None


#: Top-level import name -> where it comes from. Submodules (``dask.distributed``) use their top-level row.
OPTIONAL: dict[str, OptionalPackage] = {
    "dask": OptionalPackage("dask[dataframe,distributed]", "scale"),
    "distributed": OptionalPackage("dask[dataframe,distributed]", "scale"),
    "mlflow": OptionalPackage("mlflow-skinny", "scale"),
    "tensorboard": OptionalPackage("tensorboard", "scale"),
    "optuna": OptionalPackage("optuna", "scale"),
    "SimpleITK": OptionalPackage("SimpleITK", None),
}


def install_hint(module: str) -> str:
    """The pip command that provides ``module`` (``pip install "melanet[scale]"``)."""
    top = module.split(".")[0]
    source = OPTIONAL.get(top)
    if source is None:
        return f"pip install {top}"
    if source.extra is None:
        return f'pip install "{source.distribution}"'
    return f'pip install "melanet[{source.extra}]"'


def require(module: str, feature: str, *, package: str | None = None) -> ModuleType:
    """Import ``module`` for ``feature`` (an option or input, e.g. ``"train-gbdt --tune"``), or fail in one line.

    ``package`` names the missing package in the message when it differs from
    ``module``'s top-level name (``torch.utils.tensorboard`` needs ``tensorboard``).
    Raises MissingDependencyError naming the feature and the install command.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = package or _missing_name(exc, module)
        raise MissingDependencyError(
            f"{feature} needs {missing}, which is not installed; {install_hint(missing)}"
        ) from None


def available(module: str) -> bool:
    """Whether ``module`` can be imported (imports it; for choosing a default, not for failing)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _missing_name(exc: ImportError, module: str) -> str:
    """The top-level package that failed to import: the one named in the error if it is ours, else ``module``'s."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    return name if name in OPTIONAL else module.split(".")[0]
