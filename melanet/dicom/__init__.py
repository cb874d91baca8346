"""DICOM reading: header metadata (:mod:`.meta`), displayed pixels (:mod:`.pixels`),
readers chosen by name (:mod:`.readers`)."""

from melanet.dicom.meta import extract_meta, normalise_sex, normalise_site, parse_age
from melanet.dicom.pixels import MULTIFRAME_POLICIES, to_uint8_rgb
from melanet.dicom.readers import READERS, DicomRecord, read_dicom

__all__ = ["READERS", "MULTIFRAME_POLICIES", "DicomRecord", "extract_meta", "normalise_sex", "normalise_site",
           "parse_age", "read_dicom", "to_uint8_rgb"]
