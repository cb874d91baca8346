"""Header metadata of one DICOM dataset as the plain values the cohort table stores.

Pure functions: a :class:`pydicom.Dataset` (or its string values) in, Python
values out. Nothing here reads files; the readers in :mod:`melanet.dicom.readers`
do that once and pass the dataset.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

from pydicom.dataset import Dataset

DAYS_PER_YEAR = 365.25
# Ages outside this range (years) are placeholders such as "999Y", not ages.
MAX_AGE_YEARS = 130.0
# PatientAge is "nnnU" (U in D/W/M/Y); writers in the wild drop the zeros or the unit (then years).
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": DAYS_PER_YEAR / 12, "Y": DAYS_PER_YEAR, "": DAYS_PER_YEAR}
#: Ages above 89 are reported as 90 (HIPAA Safe Harbor groups them).
AGE_CAP_YEARS = 90.0

_SEX = {"M": "male", "MALE": "male", "F": "female", "FEMALE": "female"}

#: ISIC ``anatom_site_general`` values (2019 and 2020 challenges); kept as they are.
ISIC_SITES = ("head/neck", "upper extremity", "lower extremity", "torso", "anterior torso",
              "posterior torso", "lateral torso", "palms/soles", "oral/genital")
# Normalised spellings (see normalise_site) -> ISIC value; None: says nothing about the site.
_SITE_SYNONYMS: dict[str, str | None] = {
    **{s.replace("/", " "): s for s in ISIC_SITES if "/" in s},
    "head": "head/neck", "neck": "head/neck", "headneck": "head/neck", "head and neck": "head/neck",
    "face": "head/neck", "scalp": "head/neck", "ear": "head/neck", "nose": "head/neck",
    "arm": "upper extremity", "upper limb": "upper extremity", "upperextremity": "upper extremity",
    "upper arm": "upper extremity", "forearm": "upper extremity", "shoulder": "upper extremity",
    "elbow": "upper extremity", "wrist": "upper extremity", "hand": "upper extremity",
    "finger": "upper extremity",
    "leg": "lower extremity", "lower limb": "lower extremity", "lowerextremity": "lower extremity",
    "lower leg": "lower extremity", "thigh": "lower extremity", "knee": "lower extremity",
    "ankle": "lower extremity", "hip": "lower extremity", "foot": "lower extremity",
    "toe": "lower extremity",
    "trunk": "torso", "chest": "anterior torso", "abdomen": "anterior torso", "breast": "anterior torso",
    "chest abdomen": "anterior torso", "back": "posterior torso", "upper back": "posterior torso",
    "lower back": "posterior torso", "flank": "lateral torso",
    "palm": "palms/soles", "palms": "palms/soles", "sole": "palms/soles", "soles": "palms/soles",
    "acral": "palms/soles",
    "oral": "oral/genital", "mouth": "oral/genital", "genital": "oral/genital",
    "genitalia": "oral/genital",
    # A dermoscopy header often says only SKIN: no site.
    "skin": None, "unknown": None, "other": None,
}


def _to_date(value: Any) -> date | None:
    """A DICOM DA value (``YYYYMMDD`` string, pydicom DA or date) as a date, else None."""
    if isinstance(value, date):
        return value
    text = str(value or "").strip().replace(".", "")  # ACR-NEMA wrote YYYY.MM.DD
    try:
        return datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


def parse_age(patient_age: str | None, birth_date: Any = None, study_date: Any = None,
              exact: bool = False) -> float | None:
    """Age in years at the study: whole years, ages above 89 reported as 90 (unless ``exact``).

    From PatientAge ``nnnY/M/W/D`` (also ``45Y`` or ``45``: years) when it holds a
    plausible age (0-130 years), else from PatientBirthDate and the study date
    (DA strings ``YYYYMMDD`` or dates), else None. Garbage such as ``"abc"`` or a
    birth date after the study gives None.

    Why whole years and the cap: an age kept to the day gives the birth date back
    from the study date, and HIPAA Safe Harbor (45 CFR 164.514(b)(2)(i)(C)) lets
    ages over 89 through only as one "90 or older" group. By default the age is
    therefore the completed years on the calendar (``006M`` -> 0, born 1980-06-16
    and seen 2020-06-15 -> 39) and anything above 89 is 90. ``exact=True`` gives
    the fractional years (days / 365.25) without a cap, for code that never writes them.
    """
    match = _AGE.match(str(patient_age)) if patient_age not in (None, "") else None
    years: float | None = None
    if match:
        value = int(match[1]) * _DAYS_PER_UNIT[match[2].upper()] / DAYS_PER_YEAR
        if value <= MAX_AGE_YEARS:
            years = value if exact else float(int(value + 1e-9))  # completed years (12M = 1)
    if years is None:
        birth, study = _to_date(birth_date), _to_date(study_date)
        if birth is None or study is None:
            return None
        value = (study - birth).days / DAYS_PER_YEAR
        if not 0 <= value <= MAX_AGE_YEARS:
            return None
        completed = study.year - birth.year - ((study.month, study.day) < (birth.month, birth.day))
        years = value if exact else float(completed)
    return years if exact else min(years, AGE_CAP_YEARS)


def normalise_sex(patient_sex: str | None) -> str | None:
    """PatientSex ``M``/``F`` (any case, or spelt out) -> ``"male"``/``"female"``; ``O``, empty, other -> None."""
    return _SEX.get(str(patient_sex or "").strip().upper())


def normalise_site(site: str | None) -> str | None:
    """An anatomic site (BodyPartExamined or a labels-table value) in ISIC's vocabulary.

    Lower case, ``_``/``-`` read as spaces, spaces around ``/`` dropped, runs of
    spaces collapsed; then DICOM body parts and common synonyms map to ISIC's
    ``anatom_site_general`` values (``HEAD/NECK``, ``head-neck`` and ``NECK`` ->
    ``head/neck``; ``ARM`` -> ``upper extremity``; ``BACK`` -> ``posterior
    torso``). Unknown values are kept, normalised; empty values and ``SKIN``
    (which names no site) give None.
    """
    text = re.sub(r"[_\-\s]+", " ", str(site or "")).strip().lower()
    text = re.sub(r"\s*/\s*", "/", text)
    if not text:
        return None
    if text in ISIC_SITES:
        return text
    return _SITE_SYNONYMS.get(text, _SITE_SYNONYMS.get(text.replace("/", " "), text))


def _text(ds: Dataset, keyword: str) -> str | None:
    """A string element's value, None when absent or empty."""
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def header_int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    """The integer value of header element ``keyword``; ``default`` when absent or not an integer
    (shared by the header row and the pixel decoder)."""
    try:
        return int(ds.get(keyword, default))
    except (TypeError, ValueError):
        return default


