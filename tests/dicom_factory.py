"""Small DICOM files made with pydicom, for the DICOM and ingest tests.

``make_dataset(pixels, photometric, ...)`` builds a dataset around an array
(any photometric interpretation pydicom can write, 8-16 bits, signed,
multi-frame, rescale, window, any header element), ``encode`` re-encodes it in
a compressed transfer syntax, and ``write_dicom`` writes it as a Part 10 file
or, with ``file_meta=False``, as a bare dataset without preamble or file meta.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import (ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless, UID,
                         generate_uid)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"

# Pure primaries and greys survive JPEG's 4:2:2 subsampling when laid out as wide bars.
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def colour_bars(colours=(RED, GREEN, BLUE), height: int = 16, bar_width: int = 16) -> np.ndarray:
    """uint8 (height, bar_width * len(colours), 3) RGB: one solid vertical bar per colour."""
    return np.repeat(np.array(colours, np.uint8)[None, :, :], bar_width, axis=1).repeat(height, axis=0)


def gradient(rows: int = 8, cols: int = 16, low: int = 0, high: int = 4095, dtype=np.uint16) -> np.ndarray:
    """A (rows, cols) left-to-right ramp from ``low`` to ``high`` (stored values)."""
    return np.tile(np.linspace(low, high, cols).round().astype(dtype), (rows, 1))


def make_dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, *,
                 rescale: tuple[float, float] | None = None, window: tuple[float, float] | None = None,
                 sop_class: str = SECONDARY_CAPTURE, **elements: Any) -> Dataset:
    """An uncompressed (explicit VR little endian) dataset holding ``pixels``.

    ``pixels`` is shaped as pydicom's ``set_pixel_data`` wants ((frames,) rows,
    cols(, 3)); for ``YBR_FULL`` pass RGB, it is converted here (JPEG
    YBR_FULL_422: make an RGB dataset and ``encode`` it).
    ``rescale`` = (slope, intercept), ``window`` = (center, width) in modality
    units; ``elements`` are set by keyword (``PatientAge="045Y"``,
    ``BodyPartExamined="ARM"``, ``PatientID=...``), a value None deletes one.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "XC"
    ds.PatientID = "PAT-001"
    ds.PatientSex = "F"
    ds.PatientAge = "045Y"
    ds.StudyDate = "20200315"
    ds.BodyPartExamined = "ARM"
    if photometric == "YBR_FULL":
        pixels = convert_color_space(pixels, "RGB", "YBR_FULL")
    bits_stored = bits_stored or pixels.dtype.itemsize * 8
    ds.set_pixel_data(np.ascontiguousarray(pixels), photometric, bits_stored, generate_instance_uid=False)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for keyword, value in elements.items():
        if value is None:
            delattr(ds, keyword) if keyword in ds else None
        else:
            setattr(ds, keyword, value)
    return ds


def encode(ds: Dataset, transfer_syntax: str, quality: int = 95) -> Dataset:
    """Re-encode ``ds`` in place (and return it) as ``transfer_syntax``.

    JPEG baseline goes through Pillow the way cameras write it: RGB becomes
    YCbCr 4:2:2 (``YBR_FULL_422``); RLE and JPEG 2000 use pydicom's encoders.
    """
    transfer_syntax = UID(transfer_syntax)
    if transfer_syntax == JPEGBaseline8Bit:
        arr = ds.pixel_array
        colour = ds.SamplesPerPixel == 3
        frames = arr if ds.get("NumberOfFrames", 1) > 1 else arr[None]
        jpegs = []
        for frame in frames:
            buf = io.BytesIO()
            Image.fromarray(frame, "RGB" if colour else "L").save(buf, "JPEG", quality=quality, subsampling=1)
            jpegs.append(buf.getvalue())
        ds.PhotometricInterpretation = "YBR_FULL_422" if colour else ds.PhotometricInterpretation
        ds.PixelData = encapsulate(jpegs)
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    elif transfer_syntax in (RLELossless, JPEG2000Lossless):
        ds.compress(transfer_syntax, generate_instance_uid=False)
    else:
        raise ValueError(f"encode() does not make {transfer_syntax.name}")
    return ds


def write_dicom(path: str | Path, ds: Dataset, file_meta: bool = True) -> Path:
    """Write ``ds`` to ``path``: a Part 10 file, or a bare implicit-VR dataset (``file_meta=False``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if file_meta:
        ds.save_as(path, enforce_file_format=True)
    else:
        bare = ds.copy()
        bare.file_meta = FileMetaDataset()
        pydicom.dcmwrite(path, bare, implicit_vr=True, little_endian=True)
    return path
