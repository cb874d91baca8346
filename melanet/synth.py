"""``melanet synth``: a synthetic dermoscopy cohort as real DICOM files, with known true probabilities.

Real dermoscopy data cannot be downloaded here, so melanet makes its own cohort
for the demo, the tests and the benchmarks. Written to ``OUT_DIR``:

- ``dicom/``: one DICOM file per lesion image, ISIC-like names
  (``ISIC_0123456.dcm``); a few have no extension and a few sit in a
  subfolder, so ``image_id`` (path relative to ``dicom/`` without extension)
  is not always the bare stem. Encodings are mixed per file: JPEG baseline
  YBR_FULL_422 (as ISIC's DICOMs), uncompressed RGB, RLE lossless, JPEG 2000
  lossless and, with ``grayscale_fraction``, 16-bit MONOCHROME1/2 with
  rescale and window tags.
- ``labels.csv``: ``image_id, target, diagnosis`` for the labelled images
  (``test_fraction`` of the patients are left out: the test set).
- ``truth.csv``: ``image_id, p_true, target`` for every image, then the
  diagnosis, split and the four logit terms, so the best achievable AUC is known.
- ``faults.csv`` (with ``faults``): the deliberately broken inputs.
- ``synth.json``: resolved config, counts, prevalence and per-term AUCs.

Label model: ``p_true = sigmoid(b0 + image + meta + duckling + noise)``,
``target ~ Bernoulli(p_true)``, ``b0`` bisected so that the mean of
``p_true`` equals ``prevalence``.

- image: the lesion cues drawn in the pixels (border irregularity, colour
  variegation, asymmetry, diameter);
- meta: non-linear in age, plus sex and a sex x site interaction (torso
  matters for men, lower extremity for women) and head/neck x old age;
- duckling ("ugly duckling"): each patient has a signature nevus (tone,
  pattern, size, atypia level); a lesion that departs from it is riskier,
  and an atypical look shared by all of a patient's lesions counts less.
  Both are visible only against the patient's other lesions;
- noise: unobserved, so no model reaches the true-probability AUC.

Same seed, byte-identical files (no timestamps; UIDs derived from the seed).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pydicom
from PIL import Image
from pydantic import Field, field_validator
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless,
                         generate_uid)
from sklearn.metrics import roc_auc_score

from melanet.config import StageConfig
from melanet.console import console, progress
from melanet.errors import InputDataError, did_you_mean
from melanet.io import write_bytes, write_csv, write_json, write_text

VL_PHOTOGRAPHIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.4"

#: Colour encodings mixed by ``encoding_weights``.
COLOR_ENCODINGS = ("jpeg_baseline", "explicit_vr_le", "rle_lossless", "jpeg2000_lossless")
#: Grayscale encodings used for ``grayscale_fraction`` of the files (16-bit, uncompressed).
GRAY_ENCODINGS = ("monochrome1", "monochrome2")
#: Broken inputs written with ``faults``; ``no_file_meta`` is one cohort image written raw.
FAULTS = ("truncated", "not_dicom_png", "not_dicom_text", "no_pixel_data", "no_file_meta")

# ISIC 2019/2020 BodyPartExamined values and roughly their frequencies.
SITES = ("TORSO", "ANTERIOR TORSO", "POSTERIOR TORSO", "LOWER EXTREMITY", "UPPER EXTREMITY",
         "HEAD/NECK", "PALMS/SOLES", "ORAL/GENITAL")
SITE_WEIGHTS = (0.22, 0.14, 0.15, 0.25, 0.15, 0.065, 0.02, 0.005)
DIAGNOSES = ("melanoma", "nevus", "seborrheic_keratosis", "lentigo", "other")
PATTERNS = ("homogeneous", "reticular", "globular")

_GIVEN = ("Ana", "Ben", "Chloe", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas", "Kate", "Liam",
          "Maya", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wim", "Yara")
_FAMILY = ("Abbott", "Berg", "Castillo", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ivanova",
           "Jansen", "Kowalski", "Larsen", "Moreau", "Nakamura", "Okafor", "Petrov", "Quist", "Rossi",
           "Schmidt", "Tanaka", "Umarov", "Varga", "Weber", "Zhou")

_LESION_STREAM = 1  # per-image render streams: default_rng([seed, _LESION_STREAM, index])
_FAULT_STREAM = 2
_BASE_DATE = date(2010, 1, 1)
_SUMMARY = "synth.json"
_IN_PROGRESS = ".synth_incomplete"


class SynthConfig(StageConfig):
    """Settings of ``melanet synth``. Sizes in pixels, fractions in 0-1, signals scale logit terms."""

    out_dir: Path
    patients: int = Field(300, ge=1, description="Number of patients.")
    seed: int = Field(0, ge=0, description="Random seed: same seed, byte-identical files.")
    image_size: int = Field(128, ge=16, le=2048, description="Image side in pixels (square).")
    prevalence: float = Field(0.2, gt=0.0, lt=1.0, description="Mean true probability of melanoma.")
    faults: bool = Field(False, description="Add broken inputs (see FAULTS).")
    grayscale_fraction: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of 16-bit MONOCHROME1/2 files.")
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="Fraction of patients left unlabelled.")
    mean_lesions: float = Field(3.5, ge=1.0, description="Mean images per patient (heavy-tailed).")
    max_lesions: int = Field(25, ge=1, description="Cap on images per patient.")
    image_signal: float = Field(1.0, ge=0.0, description="Scale of the pixel-cue logit term.")
    meta_signal: float = Field(1.0, ge=0.0, description="Scale of the age/sex/site logit term.")
    duckling_signal: float = Field(1.0, ge=0.0, description="Scale of the ugly-duckling logit term.")
    noise_scale: float = Field(1.0, ge=0.0, description="Scale of the unobserved logit noise.")
    encoding_weights: dict[str, float] = Field(
        default_factory=lambda: {"jpeg_baseline": 0.55, "explicit_vr_le": 0.15,
                                 "rle_lossless": 0.15, "jpeg2000_lossless": 0.15},
        description="Relative frequency of each colour encoding.")
    extensionless_fraction: float = Field(0.05, ge=0.0, le=1.0, description="Files written without '.dcm'.")
    subfolder_fraction: float = Field(0.1, ge=0.0, le=1.0, description="Files written in a batch_<k>/ subfolder.")

    @field_validator("encoding_weights")
    @classmethod
    def _known_encodings(cls, weights: dict[str, float]) -> dict[str, float]:
        for name, weight in weights.items():
            if name not in COLOR_ENCODINGS:
                raise ValueError(f"unknown encoding {name!r}{did_you_mean(name, COLOR_ENCODINGS)}; "
                                 f"choose from {', '.join(COLOR_ENCODINGS)}")
            if not weight >= 0:
                raise ValueError(f"weight of {name!r} must be >= 0, got {weight}")
        if sum(weights.values()) <= 0:
            raise ValueError("at least one encoding needs a positive weight")
        return weights


@dataclass(frozen=True)
class SynthResult:
    """What ``run`` wrote: paths, counts and the label model's figures."""

    out_dir: Path
    dicom_dir: Path
    labels_path: Path
    truth_path: Path
    n_patients: int
    n_images: int
    n_labelled: int
    n_faults: int
    prevalence: float
    auc: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


