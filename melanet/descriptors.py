"""Lesion descriptors measured from the pixels: a mask, then size, border, symmetry and colour.

DICOM files carry none of the per-lesion measurements that total-body
photography devices export (ISIC 2024's ``tbp_lv_*``: area, perimeter, border
irregularity, symmetry, colour spread, lesion-to-skin contrast), and those
measurements, normalised within each patient, were the strongest signal of
the ISIC 2024 winners. melanet measures them itself, from the cached uint8
image, at ingest (``lesion_*`` columns of ``cohort.parquet``).

Pure functions, no I/O: :func:`lesion_mask` and :func:`lesion_descriptors`.

Mask method (all steps on a copy resized to at most ``WORK_SIDE`` pixels, so
the cost does not grow with the cache size):

1. hair and thin dark lines are removed from the lightness channel by a
   morphological closing (grey dilation then erosion with a disc wider than a
   hair: the DullRazor idea without inpainting);
2. the field of view: very dark regions connected to the image border and
   lying mostly outside the inscribed circle and covering under 60 % of the
   image (a dermoscope's black ring or corners) are excluded;
3. radial vignetting is corrected: the 90th percentile of lightness per ring
   around the centre, beyond its brightest ring, is brought back to that
   ring's level (gain at most ``MAX_VIGNETTE_GAIN``), so dark corners do not
   look like lesion (steps 1-3 for the field of view and the gain run on a
   copy of at most ``COARSE_SIDE`` pixels; the gain is applied to the RGB
   work image, and step 1 is repeated on it for the channel);
4. the skin reference is the median CIELAB colour of the field of view's
   outer band (beyond 70 % of the half side); the segmentation channel is the
   CIE76 colour distance (ΔE) of each pixel from it, lightly smoothed;
5. Otsu's threshold on that channel inside the field of view, then opening
   (cuts thin bridges), closing, hole filling;
6. the lesion is the connected component with the largest area x centrality
   weight ``exp(-(d / 0.6)^2)`` (``d``: centroid distance from the centre in
   half sides); components centred beyond 0.9 half sides are never chosen.

The mask fails (all descriptors NaN, ``lesion_mask_ok = False``) when the
channel has no contrast (95th percentile ΔE below ``MIN_CONTRAST``), when no
component survives, when the lesion differs from the skin ring around it by
less than ``MIN_CONTRAST`` or than 0.75 times its own colour spread (texture or
noise, not a lesion), or when the lesion covers under 0.3 % or over 92 % of the
field of view.

Descriptors (columns ``lesion_*``, units in the names): see
:data:`LESION_COLUMNS` and the README's cohort contract.

Grayscale rule (:func:`descriptor_rule`): radiology modalities (CT, MR, CR,
DX, ...; see ``RADIOLOGY_MODALITIES``) get no descriptors (a dark central blob
on skin is not what those images show); other MONOCHROME1/2 images get the
intensity-only subset (mask from lightness, shape and lightness descriptors;
the chroma columns ``lesion_a_*``/``lesion_b_*`` are NaN); colour images get all.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

#: Bumped whenever a change alters any value, so cached descriptors are recomputed.
DESCRIPTOR_VERSION = 6
#: Side (pixels) the mask is computed at; descriptors are reported in pixels of the input image.
WORK_SIDE = 96
#: Side (pixels) of the copy the field of view and the vignetting are found on.
COARSE_SIDE = 48
MIN_CONTRAST = 4.0  # ΔE: below it the image shows no lesion to segment
MIN_CONTRAST_TO_SPREAD = 0.75  # lesion-vs-ring ΔE over the colour spread inside the lesion
MIN_AREA_FRACTION = 0.003
MAX_AREA_FRACTION = 0.92
MAX_VIGNETTE_GAIN = 1.6
COLOR_CLUSTER_MERGE_DE = 12.0  # colours closer than this (ΔE) are one colour
COLOR_CLUSTER_MIN_SHARE = 0.05  # a colour covers at least this share of the lesion

RADIOLOGY_MODALITIES = frozenset({"CT", "MR", "CR", "DX", "MG", "PT", "NM", "XA", "RF", "US", "IO", "PX", "RG",
                                  "DR", "DF", "OCT", "IVUS", "BMD", "RTIMAGE"})
RULES = ("color", "intensity", "none")

#: Columns added to the cohort, in order (``lesion_mask_ok`` is bool, the rest float).
LESION_COLUMNS = [
    "lesion_mask_ok",
    "lesion_area_frac",          # lesion area / image area
    "lesion_diameter_px",        # equivalent-circle diameter, pixels of the cached image
    "lesion_diameter_frac",      # the same / image side
    "lesion_perimeter_px",       # contour length, pixels of the cached image
    "lesion_compactness",        # perimeter^2 / (4 pi area): 1 for a disc, larger for irregular borders
    "lesion_solidity",           # area / convex-hull area: < 1 for notched borders
    "lesion_border_blur",        # border width (ΔL / mean |grad L| on the contour) / equivalent radius
    "lesion_asymmetry_major",    # shape non-overlap after flipping across the major axis, 0-1
    "lesion_asymmetry_minor",    # the same across the minor axis
    "lesion_asymmetry",          # mean of the two
    "lesion_color_asymmetry",    # largest ΔE between the mean colours of the two halves (either axis)
    "lesion_eccentricity",       # of the equal-moment ellipse: 0 disc, -> 1 elongated
    "lesion_L_mean", "lesion_a_mean", "lesion_b_mean",   # CIELAB mean colour of the lesion
    "lesion_L_std", "lesion_a_std", "lesion_b_std",      # CIELAB spread inside the lesion
    "lesion_color_spread",       # sqrt(sum of the three variances), ΔE units
    "lesion_n_colors",           # distinct colours (12 ΔE bins merged below 12 ΔE, >= 5 % each)
    "lesion_delta_e",            # CIE76 ΔE between lesion mean and the surrounding skin ring mean
    "lesion_delta_L",            # skin ring L* minus lesion L* (darkness)
]
CHROMA_COLUMNS = ("lesion_a_mean", "lesion_b_mean", "lesion_a_std", "lesion_b_std")


def warm_up() -> None:
    """Build OpenCV's 8-bit CIELAB tables (~0.1 s of CPU, once per process) now: ingest calls it before it forks
    its workers, which then share the tables instead of each building its own."""
    cv2.cvtColor(np.zeros((1, 1, 3), np.uint8), cv2.COLOR_RGB2LAB)


def descriptor_rule(modality: str | None, photometric: str | None) -> str:
    """Which descriptors an image gets: ``color`` (all), ``intensity`` (no chroma) or ``none``."""
    if str(modality or "").upper() in RADIOLOGY_MODALITIES:
        return "none"
    if str(photometric or "").upper().startswith("MONOCHROME"):
        return "intensity"
    return "color"


def rule_summary(counts: dict[str, int]) -> str:
    """The one line ingest prints about the grayscale rule."""
    return (f"lesion descriptors: {counts.get('color', 0)} colour image(s) all descriptors; "
            f"{counts.get('intensity', 0)} MONOCHROME image(s) shape + lightness only (chroma NaN); "
            f"{counts.get('none', 0)} radiology-modality image(s) none (CT/MR/CR/DX/... are not skin photographs)")


def empty_descriptors() -> dict[str, float | bool]:
    """The row of an image whose mask failed (or that gets no descriptors)."""
    return {c: (False if c == "lesion_mask_ok" else math.nan) for c in LESION_COLUMNS}


# --------------------------------------------------------------------------- mask

def _to_work(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """(uint8 RGB at most WORK_SIDE on its longest side, scale = input pixels per work pixel)."""
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    if rgb.shape[2] == 4:
        rgb = rgb[..., :3]
    h, w = rgb.shape[:2]
    scale = max(h, w) / WORK_SIDE
    if scale <= 1.0:
        return np.ascontiguousarray(rgb, dtype=np.uint8), 1.0
    size = (max(1, round(w / scale)), max(1, round(h / scale)))
    if h % size[1] == 0 and w % size[0] == 0:
        return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale
    # A picture at least twice the work side (a 256 px cache) is first box-averaged by 2 (OpenCV's exact 2:1 area
    # path, ~20x cheaper than its general filter on this picture) while it stays that large and its sides even;
    # the general area filter takes the last step, of less than 2x.
    while max(h, w) >= 2 * WORK_SIDE and h % 2 == 0 and w % 2 == 0:
        h, w = h // 2, w // 2
        rgb = cv2.resize(np.ascontiguousarray(rgb), (w, h), interpolation=cv2.INTER_AREA)
    if (h, w) == size[::-1]:
        return rgb, scale
    # A fractional ratio (128 -> 96) takes OpenCV's general area filter, ~2x slower on uint8 than on float32;
    # float32 then rounded gives the same bytes (rounding half to even, as OpenCV's uint8 cast).
    small = cv2.resize(np.ascontiguousarray(rgb, dtype=np.float32), size, interpolation=cv2.INTER_AREA)
    return np.rint(small, out=small).astype(np.uint8), scale


#: 8-bit OpenCV CIELAB -> L in 0-100, a and b in -128..127 (D65), for cv2.transform. OpenCV's 8-bit
#: conversion (a lookup table, ~20x faster than its float path) quantises L to 0.4 units, far below the
#: colour differences measured here. cv2.transform because numpy broadcasting over a trailing axis of 3 is
#: ~10x slower on these small images (the same holds for the masked means: cv2.meanStdDev).
_LAB_AFFINE = np.array([[100.0 / 255.0, 0, 0, 0], [0, 1, 0, -128.0], [0, 0, 1, -128.0]], np.float32)


def _masked_mean_std(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation of ``image`` (H, W, C) where ``mask`` is true."""
    mean, std = cv2.meanStdDev(image, mask=mask.view(np.uint8))
    return mean.ravel(), std.ravel()


