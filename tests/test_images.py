"""One resize path (ingest cache, training loader, thumbnails) and one core count."""

from __future__ import annotations

import os

import numpy as np

from melanet.images import resize_square, thumbnail
from melanet.runtime import available_cores
from melanet.train.data import resize_image


def test_resize_square_modes_and_grey_input():
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 255, (20, 40, 3), dtype=np.uint8)
    assert resize_square(wide, 16).shape == (16, 16, 3)
    padded = resize_square(wide, 40, "pad")  # 40x40 canvas: 10 rows of mean colour above the image
    np.testing.assert_array_equal(padded[10:30], wide)
    assert (padded[:10] == wide.reshape(-1, 3).mean(axis=0).astype(np.uint8)).all()
    grey = rng.integers(0, 255, (8, 8), dtype=np.uint8)
    assert resize_square(grey, 8).shape == (8, 8, 3)
    np.testing.assert_array_equal(resize_image(wide, 16), resize_square(wide, 16))  # the loader uses the same


def test_thumbnail_keeps_aspect_and_enlarges_only_when_asked():
    image = np.zeros((300, 150, 3), np.uint8)
    assert thumbnail(image, 96).shape == (96, 48, 3)
    small = np.zeros((30, 15, 3), np.uint8)
    assert thumbnail(small, 96) is small and thumbnail(small, 96, enlarge=True).shape == (96, 48, 3)


def test_available_cores_is_the_affinity_mask():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert available_cores() == expected >= 1
