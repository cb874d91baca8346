"""Read one DICOM file into header metadata and a uint8 RGB picture, with a reader chosen by name.

``read_dicom(path, reader="pydicom", multiframe="middle")`` returns a
:class:`DicomRecord` or raises :class:`~melanet.errors.DicomError` whose
``stage`` says what failed: ``"read"`` (not DICOM, truncated or unreadable
header), ``"pixels"`` (no pixel data, or decoding failed) or ``"decoder"`` (a
decoder plugin is missing; the message names the package to install). Every
message starts with the file's path.

Readers (``READERS``):

- ``pydicom``: one ``dcmread(path, force=True)``, then pydicom's decoders
  decode only the frame(s) the multi-frame policy needs (8-bit JPEG with the
  Pillow plugin first: same bytes as gdcm, 4-5x faster). Files without a
  preamble or file meta are read too; a missing transfer syntax is guessed
  from the dataset's encoding and, for encapsulated pixel data, from the
  first fragment's codestream (JPEG, JPEG-LS, JPEG 2000, RLE).
- ``sitk``: pixels from ``SimpleITK.ReadImage`` (GDCM), the header from a
  pydicom header-only read, so the metadata is identical to ``pydicom``'s.
  SimpleITK applies rescale slope/intercept (not a Modality LUT Sequence) and
  palette LUTs itself and converts YCbCr to RGB; the window (or VOI LUT) from
  the header is then applied exactly as in the ``pydicom`` reader, else the
  data's min/max. GDCM hands MONOCHROME1 back inverted (stored ``v`` becomes
  ``2**BitsStored - 1 - v``, or ``-1 - v`` when signed); that is undone so the
  window and the inversion are applied once, as for ``pydicom``. It always
  decodes every frame and reads the file twice, and GDCM (SimpleITK 2.5)
  mis-decodes 16/32-bit RGB RLE and big-endian 32-bit data that pydicom reads
  right: ``pydicom`` is the default for a reason.
"""

from __future__ import annotations

import struct
from io import BytesIO
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_has_tag
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.uid import (UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000,
                         JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless, RLELossless)

from melanet.dicom.meta import extract_meta
from melanet.dicom.pixels import check_policy, to_uint8_rgb
from melanet.errors import DicomError, MissingDependencyError, unknown_choice
from melanet.optional import require

# JPEG start-of-frame markers -> the transfer syntax whose decoder reads that process.
_JPEG_SOF = {0xC0: JPEGBaseline8Bit, 0xC1: JPEGExtended12Bit, 0xC2: JPEGExtended12Bit,
             0xC3: JPEGLosslessSV1, 0xF7: JPEGLSLossless}


@dataclass(frozen=True)
class DicomRecord:
    """One DICOM file read: ``meta`` (see :func:`melanet.dicom.meta.extract_meta`) and
    ``pixels``, uint8 (rows, cols, 3) RGB at the stored resolution after all LUTs."""

    path: Path
    meta: dict[str, Any]
    pixels: np.ndarray


def read_dicom(path: str | Path, reader: str = "pydicom", multiframe: str = "middle",
               min_side: int | None = None, data: bytes | None = None) -> DicomRecord:
    """Read ``path`` with the reader named ``reader``; ``multiframe`` as in
    :func:`melanet.dicom.pixels.to_uint8_rgb` (``first``, ``middle``, ``mip``, ``mean``).
    ``min_side``: the smallest picture side the caller needs (pixels); the ``pydicom`` reader then
    decodes 8-bit JPEG 2000 and baseline JPEG at a reduced resolution (:func:`melanet.dicom.pixels.decode`), so
    ``pixels`` can be smaller than Rows x Columns (never below ``min_side``).
    ``data``: the file's bytes when the caller has already read them (ingest hashes them): the header is
    then parsed from memory (same dataset, one read of the file fewer); ``path`` still names the file in
    messages (the ``sitk`` reader reads its pixels from ``path``).

    Raises ConfigError for an unknown reader or policy, DicomError (with
    ``stage``) for a file that cannot be read.
    """
    if reader not in READERS:
        raise unknown_choice("reader", reader, READERS)
    return READERS[reader](Path(path), check_policy(multiframe), min_side, data)


def read_header(path: Path, stop_before_pixels: bool = False, data: bytes | None = None) -> Dataset:
    """``dcmread(path, force=True)`` (of ``data``, the file's bytes, when given), refusing files that are not
    DICOM, with the transfer syntax filled in."""
    try:
        ds = pydicom.dcmread(BytesIO(data) if data is not None else path, force=True,
                             stop_before_pixels=stop_before_pixels)
        is_dicom = _looks_like_dicom(ds)
        if is_dicom and not ds.file_meta.get("TransferSyntaxUID"):
            ds.file_meta.TransferSyntaxUID = guess_transfer_syntax(ds)
    except Exception as exc:  # noqa: BLE001 - whatever pydicom trips on, the file is unreadable
        raise DicomError(f"{path}: cannot read the DICOM header ({type(exc).__name__}: {exc})", stage="read") from exc
    if not is_dicom:
        raise DicomError(f"{path}: not a DICOM file (no 'DICM' preamble and no standard DICOM elements); "
                         "remove it from the DICOM folder or ignore this entry", stage="read")
    return ds


def _looks_like_dicom(ds: Dataset) -> bool:
    """With ``force=True`` pydicom parses any bytes; real DICOM has a preamble or public elements."""
    if getattr(ds, "preamble", None) is not None or len(ds.file_meta):
        return True
    return any(tag.group >= 0x0008 and dictionary_has_tag(tag) for tag in ds.keys())


