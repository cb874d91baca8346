"""Images, augmentation and batches for FusionNet.

Cached images (uint8 RGB ``.npy`` written by ingest) are resized once to the
training side and, when they fit in ``preload_max_mb``, held in RAM for the
whole run: on a small machine decoding and resizing every epoch would cost
more than the network. Batches carry images as uint8 (N, 3, H, W) in
channels-last layout; FusionNet scales and normalises them on the device.

Augmentation is albumentations, configured by :class:`AugmentConfig`; Mixup /
CutMix and metadata dropout act on whole batches (:func:`mix_batch`,
:func:`drop_meta`). Test-time augmentation uses the eight dihedral flips
(:func:`dihedral`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from pydantic import Field
from torch.utils.data import DataLoader, Dataset, Sampler

from melanet.cohort import load_image
from melanet.config import StageConfig
from melanet.train.device import loader_settings


class AugmentConfig(StageConfig):
    """Training augmentation. Each ``*_p`` is the probability (0-1) that the step is applied."""

    hflip_p: float = Field(0.5, ge=0, le=1, description="Horizontal flip.")
    vflip_p: float = Field(0.5, ge=0, le=1, description="Vertical flip.")
    transpose_p: float = Field(0.5, ge=0, le=1, description="Transpose (swap rows and columns).")
    affine_p: float = Field(0.7, ge=0, le=1, description="Rotate / scale / shift.")
    rotate_deg: float = Field(45.0, ge=0, le=180, description="Largest rotation, degrees.")
    scale: float = Field(0.15, ge=0, lt=1, description="Largest relative zoom in or out.")
    shift: float = Field(0.1, ge=0, lt=0.5, description="Largest shift, fraction of the side.")
    brightness_contrast_p: float = Field(0.7, ge=0, le=1, description="Random brightness and contrast.")
    brightness: float = Field(0.2, ge=0, le=1, description="Largest brightness change (fraction of range).")
    contrast: float = Field(0.2, ge=0, le=1, description="Largest contrast change (fraction).")
    hue_saturation_p: float = Field(0.5, ge=0, le=1, description="Hue / saturation / value shift.")
    hue_shift: int = Field(10, ge=0, le=180, description="Largest hue shift (OpenCV hue units).")
    sat_shift: int = Field(20, ge=0, le=255, description="Largest saturation shift.")
    clahe_p: float = Field(0.0, ge=0, le=1, description="CLAHE contrast equalisation.")
    blur_noise_p: float = Field(0.3, ge=0, le=1, description="One of motion/median/Gaussian blur or Gaussian noise.")
    distortion_p: float = Field(0.3, ge=0, le=1, description="One of optical, grid or elastic distortion.")
    coarse_dropout_p: float = Field(0.3, ge=0, le=1, description="Cut out a square hole.")
    coarse_dropout_size: float = Field(0.375, gt=0, le=1, description="Hole side, fraction of the image side.")
    mixup_alpha: float = Field(0.0, ge=0, description="Mixup Beta(alpha, alpha); 0 switches Mixup off.")
    cutmix_alpha: float = Field(0.0, ge=0, description="CutMix Beta(alpha, alpha); 0 switches CutMix off.")
    mix_p: float = Field(0.5, ge=0, le=1, description="Probability that a batch is mixed (Mixup or CutMix).")


def build_train_transform(aug: AugmentConfig, image_size: int, seed: int | None = None):
    """The albumentations pipeline for training images (uint8 HWC at ``image_size``), or None."""
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"  # no version check over the network (see melanet/runtime.py)
    import albumentations as A

    steps = [
        A.HorizontalFlip(p=aug.hflip_p),
        A.VerticalFlip(p=aug.vflip_p),
        A.Transpose(p=aug.transpose_p),
        A.Affine(scale=(1 - aug.scale, 1 + aug.scale), rotate=(-aug.rotate_deg, aug.rotate_deg),
                 translate_percent=(-aug.shift, aug.shift), border_mode=cv2.BORDER_REFLECT_101, p=aug.affine_p),
        A.RandomBrightnessContrast(brightness_limit=aug.brightness, contrast_limit=aug.contrast,
                                   p=aug.brightness_contrast_p),
        A.HueSaturationValue(hue_shift_limit=aug.hue_shift, sat_shift_limit=aug.sat_shift, val_shift_limit=0,
                             p=aug.hue_saturation_p),
        A.CLAHE(clip_limit=2.0, p=aug.clahe_p),
        A.OneOf([A.MotionBlur(blur_limit=(3, 5)), A.MedianBlur(blur_limit=(3, 5)),
                 A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.08))], p=aug.blur_noise_p),
        A.OneOf([A.OpticalDistortion(distort_limit=0.3), A.GridDistortion(num_steps=5, distort_limit=0.3),
                 A.ElasticTransform(alpha=3)], p=aug.distortion_p),
        A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(aug.coarse_dropout_size,) * 2,
                        hole_width_range=(aug.coarse_dropout_size,) * 2, p=aug.coarse_dropout_p),
    ]
    steps = [s for s in steps if s.p > 0]  # skipped steps still cost a random draw per image
    return A.Compose(steps, seed=seed) if steps else None


# --------------------------------------------------------------------------- images


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 HWC image to ``size`` x ``size`` pixels (area filter when shrinking)."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[0] == size and image.shape[1] == size:
        return image
    shrink = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class ImageStore:
    """Cohort images at ``size`` pixels: held in RAM when they fit in ``preload_max_mb``, else read per use.

    Both paths do the same resize, so a preloaded and a lazily read image are
    identical. Indexing is by cohort row position.
    """

    def __init__(self, data_dir: str | Path, image_paths: Sequence[str], size: int, preload_max_mb: float = 2048,
                 progress=None):
        self.data_dir = Path(data_dir)
        self.image_paths = [str(p) for p in image_paths]
        self.size = int(size)
        self.images: np.ndarray | None = None
        if len(self.image_paths) * self.size * self.size * 3 <= preload_max_mb * 2**20:
            self.images = np.empty((len(self.image_paths), self.size, self.size, 3), np.uint8)
            task = progress.add_task("loading images", total=len(self.image_paths), status="") if progress else None
            for i, path in enumerate(self.image_paths):
                self.images[i] = self._read(path)
                if task is not None and (i % 64 == 0 or i == len(self.image_paths) - 1):
                    progress.update(task, completed=i + 1)

    def _read(self, path: str) -> np.ndarray:
        return resize_image(load_image(self.data_dir, path), self.size)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.images[i] if self.images is not None else self._read(self.image_paths[i])


class FusionDataset(Dataset):
    """(image uint8 HWC tensor, meta float32, label int, row) for the cohort rows ``rows``.

    ``labels`` holds one label per cohort row (any value for unlabelled rows);
    ``transform`` is an albumentations pipeline or None.
    """

    def __init__(self, store: ImageStore, rows: np.ndarray, meta: np.ndarray, labels: np.ndarray | None = None,
                 transform=None):
        self.store, self.rows, self.meta, self.transform = store, np.asarray(rows), meta, transform
        self.labels = labels if labels is not None else np.zeros(len(store), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = int(self.rows[i])
        image = self.store[row]
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return (torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(self.meta[row]),
                int(self.labels[row]), row)


def _init_worker(worker_id: int) -> None:
    # Forked workers inherit one copy of the pipeline's generator: without a
    # fresh seed every worker (and every epoch) would draw the same augmentations.
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if transform is not None:
        transform.set_random_seed(torch.initial_seed() % 2**32)
    # Not cv2.setNumThreads here: reconfiguring OpenCV's pool in a forked
    # worker can wait forever on pool threads that only existed in the parent.


def make_loader(dataset: FusionDataset, batch_size: int, *, shuffle: bool = False, sampler: Sampler | None = None,
                drop_last: bool = False, workers: int = 0, device_type: str = "cpu") -> DataLoader:
    """A DataLoader set up for ``device_type`` (:func:`melanet.train.device.loader_settings`).

    Per-worker augmentation seeds; with workers, they are kept alive between
    epochs and prefetch; on CUDA batches land in pinned memory.
    """
    settings = loader_settings(device_type, workers)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      drop_last=drop_last, num_workers=workers, worker_init_fn=_init_worker if workers > 0 else None,
                      **settings.loader_kwargs())


def to_device(batch, device: torch.device, non_blocking: bool = False):
    """(images, meta, label, row) batch with its tensors on ``device``.

    Images stay uint8 (a quarter of float32's bytes on the bus); FusionNet
    converts and normalises them on the device. ``non_blocking`` only pays off
    from pinned memory (CUDA); elsewhere it is a plain copy.
    """
    return tuple(x.to(device, non_blocking=non_blocking) if isinstance(x, torch.Tensor) else x for x in batch)


def to_nchw(images: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """(N, H, W, 3) batch as (N, 3, H, W); the permuted view already is channels-last memory."""
    images = images.permute(0, 3, 1, 2)
    return images if channels_last else images.contiguous()


# --------------------------------------------------------------------------- batch augmentation


def drop_meta(meta: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero the whole metadata vector of each sample with probability ``p``.

    Zero is the training mean of every standardised column and "no level" of
    every one-hot block, so the network learns to fall back on the image when
    metadata is missing or misleading.
    """
    if p <= 0:
        return meta
    keep = torch.rand(meta.shape[0], 1, generator=generator, device="cpu") >= p
    # Drawn on the CPU so the stream of draws is the same on every device; copied without a host sync.
    return meta * keep.to(meta.device, meta.dtype, non_blocking=True)


def mix_batch(images: torch.Tensor, meta: torch.Tensor, target: torch.Tensor, aug: AugmentConfig,
              rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup or CutMix a batch with probability ``aug.mix_p`` (float images on 0-255 scale).

    Targets are soft (from :func:`melanet.train.model.soft_targets`) and mixed
    with the same weight as the pixels; CutMix uses the pasted area as weight.
    Metadata is mixed like Mixup in both cases. Returns float images.
    """
    images = images.float()
    modes = [m for m, a in (("mixup", aug.mixup_alpha), ("cutmix", aug.cutmix_alpha)) if a > 0]
    if not modes or rng.random() >= aug.mix_p or images.shape[0] < 2:
        return images, meta, target
    mode = modes[rng.integers(len(modes))]
    lam = float(rng.beta(aug.mixup_alpha, aug.mixup_alpha) if mode == "mixup" else
                rng.beta(aug.cutmix_alpha, aug.cutmix_alpha))
    perm = torch.from_numpy(rng.permutation(images.shape[0])).to(images.device, non_blocking=True)
    if mode == "mixup":
        images = lam * images + (1 - lam) * images[perm]
    else:
        h, w = images.shape[2:]
        ch, cw = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
        cy, cx = rng.integers(h), rng.integers(w)
        y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
        images = images.clone()
        images[:, :, y0:y1, x0:x1] = images[perm, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    meta = lam * meta + (1 - lam) * meta[perm]
    target = lam * target + (1 - lam) * target[perm]
    return images, meta, target


def dihedral(images: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th (0-7) of the eight flips/rotations of a square (N, C, H, W) batch; 0 is the identity.

    Order: identity, horizontal flip, vertical flip, both, then the same four
    after a transpose - so a TTA count of 2 is {id, hflip}, 4 adds the
    vertical flips, 8 is the full dihedral group.
    """
    if k & 4:
        images = images.transpose(2, 3)
    dims = [d for bit, d in ((1, 3), (2, 2)) if k & bit]
    return images.flip(dims) if dims else images