# --------------------------------------------------------------------------- label model


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def calibrate_intercept(logit: np.ndarray, prevalence: float) -> float:
    """The ``b0`` for which ``mean(sigmoid(b0 + logit)) == prevalence`` (bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if _sigmoid(mid + logit).mean() < prevalence:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def meta_logit(age: np.ndarray, male: np.ndarray, site: np.ndarray) -> np.ndarray:
    """Metadata risk (logit units, before centring): age years, male bool, site (SITES value).

    Flat below ~40 and rising after 50 (a sigmoid, so a linear model misses
    the shape); torso matters for men and lower extremity for women (an
    interaction a tree finds); head/neck only for the old (lentigo maligna).
    """
    age_term = 2.1 * _sigmoid((age - 58.0) / 7.0)
    torso = np.isin(site, SITES[:3])
    lower = site == "LOWER EXTREMITY"
    head = site == "HEAD/NECK"
    site_term = (np.where(torso, np.where(male, 1.05, 0.0), 0.0)
                 + np.where(site == "POSTERIOR TORSO", np.where(male, 0.4, 0.0), 0.0)
                 + np.where(lower, np.where(male, -0.25, 1.05), 0.0)
                 + np.where(head, np.where(age > 65, 1.3, 0.0), 0.0)
                 + np.where(site == "PALMS/SOLES", -0.65, 0.0))
    return age_term + 0.33 * male + site_term


def component_aucs(frame: pd.DataFrame) -> dict[str, float]:
    """ROC AUC of ``p_true`` and of each logit term alone against the drawn ``target``."""
    y = frame["target"].to_numpy()
    if len(np.unique(y)) < 2:
        return {}
    cols = ["p_true", "image_term", "meta_term", "duckling_term", "noise_term"]
    return {c.removesuffix("_term"): float(roc_auc_score(y, frame[c])) for c in cols}


# --------------------------------------------------------------------------- cohort


def sample_cohort(cfg: SynthConfig, rng: np.random.Generator | None = None) -> pd.DataFrame:
    """One row per image: file name, DICOM header values, render parameters, logit terms, p_true, target.

    Pure: no files, no pixels. ``rng`` defaults to ``default_rng(cfg.seed)``
    (what ``run`` uses). Header strings use ``""`` for a missing value.
    Render parameters: ``skin_tone`` (0 light - 1 dark), ``hue`` (0 tan - 1
    dark brown), ``pattern`` (index into PATTERNS), ``radius`` (fraction of
    half the image side), ``irregularity``/``variegation``/``asymmetry``
    (0-1), ``hairs`` (count), ``vignette`` (0-1), ``scope_ring`` (bool).
    """
    rng = np.random.default_rng(cfg.seed) if rng is None else rng
    n_pat = cfg.patients

    # Patients. Heavy-tailed lesion counts: 1 + negative binomial (dispersion 0.7), capped.
    dispersion = 0.7
    extra = cfg.mean_lesions - 1.0
    counts = 1 + rng.negative_binomial(dispersion, dispersion / (dispersion + extra), n_pat)
    counts = np.minimum(counts, cfg.max_lesions)
    pid_numbers = rng.choice(9_000_000, n_pat, replace=False) + 1_000_000
    names = [f"{_FAMILY[f]}^{_GIVEN[g]}" for f, g in zip(rng.integers(0, len(_FAMILY), n_pat),
                                                        rng.integers(0, len(_GIVEN), n_pat))]
    male = rng.random(n_pat) < 0.52
    sex_missing = rng.random(n_pat) < 0.03
    infant = rng.random(n_pat) < 0.01
    age = np.where(infant, rng.uniform(0.1, 2.0, n_pat), np.clip(rng.normal(50, 16, n_pat), 2, 90))
    age_style = rng.choice(3, n_pat, p=[0.80, 0.12, 0.08])  # PatientAge / birth date / missing
    study_day = rng.integers(0, 3650, n_pat)
    skin_tone = rng.beta(2.0, 5.0, n_pat)
    hair_rate = rng.gamma(0.7, 2.0, n_pat) * np.where(male, 1.5, 0.7)
    sig_hue = rng.uniform(0.1, 0.9, n_pat)
    sig_pattern = rng.choice(3, n_pat, p=[0.4, 0.35, 0.25])
    sig_size = rng.normal(0.0, 0.25, n_pat)
    sig_atypia = rng.normal(0.0, 0.9, n_pat)  # some patients have many atypical moles
    n_test = int(round(cfg.test_fraction * n_pat))
    test_patient = np.zeros(n_pat, bool)
    test_patient[rng.choice(n_pat, n_test, replace=False)] = True

    # Images. Most lesions follow the patient's signature nevus; "outliers" are drawn afresh.
    pat = np.repeat(np.arange(n_pat), counts)
    n = len(pat)
    outlier = rng.random(n) < 0.15
    hue = np.where(outlier, rng.uniform(0.05, 0.95, n), np.clip(sig_hue[pat] + rng.normal(0, 0.06, n), 0, 1))
    pattern = np.where(outlier | (rng.random(n) < 0.08), rng.choice(3, n, p=[0.4, 0.35, 0.25]), sig_pattern[pat])
    size_dev = np.where(outlier, rng.normal(0.15, 0.4, n), rng.normal(0.0, 0.15, n))
    atypia_dev = np.where(outlier, rng.normal(0.4, 0.9, n), rng.normal(0.0, 0.45, n))
    atypia = sig_atypia[pat] + atypia_dev
    cue = atypia[:, None] + rng.normal(0.0, 0.6, (n, 3))  # irregularity, variegation, asymmetry
    irregularity, variegation, asymmetry = _sigmoid(1.3 * cue - 0.9).T
    radius = np.clip(0.30 * np.exp(sig_size[pat] + size_dev + 0.12 * atypia), 0.12, 0.75)
    site_missing = rng.random(n) < 0.10
    site = np.asarray(SITES)[rng.choice(len(SITES), n, p=np.asarray(SITE_WEIGHTS) / sum(SITE_WEIGHTS))]
    hairs = rng.poisson(hair_rate[pat])
    vignette = rng.uniform(0.0, 1.0, n)
    scope_ring = rng.random(n) < 0.25

    # Logit terms, each centred so b0 carries the prevalence.
    image = cfg.image_signal * (1.25 * cue.mean(axis=1) + 1.1 * np.log(radius / 0.30))
    meta = cfg.meta_signal * meta_logit(age[pat], male[pat], site)
    style_dev = np.sqrt(((hue - sig_hue[pat]) / 0.15) ** 2 + (size_dev / 0.3) ** 2
                        + 2.0 * (pattern != sig_pattern[pat]))
    # Ugly duckling: atypia beyond the patient's own level and a departure from their signature style
    # are risky; an atypical look shared by all of a patient's moles is less so (the -0.5 below).
    duckling = cfg.duckling_signal * (atypia_dev - 0.5 * sig_atypia[pat] + np.minimum(style_dev, 4.0))
    noise = cfg.noise_scale * rng.normal(0.0, 0.9, n)
    terms = {k: v - v.mean() for k, v in
             {"image_term": image, "meta_term": meta, "duckling_term": duckling, "noise_term": noise}.items()}
    logit = sum(terms.values())
    b0 = calibrate_intercept(logit, cfg.prevalence)
    p_true = _sigmoid(b0 + logit)
    target = (rng.random(n) < p_true).astype(int)
    diagnosis = _diagnosis(target, age[pat], site, rng)

    # Files: ISIC-like ids, a few without extension, a few in a subfolder.
    isic = rng.choice(9_000_000, n, replace=False) + 1_000_000
    folder = np.where(rng.random(n) < cfg.subfolder_fraction, rng.integers(1, 4, n), 0)
    no_ext = rng.random(n) < cfg.extensionless_fraction
    image_id = [f"batch_{f}/ISIC_{i:07d}" if f else f"ISIC_{i:07d}" for f, i in zip(folder, isic)]
    file_name = [i if bare else f"{i}.dcm" for i, bare in zip(image_id, no_ext)]

    # Encodings, then 16-bit grayscale storage parameters (used by the monochrome files only).
    names_w = list(cfg.encoding_weights)
    w = np.asarray([cfg.encoding_weights[k] for k in names_w], float)
    encoding = np.asarray(names_w)[rng.choice(len(names_w), n, p=w / w.sum())]
    gray = rng.random(n) < cfg.grayscale_fraction
    encoding = np.where(gray, np.asarray(GRAY_ENCODINGS)[rng.integers(0, 2, n)], encoding)
    slope = rng.choice([0.5, 1.0, 2.0], n)
    intercept = rng.choice([-1024.0, 0.0], n)
    stored_low = 2 * rng.integers(100, 2000, n)
    stored_span = 2 * rng.integers(500, 6000, n)

    study_dates = [_BASE_DATE + timedelta(days=int(d)) for d in study_day]
    lesion_no = np.concatenate([np.arange(1, c + 1) for c in counts])
    seed_tag = f"melanet-synth-{cfg.seed}"
    pids = [f"IP_{p:07d}" for p in pid_numbers]
    frame = pd.DataFrame({
        "image_id": image_id,
        "file_name": file_name,
        "patient_index": pat,
        "lesion_index": lesion_no,
        "patient_id": [pids[p] for p in pat],
        "patient_name": [names[p] for p in pat],
        "sex": np.where(male, "male", "female")[pat],
        "age": age[pat],
        "site": site,
        "sex_header": np.where(sex_missing, "", np.where(male, "M", "F"))[pat],
        "age_header": [_age_string(age[p]) if age_style[p] == 0 else "" for p in pat],
        "birth_date_header": [_birth_date(study_dates[p], age[p]) if age_style[p] == 1 else "" for p in pat],
        "study_date_header": [study_dates[p].strftime("%Y%m%d") for p in pat],
        "body_part_header": np.where(site_missing, "", site),
        "study_instance_uid": [generate_uid(entropy_srcs=[seed_tag, pids[p], "study"]) for p in pat],
        "series_instance_uid": [generate_uid(entropy_srcs=[seed_tag, pids[p], "series"]) for p in pat],
        "sop_instance_uid": [generate_uid(entropy_srcs=[seed_tag, i, "sop"]) for i in image_id],
        "encoding": encoding,
        "rescale_slope": slope,
        "rescale_intercept": intercept,
        "stored_low": stored_low,
        "stored_span": stored_span,
        "skin_tone": skin_tone[pat],
        "hue": hue,
        "pattern": pattern,
        "radius": radius,
        "irregularity": irregularity,
        "variegation": variegation,
        "asymmetry": asymmetry,
        "hairs": hairs,
        "vignette": vignette,
        "scope_ring": scope_ring,
        "outlier": outlier,
        **terms,
        "p_true": p_true,
        "target": target,
        "diagnosis": diagnosis,
        "labelled": ~test_patient[pat],
    })
    if cfg.faults:
        # Drawn last so that the rest of the cohort is the same with and without faults.
        frame.loc[int(rng.integers(0, n)), "encoding"] = "no_file_meta"
    return frame


def _diagnosis(target: np.ndarray, age: np.ndarray, site: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Melanoma for positives; benign classes by age and site (invisible in pixels, so p_true stays exact)."""
    old = np.maximum(age - 35.0, 0.0)
    logits = np.stack([np.full(len(age), 2.2),
                       -2.0 + 0.09 * old,
                       -3.0 + 0.05 * old + 1.2 * (site == "HEAD/NECK"),
                       np.full(len(age), -1.5)], axis=1)
    benign = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1) + 1
    return np.asarray(DIAGNOSES)[np.where(target == 1, 0, benign)]


