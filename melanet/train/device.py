"""Device-dependent choices of train-fusion: precision, loader settings, worker count, CUDA backend flags.

Each choice is a pure function of a device type string (``"cpu"``, ``"cuda"``,
``"mps"``) and the machine's numbers, so the CUDA branches are tested on any
machine (tests/test_gpu_paths.py). :func:`make_fabric` applies them to a
launched Lightning Fabric.

What the CUDA path adds and why (docs/gpu.md):

- pinned host memory + ``non_blocking`` copies: the host-to-device copy of a
  batch overlaps the previous step instead of stalling it;
- persistent loader workers with a deeper prefetch queue: workers are not
  restarted every epoch and several batches wait ready;
- TF32 for float32 matmuls/convolutions (``set_float32_matmul_precision("high")``):
  what remains float32 under bf16 autocast runs on tensor cores;
- more loader workers: the GPU consumes batches faster than one CPU core augments them.

On CPU every choice stays what it was before these were added, so CPU results
do not change.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from melanet.runtime import available_cores


def cpu_cores() -> int:
    """Cores this process may run on: :func:`melanet.runtime.available_cores`."""
    return available_cores()


def resolve_precision(precision: str, device_type: str, bf16_supported: bool | None = None) -> str:
    """``auto`` -> bf16-mixed (16-mixed without bf16) on CUDA, 32-true elsewhere.

    ``bf16_supported`` defaults to asking the current CUDA device.
    """
    if precision != "auto":
        return precision
    if device_type == "cuda":
        if bf16_supported is None:
            bf16_supported = torch.cuda.is_bf16_supported()
        return "bf16-mixed" if bf16_supported else "16-mixed"
    return "32-true"


def autocast(device: torch.device, precision: str):
    """The autocast context of a Fabric precision name (also used by prediction)."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def default_workers(workers: int | str, world_size: int = 1, device_type: str = "cpu",
                    cores: int | None = None) -> int:
    """DataLoader workers per process; ``auto`` depends on the device.

    CPU: none (batches made in the training process) when a process has 2
    cores or fewer, else one per core left after one per process, at most 4
    per process. On CPU the loader's work is small next to the step (at 64 px
    one core augments ~4,800 images/s while the step trains ~700 on 2 cores),
    but a worker process pre-empts one of only two compute threads and every
    parallel op waits for it: on 2 cores a full epoch cost +49% over the step
    with 1 worker and +11% with none (``scripts/bench_train.py``). CUDA: the process's
    share of the node's cores less one for the process itself, at most 16 -
    the GPU outruns a CPU core's augmentation several times over (measured per
    worker by ``scripts/bench_train.py --loader-only``).
    """
    if workers != "auto":
        return int(workers)
    cores = cpu_cores() if cores is None else cores
    procs = max(1, world_size)
    if device_type == "cuda":
        return max(1, min(16, cores // procs - 1))
    if cores // procs <= 2:
        return 0
    return max(0, min(4, (cores - procs) // procs))


@dataclass(frozen=True)
class LoaderSettings:
    """How batches reach the device: DataLoader arguments and the copy mode."""

    pin_memory: bool
    non_blocking: bool
    persistent_workers: bool
    prefetch_factor: int | None

    def loader_kwargs(self) -> dict:
        """Keyword arguments for ``torch.utils.data.DataLoader``."""
        kwargs = {"pin_memory": self.pin_memory, "persistent_workers": self.persistent_workers}
        if self.prefetch_factor is not None:
            kwargs["prefetch_factor"] = self.prefetch_factor
        return kwargs


def loader_settings(device_type: str, workers: int) -> LoaderSettings:
    """Pinned memory and non-blocking copies on CUDA only; persistent workers and prefetch when workers > 0.

    On CUDA each worker keeps 4 batches queued (torch's default is 2) so a slow
    augmentation draw or the start of an epoch does not leave the GPU idle; on
    CPU the queue stays at 2, since queued batches there only take memory
    from the same cores.
    """
    cuda = device_type == "cuda"
    return LoaderSettings(pin_memory=cuda, non_blocking=cuda, persistent_workers=workers > 0,
                          prefetch_factor=(4 if cuda else 2) if workers > 0 else None)


def backend_settings(device_type: str) -> dict:
    """Global torch backend flags for a device type: TF32 and cuDNN autotuning on CUDA, nothing elsewhere."""
    if device_type != "cuda":
        return {}
    return {"float32_matmul_precision": "high", "cudnn_allow_tf32": True, "cudnn_benchmark": True}


def apply_backend_settings(settings: dict) -> None:
    """Set the flags from :func:`backend_settings` (process-wide)."""
    if "float32_matmul_precision" in settings:
        torch.set_float32_matmul_precision(settings["float32_matmul_precision"])
    if "cudnn_allow_tf32" in settings:
        torch.backends.cudnn.allow_tf32 = settings["cudnn_allow_tf32"]
    if "cudnn_benchmark" in settings:
        torch.backends.cudnn.benchmark = settings["cudnn_benchmark"]


def gpu_memory_gib(device: torch.device) -> float | None:
    """Total memory of a CUDA device in GiB; None for other devices."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / 2**30


def make_fabric(engine):
    """A launched Lightning Fabric for an ``EngineConfig``, with the device's backend flags and thread count.

    torchrun's LOCAL_WORLD_SIZE/WORLD_SIZE fill ``auto`` devices and nodes.
    """
    from lightning.fabric import Fabric

    devices, num_nodes = engine.devices, engine.num_nodes
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun
        local, world = int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["WORLD_SIZE"])
        devices = local if devices == "auto" else devices
        num_nodes = max(1, world // local) if num_nodes == "auto" else num_nodes
    num_nodes = 1 if num_nodes == "auto" else num_nodes
    cuda = engine.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    precision = resolve_precision(engine.precision, "cuda" if cuda else "cpu")
    fabric = Fabric(accelerator=engine.accelerator, devices=devices, num_nodes=num_nodes,
                    strategy=engine.strategy, precision=precision)
    fabric.launch()
    torch.set_num_threads(engine.threads or max(1, cpu_cores() // local_processes(fabric, num_nodes)))
    apply_backend_settings(backend_settings(fabric.device.type))
    return fabric


def local_processes(fabric, num_nodes: int = 1) -> int:
    """Processes of this job on this node."""
    return max(1, fabric.world_size // max(1, num_nodes))
