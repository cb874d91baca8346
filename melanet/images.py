"""Resizing of uint8 RGB images: the one implementation behind the ingest cache, the training loader and
every thumbnail (EDA, report, suspects pages). Pure functions, sizes in pixels."""

from __future__ import annotations

import numpy as np
import cv2

#: How :func:`resize_square` makes a non-square image square.
RESIZE_MODES = ("squash", "pad")


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2 resize with the area filter when shrinking (no aliasing) and bilinear when enlarging."""
    shrinking = image.shape[0] > height or image.shape[1] > width
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_square(pixels: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """uint8 (H, W, 3) (or grey (H, W), made RGB) to (size, size, 3).

    ``squash`` ignores the aspect ratio; ``pad`` first pads to a square with the image's mean colour,
    centred. An image already ``size`` x ``size`` is returned as it is (contiguous).
    """
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if mode == "pad":
        h, w = pixels.shape[:2]
        side = max(h, w)
        if h != w:
            fill = pixels.reshape(-1, pixels.shape[2]).mean(axis=0).astype(np.uint8)
            canvas = np.empty((side, side, pixels.shape[2]), np.uint8)
            canvas[:] = fill
            top, left = (side - h) // 2, (side - w) // 2
            canvas[top:top + h, left:left + w] = pixels
            pixels = canvas
    if pixels.shape[0] == size and pixels.shape[1] == size:
        return np.ascontiguousarray(pixels)
    return _resize(pixels, size, size)


def thumbnail(image: np.ndarray, max_side: int, enlarge: bool = False) -> np.ndarray:
    """``image`` scaled, aspect kept, so that its longest side is ``max_side`` pixels (smaller images are
    enlarged only with ``enlarge``)."""
    scale = max_side / max(image.shape[:2])
    if scale >= 1 and not enlarge:
        return image
    width, height = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
    return _resize(image, width, height)