def _distance_from(image: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """CIE76 ΔE (H, W) float32 of each pixel of a CIELAB image from one colour."""
    diff = cv2.subtract(image, tuple(float(v) for v in colour) + (0.0,))
    return cv2.sqrt(cv2.transform(cv2.multiply(diff, diff), np.ones((1, 3), np.float32)))


@functools.lru_cache(maxsize=8)
def _radius_map(h: int, w: int) -> np.ndarray:
    """Distance of each pixel from the image centre in half sides (1 = middle of an edge)."""
    y = (np.arange(h, dtype=np.float32) + 0.5) / h * 2.0 - 1.0
    x = (np.arange(w, dtype=np.float32) + 0.5) / w * 2.0 - 1.0
    return np.sqrt(x[None, :] ** 2 + y[:, None] ** 2)


def _quantile(values: np.ndarray, q: float) -> float:
    """The ``q`` quantile (0-1) as the order statistic at ``round(q * (n - 1))`` (np.partition; no interpolation)."""
    k = int(round(q * (values.size - 1)))
    return float(np.partition(values.ravel(), k)[k])


@functools.lru_cache(maxsize=16)
def _disc(diameter: int) -> np.ndarray:
    d = max(3, int(diameter) | 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d))


@functools.lru_cache(maxsize=8)
def _central(h: int, w: int) -> np.ndarray:
    """Every other pixel's (``[::2, ::2]``) distance from the centre below 0.8 half sides (cached: read-only)."""
    return _radius_map(h, w)[::2, ::2] < 0.8