def _age_string(age_years: float) -> str:
    """DICOM AS value: whole years (``045Y``), months below two years (``018M``)."""
    return f"{int(age_years * 12):03d}M" if age_years < 2 else f"{int(age_years):03d}Y"


def _birth_date(study: date, age_years: float) -> str:
    return (study - timedelta(days=int(round(age_years * 365.25)))).strftime("%Y%m%d")


# --------------------------------------------------------------------------- pixels


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


# --------------------------------------------------------------------------- DICOM


def dicom_dataset(pixels: np.ndarray, meta: Mapping[str, Any], encoding: str) -> Dataset:
    """A VL Photographic Image dataset holding ``pixels`` (uint8 RGB) encoded as ``encoding``.

    ``meta`` holds the header columns of :func:`sample_cohort` (a cohort row
    works). Encodings: COLOR_ENCODINGS, GRAY_ENCODINGS (16-bit stored values
    whose modality LUT + VOI window, inverted for MONOCHROME1, give back the
    grey picture) and ``no_file_meta`` (uncompressed, written without
    preamble or file meta by :func:`dicom_bytes`).
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = VL_PHOTOGRAPHIC_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = meta["sop_instance_uid"]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = VL_PHOTOGRAPHIC_IMAGE_STORAGE
    ds.SOPInstanceUID = meta["sop_instance_uid"]
    ds.StudyInstanceUID = meta["study_instance_uid"]
    ds.SeriesInstanceUID = meta["series_instance_uid"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Modality = "XC"
    ds.StudyDate = ds.ContentDate = meta["study_date_header"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = int(meta["lesion_index"])
    ds.PatientName = meta["patient_name"]
    ds.PatientID = meta["patient_id"]
    ds.PatientBirthDate = meta["birth_date_header"]  # type 2: present, empty when unknown
    ds.PatientSex = meta["sex_header"]
    if meta["age_header"]:
        ds.PatientAge = meta["age_header"]
    if meta["body_part_header"]:
        # ISIC writes 'HEAD/NECK' etc. although '/' is not valid in a CS value: keep it, without the warning.
        ds["BodyPartExamined"] = DataElement(0x00180015, "CS", meta["body_part_header"],
                                             validation_mode=pydicom_config.IGNORE)

    if encoding in GRAY_ENCODINGS:
        _set_gray_pixels(ds, to_gray(pixels), meta, inverted=encoding == "monochrome1")
    elif encoding == "jpeg_baseline":
        _set_jpeg_pixels(ds, pixels)
    else:
        ds.set_pixel_data(np.ascontiguousarray(pixels), "RGB", 8, generate_instance_uid=False)
        if encoding == "rle_lossless":
            ds.compress(RLELossless, generate_instance_uid=False)
        elif encoding == "jpeg2000_lossless":
            ds.compress(JPEG2000Lossless, generate_instance_uid=False)
        elif encoding == "no_file_meta":
            ds.file_meta = FileMetaDataset()
        elif encoding != "explicit_vr_le":
            raise ValueError(f"unknown encoding {encoding!r}")
    return ds


def _set_jpeg_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    """JPEG baseline 8-bit, YCbCr 4:2:2, as ISIC's DICOM archive stores dermoscopy."""
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=92, subsampling=1)  # 1 = 4:2:2
    jpeg = buf.getvalue()
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{pixels.size / len(jpeg):.2f}"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


