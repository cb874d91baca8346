"""Lesion descriptors: drawn shapes measured back, irregular vs round, colours counted, failure and grayscale rules."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from melanet.descriptors import (CHROMA_COLUMNS, LESION_COLUMNS, descriptor_rule, lesion_descriptors,
                                 lesion_mask)

SKIN = (222, 184, 160)
BROWN = (120, 78, 58)


def _canvas(size: int = 256, seed: int = 0) -> np.ndarray:
    """Skin with a little sensor noise (a perfectly flat field is not what cameras give)."""
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.float32)
    img[:] = SKIN
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def _ellipse(a: int, b: int, angle: float = 30.0, size: int = 256) -> np.ndarray:
    img = _canvas(size)
    cv2.ellipse(img, (size // 2, size // 2), (a, b), angle, 0, 360, BROWN, -1, cv2.LINE_AA)
    return img


def test_disc_and_ellipse_measured_back():
    disc = lesion_descriptors(_ellipse(50, 50))
    assert disc["lesion_mask_ok"]
    assert disc["lesion_diameter_px"] == pytest.approx(100, rel=0.05)
    assert disc["lesion_diameter_frac"] == pytest.approx(100 / 256, rel=0.05)
    assert disc["lesion_area_frac"] == pytest.approx(math.pi * 50 ** 2 / 256 ** 2, rel=0.08)
    assert disc["lesion_eccentricity"] < 0.25 and disc["lesion_asymmetry"] < 0.05
    assert disc["lesion_compactness"] < 1.15 and disc["lesion_solidity"] > 0.95
    assert disc["lesion_n_colors"] == 1
    assert disc["lesion_delta_e"] > 20 and disc["lesion_delta_L"] > 20  # darker than the skin
    ellipse = lesion_descriptors(_ellipse(64, 32))
    assert ellipse["lesion_area_frac"] == pytest.approx(math.pi * 64 * 32 / 256 ** 2, rel=0.08)
    assert ellipse["lesion_eccentricity"] == pytest.approx(math.sqrt(1 - 0.25), abs=0.05)
    assert ellipse["lesion_asymmetry"] < 0.05  # an ellipse is symmetric about both axes
    mask = lesion_mask(_ellipse(64, 32))
    assert mask.shape == (256, 256) and mask.dtype == bool
    assert mask[128, 128] and not mask[5, 5]


def test_irregular_lopsided_border_scores_higher_than_a_circle():
    size = 256
    theta = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    radius = 55 * (1 + 0.18 * np.cos(7 * theta) + 0.1 * np.cos(11 * theta + 1) + 0.25 * np.cos(theta))
    pts = np.stack([size / 2 + radius * np.cos(theta), size / 2 + radius * np.sin(theta)], 1).astype(np.int32)
    irregular = _canvas(size)
    cv2.fillPoly(irregular, [pts], BROWN, cv2.LINE_AA)
    star, disc = lesion_descriptors(irregular), lesion_descriptors(_ellipse(55, 55))
    assert star["lesion_compactness"] > disc["lesion_compactness"] + 0.3
    assert star["lesion_solidity"] < disc["lesion_solidity"] - 0.05
    assert star["lesion_asymmetry"] > disc["lesion_asymmetry"] + 0.05


def test_two_colour_lesion_has_more_colours_and_spread():
    one = _ellipse(60, 60, 0)
    two = one.copy()
    cv2.ellipse(two, (128, 128), (60, 60), 0, 90, 270, (60, 70, 110), -1)  # a blue-grey half
    a, b = lesion_descriptors(one), lesion_descriptors(two)
    assert a["lesion_n_colors"] == 1 and b["lesion_n_colors"] >= 2
    assert b["lesion_color_spread"] > a["lesion_color_spread"] + 5
    assert b["lesion_color_asymmetry"] > a["lesion_color_asymmetry"] + 10


def test_mask_ignores_hair_vignette_and_scope_ring():
    img = _ellipse(40, 40, 0).astype(np.float32)
    yy, xx = np.mgrid[0:256, 0:256]
    rad = np.hypot(xx - 127.5, yy - 127.5) / 128
    img *= (1 - 0.35 * np.clip((rad - 0.6) / 0.8, 0, 1) ** 1.5)[..., None]  # vignette
    img[rad > 1.05] *= 0.05  # black ring outside the scope's round field
    img = img.astype(np.uint8)
    for k in range(6):  # dark hairs crossing the picture
        cv2.line(img, (0, 20 + 40 * k), (255, 60 + 30 * k), (30, 25, 20), 2, cv2.LINE_AA)
    d = lesion_descriptors(img)
    assert d["lesion_mask_ok"]
    assert d["lesion_diameter_px"] == pytest.approx(80, rel=0.12)
    assert d["lesion_compactness"] < 1.4


@pytest.mark.parametrize("image", [np.full((64, 64, 3), 200, np.uint8),
                                   np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8),
                                   np.zeros((64, 64, 3), np.uint8)], ids=["blank", "noise", "black"])
def test_no_lesion_gives_nan_and_mask_not_ok(image):
    d = lesion_descriptors(image)
    assert list(d) == LESION_COLUMNS
    assert d["lesion_mask_ok"] is False
    assert all(math.isnan(v) for k, v in d.items() if k != "lesion_mask_ok")
    assert not lesion_mask(image).any()


def test_grayscale_rule():
    assert descriptor_rule("CT", "MONOCHROME2") == "none"
    assert descriptor_rule("mr", "MONOCHROME1") == "none"
    assert descriptor_rule("DX", None) == "none"
    assert descriptor_rule("XC", "MONOCHROME2") == "intensity"
    assert descriptor_rule(None, "MONOCHROME1") == "intensity"
    assert descriptor_rule("XC", "YBR_FULL_422") == "color"
    gray = cv2.cvtColor(cv2.cvtColor(_ellipse(50, 30), cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    inten = lesion_descriptors(gray, "intensity")
    assert inten["lesion_mask_ok"] and inten["lesion_eccentricity"] > 0.6
    assert all(math.isnan(inten[c]) for c in CHROMA_COLUMNS) and not math.isnan(inten["lesion_L_mean"])
    none = lesion_descriptors(gray, "none")
    assert none["lesion_mask_ok"] is False and math.isnan(none["lesion_area_frac"])
    with pytest.raises(ValueError, match="unknown descriptor rule"):
        lesion_descriptors(gray, "colour")


def test_descriptors_scale_with_the_image_not_the_work_size():
    small, large = lesion_descriptors(_ellipse(25, 25, size=128)), lesion_descriptors(_ellipse(100, 100, size=512))
    assert small["lesion_diameter_px"] == pytest.approx(50, rel=0.06)
    assert large["lesion_diameter_px"] == pytest.approx(200, rel=0.06)
    assert small["lesion_diameter_frac"] == pytest.approx(large["lesion_diameter_frac"], rel=0.05)


def test_colours_counted_and_shape_measures_do_not_depend_on_the_angle():
    three = _ellipse(70, 70, 0)
    cv2.ellipse(three, (128, 128), (70, 70), 0, 90, 210, (60, 70, 110), -1)   # blue-grey third
    cv2.ellipse(three, (128, 128), (70, 70), 0, 210, 330, (40, 25, 20), -1)   # near-black third
    assert lesion_descriptors(three)["lesion_n_colors"] == 3
    # A blotch under 5 % of the lesion is not a colour of its own.
    speck = _ellipse(70, 70, 0)
    cv2.circle(speck, (150, 128), 6, (60, 70, 110), -1)
    assert lesion_descriptors(speck)["lesion_n_colors"] == 1
    angles = [lesion_descriptors(_ellipse(64, 32, angle)) for angle in (0, 30, 75, 90)]
    for key in ("lesion_eccentricity", "lesion_area_frac", "lesion_compactness"):
        values = [d[key] for d in angles]
        assert max(values) - min(values) < 0.03 * max(values), (key, values)
    assert all(d["lesion_asymmetry"] < 0.06 for d in angles)