def _site(ds: Dataset) -> str | None:
    """BodyPartExamined, else the first Anatomic Region code's meaning."""
    site = _text(ds, "BodyPartExamined")
    if site is None and ds.get("AnatomicRegionSequence"):
        site = _text(ds.AnatomicRegionSequence[0], "CodeMeaning")
    return normalise_site(site)


def extract_meta(ds: Dataset) -> dict[str, Any]:
    """The cohort-table header fields of one dataset.

    Keys: ``sop_instance_uid``, ``study_instance_uid``, ``patient_id_raw`` (the
    raw PatientID or None; the caller pseudonymises it and never writes it),
    ``sex`` (``"male"``/``"female"``/None), ``age`` (years or None, see
    :func:`parse_age`), ``site`` (see :func:`normalise_site`), ``modality``,
    ``photometric`` (as stored, before any colour conversion), ``rows``,
    ``cols`` (pixels), ``frames``, ``bits_stored`` and ``transfer_syntax``
    (UID string; the one the reader settled on when the file meta had none).
    """
    study_date = next((ds.get(k) for k in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
                       if _to_date(ds.get(k)) is not None), None)
    file_meta = getattr(ds, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    return {
        "sop_instance_uid": _text(ds, "SOPInstanceUID"),
        "study_instance_uid": _text(ds, "StudyInstanceUID"),
        "patient_id_raw": _text(ds, "PatientID"),
        "sex": normalise_sex(ds.get("PatientSex")),
        "age": parse_age(ds.get("PatientAge"), ds.get("PatientBirthDate"), study_date),
        "site": _site(ds),
        "modality": _text(ds, "Modality"),
        "photometric": _text(ds, "PhotometricInterpretation"),
        "rows": header_int(ds, "Rows"),
        "cols": header_int(ds, "Columns"),
        "frames": header_int(ds, "NumberOfFrames", 1) or 1,
        "bits_stored": header_int(ds, "BitsStored"),
        "transfer_syntax": str(transfer_syntax) if transfer_syntax else None,
    }
