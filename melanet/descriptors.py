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
   look like lesion;
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
DESCRIPTOR_VERSION = 3
#: Side (pixels) the mask is computed at; descriptors are reported in pixels of the input image.
WORK_SIDE = 96
MIN_CONTRAST = 4.0  # ΔE: below it the image shows no lesion to segment
MIN_CONTRAST_TO_SPREAD = 0.75  # lesion-vs-ring ΔE over the colour spread inside the lesion
MIN_AREA_FRACTION = 0.003
MAX_AREA_FRACTION = 0.92
MAX_VIGNETTE_GAIN = 1.6
COLOR_CLUSTER_MERGE_DE = 12.0  # k-means centres closer than this (ΔE) are one colour
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
    "lesion_n_colors",           # distinct colour clusters (k-means, merged below 12 ΔE, >= 5 % each)
    "lesion_delta_e",            # CIE76 ΔE between lesion mean and the surrounding skin ring mean
    "lesion_delta_L",            # skin ring L* minus lesion L* (darkness)
]
CHROMA_COLUMNS = ("lesion_a_mean", "lesion_b_mean", "lesion_a_std", "lesion_b_std")


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
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale


def _lab(rgb_uint8: np.ndarray) -> np.ndarray:
    """CIELAB (D65), float32: L in 0-100, a and b in -128..127.

    OpenCV's 8-bit conversion (a lookup table, ~20x faster than its float path)
    quantises L to 0.4 units, far below the colour differences measured here.
    """
    lab = cv2.cvtColor(np.ascontiguousarray(rgb_uint8), cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[..., 0] *= 100.0 / 255.0
    lab[..., 1:] -= 128.0
    return lab


@functools.lru_cache(maxsize=8)
def _radius_map(h: int, w: int) -> np.ndarray:
    """Distance of each pixel from the image centre in half sides (1 = middle of an edge)."""
    y = (np.arange(h, dtype=np.float32) + 0.5) / h * 2.0 - 1.0
    x = (np.arange(w, dtype=np.float32) + 0.5) / w * 2.0 - 1.0
    return np.sqrt(x[None, :] ** 2 + y[:, None] ** 2)


def _disc(diameter: int) -> np.ndarray:
    d = max(3, int(diameter) | 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d))


def _field_of_view(lightness: np.ndarray, rad: np.ndarray) -> np.ndarray:
    """False on dark border-connected regions lying mostly outside the inscribed circle (scope ring, corners)."""
    central = lightness[::2, ::2][rad[::2, ::2] < 0.8]  # every other pixel: a percentile needs no more
    ref = float(np.percentile(central, 75)) if central.size else float(lightness.max())
    dark = (lightness < max(8.0, 0.3 * ref)).astype(np.uint8)
    n, labels = cv2.connectedComponents(dark, connectivity=8)
    fov = np.ones(lightness.shape, bool)
    if n <= 1:
        return fov
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    for lab in border[border > 0]:
        region = labels == lab
        # A ring or dark corners lie outside the inscribed circle and leave most of the picture;
        # a dark background around a bright object (most of the picture) is not a field-of-view edge.
        if np.median(rad[region]) > 0.85 and region.mean() < 0.6:
            fov &= ~region
    return fov


