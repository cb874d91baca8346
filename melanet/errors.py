"""One exception family for every user-facing failure.

A :class:`MelanetError` carries a message that names the file, key or value at
fault and what to do about it. The CLI prints it without a traceback (unless
``--verbose``) and exits non-zero; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MelanetError(Exception):
    """Base class of every error a user can fix by changing input or options."""

    exit_code = 2


class ConfigError(MelanetError):
    """A configuration key or value is unknown or invalid."""


class InputDataError(MelanetError):
    """An input file or table (DICOM folder, labels table) cannot be used."""


class DicomError(MelanetError):
    """One DICOM file cannot be read or decoded; ingest records it in the error list."""

    def __init__(self, message: str, stage: str = "decode"):
        super().__init__(message)
        self.stage = stage


class MissingDependencyError(MelanetError):
    """An optional package needed for this input or option is not installed."""


class ArtifactError(MelanetError):
    """A stage's input artifacts (cohort, run directory) are missing or inconsistent."""


class WeightsNotFoundError(MelanetError):
    """Pretrained weights were asked for but are not available offline."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_choice(kind: str, value: str, choices: Iterable[str]) -> ConfigError:
    """Build the error for a name that is not in a registry (backbone, reader, engine...)."""
    choices = sorted(str(c) for c in choices)
    shown = ", ".join(choices[:20]) + (" ..." if len(choices) > 20 else "")
    return ConfigError(
        f"unknown {kind} {value!r}{did_you_mean(value, choices)}; choose one of: {shown}"
    )
