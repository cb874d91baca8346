"""The cohort sampler of ``melanet synth``: patients, lesions, DICOM header values and the label model.

Pure: no files, no pixels. The renderer (:mod:`melanet.synth.render`) turns a
cohort row's render parameters into a picture.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
from pydicom.uid import generate_uid
from sklearn.metrics import roc_auc_score

from melanet.synth.config import DIAGNOSES, GRAY_ENCODINGS, IMAGE_CUES, SITE_WEIGHTS, SITES, SynthConfig

_GIVEN = ("Ana", "Ben", "Chloe", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas", "Kate", "Liam",
          "Maya", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wim", "Yara")
_FAMILY = ("Abbott", "Berg", "Castillo", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ivanova",
           "Jansen", "Kowalski", "Larsen", "Moreau", "Nakamura", "Okafor", "Petrov", "Quist", "Rossi",
           "Schmidt", "Tanaka", "Umarov", "Varga", "Weber", "Zhou")

_BASE_DATE = date(2010, 1, 1)
_NUISANCE_STREAM = 3  # decoy cues of image_cues != 'all': default_rng([seed, _NUISANCE_STREAM])


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
    """ROC AUC against the drawn ``target`` of ``p_true``, of each logit term alone (``image``, ``meta``,
    ``duckling``, ``noise``) and of the observable ceiling (``observable``: :func:`observable_logit`)."""
    y = frame["target"].to_numpy()
    if len(np.unique(y)) < 2:
        return {}
    cols = ["p_true", "image_term", "meta_term", "duckling_term", "noise_term"]
    auc = {c.removesuffix("_term"): float(roc_auc_score(y, frame[c])) for c in cols}
    auc["observable"] = float(roc_auc_score(y, observable_logit(frame)))
    return auc


#: The logit terms a model can see (everything but the unobserved noise).
OBSERVABLE_TERMS = ("image_term", "meta_term", "duckling_term")


def observable_logit(frame: pd.DataFrame) -> np.ndarray:
    """image + meta + duckling terms (logit units): the best score a model can reach from the files.

    Its AUC is the observable ceiling; the ``p_true`` AUC also uses the noise
    term, which no model sees.
    """
    return frame[list(OBSERVABLE_TERMS)].to_numpy(float).sum(axis=1)


# --------------------------------------------------------------------------- cohort


def sample_cohort(cfg: SynthConfig, rng: np.random.Generator | None = None) -> pd.DataFrame:
    """One row per image: file name, DICOM header values, render parameters, logit terms, p_true, target.

    Pure: no files, no pixels. ``rng`` defaults to ``default_rng(cfg.seed)``
    (what ``run`` uses). Header strings use ``""`` for a missing value.
    Render parameters: ``skin_tone`` (0 light - 1 dark), ``hue`` (0 tan - 1
    dark brown), ``pattern`` (index into PATTERNS), ``radius`` (fraction of
    half the image side), ``irregularity``/``variegation``/``asymmetry``
    (0-1), ``hairs`` (count), ``vignette`` (0-1), ``scope_ring`` (bool).
    With ``cfg.image_cues`` other than ``all``, the cues that do not carry the
    image term are decoys (:func:`_nuisance_cues`); every other column is the
    same draw as with ``all``.
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
    radius = np.clip(0.30 * np.exp(sig_size[pat] + size_dev + 0.12 * atypia), 0.12, 0.75)
    shown_cue, shown_radius = _nuisance_cues(cfg, cue, atypia, sig_size[pat] + size_dev, radius)
    irregularity, variegation, asymmetry = _sigmoid(1.3 * shown_cue - 0.9).T
    site_missing = rng.random(n) < 0.10
    site = np.asarray(SITES)[rng.choice(len(SITES), n, p=np.asarray(SITE_WEIGHTS) / sum(SITE_WEIGHTS))]
    hairs = rng.poisson(hair_rate[pat])
    vignette = rng.uniform(0.0, 1.0, n)
    scope_ring = rng.random(n) < 0.25

    # Logit terms, each centred so b0 carries the prevalence.
    image = cfg.image_signal * (1.25 * cue.mean(axis=1) + 1.1 * np.log(radius / 0.30))
    if cfg.image_cues != "all":
        image = _image_term_from(cfg.image_cues, cue, radius, scale_like=image)
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
        "radius": shown_radius,
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


def _nuisance_cues(cfg: SynthConfig, cue: np.ndarray, atypia: np.ndarray, log_size: np.ndarray,
                   radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The latent cues (n, 3: irregularity, variegation, asymmetry) and radius the pixels show.

    ``image_cues='all'``: the risk-bearing ones, unchanged. Otherwise the cues
    that do not carry the image term (IMAGE_CUES) are redrawn as decoys with
    the same distribution but no link to the risk: the atypia of a random
    other image plus fresh cue noise, from a separate random stream (so the
    rest of the cohort - patients, metadata, noise - is the same draw). A
    decoy radius keeps the patient's size signature and the lesion's size
    departure (the duckling term reads them against the patient's other
    lesions) and loses only its atypia share; it keeps a faint link (|r| <
    0.1) to a colour-carried image term because "outlier" lesions are drawn
    both larger and more atypical.
    """
    carries = np.asarray(IMAGE_CUES[cfg.image_cues])
    if carries.all():
        return cue, radius
    nuisance = np.random.default_rng([cfg.seed, _NUISANCE_STREAM])
    decoy_atypia = atypia[nuisance.permutation(len(atypia))]
    decoy = decoy_atypia[:, None] + nuisance.normal(0.0, 0.6, cue.shape)
    shown_cue = np.where(carries[:3], cue, decoy)
    shown_radius = radius if carries[3] else np.clip(0.30 * np.exp(log_size + 0.12 * decoy_atypia), 0.12, 0.75)
    return shown_cue, shown_radius


def _image_term_from(cues: str, cue: np.ndarray, radius: np.ndarray, scale_like: np.ndarray) -> np.ndarray:
    """The image term carried by the ``cues`` subset only, rescaled to the standard deviation of ``scale_like``
    (the 'all' term of the same cohort), so that ``image_signal`` means the same strength whichever cues carry it."""
    carries = IMAGE_CUES[cues]
    parts = [1.25 * cue[:, [i for i in range(3) if carries[i]]].mean(axis=1)]
    if carries[3]:
        parts.append(1.1 * np.log(radius / 0.30))
    raw = sum(parts)
    return raw * (scale_like.std() / (raw.std() + 1e-12))


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
