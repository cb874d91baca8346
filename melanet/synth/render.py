"""The lesion renderer of ``melanet synth``: a cohort row's render parameters -> an RGB picture."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from melanet.synth.config import PATTERNS

_LESION_STREAM = 1  # per-image render streams: default_rng([seed, _LESION_STREAM, index])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream ``run`` renders image ``index`` (cohort row) with."""
    return np.random.default_rng([seed, _LESION_STREAM, index])


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Standardised low-frequency noise (size, size): bicubic upsampling of a cells x cells grid."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    up = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return (up - up.mean()) / (up.std() + 1e-6)


def _skin_rgb(tone: float) -> np.ndarray:
    light, dark = np.array([0.94, 0.78, 0.68], np.float32), np.array([0.55, 0.38, 0.27], np.float32)
    return light + tone * (dark - light)


def render_lesion(params: Mapping[str, Any], size: int, rng: np.random.Generator) -> np.ndarray:
    """A dermoscopy-like RGB picture (size, size, 3) uint8 of one lesion on skin.

    ``params`` holds the render parameters of :func:`sample_cohort` (a cohort
    row works). Cues that carry risk are drawn so a small CNN sees them at
    64-96 px: radius, border irregularity (radial harmonics and a blurred
    edge), colour variegation (dark, blue-grey and pink blotches), asymmetry
    (lopsided outline and shading). ``rng`` only adds nuisance: position,
    phases, skin texture, hair, noise.
    """
    s = size
    coords = (np.arange(s, dtype=np.float32) + 0.5) / s * 2.0 - 1.0
    x, y = coords[None, :], coords[:, None]
    irr, var, asym = float(params["irregularity"]), float(params["variegation"]), float(params["asymmetry"])
    r0 = float(params["radius"])

    skin = _skin_rgb(float(params["skin_tone"]))
    img = skin * (1.0 + 0.05 * _smooth_field(rng, s, 5)[..., None])
    img = img * (1.0 + 0.025 * rng.standard_normal((s, s, 1)).astype(np.float32))

    # Outline: mild ellipse (symmetric) + lopsided low harmonics (asymmetry) + high harmonics (irregularity).
    cx, cy = rng.normal(0.0, 0.07, 2)
    dx, dy = x - cx, y - cy
    rho = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)
    angles = np.linspace(-np.pi, np.pi, 360, endpoint=False)
    tilt, lop1, lop3 = rng.uniform(0, 2 * np.pi, 3)
    outline = 1.0 + rng.uniform(0.0, 0.1) * np.cos(2 * (angles - tilt))
    outline += asym * (0.35 * np.cos(angles - lop1) + 0.15 * np.cos(3 * angles - lop3))
    k = np.arange(3, 15)
    phases = rng.uniform(0, 2 * np.pi, (len(k), 1))
    wiggle = (rng.standard_normal(len(k)) / k) @ np.cos(np.outer(k, angles) + phases)
    outline += 0.17 * irr * wiggle / (wiggle.std() + 1e-6)
    border = r0 * np.maximum(outline, 0.3)
    radius = np.interp(theta, angles, border, period=2 * np.pi).astype(np.float32)
    edge = r0 * (0.03 + 0.12 * irr) + 1.5 / s
    mask = _sigmoid((radius - rho) / edge).astype(np.float32)
    inner = _sigmoid((0.85 * radius - rho) / edge).astype(np.float32)

    # Lesion colour: skin-relative brown, darker centre, darker on the lopsided side.
    light, dark = np.array([0.80, 0.68, 0.62], np.float32), np.array([0.40, 0.28, 0.24], np.float32)
    tone = light + float(params["hue"]) * (dark - light)
    depth = np.clip(1.0 - rho / radius, 0.0, 1.0)
    shade = (1.0 - 0.18 * depth) * (1.0 - 0.3 * asym * np.clip(np.cos(theta - lop1) * rho / r0, 0, 1))
    lesion = skin * tone * shade[..., None] * (1.0 + 0.04 * _smooth_field(rng, s, 6)[..., None])
    pattern = PATTERNS[int(params["pattern"])]
    if pattern == "reticular":
        period = 0.17
        wx = x * math.cos(tilt) + y * math.sin(tilt) + 0.05 * _smooth_field(rng, s, 4)
        wy = -x * math.sin(tilt) + y * math.cos(tilt)
        net = 1.0 - np.abs(np.sin(np.pi * wx / period) * np.sin(np.pi * wy / period)) ** 0.5
        lesion *= (1.0 - 0.35 * net * inner)[..., None]
    elif pattern == "globular":
        dots = np.zeros((s, s), np.float32)
        n_dots = int(25 * r0 / 0.3)
        ang, rad = rng.uniform(0, 2 * np.pi, n_dots), r0 * np.sqrt(rng.uniform(0, 0.8, n_dots))
        for px, py in zip((cx + rad * np.cos(ang) + 1) * s / 2, (cy + rad * np.sin(ang) + 1) * s / 2):
            cv2.circle(dots, (int(px), int(py)), max(1, round(0.028 * s)), 1.0, -1, cv2.LINE_AA)
        lesion *= (1.0 - 0.4 * cv2.GaussianBlur(dots, (0, 0), 0.4 + 0.006 * s) * inner)[..., None]

    # Variegation: blotches whose area grows with `var` (thresholds on standardised smooth noise).
    for color, threshold, relative in (((0.22, 0.15, 0.14), 2.2 - 2.4 * var, True),
                                      ((0.45, 0.49, 0.57), 3.0 - 2.6 * var, False),
                                      ((0.74, 0.52, 0.52), 3.3 - 2.3 * var, False)):
        blotch = (0.8 * _sigmoid((_smooth_field(rng, s, 6) - threshold) / 0.25) * inner)[..., None]
        target = skin * np.asarray(color, np.float32) if relative else np.asarray(color, np.float32)
        lesion = lesion * (1.0 - blotch) + target * blotch
    img = img * (1.0 - mask[..., None]) + lesion * mask[..., None]

    # Hair on top, then dermoscope vignetting / black ring, sensor noise.
    n_hairs = int(params["hairs"])
    if n_hairs:
        hair = np.zeros((s, s), np.uint8)
        t = np.linspace(0.0, 1.0, 16)[:, None]
        for _ in range(n_hairs):
            p0, p1, p2 = rng.uniform(-0.2, 1.2, (3, 2)) * s
            curve = ((1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t ** 2 * p2).astype(np.int32)
            cv2.polylines(hair, [curve], False, 255, max(1, s // 110), cv2.LINE_AA)
        h = (hair.astype(np.float32) / 255.0 * 0.85)[..., None]
        img = img * (1.0 - h) + np.array([0.12, 0.09, 0.08], np.float32) * h
    rc = np.sqrt(x * x + y * y)
    img *= (1.0 - 0.35 * float(params["vignette"]) * np.clip((rc - 0.6) / 0.8, 0, 1) ** 1.5)[..., None]
    if bool(params["scope_ring"]):
        ring = _sigmoid((rng.uniform(1.0, 1.15) - rc) / (2.0 / s))
        img *= (0.04 + 0.96 * ring)[..., None]
    img += rng.normal(0.0, 0.01, img.shape).astype(np.float32)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601) of a uint8 RGB picture, float 0-255."""
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
