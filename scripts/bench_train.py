"""How much of a train-fusion epoch is the data pipeline?

Times one training epoch of a fold exactly as ``melanet train-fusion`` runs it
(loader, workers, augmentation, host-to-device copy, forward, backward, step)
against the same steps of the same model on ready-made tensors of the same
shape and count, in one process. Prints both, the overhead ratio and images/s.
Target: overhead <= 15% with the default worker count.

    python scripts/bench_train.py                          # synthetic cohort, fusion-cpu-small
    python scripts/bench_train.py --data data/ --config fusion --set train.workers=8

Without ``--data`` a synthetic cohort is written and ingested into a temporary folder.
Epochs alternate (pipeline, tensors, pipeline, ...) and the fastest of each is
kept, so load from other processes on a shared machine biases neither side.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="Ingested data folder (default: a synthetic cohort).")
    parser.add_argument("--config", default="fusion-cpu-small", help="train-fusion config file or packaged name.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="Config override key=value.")
    parser.add_argument("--fold", type=int, default=0, help="Fold whose training rows are timed.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed epochs of each kind.")
    parser.add_argument("--patients", type=int, default=300, help="Synthetic patients when --data is not given.")
    args = parser.parse_args()

    from melanet.config import load_config
    from melanet.train import fusion  # first: it sets the OpenMP wait policy before torch loads

    import torch

    with tempfile.TemporaryDirectory(prefix="melanet-bench-") as tmp:
        data_dir = args.data or synthetic_data(Path(tmp), args.patients)
        cfg = load_config(fusion.FusionConfig, args.config, args.overrides,
                          extra={"data_dir": str(data_dir), "out_dir": str(Path(tmp) / "run")})
        fabric = fusion.make_fabric(cfg.engine)
        data = fusion.load_cohort_data(cfg)
        train_rows = data.split(args.fold)[0]
        fabric.seed_everything(cfg.seed, verbose=False)
        trainer = fusion.FoldTrainer(fabric, cfg, data, train_rows, seed=cfg.seed)

        # The same number of batches, shapes and dtypes as the loader yields, already on the device.
        n_batches, batch = len(trainer.train_loader), cfg.train.batch_size
        size = cfg.image_size
        gen = torch.Generator().manual_seed(0)
        ready = [(torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=gen).to(fabric.device),
                  torch.randn(batch, trainer.meta.shape[1], generator=gen).to(fabric.device),
                  torch.randint(0, data.n_outputs if data.n_outputs > 1 else 2, (batch,), generator=gen)
                  .to(fabric.device), None) for _ in range(n_batches)]

        def timed(batches=None) -> float:
            if fabric.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            trainer.train_epoch(batches=batches)
            if fabric.device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        timed(), timed(ready)  # warm-up: workers start, kernels and allocator settle
        pipeline, tensors = [], []
        for _ in range(args.repeats):
            pipeline.append(timed())
            tensors.append(timed(ready))
        images = n_batches * batch
        t_pipe, t_pure = min(pipeline), min(tensors)
        overhead = t_pipe / t_pure - 1
        print(f"config {args.config}: {cfg.model.backbone} at {size} px, batch {batch}, {n_batches} batches/epoch, "
              f"{trainer.workers} loader worker(s), {torch.get_num_threads()} torch thread(s), "
              f"{fabric.world_size} process(es) on {fabric.device.type}, precision "
              f"{fusion.resolve_precision(cfg.engine.precision, fabric.device.type)}")
        print(f"train-fusion epoch : {t_pipe:7.2f} s  {images / t_pipe:8.1f} images/s   (runs: "
              f"{', '.join(f'{t:.2f}' for t in pipeline)})")
        print(f"tensors only       : {t_pure:7.2f} s  {images / t_pure:8.1f} images/s   (runs: "
              f"{', '.join(f'{t:.2f}' for t in tensors)})")
        print(f"data pipeline overhead: {overhead:+.1%}  (ratio {t_pipe / t_pure:.3f}; target <= +15%) "
              f"-> {'OK' if overhead <= 0.15 else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
