"""DICOM encoding of ``melanet synth``: a rendered picture + header values -> DICOM bytes; the broken files."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from PIL import Image
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless,
                         generate_uid)

from melanet.synth.config import GRAY_ENCODINGS
from melanet.synth.render import render_lesion, to_gray

VL_PHOTOGRAPHIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.4"
_FAULT_STREAM = 2


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