def _set_gray_pixels(ds: Dataset, gray: np.ndarray, meta: Mapping[str, Any], inverted: bool) -> None:
    """16-bit stored values S with M = slope*S + intercept and a window covering exactly the grey range."""
    slope, intercept = float(meta["rescale_slope"]), float(meta["rescale_intercept"])
    low, span = int(meta["stored_low"]), int(meta["stored_span"])
    level = (255.0 - gray) if inverted else gray
    stored = np.round(low + level / 255.0 * span).astype(np.uint16)
    ds.set_pixel_data(stored, "MONOCHROME1" if inverted else "MONOCHROME2", 16, generate_instance_uid=False)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    ds.WindowCenter = intercept + slope * (low + span / 2)
    ds.WindowWidth = slope * span
    ds.VOILUTFunction = "LINEAR"


def dicom_bytes(ds: Dataset) -> bytes:
    """Serialise: a conformant Part 10 file, or (no file meta) a raw implicit-VR dataset without preamble."""
    buf = io.BytesIO()
    if "TransferSyntaxUID" in ds.file_meta:
        ds.save_as(buf, enforce_file_format=True)
    else:
        pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def fault_files(cohort: pd.DataFrame, size: int, seed: int) -> list[dict[str, Any]]:
    """The broken extra files: dicts with ``path`` (relative to dicom/), ``image_id``, ``fault``,
    ``data`` (bytes), ``decodable`` (pixels can be had by a tolerant reader) and ``target``/``diagnosis``
    (a label put in labels.csv, so a labels join has to report it; None for none).

    ``no_file_meta`` is not here: it is one cohort image (encoding ``no_file_meta``).
    """
    rng = np.random.default_rng([seed, _FAULT_STREAM])
    donor = cohort.iloc[int(rng.integers(0, len(cohort)))].to_dict()
    taken = set(cohort["image_id"].str[-7:].astype(int))
    ids = []
    while len(ids) < 3:
        number = int(rng.integers(1_000_000, 10_000_000))
        if number not in taken:
            taken.add(number)
            ids.append(f"ISIC_{number:07d}")
    pixels = render_lesion(donor, size, rng)

    def header(image_id: str) -> dict[str, Any]:
        return {**donor, "sop_instance_uid": generate_uid(entropy_srcs=[f"melanet-synth-{seed}", image_id, "sop"])}

    full = dicom_bytes(dicom_dataset(pixels, header(ids[0]), "explicit_vr_le"))
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, "PNG")
    no_pixels = dicom_dataset(pixels, header(ids[2]), "explicit_vr_le")
    for keyword in ("PixelData", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
                    "PlanarConfiguration", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        delattr(no_pixels, keyword)
    text = b"Exported by the clinic's viewer. Images 2019-2021, see the DICOM files in this folder.\n"
    return [
        # Cut inside the pixel data: the header reads, the pixels do not.
        {"path": f"{ids[0]}.dcm", "image_id": ids[0], "fault": "truncated", "data": full[: int(len(full) * 0.6)],
         "decodable": False, "target": 0, "diagnosis": "nevus"},
        {"path": f"{ids[1]}.png", "image_id": ids[1], "fault": "not_dicom_png", "data": png.getvalue(),
         "decodable": False, "target": 1, "diagnosis": "melanoma"},
        {"path": "README.txt", "image_id": "README", "fault": "not_dicom_text", "data": text,
         "decodable": False, "target": None, "diagnosis": None},
        {"path": f"{ids[2]}.dcm", "image_id": ids[2], "fault": "no_pixel_data", "data": dicom_bytes(no_pixels),
         "decodable": False, "target": 0, "diagnosis": "seborrheic_keratosis"},
    ]


def fault_table(cohort: pd.DataFrame, faults: list[dict[str, Any]]) -> pd.DataFrame:
    """``faults.csv``: ``path`` (relative to dicom/), ``image_id``, ``fault``, ``decodable``, ``labelled``.

    One row per FAULTS entry: the extra files of :func:`fault_files` and the
    cohort image written without file meta (decodable once read with force).
    """
    rows = [{"path": f["path"], "image_id": f["image_id"], "fault": f["fault"], "decodable": f["decodable"],
             "labelled": f["target"] is not None} for f in faults]
    rows += [{"path": r.file_name, "image_id": r.image_id, "fault": "no_file_meta", "decodable": True,
              "labelled": bool(r.labelled)} for r in cohort.loc[cohort["encoding"] == "no_file_meta"].itertuples()]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- runner


def _claim_out_dir(out_dir: Path) -> Path:
    """Refuse a dicom/ folder that synth did not write (its stale files would join the cohort)."""
    dicom_dir = out_dir / "dicom"
    ours = (out_dir / _SUMMARY).is_file() or (out_dir / _IN_PROGRESS).is_file()
    if dicom_dir.is_dir() and not ours and any(p.is_file() for p in dicom_dir.rglob("*")):
        raise InputDataError(f"{dicom_dir} already holds files that `melanet synth` did not write; "
                             f"give an empty or new OUT_DIR")
    write_text(out_dir / _IN_PROGRESS, "melanet synth is writing this folder\n")
    (out_dir / _SUMMARY).unlink(missing_ok=True)
    return dicom_dir


def run(cfg: SynthConfig) -> SynthResult:
    """Write the synthetic cohort to ``cfg.out_dir`` and return what was written."""
    start = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    dicom_dir = _claim_out_dir(out_dir)
    cohort = sample_cohort(cfg)
    written: set[Path] = set()
    with progress() as bar:
        task = bar.add_task("synth", total=len(cohort), status="")
        for i, row in enumerate(cohort.to_dict("records")):
            pixels = render_lesion(row, cfg.image_size, image_rng(cfg.seed, i))
            path = dicom_dir / row["file_name"]
            write_bytes(path, dicom_bytes(dicom_dataset(pixels, row, row["encoding"])))
            written.add(path)
            bar.advance(task)

    labels = cohort.loc[cohort["labelled"], ["image_id", "target", "diagnosis"]]
    faults = fault_files(cohort, cfg.image_size, cfg.seed) if cfg.faults else []
    for fault in faults:
        written.add(write_bytes(dicom_dir / fault["path"], fault["data"]))
    n_faults = 0
    if faults:
        table = fault_table(cohort, faults)
        n_faults = len(table)
        write_csv(out_dir / "faults.csv", table)
        labelled_faults = pd.DataFrame([{k: f[k] for k in ("image_id", "target", "diagnosis")}
                                        for f in faults if f["target"] is not None])
        labels = pd.concat([labels, labelled_faults], ignore_index=True)
    else:
        (out_dir / "faults.csv").unlink(missing_ok=True)
    for stale in [p for p in dicom_dir.rglob("*") if p.is_file() and p not in written]:
        stale.unlink()  # left by an earlier, larger synth run into the same folder

    cohort["split"] = np.where(cohort["labelled"], "train", "test")
    truth_cols = ["image_id", "p_true", "target", "diagnosis", "split",
                  "image_term", "meta_term", "duckling_term", "noise_term"]
    labels_path = write_csv(out_dir / "labels.csv", labels)
    truth_path = write_csv(out_dir / "truth.csv", cohort[truth_cols])
    auc = component_aucs(cohort)
    n_labelled = int(cohort["labelled"].sum())
    summary = {
        "config": cfg.model_dump(mode="json", exclude={"out_dir"}),
        "patients": cfg.patients,
        "images": len(cohort),
        "labelled_images": n_labelled,
        "test_images": len(cohort) - n_labelled,
        "fault_files": n_faults,
        "prevalence": float(cohort["target"].mean()),
        "mean_p_true": float(cohort["p_true"].mean()),
        "auc_against_target": auc,
        "encodings": {k: int(v) for k, v in cohort["encoding"].value_counts().sort_index().items()},
        "diagnoses": {k: int(v) for k, v in cohort["diagnosis"].value_counts().sort_index().items()},
    }
    write_json(out_dir / _SUMMARY, summary)
    (out_dir / _IN_PROGRESS).unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    fault_note = f", {n_faults} faulty files" if n_faults else ""
    console.print(
        f"synth: {len(cohort)} images from {cfg.patients} patients ({n_labelled} labelled, "
        f"{len(cohort) - n_labelled} test{fault_note}), "
        f"prevalence {summary['prevalence']:.3f}, true-probability AUC {auc.get('p_true', float('nan')):.3f}, "
        f"{seconds:.1f} s -> {out_dir}", soft_wrap=True)
    return SynthResult(out_dir=out_dir, dicom_dir=dicom_dir, labels_path=labels_path, truth_path=truth_path,
                       n_patients=cfg.patients, n_images=len(cohort), n_labelled=n_labelled,
                       n_faults=n_faults, prevalence=summary["prevalence"], auc=auc,
                       seconds=seconds)
