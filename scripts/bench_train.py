"""How close is a train-fusion epoch to a bare timm loop, and how much of it is the data pipeline?

Three loops over the same number of images, in one process, on the same device:

- bare timm: ``timm.create_model(backbone, num_classes=...)`` on random float
  tensors already on the device, channels_last, AdamW, the same precision -
  what the hardware gives without melanet;
- tensors only: melanet's FusionNet and training step (``FoldTrainer.train_epoch``)
  on ready-made uint8 batches already on the device;
- train-fusion epoch: the same step fed by the real loader (workers,
  augmentation, host-to-device copy), exactly as ``melanet train-fusion`` runs it.

Prints images/s of each and the ratios. Targets: data-pipeline overhead
(epoch vs tensors only) <= 15% on CPU; epoch >= 0.9x the bare timm loop on a GPU.

    python scripts/bench_train.py                          # synthetic cohort, fusion-cpu-small
    python scripts/bench_train.py --data data/ --config fusion --set train.workers=8

``--loader-only`` times the data pipeline alone (no model): images/s that the
loader delivers, and per worker, at ``--size`` pixels with the config's
augmentation, plus the cost of each augmentation step in one process:

    python scripts/bench_train.py --data data/ --config fusion --loader-only --size 384 --workers 1,2

Without ``--data`` a synthetic cohort is written and ingested into a temporary folder.
Loops alternate (bare, tensors, epoch, bare, ...) and the fastest of each is
kept, so load from other processes on a shared machine biases no side.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def synthetic_data(folder: Path, patients: int) -> Path:
    from melanet import ingest, synth
    from melanet.config import load_config

    synth.run(load_config(synth.SynthConfig, None, None, extra={"out_dir": str(folder / "synth"),
                                                                 "patients": patients}))
    ingest.run(load_config(ingest.IngestConfig, None, ["eda=false"], extra={
        "dicom_dir": str(folder / "synth" / "dicom"), "labels": str(folder / "synth" / "labels.csv"),
        "out_dir": str(folder / "data")}))
    return folder / "data"


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_timm_loop(cfg, n_outputs: int, n_batches: int, device, precision: str):
    """A function running one epoch of a plain timm training loop on random tensors (no melanet code)."""
    import timm
    import torch
    import torch.nn.functional as F

    batch, size = cfg.train.batch_size, cfg.image_size
    model = timm.create_model(cfg.model.backbone, pretrained=False, num_classes=n_outputs,
                              drop_path_rate=cfg.model.drop_path_rate or None).to(device)
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    gen = torch.Generator().manual_seed(1)
    pool = [(torch.randn(batch, 3, size, size, generator=gen).to(device).contiguous(memory_format=fmt),
             torch.randint(0, max(2, n_outputs), (batch,), generator=gen).to(device))
            for _ in range(min(n_batches, 4))]  # a few distinct batches, cycled: memory stays bounded

    def epoch() -> None:
        for i in range(n_batches):
            x, y = pool[i % len(pool)]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(x)
            logits = logits.float()
            loss = (F.binary_cross_entropy_with_logits(logits[:, 0], y.float()) if n_outputs == 1
                    else F.cross_entropy(logits, y))
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="Ingested data folder (default: a synthetic cohort).")
    parser.add_argument("--config", default="fusion-cpu-small", help="train-fusion config file or packaged name.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="Config override key=value.")
    parser.add_argument("--fold", type=int, default=0, help="Fold whose training rows are timed.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed epochs of each kind.")
    parser.add_argument("--patients", type=int, default=300, help="Synthetic patients when --data is not given.")
    parser.add_argument("--loader-only", action="store_true", help="Time the data pipeline alone (no model).")
    parser.add_argument("--size", type=int, help="Image side in pixels (sets image_size).")
    parser.add_argument("--workers", default="1", help="--loader-only: comma-separated worker counts, e.g. 0,1,2.")
    args = parser.parse_args()
    if args.size:
        args.overrides = [*args.overrides, f"image_size={args.size}"]

    from melanet.config import load_config
    from melanet.train import fusion  # first: it sets the OpenMP wait policy before torch loads

    with tempfile.TemporaryDirectory(prefix="melanet-bench-") as tmp:
        data_dir = args.data or synthetic_data(Path(tmp), args.patients)
        cfg = load_config(fusion.FusionConfig, args.config, args.overrides,
                          extra={"data_dir": str(data_dir), "out_dir": str(Path(tmp) / "run")})
        if args.loader_only:
            return time_loader(args, cfg)
        time_training(args, cfg)


def time_loader(args, cfg) -> None:
    import cv2
    import numpy as np
    import torch

    from melanet.train import fusion
    from melanet.train.data import FusionDataset, build_train_transform, make_loader
    from melanet.train.device import cpu_cores

    data = fusion.load_cohort_data(cfg)
    rows = data.split(args.fold)[0]
    # Single-threaded like a loader worker, so 0 workers measures what one worker delivers.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    meta = np.zeros((len(data.cohort), 1), np.float32)
    batch = 32 if cfg.train.batch_size == "auto" else cfg.train.batch_size
    transform = build_train_transform(cfg.augment, cfg.image_size, seed=cfg.seed)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"loader only: {len(rows)} images/epoch at {cfg.image_size} px, batch {batch}, augmentation of "
          f"{args.config}, {cpu_cores()} core(s), pinned memory {'on' if device_type == 'cuda' else 'off'}")
    for workers in [int(w) for w in args.workers.split(",")]:
        loader = make_loader(FusionDataset(data.store, rows, meta, data.labels, transform), batch, shuffle=True,
                             workers=workers, device_type=device_type)
        times, cpu = [], []
        for epoch in range(args.repeats + 1):  # the first epoch starts the workers
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in loader:
                pass
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        best = min(times[1:])
        rate = len(rows) / best
        # In-process (0 workers), CPU seconds measure the work itself, whatever else loads the machine.
        per_cpu = f", {len(rows) / min(cpu[1:]):.1f} per CPU-second" if workers == 0 else ""
        print(f"  {workers:2d} worker(s): {rate:8.1f} images/s, {rate / max(1, workers):8.1f} per worker{per_cpu} "
              f"(epochs: {', '.join(f'{t:.2f}' for t in times[1:])} s; first {times[0]:.2f} s)")
        del loader
    # Each augmentation step alone, in this process: which ones a GPU would have to take over.
    if transform is not None:
        images = [data.store[int(r)] for r in rows[:64]]
        print("  per step, one process (CPU ms/image with the step always applied; x its p = share per image):")
        for step in transform.transforms:
            p = step.p
            step = copy.deepcopy(step)
            step.p = 1.0
            c0 = time.process_time()
            for image in images:
                step(image=image)
            ms = 1000 * (time.process_time() - c0) / len(images)
            print(f"    {type(step).__name__:24s} {ms:7.2f}  x p {p:.2f} = {ms * p:6.2f}")


def time_training(args, cfg) -> None:
    import torch

    from melanet.train import fusion

    fabric = fusion.make_fabric(cfg.engine)
    cfg = fusion.resolve_run_config(cfg, fabric)
    data = fusion.load_cohort_data(cfg)
    train_rows = data.split(args.fold)[0]
    fabric.seed_everything(cfg.seed, verbose=False)
    trainer = fusion.FoldTrainer(fabric, cfg, data, train_rows, seed=cfg.seed)
    precision = fusion.resolve_precision(cfg.engine.precision, fabric.device.type)

    # The same number of batches, shapes and dtypes as the loader yields, already on the device.
    n_batches, batch = len(trainer.train_loader), cfg.train.batch_size
    size = cfg.image_size
    gen = torch.Generator().manual_seed(0)
    rows = torch.as_tensor(train_rows)  # cohort rows: the descriptor targets (train.aux_descriptors) are looked up by row
    ready = [(torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=gen).to(fabric.device),
              torch.randn(batch, trainer.meta.shape[1], generator=gen).to(fabric.device),
              torch.randint(0, data.n_outputs if data.n_outputs > 1 else 2, (batch,), generator=gen)
              .to(fabric.device), rows[torch.randint(0, len(rows), (batch,), generator=gen)].to(fabric.device))
             for _ in range(n_batches)]
    bare_epoch = bare_timm_loop(cfg, data.n_outputs, n_batches, fabric.device, precision)

    def timed(run) -> float:
        _sync(fabric.device)
        t0 = time.perf_counter()
        run()
        _sync(fabric.device)
        return time.perf_counter() - t0

    loops = {"bare timm loop": bare_epoch, "tensors only": lambda: trainer.train_epoch(batches=ready),
             "train-fusion epoch": lambda: trainer.train_epoch()}
    for run in loops.values():  # warm-up: workers start, kernels and allocator settle
        timed(run)
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.repeats):
        for name, run in loops.items():
            times[name].append(timed(run))
    images = n_batches * batch
    best = {name: min(t) for name, t in times.items()}
    print(f"config {args.config}: {cfg.model.backbone} at {size} px, batch {batch}, {n_batches} batches/epoch, "
          f"{trainer.workers} loader worker(s), {torch.get_num_threads()} torch thread(s), "
          f"{fabric.world_size} process(es) on {fabric.device.type}, precision {precision}, "
          f"channels_last {cfg.train.channels_last}")
    for name, t in times.items():
        print(f"{name:19s}: {best[name]:7.2f} s  {images / best[name]:8.1f} images/s   (runs: "
              f"{', '.join(f'{x:.2f}' for x in t)})")
    bare, pure, pipe = best["bare timm loop"], best["tensors only"], best["train-fusion epoch"]
    overhead = pipe / pure - 1
    print(f"melanet step vs bare timm loop : {bare / pure:.3f}x the bare loop's images/s")
    print(f"train-fusion epoch vs bare timm: {bare / pipe:.3f}x the bare loop's images/s "
          f"(GPU target >= 0.9x)")
    print(f"data pipeline overhead: {overhead:+.1%}  (ratio {pipe / pure:.3f}; target <= +15%) "
          f"-> {'OK' if overhead <= 0.15 else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