def _median(values: np.ndarray, to_float=None) -> float:
    """np.median of a 1-D array, by np.partition (a fraction of the cost on small arrays); with ``to_float``, an
    increasing map (8-bit codes -> float32), the median of the mapped values (only the middle two are mapped)."""
    n = values.size
    part = np.partition(values, [(n - 1) // 2, n // 2])
    middle = part[[(n - 1) // 2, n // 2]]
    if to_float is not None:
        middle = to_float(middle)
    return float(0.5 * (middle[0] + middle[1]))


def _l_from_code(codes: np.ndarray) -> np.ndarray:
    """OpenCV's 8-bit CIELAB L code -> L* (0-100), float32."""
    return codes.astype(np.float32) * np.float32(100 / 255)


def _ab_from_code(codes: np.ndarray) -> np.ndarray:
    """OpenCV's 8-bit CIELAB a or b code -> a* or b* (-128..127), float32."""
    return codes.astype(np.float32) - np.float32(128)


def _field_of_view(lightness: np.ndarray, rad: np.ndarray) -> np.ndarray:
    """False on dark border-connected regions lying mostly outside the inscribed circle (scope ring, corners)."""
    central = lightness[::2, ::2][_central(*lightness.shape)]  # every other pixel: a percentile needs no more
    ref = _quantile(central, 0.75) if central.size else float(lightness.max())
    dark = (lightness < max(8.0, 0.3 * ref)).astype(np.uint8)
    fov = np.ones(lightness.shape, bool)
    if not (dark[0].any() or dark[-1].any() or dark[:, 0].any() or dark[:, -1].any()):
        return fov  # nothing dark touches the border: no ring, no dark corners
    n, labels = cv2.connectedComponents(dark, connectivity=8)
    if n <= 1:
        return fov
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    for lab in border[border > 0]:
        region = labels == lab
        # A ring or dark corners lie outside the inscribed circle and leave most of the picture;
        # a dark background around a bright object (most of the picture) is not a field-of-view edge.
        if np.count_nonzero(region) < 0.6 * region.size and _median(rad[region]) > 0.85:
            fov &= ~region
    return fov


@functools.lru_cache(maxsize=8)
def _radius_levels(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of :func:`_radius_map` and each pixel's index among them (H, W) (cached: read-only);
    a radial profile is then evaluated once per distinct radius (an eighth of the pixels on a square)."""
    levels, inverse = np.unique(_radius_map(h, w), return_inverse=True)
    return levels, inverse.reshape(h, w)


@functools.lru_cache(maxsize=8)
def _outer_band(h: int, w: int) -> np.ndarray:
    """Pixels beyond 70 % of the half side (cached: read-only)."""
    return _radius_map(h, w) > 0.7


@functools.lru_cache(maxsize=8)
def _rings(h: int, w: int, rings: int) -> tuple[np.ndarray, np.ndarray]:
    """Ring index (H, W) of each pixel among ``rings`` equal-width rings around the centre and the ring
    centres (half sides) (cached: read-only)."""
    rad = _radius_map(h, w)
    edges = np.linspace(0.0, float(rad.max()) + 1e-6, rings + 1)
    index = np.minimum(np.searchsorted(edges, rad, side="right") - 1, rings - 1)
    return index, 0.5 * (edges[1:] + edges[:-1])


def _vignette_gain(closed8: np.ndarray, fov: np.ndarray, shape: tuple[int, int],
                   rings: int = 12) -> np.ndarray | None:
    """Per-pixel gain (``shape``) undoing radial darkening beyond the brightest ring (1 inside it); None when
    no ring needs lifting.

    The ring levels (90th percentile of lightness per ring, inside the field of
    view) are order statistics of the 8-bit lightness ``closed8`` (0-255, the
    hair-closed L plane of the coarse copy), read from one ring x level histogram.
    """
    h, w = closed8.shape
    ring_map, centres = _rings(h, w, rings)
    hist = np.bincount((ring_map[fov] << 8) | closed8[fov], minlength=rings * 256).reshape(rings, 256)
    counts = hist.sum(axis=1)
    if not counts.any():
        return None
    # The order statistic at int(0.9 * (count - 1)) (0-based) of each ring: the first level whose cumulative
    # count exceeds it.
    picks = (0.9 * (counts - 1)).astype(int)
    codes = (hist.cumsum(axis=1) <= picks[:, None]).sum(axis=1)
    level = [c * (100.0 / 255.0) if k >= 8 else None for c, k in zip(codes.tolist(), counts.tolist())]
    measured = [v for v in level if v is not None]
    if not measured:
        return None
    top = level.index(max(measured))  # the first brightest ring
    gain = [1.0] * rings
    for i in range(top + 1, rings):
        gain[i] = min(MAX_VIGNETTE_GAIN, max(1.0, level[top] / level[i])) if level[i] else gain[i - 1]
    if max(gain) <= 1.0:
        return None
    levels, inverse = _radius_levels(*shape)
    return np.interp(levels, centres, gain).astype(np.float32)[inverse]  # = np.interp on every pixel


def _coarse_view(work: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Field of view (H, W) bool and vignetting gain (H, W) float32 or None of the work image, both found on a
    copy of at most ``COARSE_SIDE`` pixels (steps 1-3 of the method on its hair-closed lightness): the scope's
    dark edge and the vignetting are smooth, large structures, so a quarter of the pixels is plenty."""
    h, w = work.shape[:2]
    coarse = work
    if max(h, w) > COARSE_SIDE:
        size = (max(1, round(w * COARSE_SIDE / max(h, w))), max(1, round(h * COARSE_SIDE / max(h, w))))
        coarse = cv2.resize(work, size, interpolation=cv2.INTER_AREA)
    ch, cw = coarse.shape[:2]
    lightness = cv2.cvtColor(np.ascontiguousarray(coarse), cv2.COLOR_RGB2LAB)[..., 0]
    closed8 = cv2.morphologyEx(lightness, cv2.MORPH_CLOSE, _disc(max(ch, cw) / 24))
    fov = _field_of_view(_l_from_code(closed8), _radius_map(ch, cw))
    gain = _vignette_gain(closed8, fov, (h, w))
    if (ch, cw) != (h, w):
        fov = cv2.resize(fov.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return fov, gain


def _segment(work: np.ndarray) -> tuple[np.ndarray | None, dict]:
    """Mask on the work-size image (None when it fails) and what the descriptors reuse."""
    h, w = work.shape[:2]
    rad = _radius_map(h, w)
    fov, gain = _coarse_view(work)
    if gain is not None:  # rounded and clipped to 0-255 by OpenCV's saturating cast
        work = cv2.multiply(work, cv2.merge([gain, gain, gain]), dtype=cv2.CV_8U)
    lab8 = cv2.cvtColor(np.ascontiguousarray(work), cv2.COLOR_RGB2LAB)
    # Rank filters (closing, median) run on the 8-bit planes: they commute with the affine map to CIELAB units.
    planes8 = cv2.split(lab8)
    closed8 = cv2.morphologyEx(planes8[0], cv2.MORPH_CLOSE, _disc(max(h, w) / 24))
    lab = cv2.transform(lab8.astype(np.float32), _LAB_AFFINE)
    # Hair-free copy for the channel: hair is thin and dark, so a closing removes it from L, a median from a/b.
    clean_l = _l_from_code(closed8)
    # A 3x3 median (hairs are at most ~2 px wide at WORK_SIDE; the closing takes wider ones out of L): OpenCV's
    # 5x5 median cost ~15 % of the descriptor time at 96 px, the 3x3 one a tenth of that. Below ~72 px a and b
    # go as one two-channel image: OpenCV's median of a single 8-bit plane that small takes a path ~10x slower
    # (same values).
    ab = cv2.split(cv2.medianBlur(cv2.merge(planes8[1:]), 3)) if max(h, w) < 72 else \
        [cv2.medianBlur(p, 3) for p in planes8[1:]]
    clean_planes = [clean_l] + [_ab_from_code(p) for p in ab]
    clean = cv2.merge(clean_planes)
    hair = cv2.subtract(closed8, planes8[0]) > 25  # dark thin structures the closing removed (> 10 L*)
    info = {"lab": lab, "clean": clean, "clean_l": clean_l, "clean_l8": closed8, "fov": fov, "hair": hair, "rad": rad}
    band = fov & _outer_band(h, w)
    if np.count_nonzero(band) < 20:
        band = fov
    if np.count_nonzero(band) < 20:
        return None, info
    # Median of a third of the band (plenty for a median), on the 8-bit planes (the float planes are an
    # increasing map of them): the same values at a fraction of the cost.
    skin = np.array([_median(p[band][::3], to_float) for p, to_float in
                     zip([closed8, *ab], (_l_from_code, _ab_from_code, _ab_from_code))])
    channel = _distance_from(clean, skin)
    channel = cv2.GaussianBlur(channel, (0, 0), max(0.8, max(h, w) / 160))
    inside = channel[fov]
    if _quantile(inside[::3], 0.95) < MIN_CONTRAST:
        return None, info
    scaled = np.clip(inside / max(float(inside.max()), 1e-6) * 255.0, 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(scaled.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(otsu / 255.0 * float(inside.max()), MIN_CONTRAST)
    binary = ((channel > threshold) & fov).astype(np.uint8)
    small = _disc(max(h, w) / 40)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, small)
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, small)
    # 16-bit labels (a work image has far fewer than 65,536 components): the same output at half the cost.
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8, ltype=cv2.CV_16U)
    if n <= 1:
        return None, info
    d = np.hypot((centroids[1:, 0] + 0.5) / w * 2 - 1, (centroids[1:, 1] + 0.5) / h * 2 - 1)
    score = np.where(d > 0.9, 0.0, stats[1:, cv2.CC_STAT_AREA] * np.exp(-(d / 0.6) ** 2))
    best = int(np.argmax(score)) + 1
    if score[best - 1] <= 0:
        return None, info
    mask = _fill_holes(labels == best)
    share = np.count_nonzero(mask) / max(1, np.count_nonzero(fov))
    if share < MIN_AREA_FRACTION or share > MAX_AREA_FRACTION:
        return None, info
    # A lesion differs from the skin just around it by more than it varies inside (texture or noise
    # picked by the threshold does not).
    ring = cv2.dilate(mask.view(np.uint8), _disc(max(h, w) / 16)).astype(bool) & ~mask & fov
    if np.count_nonzero(ring) >= 10:
        inside_mean, inside_std = _masked_mean_std(clean, mask)
        contrast = float(np.linalg.norm(inside_mean - _masked_mean_std(clean, ring)[0]))
        if contrast < MIN_CONTRAST or contrast < MIN_CONTRAST_TO_SPREAD * float(np.linalg.norm(inside_std)):
            return None, info
    info["skin"] = skin
    return mask, info


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every region not reachable from the border through background filled."""
    padded = cv2.copyMakeBorder(mask.view(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    return (padded | (1 - flood)).astype(bool)[1:-1, 1:-1]


def lesion_mask(rgb_uint8: np.ndarray) -> np.ndarray:
    """Boolean lesion mask (H, W) of an RGB uint8 image; all False when segmentation fails.

    See the module docstring for the method. A (H, W) grayscale array is accepted.
    """
    work, _ = _to_work(rgb_uint8)
    mask, _ = _segment(work)
    h, w = rgb_uint8.shape[:2]
    if mask is None:
        return np.zeros((h, w), bool)
    if mask.shape != (h, w):
        mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return mask


# --------------------------------------------------------------------------- descriptors

def _principal_frame(mask: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray, float, float]:
    """Centroid (x, y), major and minor axis unit vectors, eccentricity and major-axis angle (degrees) of ``mask``.

    From the image moments of the mask (cv2.moments): the covariance of the
    pixel coordinates plus 1/12 per axis, the extent of a pixel, so that a
    one-pixel line is not infinitely thin.
    """
    m = cv2.moments(mask.view(np.uint8), binaryImage=True)
    sxx, syy, sxy = m["mu20"] / m["m00"] + 1 / 12.0, m["mu02"] / m["m00"] + 1 / 12.0, m["mu11"] / m["m00"]
    half_gap = math.hypot(0.5 * (sxx - syy), sxy)  # eigenvalues of the 2x2 covariance: mean +- half_gap
    big, small = 0.5 * (sxx + syy) + half_gap, 0.5 * (sxx + syy) - half_gap
    theta = 0.5 * math.atan2(2.0 * sxy, sxx - syy)  # direction of the major axis
    major = np.array([math.cos(theta), math.sin(theta)])
    minor = np.array([-major[1], major[0]])
    ecc = math.sqrt(max(0.0, 1.0 - small / big)) if big > 0 else 0.0
    return m["m10"] / m["m00"], m["m01"] / m["m00"], major, minor, ecc, math.degrees(theta)


def _flip_asymmetry(mask: np.ndarray, angle_deg: float, cx: float, cy: float) -> tuple[float, float]:
    """Share of the area (0-1) not overlapped by the mirror image across the major, then the minor axis.

    The mask is rotated so that the major axis is horizontal with the centroid
    at the canvas centre (bilinear, so the rounding of pixel positions does not
    read as asymmetry), then flipped up-down and left-right. (``cx``, ``cy``): the mask's centroid.
    """
    x, y, bw, bh = cv2.boundingRect(mask.view(np.uint8))
    reach = max(math.hypot(px - cx, py - cy) for px in (x, x + bw) for py in (y, y + bh))
    side = 2 * int(math.ceil(reach)) + 4  # holds the lesion at any angle; a larger canvas adds only zeros
    rot = cv2.getRotationMatrix2D((float(cx), float(cy)), angle_deg, 1.0)
    rot[:, 2] += ((side - 1) / 2.0 - cx, (side - 1) / 2.0 - cy)
    upright = cv2.warpAffine(mask.astype(np.float32), rot, (side, side), flags=cv2.INTER_LINEAR)
    total = 2.0 * max(float(upright.sum()), 1e-6)
    return (float(np.abs(upright - upright[::-1, :]).sum()) / total,
            float(np.abs(upright - upright[:, ::-1]).sum()) / total)


def _color_clusters(lab_pixels: np.ndarray) -> int:
    """Distinct colours of a lesion's CIELAB pixels (n, 3).

    The pixels are binned on a CIELAB grid of ``COLOR_CLUSTER_MERGE_DE`` (a
    quantisation, no iterative clustering); each bin holding at least 0.5 % of
    the pixels is a colour at its pixels' mean, weighted by its share; the
    closest pair of colours closer than ``COLOR_CLUSTER_MERGE_DE`` is merged
    (weighted mean) until none is (a colour split by a bin edge becomes one);
    colours covering at least ``COLOR_CLUSTER_MIN_SHARE`` of the lesion are counted.
    """
    if len(lab_pixels) > 600:  # a share of 0.5 % needs no more pixels than this
        lab_pixels = lab_pixels[::int(math.ceil(len(lab_pixels) / 600))]
    n = len(lab_pixels)
    if n < 24:
        return 1
    q = np.floor(lab_pixels * np.float32(1.0 / COLOR_CLUSTER_MERGE_DE)).astype(np.int64)
    # Bin number in (L, a, b) order: L* 0-100 gives bins 0-8, a* and b* (-128..127) bins -11..10.
    key = (q[:, 0] * 22 + (q[:, 1] + 11)) * 22 + (q[:, 2] + 11)
    counts = np.bincount(key, minlength=9 * 22 * 22)
    bins = np.flatnonzero(counts >= 0.005 * n)
    sums = np.stack([np.bincount(key, weights=lab_pixels[:, i], minlength=len(counts))[bins] for i in range(3)], 1)
    means = sums / counts[bins, None]
    colours = means.tolist()
    shares = (counts[bins] / n).tolist()

    def dist2(ci: list[float], cj: list[float]) -> float:
        return (ci[0] - cj[0]) ** 2 + (ci[1] - cj[1]) ** 2 + (ci[2] - cj[2]) ** 2

    # Squared distances of every pair (i < j), kept and updated as colours merge (the first ones from one numpy
    # pass: the same sums in the same order as dist2).
    d2 = [row[i + 1:] for i, row in enumerate(((means[:, None, :] - means[None, :, :]) ** 2).sum(axis=2).tolist())]
    limit = COLOR_CLUSTER_MERGE_DE ** 2
    while len(colours) > 1:
        best, pair = limit, None
        for i, row in enumerate(d2):
            if row:
                m = min(row)
                if m < best:
                    best, pair = m, (i, i + 1 + row.index(m))
        if pair is None:
            break
        i, j = pair
        si, sj = shares[i], shares[j]
        colours[i] = [(a * si + b * sj) / (si + sj) for a, b in zip(colours[i], colours[j])]
        shares[i] = si + sj
        del colours[j], shares[j], d2[j]
        for k in range(j):  # drop column j (row k holds columns k + 1 ...)
            del d2[k][j - k - 1]
        for k in range(i):  # distances to the merged colour
            d2[k][i - k - 1] = dist2(colours[k], colours[i])
        d2[i] = [dist2(colours[i], cj) for cj in colours[i + 1:]]
    return max(1, sum(share >= COLOR_CLUSTER_MIN_SHARE for share in shares))


def lesion_descriptors(rgb_uint8: np.ndarray, rule: str = "color") -> dict[str, float | bool]:
    """Descriptors of the lesion in an RGB uint8 image (H, W, 3): the :data:`LESION_COLUMNS` dict.

    ``rule`` from :func:`descriptor_rule`: ``none`` returns the empty row,
    ``intensity`` leaves the chroma columns NaN. A failed mask gives NaN
    descriptors and ``lesion_mask_ok = False``; this function does not raise
    on any image content.
    """
    if rule not in RULES:
        raise ValueError(f"unknown descriptor rule {rule!r}; one of {RULES}")
    out = empty_descriptors()
    if rule == "none" or rgb_uint8.size == 0:
        return out
    work, scale = _to_work(rgb_uint8)
    mask, info = _segment(work)
    if mask is None:
        return out
    h, w = work.shape[:2]
    side = float(max(rgb_uint8.shape[:2]))
    area = float(np.count_nonzero(mask))
    contours, _ = cv2.findContours(mask.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    perimeter = float(cv2.arcLength(contour, True))
    hull_area = float(cv2.contourArea(cv2.convexHull(contour)))
    polygon_area = float(cv2.contourArea(contour))  # same polygon convention as the hull
    diameter = math.sqrt(4.0 * area / math.pi)
    cx, cy, major, minor, ecc, angle = _principal_frame(mask)
    asym_major, asym_minor = _flip_asymmetry(mask, angle, cx, cy)

    lab = info["lab"]
    keep = mask & ~info["hair"]
    if np.count_nonzero(keep) < 10:
        keep = mask
    mean, std = _masked_mean_std(lab, keep)
    kx, ky, major, minor, _, _ = _principal_frame(keep)
    xs, ys = cv2.findNonZero(keep.view(np.uint8)).reshape(-1, 2).T  # np.nonzero's order (raster), 3x faster
    pix = lab[ys, xs]  # (n, 3), in the order of (ys, xs)
    halves = []
    for axis in (minor, major):  # split across the major axis (by the minor coordinate), then across the minor
        coord = (xs - kx) * axis[0] + (ys - ky) * axis[1]
        a, b = (coord > 0).astype(np.float32), (coord < 0).astype(np.float32)
        na, nb = float(a.sum()), float(b.sum())
        halves.append(float(np.linalg.norm(a @ pix / na - b @ pix / nb)) if na and nb else 0.0)
    ring_width = max(2, round(0.04 * max(h, w)))
    ring = cv2.dilate(mask.view(np.uint8), _disc(2 * ring_width + 1)).astype(bool) & ~mask & info["fov"] \
        & ~info["hair"]
    skin = _masked_mean_std(lab, ring)[0] if np.count_nonzero(ring) >= 10 else info["skin"]
    delta_l = float(skin[0] - mean[0])
    # |grad L| from the 8-bit plane: integer Sobel sums and squares are exact in float32, so the value is the same
    # in every process (Sobel on the float plane rounded differently with the buffers' alignment: two ingests of the
    # same files differed in the last bits), then scaled to L units (100/255 per level, /8 for the kernel).
    # Only around the contour: its bounding box and a 1-pixel margin where the image has one (at the image's edge
    # the crop's border is the image's, so Sobel's reflected border gives the same values).
    bx, by, bw, bh = cv2.boundingRect(contour)
    x0, y0 = max(bx - 1, 0), max(by - 1, 0)
    near = info["clean_l8"][y0:min(by + bh + 1, h), x0:min(bx + bw + 1, w)]
    gx, gy = (cv2.Sobel(near, cv2.CV_32F, dx, dy, ksize=3) for dx, dy in ((1, 0), (0, 1)))
    grad = np.sqrt(gx * gx + gy * gy) * np.float32(100 / 255 / 8)
    edge_grad = float(grad[contour[:, 0, 1] - y0, contour[:, 0, 0] - x0].mean())
    blur = abs(delta_l) / max(edge_grad, 1e-3) / max(diameter / 2.0, 1.0)

    out.update({
        "lesion_mask_ok": True,
        "lesion_area_frac": area / (h * w),
        "lesion_diameter_px": diameter * scale,
        "lesion_diameter_frac": diameter * scale / side,
        "lesion_perimeter_px": perimeter * scale,
        "lesion_compactness": perimeter ** 2 / (4.0 * math.pi * area),
        "lesion_solidity": polygon_area / hull_area if hull_area > 0 else 1.0,
        "lesion_border_blur": float(min(blur, 10.0)),
        "lesion_asymmetry_major": asym_major,
        "lesion_asymmetry_minor": asym_minor,
        "lesion_asymmetry": 0.5 * (asym_major + asym_minor),
        "lesion_color_asymmetry": max(halves),
        "lesion_eccentricity": ecc,
        "lesion_L_mean": float(mean[0]), "lesion_a_mean": float(mean[1]), "lesion_b_mean": float(mean[2]),
        "lesion_L_std": float(std[0]), "lesion_a_std": float(std[1]), "lesion_b_std": float(std[2]),
        "lesion_color_spread": float(math.sqrt(float((std ** 2).sum()))),
        "lesion_n_colors": float(_color_clusters(pix)),
        "lesion_delta_e": float(np.linalg.norm(skin - mean)),
        "lesion_delta_L": delta_l,
    })
    if rule == "intensity":
        for col in CHROMA_COLUMNS:
            out[col] = math.nan
    return out


def draw_outline(rgb_uint8: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """Copy of the image with the mask's outline drawn (for the EDA page and visual checks)."""
    out = np.ascontiguousarray(rgb_uint8[..., :3] if rgb_uint8.ndim == 3 else
                               np.repeat(rgb_uint8[..., None], 3, axis=2)).copy()
    if mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, color, max(1, round(max(out.shape[:2]) / 128)))
    return out