def _vignette_gain(lightness: np.ndarray, rad: np.ndarray, fov: np.ndarray, rings: int = 12) -> np.ndarray:
    """Per-pixel gain undoing radial darkening beyond the brightest ring (1 inside it).

    The ring levels are measured on a 48-pixel copy: vignetting is smooth, and this keeps it cheap.
    """
    full_rad = rad
    h, w = lightness.shape
    if max(h, w) > 48:
        size = (max(1, round(w * 48 / max(h, w))), max(1, round(h * 48 / max(h, w))))
        lightness = cv2.resize(lightness, size, interpolation=cv2.INTER_AREA)
        fov = cv2.resize(fov.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        rad = _radius_map(size[1], size[0])
    edges = np.linspace(0.0, float(rad.max()) + 1e-6, rings + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    # 90th percentile per ring in one sort: pixels ordered by ring, then lightness.
    ring = np.minimum(np.searchsorted(edges, rad[fov], side="right") - 1, rings - 1)
    values = lightness[fov]
    order = np.lexsort((values, ring))
    counts = np.bincount(ring, minlength=rings)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    level = np.where(counts >= 8, values[order][np.minimum(starts + (0.9 * (counts - 1)).astype(int),
                                                               max(len(values) - 1, 0))] if len(values) else 0.0,
                     np.nan)
    if np.isnan(level).all():
        return np.ones_like(lightness)
    top = int(np.nanargmax(level))
    gain = np.ones(rings)
    for i in range(top + 1, rings):
        if not np.isnan(level[i]) and level[i] > 0:
            gain[i] = min(MAX_VIGNETTE_GAIN, max(1.0, level[top] / level[i]))
        else:
            gain[i] = gain[i - 1]
    return np.interp(full_rad, centres, gain).astype(np.float32)


def _segment(work: np.ndarray) -> tuple[np.ndarray | None, dict]:
    """Mask on the work-size image (None when it fails) and what the descriptors reuse."""
    h, w = work.shape[:2]
    rad = _radius_map(h, w)
    lab = _lab(work)
    hair_kernel = _disc(max(h, w) / 24)
    closed_l = cv2.morphologyEx(lab[..., 0], cv2.MORPH_CLOSE, hair_kernel)
    fov = _field_of_view(closed_l, rad)
    gain = _vignette_gain(closed_l, rad, fov)
    corrected = bool((gain > 1.0).any())
    if corrected:
        lab = _lab(np.clip(work * gain[..., None] + 0.5, 0, 255).astype(np.uint8))
    # Hair-free copy for the channel: hair is thin and dark, so a closing removes it from L, a median from a/b.
    clean = np.empty_like(lab)
    clean[..., 0] = cv2.morphologyEx(lab[..., 0], cv2.MORPH_CLOSE, hair_kernel) if corrected else closed_l
    for i in (1, 2):
        clean[..., i] = cv2.medianBlur(np.ascontiguousarray(lab[..., i]), 5)
    hair = (clean[..., 0] - lab[..., 0]) > 10.0  # dark thin structures the closing removed
    info = {"lab": lab, "clean": clean, "fov": fov, "hair": hair, "rad": rad}
    band = fov & (rad > 0.7)
    if band.sum() < 20:
        band = fov
    if band.sum() < 20:
        return None, info
    skin = np.median(clean[band][::3], axis=0)  # a third of the band pixels: plenty for a median
    channel = np.sqrt(((clean - skin) ** 2).sum(axis=2))
    channel = cv2.GaussianBlur(channel, (0, 0), max(0.8, max(h, w) / 160))
    inside = channel[fov]
    if float(np.percentile(inside[::3], 95)) < MIN_CONTRAST:
        return None, info
    scaled = np.clip(inside / max(float(inside.max()), 1e-6) * 255.0, 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(scaled.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(otsu / 255.0 * float(inside.max()), MIN_CONTRAST)
    binary = ((channel > threshold) & fov).astype(np.uint8)
    small = _disc(max(h, w) / 40)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, small)
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, small)
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    best, best_score = 0, 0.0
    for lab_id in range(1, n):
        cx, cy = centroids[lab_id]
        d = math.hypot((cx + 0.5) / w * 2 - 1, (cy + 0.5) / h * 2 - 1)
        if d > 0.9:
            continue
        score = stats[lab_id, cv2.CC_STAT_AREA] * math.exp(-(d / 0.6) ** 2)
        if score > best_score:
            best, best_score = lab_id, score
    if best == 0:
        return None, info
    mask = _fill_holes(labels == best)
    share = mask.sum() / max(1, fov.sum())
    if share < MIN_AREA_FRACTION or share > MAX_AREA_FRACTION:
        return None, info
    # A lesion differs from the skin just around it by more than it varies inside (texture or noise
    # picked by the threshold does not).
    ring = cv2.dilate(mask.astype(np.uint8), _disc(max(h, w) / 16)).astype(bool) & ~mask & fov
    if ring.sum() >= 10:
        inside_px = clean[mask]
        contrast = float(np.linalg.norm(inside_px.mean(axis=0) - clean[ring].mean(axis=0)))
        if contrast < MIN_CONTRAST or contrast < MIN_CONTRAST_TO_SPREAD * float(np.sqrt(inside_px.var(axis=0).sum())):
            return None, info
    info["skin"] = skin
    return mask, info


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every region not reachable from the border through background filled."""
    padded = np.pad(mask.astype(np.uint8), 1)
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

def _principal_frame(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Pixel coordinates of ``mask`` along its principal axes (u major, v minor), eccentricity, major-axis angle."""
    ys, xs = np.nonzero(mask)
    pts = np.stack([xs, ys], axis=1).astype(np.float64)
    pts -= pts.mean(axis=0)
    cov = pts.T @ pts / len(pts) + np.eye(2) / 12.0  # + pixel extent: a 1-pixel line is not infinitely thin
    evals, evecs = np.linalg.eigh(cov)  # ascending
    major, minor = evecs[:, 1], evecs[:, 0]
    ecc = math.sqrt(max(0.0, 1.0 - evals[0] / evals[1])) if evals[1] > 0 else 0.0
    return pts @ major, pts @ minor, ecc, math.degrees(math.atan2(major[1], major[0]))


def _flip_asymmetry(mask: np.ndarray, angle_deg: float) -> tuple[float, float]:
    """Share of the area (0-1) not overlapped by the mirror image across the major, then the minor axis.

    The mask is rotated so that the major axis is horizontal with the centroid
    at the canvas centre (bilinear, so the rounding of pixel positions does not
    read as asymmetry), then flipped up-down and left-right.
    """
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean(), ys.mean()
    side = int(math.ceil(math.hypot(*mask.shape))) + 4
    rot = cv2.getRotationMatrix2D((float(cx), float(cy)), angle_deg, 1.0)
    rot[:, 2] += ((side - 1) / 2.0 - cx, (side - 1) / 2.0 - cy)
    upright = cv2.warpAffine(mask.astype(np.float32), rot, (side, side), flags=cv2.INTER_LINEAR)
    total = 2.0 * max(float(upright.sum()), 1e-6)
    return (float(np.abs(upright - upright[::-1, :]).sum()) / total,
            float(np.abs(upright - upright[:, ::-1]).sum()) / total)


def _color_clusters(lab_pixels: np.ndarray, k: int = 6, max_points: int = 1500, seed: int = 0) -> int:
    """Distinct colours: k-means, then centres closer than COLOR_CLUSTER_MERGE_DE merged, small ones dropped."""
    if len(lab_pixels) < k * 4:
        return 1
    rng = np.random.default_rng(seed)
    pts = lab_pixels if len(lab_pixels) <= max_points else lab_pixels[rng.choice(len(lab_pixels), max_points,
                                                                                   replace=False)]
    pts = np.ascontiguousarray(pts, dtype=np.float32)
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 15, 0.5)
    _, labels, centres = cv2.kmeans(pts, k, None, criteria, 1, cv2.KMEANS_PP_CENTERS)
    share = np.bincount(labels.ravel(), minlength=k) / len(pts)
    # Greedy agglomeration: merge the closest pair of centres until all are at least the merge distance apart.
    groups = [(centres[i].astype(np.float64), share[i]) for i in range(k) if share[i] > 0]
    while len(groups) > 1:
        best, pair = COLOR_CLUSTER_MERGE_DE, None
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                dist = float(np.linalg.norm(groups[i][0] - groups[j][0]))
                if dist < best:
                    best, pair = dist, (i, j)
        if pair is None:
            break
        (ci, si), (cj, sj) = groups[pair[0]], groups[pair[1]]
        merged = ((ci * si + cj * sj) / (si + sj), si + sj)
        groups = [g for n, g in enumerate(groups) if n not in pair] + [merged]
    return int(sum(s >= COLOR_CLUSTER_MIN_SHARE for _, s in groups))


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
    area = float(mask.sum())
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    perimeter = float(cv2.arcLength(contour, True))
    hull_area = float(cv2.contourArea(cv2.convexHull(contour)))
    polygon_area = float(cv2.contourArea(contour))  # same polygon convention as the hull
    diameter = math.sqrt(4.0 * area / math.pi)
    _, _, ecc, angle = _principal_frame(mask)
    asym_major, asym_minor = _flip_asymmetry(mask, angle)

    lab, clean = info["lab"], info["clean"]
    keep = mask & ~info["hair"]
    if keep.sum() < 10:
        keep = mask
    pix = lab[keep]
    mean, std = pix.mean(axis=0), pix.std(axis=0)
    ys, xs = np.nonzero(keep)
    coords_u, coords_v, _, _ = _principal_frame(keep)
    halves = []
    for side_values in (coords_v, coords_u):  # split across the major axis (by v), then the minor (by u)
        a, b = pix[side_values > 0], pix[side_values < 0]
        halves.append(float(np.linalg.norm(a.mean(axis=0) - b.mean(axis=0))) if len(a) and len(b) else 0.0)
    ring_width = max(2, round(0.04 * max(h, w)))
    ring = cv2.dilate(mask.astype(np.uint8), _disc(2 * ring_width + 1)).astype(bool) & ~mask & info["fov"] \
        & ~info["hair"]
    skin = lab[ring].mean(axis=0) if ring.sum() >= 10 else info["skin"]
    delta_l = float(skin[0] - mean[0])
    grad = cv2.magnitude(cv2.Sobel(clean[..., 0], cv2.CV_32F, 1, 0, ksize=3) / 8.0,
                         cv2.Sobel(clean[..., 0], cv2.CV_32F, 0, 1, ksize=3) / 8.0)
    edge_grad = float(grad[contour[:, 0, 1], contour[:, 0, 0]].mean())
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