def guess_transfer_syntax(ds: Dataset) -> UID:
    """The transfer syntax of a dataset read without one in its file meta.

    Uncompressed: from the VR and byte order pydicom detected while parsing.
    Encapsulated pixel data: from the first fragment (JPEG start-of-frame
    marker, JPEG 2000 signature, RLE header); JPEG 2000 when unsure of
    lossless vs lossy, as the same decoder reads both.
    """
    implicit, little = getattr(ds, "original_encoding", (True, True))
    value = ds.get("PixelData")
    if isinstance(value, bytes) and value[:4] == b"\xfe\xff\x00\xe0":
        fragments = generate_fragments(value)
        try:
            next(fragments, None)  # the basic offset table
            guess = _sniff_codestream(next(fragments, b""))
        except (ValueError, struct.error):  # a cut fragment list: decoding will say what is wrong
            guess = None
        if guess is not None:
            return guess
    if little is False:
        return ExplicitVRBigEndian
    return ImplicitVRLittleEndian if implicit is not False else ExplicitVRLittleEndian


def _sniff_codestream(fragment: bytes) -> UID | None:
    if fragment[:4] == b"\xff\x4f\xff\x51" or fragment[4:8] == b"jP  ":
        return JPEG2000
    if fragment[:2] == b"\xff\xd8":
        pos = 2
        while pos + 4 <= len(fragment) and fragment[pos] == 0xFF:
            marker = fragment[pos + 1]
            if marker in _JPEG_SOF:
                return _JPEG_SOF[marker]
            pos += 2 + struct.unpack(">H", fragment[pos + 2:pos + 4])[0]
        return None
    if len(fragment) >= 64 and 1 <= int.from_bytes(fragment[:4], "little") <= 15 and \
            int.from_bytes(fragment[4:8], "little") == 64:
        return RLELossless
    return None


def _header_meta(path: Path, ds: Dataset) -> dict[str, Any]:
    try:
        return extract_meta(ds)
    except Exception as exc:  # noqa: BLE001 - a value pydicom cannot convert is a broken header
        raise DicomError(f"{path}: unreadable header value ({type(exc).__name__}: {exc})", stage="read") from exc


def _pixels(path: Path, convert: Callable[[], np.ndarray]) -> np.ndarray:
    """Run a decode; any failure becomes DicomError naming ``path`` (stage ``pixels`` unless it says otherwise)."""
    try:
        return convert()
    except DicomError as exc:
        raise DicomError(f"{path}: {exc}", stage=exc.stage) from exc
    except Exception as exc:  # noqa: BLE001 - every decoder failure is this file's problem, not the run's
        raise DicomError(f"{path}: cannot decode the pixel data ({type(exc).__name__}: {exc})",
                         stage="pixels") from exc


def read_pydicom(path: Path, multiframe: str = "middle", min_side: int | None = None,
                 data: bytes | None = None) -> DicomRecord:
    """The ``pydicom`` reader: one read, one decode of only the frames needed (at reduced resolution
    for 8-bit JPEG 2000 and baseline JPEG when ``min_side`` allows, see :func:`read_dicom`)."""
    ds = read_header(path, data=data)
    meta = _header_meta(path, ds)
    return DicomRecord(path, meta, _pixels(path, lambda: to_uint8_rgb(ds, multiframe=multiframe,
                                                                       min_side=min_side)))


def read_sitk(path: Path, multiframe: str = "middle", min_side: int | None = None,
              data: bytes | None = None) -> DicomRecord:
    """The ``sitk`` reader: SimpleITK (GDCM) pixels, pydicom header (see the module notes); always full
    resolution (``min_side`` is accepted and ignored)."""
    ds = read_header(path, stop_before_pixels=True, data=data)
    meta = _header_meta(path, ds)
    return DicomRecord(path, meta, _pixels(path, lambda: _sitk_pixels(path, ds, multiframe)))


def _sitk_pixels(path: Path, ds: Dataset, multiframe: str) -> np.ndarray:
    try:
        sitk = require("SimpleITK", "the 'sitk' reader")
    except MissingDependencyError as exc:  # recorded per file like any decoder failure (ingest checks it first)
        raise DicomError(str(exc), stage="decoder") from None
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")  # DICOM files often have no extension to pick the IO by
    reader.SetFileName(str(path))
    image = reader.Execute()
    arr = sitk.GetArrayFromImage(image)  # (frames, rows, cols[, 3]); a single frame has frames = 1
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if image.GetNumberOfComponentsPerPixel() >= 3:
        photometric = "RGB"
    elif photometric == "MONOCHROME1":
        arr = _undo_gdcm_inversion(arr, ds)
    return to_uint8_rgb(ds, arr, multiframe, photometric=photometric, modality_lut=False)


def _undo_gdcm_inversion(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Back to modality values: GDCM stored ``K - v`` (K = 2**bits - 1, or -1 if signed) and then rescaled."""
    bits, signed = int(ds.get("BitsStored", 16)), int(ds.get("PixelRepresentation", 0)) == 1
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if not signed and (slope, intercept) == (1, 0) and arr.dtype.kind == "u":
        return (2**bits - 1) - arr  # stays unsigned: the same dtype as pydicom's decode
    return np.float32(slope * (-1 if signed else 2**bits - 1) + 2 * intercept) - arr.astype(np.float32)


#: Reader name -> function(path, multiframe, min_side, data) -> DicomRecord.
READERS: dict[str, Callable[..., DicomRecord]] = {"pydicom": read_pydicom, "sitk": read_sitk}
