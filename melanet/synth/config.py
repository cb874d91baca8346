"""Settings, result record and vocabularies of ``melanet synth``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, field_validator

from melanet.config import StageConfig
from melanet.errors import did_you_mean

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
#: Which drawn cues carry the image logit term (``image_cues``), as (irregularity, variegation, asymmetry, radius).
IMAGE_CUES = {"all": (True, True, True, True),
              "colour": (False, True, False, False),
              "shape": (True, False, True, True)}


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
    image_cues: str = Field(
        "all", description="Cues that carry the image term: all, colour (variegation) or shape (irregularity, "
                           "asymmetry, radius); the others are drawn as nuisance. See IMAGE_CUES.")
    noise_scale: float = Field(1.0, ge=0.0, description="Scale of the unobserved logit noise.")
    encoding_weights: dict[str, float] = Field(
        default_factory=lambda: {"jpeg_baseline": 0.55, "explicit_vr_le": 0.15,
                                 "rle_lossless": 0.15, "jpeg2000_lossless": 0.15},
        description="Relative frequency of each colour encoding.")
    extensionless_fraction: float = Field(0.05, ge=0.0, le=1.0, description="Files written without '.dcm'.")
    subfolder_fraction: float = Field(0.1, ge=0.0, le=1.0, description="Files written in a batch_<k>/ subfolder.")

    @field_validator("image_cues")
    @classmethod
    def _known_cues(cls, cues: str) -> str:
        if cues not in IMAGE_CUES:
            raise ValueError(f"unknown image_cues {cues!r}{did_you_mean(cues, IMAGE_CUES)}; "
                             f"choose from {', '.join(IMAGE_CUES)}")
        return cues

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
    #: AUC against the drawn target: p_true, each term, and ``observable`` (the observable ceiling).
    auc: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
