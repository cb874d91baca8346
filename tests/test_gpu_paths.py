"""The CUDA-only choices of train-fusion, checked on any machine.

Every device-dependent choice (pinned memory, non-blocking copies, prefetch,
TF32, precision, worker count, batch size and learning-rate scaling) is a pure
function of a device type string; these tests call them with "cuda" and "cpu"
and check what a GPU user would get, then that the choices reach the
DataLoader and the run's config.yaml. Also: the on-device normalisation of
uint8 batches equals the classic host-side float normalisation, and the timm
schedule reproduces the hand-written one it replaced, step by step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from melanet.train import device as D
from melanet.train.data import FusionDataset, ImageStore, make_loader, to_device, to_nchw
from melanet.train.fusion_config import (FusionConfig, TrainConfig, default_batch_size, resolve_batch_and_lr,
                                         scaled_lr)


# --------------------------------------------------------------------------- selection functions


def test_loader_pins_memory_and_copies_without_blocking_on_cuda_only():
    cuda = D.loader_settings("cuda", workers=8)
    assert (cuda.pin_memory, cuda.non_blocking, cuda.persistent_workers, cuda.prefetch_factor) == (True, True, True, 4)
    for device_type in ("cpu", "mps"):
        other = D.loader_settings(device_type, workers=1)
        assert (other.pin_memory, other.non_blocking, other.persistent_workers, other.prefetch_factor) == (
            False, False, True, 2)  # CPU: what it was before the GPU work, so CPU results do not change
    # Without workers there is nothing to keep alive or prefetch (DataLoader rejects prefetch_factor then).
    none = D.loader_settings("cuda", workers=0)
    assert (none.persistent_workers, none.prefetch_factor, none.pin_memory) == (False, None, True)
    assert "prefetch_factor" not in none.loader_kwargs()


def test_make_loader_passes_the_device_choices_to_the_dataloader(tmp_path):
    for i in range(4):
        np.save(tmp_path / f"{i}.npy", np.full((8, 8, 3), i, np.uint8))
    store = ImageStore(tmp_path, [f"{i}.npy" for i in range(4)], 8)
    dataset = FusionDataset(store, np.arange(4), np.zeros((4, 2), np.float32))
    gpu = make_loader(dataset, 2, workers=2, device_type="cuda")
    assert (gpu.pin_memory, gpu.persistent_workers, gpu.prefetch_factor, gpu.num_workers) == (True, True, 4, 2)
    cpu = make_loader(dataset, 2, workers=0, device_type="cpu")
    assert (cpu.pin_memory, cpu.persistent_workers, cpu.num_workers) == (False, False, 0)
    images, meta, _, rows = next(iter(cpu))
    assert images.dtype == torch.uint8 and images.shape == (2, 8, 8, 3) and rows.tolist() == [0, 1]


def test_tf32_and_cudnn_autotuning_are_switched_on_for_cuda_only():
    assert D.backend_settings("cpu") == {} and D.backend_settings("mps") == {}
    cuda = D.backend_settings("cuda")
    assert cuda == {"float32_matmul_precision": "high", "cudnn_allow_tf32": True, "cudnn_benchmark": True}
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32)
    try:
        D.apply_backend_settings(cuda)  # process-wide flags; settable without a GPU
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32
        torch.set_float32_matmul_precision("highest")
        D.apply_backend_settings(D.backend_settings("cpu"))
        assert torch.get_float32_matmul_precision() == "highest"  # CPU leaves the flags alone
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = before[1], before[2]


def test_precision_auto_is_bf16_on_cuda_fp16_without_bf16_and_fp32_elsewhere():
    assert D.resolve_precision("auto", "cuda", bf16_supported=True) == "bf16-mixed"
    assert D.resolve_precision("auto", "cuda", bf16_supported=False) == "16-mixed"
    assert D.resolve_precision("auto", "cpu") == "32-true"
    assert D.resolve_precision("auto", "mps") == "32-true"
    assert D.resolve_precision("16-mixed", "cpu") == "16-mixed"  # an explicit choice is kept
    assert D.autocast(torch.device("cpu"), "32-true").__class__.__name__ == "nullcontext"
    with D.autocast(torch.device("cpu"), "bf16-mixed"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_default_worker_count_fits_the_cores_and_the_gpus():
    # CPU: in-process batches up to 2 cores per process, else one per core left after the processes, at most 4.
    assert D.default_workers("auto", 1, "cpu", cores=2) == 0  # a worker would pre-empt a compute thread
    assert D.default_workers("auto", 1, "cpu", cores=4) == 3
    assert D.default_workers("auto", 1, "cpu", cores=32) == 4
    assert D.default_workers("auto", 2, "cpu", cores=2) == 0
    # CUDA: each GPU process gets its share of the cores, less one for itself, at most 16.
    assert D.default_workers("auto", 1, "cuda", cores=16) == 15
    assert D.default_workers("auto", 4, "cuda", cores=16) == 3
    assert D.default_workers("auto", 1, "cuda", cores=64) == 16
    assert D.default_workers("auto", 8, "cuda", cores=8) == 1  # never starve a GPU of a worker
    assert D.default_workers(6, 1, "cuda", cores=2) == 6  # an explicit count is kept


def test_auto_batch_is_larger_on_a_big_gpu_and_the_learning_rate_follows():
    assert default_batch_size("cpu") == 32
    assert default_batch_size("cuda", 16.0) == 32
    assert default_batch_size("cuda", 24.0) == 64
    assert default_batch_size("cuda", 139.8) == 128  # H200
    assert scaled_lr(3e-4, 128, 32, "sqrt") == pytest.approx(6e-4)
    assert scaled_lr(3e-4, 128, 32, "linear") == pytest.approx(1.2e-3)
    assert scaled_lr(3e-4, 128, None) == 3e-4

    cfg = FusionConfig(data_dir=".", out_dir=".", train=TrainConfig(batch_size="auto", lr=3e-4, lr_batch=32))
    cpu = resolve_batch_and_lr(cfg, "cpu")
    assert (cpu.train.batch_size, cpu.train.lr) == (32, 3e-4)  # CPU runs learn exactly as before
    gpu = resolve_batch_and_lr(cfg, "cuda", world_size=1, gpu_memory_gib=139.8)
    assert (gpu.train.batch_size, gpu.train.lr, gpu.train.lr_batch) == (128, pytest.approx(6e-4), 128)
    # Resolving the written config again (a resumed run) changes nothing.
    again = resolve_batch_and_lr(gpu, "cuda", world_size=1, gpu_memory_gib=139.8)
    assert again.train == gpu.train
    # Four GPUs: effective batch 512, lr x sqrt(16).
    four = resolve_batch_and_lr(cfg, "cuda", world_size=4, gpu_memory_gib=80)
    assert four.train.lr == pytest.approx(1.2e-3)
    # Without lr_batch the learning rate is taken as given.
    plain = resolve_batch_and_lr(cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr_batch": None})}),
                                 "cuda", gpu_memory_gib=80)
    assert (plain.train.batch_size, plain.train.lr) == (128, 3e-4)


def test_packaged_gpu_recipe_scales_and_cpu_recipe_stays_put():
    from melanet.config import load_config

    gpu_recipe = load_config(FusionConfig, "fusion", None, extra={"data_dir": ".", "out_dir": "."})
    assert gpu_recipe.train.batch_size == "auto" and gpu_recipe.train.lr_batch == 32
    resolved = resolve_batch_and_lr(gpu_recipe, "cuda", gpu_memory_gib=139.8)
    assert resolved.train.batch_size == 128 and resolved.train.lr == pytest.approx(2 * gpu_recipe.train.lr)
    cpu_recipe = load_config(FusionConfig, "fusion-cpu-small", None, extra={"data_dir": ".", "out_dir": "."})
    assert resolve_batch_and_lr(cpu_recipe, "cpu").train == cpu_recipe.train


# --------------------------------------------------------------------------- device-side normalisation


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet"])  # mean 0.5 / ImageNet statistics
def test_uint8_batches_normalised_on_the_device_equal_host_side_normalisation(backbone):
    import timm

    from melanet.train.model import FusionNet

    model = FusionNet(backbone, 3, 1).eval()
    seen = []
    model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    images = np.random.default_rng(0).integers(0, 256, (4, 24, 24, 3), dtype=np.uint8)
    # The classic pipeline: float on the host, /255, minus mean, over std (timm's pretrained cfg), NCHW.
    cfg = timm.create_model(backbone, pretrained=False).pretrained_cfg
    host = (images.astype(np.float64) / 255 - np.array(cfg["mean"])) / np.array(cfg["std"])
    host = torch.from_numpy(host.transpose(0, 3, 1, 2).astype(np.float32))
    batch = to_device((torch.from_numpy(images), torch.zeros(4, 3), torch.zeros(4), None), torch.device("cpu"),
                      non_blocking=True)
    with torch.no_grad():
        model(to_nchw(batch[0]), batch[1])
    assert seen[0].dtype == torch.float32
    torch.testing.assert_close(seen[0], host, atol=2e-6, rtol=1e-6)
    assert batch[0].dtype == torch.uint8  # the batch crosses to the device as uint8


# --------------------------------------------------------------------------- schedule parity


class _HandWrittenSchedule:
    """The LR schedule train-fusion used before timm's (kept here as the specification)."""

    def __init__(self, optimizer, train, steps_per_epoch):
        self.optimizer, self.train = optimizer, train
        self.total = max(1, train.epochs * steps_per_epoch)
        self.warmup = int(round(train.warmup_epochs * steps_per_epoch))
        self.step_count = 0
        self.plateau = None
        if train.scheduler == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=train.plateau_factor, patience=train.plateau_patience, min_lr=train.min_lr)
        self._set(self._lr(0))

    def _lr(self, step):
        lr, floor = self.train.lr, self.train.min_lr
        if step < self.warmup:
            return lr * (step + 1) / (self.warmup + 1)
        if self.plateau is not None:
            return lr
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _set(self, lr):
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self):
        self.step_count += 1
        if self.plateau is None or self.step_count <= self.warmup:
            self._set(self._lr(self.step_count))

    def epoch_end(self, val_loss):
        if self.plateau is not None and self.step_count >= self.warmup and math.isfinite(val_loss):
            self.plateau.step(val_loss)

    @property
    def lr(self):
        return float(self.optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("scheduler", ["cosine", "plateau"])
@pytest.mark.parametrize("epochs,steps,warmup,min_lr", [(15, 23, 1.0, 1e-6), (8, 10, 1.0, 0.0), (3, 7, 0.0, 1e-5),
                                                        (4, 5, 0.5, 1e-6), (1, 1, 0.0, 0.0), (2, 3, 5.0, 1e-6)])
def test_timm_schedule_gives_the_same_learning_rate_at_every_step(scheduler, epochs, steps, warmup, min_lr):
    import warnings

    from melanet.train.optim import LRSchedule

    train = TrainConfig(epochs=epochs, lr=3e-4, min_lr=min_lr, warmup_epochs=warmup, scheduler=scheduler,
                        plateau_patience=0)
    lrs = []
    val_losses = [1.0, 1.1, 1.2, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]
    for cls in (_HandWrittenSchedule, LRSchedule):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=train.lr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            schedule = cls(opt, train, steps)
        seen = []
        for epoch in range(epochs):
            for _ in range(steps):
                seen.append(schedule.lr)
                schedule.step()
            schedule.epoch_end(val_losses[epoch])
        seen.append(schedule.lr)
        lrs.append(seen)
    np.testing.assert_allclose(lrs[1], lrs[0], rtol=1e-12, atol=1e-18)
    if scheduler == "plateau" and epochs > 3:
        assert min(lrs[1]) < train.lr  # the plateau did lower it


def test_weight_decay_groups_skip_biases_and_norms_as_before():
    from melanet.train.model import FusionNet
    from melanet.train.optim import param_groups

    model = FusionNet("test_resnet", 5, 1)
    groups = param_groups(model, 0.01)
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.01 for p in g["params"]}
    expected = {id(p) for p in model.parameters() if p.requires_grad and p.ndim > 1}
    assert decayed == expected
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- a CPU fold end to end


def test_cpu_fold_with_the_gpu_recipe_keys_trains_and_records_the_resolved_batch(tmp_path):
    from test_fusion import make_cohort, tiny_config

    from melanet.train import fusion

    data = tmp_path / "data"
    make_cohort(data, n_patients=18)
    out = tmp_path / "run"
    cfg = tiny_config(data, out, ["train.batch_size=auto", "train.lr_batch=32", "train.lr=1e-3",
                                  "train.workers=1"])
    fusion.run(cfg, folds=[0])
    written = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert written["batch_size"] == 32 and written["lr"] == 1e-3  # auto on CPU: the old batch, the same lr
    assert (out / "fold_0" / "DONE").is_file()
    history = (out / "fold_0" / "history.csv").read_text()
    assert "train_loss" in history and "nan" not in history.lower()
