"""Process settings melanet needs, made in one place where the work starts (CLI command or Python API call).

Nothing here runs at import: ``import melanet`` (or any stage module) leaves the
process as it was. :func:`prepare_process` is called first by every CLI command
and by every function of :mod:`melanet.api`, so a stage behaves the same from a
notebook as from the shell:

- ``HF_HUB_OFFLINE=1`` unless the caller set it: nothing reaches the network at
  run time (pretrained weights come from a local file or cache). When
  ``huggingface_hub`` was already imported (it reads the variable once), its
  flag is switched too.
- ``OMP_WAIT_POLICY=PASSIVE`` unless set: OpenMP threads that spin while waiting
  turn a shared or oversubscribed CPU (loader workers, a second job) into a
  5-40x slowdown; sleeping waiters cost a few percent on an idle machine.
  OpenMP reads it once, when torch (libgomp) loads, so it only takes effect if
  torch was not imported before the first melanet call; :func:`prepare_process`
  returns whether it did.
- ``NO_ALBUMENTATIONS_UPDATE=1``, forced: albumentations (>= 1.4) asks PyPI for
  its latest version when imported unless it is set; a stray ``=0`` must not
  open a socket. :func:`melanet.train.data.build_train_transform` sets it too,
  just before its (lazy) albumentations import, for callers that skip the API.
- the process umask, read once (artifacts written through a temporary file get
  the permissions a plainly created file would, see :mod:`melanet.io`).
"""

from __future__ import annotations

import functools
import os
import sys

_DEFAULTS = {"HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def prepare_process() -> dict[str, bool]:
    """Apply melanet's process settings (idempotent, cheap); see the module docstring.

    Returns ``{"hf_offline": ..., "omp_passive_effective": ...}``: whether the
    Hugging Face hub is offline, and whether the OpenMP wait policy is in force
    (False when torch was loaded before with another policy).
    """
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    constants = sys.modules.get("huggingface_hub.constants")
    if offline and constants is not None:
        constants.HF_HUB_OFFLINE = True  # read once at its import; keep it in step with the variable
    umask()
    omp_effective = "torch" not in sys.modules or os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    return {"hf_offline": offline, "omp_passive_effective": omp_effective}


@functools.lru_cache(maxsize=1)
def umask() -> int:
    """The process umask (e.g. ``0o022``), read once without changing it where the OS allows."""
    try:  # Linux: readable without the set-and-restore race of os.umask
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0)
    os.umask(current)
    return current
