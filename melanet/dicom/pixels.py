"""DICOM pixel data -> uint8 RGB picture, as a viewer would show it.

Pure functions on a :class:`pydicom.Dataset` (and optionally an array already
decoded from it); no file I/O. The pixel maths is pydicom's own
(:mod:`pydicom.pixels`): modality LUT / rescale, VOI LUT / window, palette
colour LUT and YCbCr -> RGB conversion. Two exceptions, for speed: the common
rescale + LINEAR window is done in one float32 pass (tested equal to
pydicom's ``apply_modality_lut`` + ``apply_voi_lut``), and 8-bit YCbCr -> RGB
is pydicom's matrix in one ``cv2.transform`` (tested equal to
``convert_color_space`` up to 1 level at exact halves). 8-bit JPEG 2000 and baseline JPEG may be decoded at
a reduced resolution when the caller needs a smaller picture (``min_side``).
"""

from __future__ import annotations

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import (apply_color_lut, apply_modality_lut, apply_voi, apply_windowing,
                            convert_color_space, get_decoder)
from pydicom.uid import (JPEG2000, JPEG2000Lossless, JPEG2000TransferSyntaxes, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSTransferSyntaxes,
                         JPEGTransferSyntaxes, RLELossless)

from melanet.dicom.meta import header_int
from melanet.errors import DicomError, unknown_choice

#: How a multi-frame file becomes one picture (see :func:`to_uint8_rgb`).
MULTIFRAME_POLICIES = ("first", "middle", "mip", "mean")

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
YBR = ("YBR_FULL", "YBR_FULL_422")
PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# What to `pip install` when no decoder plugin for a compressed transfer syntax is usable.
_DECODER_PACKAGES = {
    **{ts: "pylibjpeg and pylibjpeg-libjpeg, or python-gdcm" for ts in JPEGTransferSyntaxes},
    **{ts: "pyjpegls, or pylibjpeg and pylibjpeg-libjpeg, or python-gdcm" for ts in JPEGLSTransferSyntaxes},
    **{ts: "pylibjpeg and pylibjpeg-openjpeg, or python-gdcm" for ts in JPEG2000TransferSyntaxes},
    RLELossless: "pylibjpeg and pylibjpeg-rle",
}
# Plugins tried first where they are much faster: Pillow (libjpeg-turbo) decodes 8-bit JPEG 4-5x
# faster than gdcm, pydicom's first choice, with the same bytes (measured at 512-2048 px).
_FAST_PLUGINS = {JPEGBaseline8Bit: "pillow", JPEGExtended12Bit: "pillow"}
# Pillow's OpenJPEG decodes 8-bit JPEG 2000 ~25% faster than pylibjpeg/gdcm; deeper data keeps pydicom's order.
_FAST_PLUGINS_8BIT = {JPEG2000: "pillow", JPEG2000Lossless: "pillow"}


def check_policy(multiframe: str) -> str:
    """Return ``multiframe`` if it is one of MULTIFRAME_POLICIES, else raise ConfigError naming the choices."""
    if multiframe not in MULTIFRAME_POLICIES:
        raise unknown_choice("multiframe policy", multiframe, MULTIFRAME_POLICIES)
    return multiframe


def number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames, 1 when absent or not a number."""
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def frame_index(frames: int, multiframe: str) -> int | None:
    """The one frame a policy needs (0-based), or None when it needs them all (``mip``, ``mean``)."""
    check_policy(multiframe)
    return {"first": 0, "middle": frames // 2}.get(multiframe) if frames > 1 else None


def decode(ds: Dataset, multiframe: str = "middle", min_side: int | None = None) -> tuple[np.ndarray, str]:
    """Decode the frame(s) that ``multiframe`` needs with pydicom's decoders.

    ``min_side`` (pixels): the smallest side the caller needs (the cache size).
    8-bit JPEG 2000 is then decoded at a reduced resolution level, halving both
    sides as often as both stay at least ``min_side`` (:func:`jpeg2000_reduced`):
    the wavelet's own low-pass picture, 4x less decoding work per level; 8-bit
    baseline JPEG at 1/2, 1/4 or 1/8 scale by the same rule (:func:`jpeg_reduced`,
    libjpeg's scaled inverse DCT); the picture is then smaller than Rows x
    Columns. Other data ignore it.

    Returns the array as the decoder gives it, colour left in its stored space
    (YCbCr is not converted here), and the photometric interpretation of that
    array, which can differ from the header's (a JPEG 2000 codestream stored as
    YBR_ICT comes out RGB). Raises DicomError: stage ``"pixels"`` without pixel
    data or for a transfer syntax pydicom cannot decode, stage ``"decoder"``
    when the decoder plugins for it are not installed (the message names the
    packages).
    """
    if not any(k in ds for k in PIXEL_DATA_KEYWORDS):
        raise DicomError("has no Pixel Data element (not an image: report, structure set, DICOMDIR...)",
                         stage="pixels")
    tsyntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise DicomError(f"pixel data in transfer syntax {tsyntax.name} ({tsyntax}) cannot be decoded by pydicom",
                         stage="pixels") from exc
    if decoder.is_encapsulated and not decoder.available_plugins:
        packages = _DECODER_PACKAGES.get(tsyntax, "a pydicom decoder plugin for it")
        raise DicomError(f"no decoder installed for {tsyntax.name} ({tsyntax}) pixel data; "
                         f"pip install {packages}", stage="decoder")
    index = frame_index(number_of_frames(ds), multiframe)
    if min_side and tsyntax in (JPEG2000, JPEG2000Lossless) and "pillow" in decoder.available_plugins:
        reduced = jpeg2000_reduced(ds, index, min_side)
        if reduced is not None:
            return reduced
    if min_side and tsyntax == JPEGBaseline8Bit and "pillow" in decoder.available_plugins:
        reduced = jpeg_reduced(ds, index, min_side)
        if reduced is not None:
            return reduced
    fast = _FAST_PLUGINS.get(tsyntax)
    if fast is None and int(ds.get("BitsAllocated", 16) or 16) == 8:
        fast = _FAST_PLUGINS_8BIT.get(tsyntax)
    if fast in decoder.available_plugins:
        try:
            arr, properties = decoder.as_array(ds, index=index, as_rgb=False, decoding_plugin=fast)
            return arr, str(properties["photometric_interpretation"])
        except Exception:  # noqa: BLE001 - e.g. 12-bit JPEG, which Pillow cannot do: let pydicom try them all
            pass
    arr, properties = decoder.as_array(ds, index=index, as_rgb=False)
    return arr, str(properties["photometric_interpretation"])


def _pillow_frame(ds: Dataset, index: int | None, frames: int, image_format: str):
    """Frame ``index`` (0 when None) of the encapsulated pixel data, opened lazily by Pillow as ``image_format``:
    nothing is decoded until the caller has set the reduced size (``draft``, ``reduce``)."""
    from io import BytesIO

    from PIL import Image
    from pydicom.encaps import get_frame

    return Image.open(BytesIO(get_frame(ds.PixelData, index or 0, number_of_frames=frames)), formats=(image_format,))


def jpeg_reduced(ds: Dataset, index: int | None, min_side: int) -> tuple[np.ndarray, str] | None:
    """One 8-bit baseline JPEG frame decoded at 1/2, 1/4 or 1/8 scale, the smallest whose sides stay at least
    ``min_side`` pixels (libjpeg's scaled inverse DCT, through Pillow's ``draft``), as ``decode`` returns it; None
    when that is full scale, the frame is not the 8-bit picture the header describes, every frame is needed
    (``index`` None with several frames), or anything fails (the caller then decodes in full as usual).

    Colour is left as pydicom's Pillow plugin leaves it: YCbCr untouched unless an Adobe APP14 marker says how the
    samples were stored (the picture's photometric interpretation is then the header's, as from pydicom).
    """
    rows, cols = header_int(ds, "Rows", 0), header_int(ds, "Columns", 0)
    frames = number_of_frames(ds)
    if (min(rows, cols) < 2 * min_side or header_int(ds, "BitsAllocated", 16) != 8
            or (index is None and frames > 1)):
        return None
    samples = header_int(ds, "SamplesPerPixel", 1)
    try:
        image = _pillow_frame(ds, index, frames, "JPEG")
        if image.size != (cols, rows):
            return None
        mode = "YCbCr" if samples != 1 and "adobe_transform" not in image.info else image.mode
        image.draft(mode, (min_side, min_side))  # the largest 1/2^k scale keeping both sides >= min_side
        arr = np.asarray(image)
    except Exception:  # noqa: BLE001 - an odd stream (progressive, 12-bit...): decode in full
        return None
    if arr.dtype != np.uint8 or (arr.shape[2] if arr.ndim == 3 else 1) != samples or min(arr.shape[:2]) < min_side \
            or arr.shape[0] >= rows:
        return None
    return arr, str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()


def jpeg2000_reduced(ds: Dataset, index: int | None, min_side: int) -> tuple[np.ndarray, str] | None:
    """One 8-bit unsigned JPEG 2000 frame decoded at the coarsest resolution level whose sides stay at least
    ``min_side`` pixels (Pillow's OpenJPEG ``reduce``), as ``decode`` returns it; None when that is full
    resolution, the data are not 8-bit unsigned, every frame is needed (``index`` None with several
    frames), or anything fails (the caller then decodes in full as usual).

    YBR_ICT / YBR_RCT come out RGB (OpenJPEG undoes the component transform), as from pydicom's plugin.
    """
    rows, cols = header_int(ds, "Rows", 0), header_int(ds, "Columns", 0)
    levels = 0
    while min(rows, cols) >> (levels + 1) >= min_side:
        levels += 1
    frames = number_of_frames(ds)
    if (levels == 0 or header_int(ds, "BitsAllocated", 16) != 8 or header_int(ds, "PixelRepresentation", 0) != 0
            or (index is None and frames > 1)):
        return None
    try:
        image = _pillow_frame(ds, index, frames, "JPEG2000")
        image.reduce = levels
        arr = np.asarray(image)
    except Exception:  # noqa: BLE001 - fewer resolution levels than asked, odd codestream: decode in full
        return None
    samples = header_int(ds, "SamplesPerPixel", 1)
    if arr.dtype != np.uint8 or (arr.ndim == 3) != (samples == 3) or arr.shape[0] > rows:
        return None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    return arr, "RGB" if photometric in ("YBR_ICT", "YBR_RCT") else photometric


def to_uint8_rgb(ds: Dataset, arr: np.ndarray | None = None, multiframe: str = "middle", *,
                 photometric: str | None = None, modality_lut: bool = True,
                 min_side: int | None = None) -> np.ndarray:
    """The displayed picture of ``ds``: uint8 (rows, cols, 3) RGB at the stored resolution.

    ``arr`` is pixel data already decoded from ``ds`` (with or without a leading
    frame axis); when None the frames the policy needs are decoded with
    :func:`decode`. ``photometric`` is the colour space of ``arr`` when it is
    not the header's (pydicom's ``pixel_array`` already converted YCbCr: pass
    ``"RGB"``); ``modality_lut=False`` when the values are already rescaled
    (SimpleITK does that).

    Grey pictures (MONOCHROME1/2): modality LUT or rescale slope/intercept, then
    the VOI LUT or the first window (center/width; LINEAR, LINEAR_EXACT or
    SIGMOID) mapped onto 0-255; without either (or with one pydicom rejects),
    stored values of at most 8 bits are shown as they are and deeper data is
    stretched from its minimum to its maximum (a constant picture is black).
    MONOCHROME1 is inverted (high values dark). The grey level is copied into
    three identical channels.

    Colour: YBR_FULL/YBR_FULL_422 converted to RGB (once: decoders hand back
    YCbCr untouched), PALETTE COLOR through its colour LUT, RGB as is; samples
    deeper than 8 bits are scaled by their full range (BitsStored, or the
    palette's entry depth).

    Multi-frame (``multiframe``): ``"first"`` frame, ``"middle"`` frame (index
    frames // 2; the default, as the first frame of a cine is often a blank
    lead-in), ``"mip"`` maximum intensity projection or ``"mean"`` average
    over all frames. Projections are taken on modality values, before the
    window, for grey data and per channel for colour.

    Scaling to uint8 is ``rint(255 * (x - low) / (high - low))`` clipped to
    0-255, in float32: the same input always gives the same bytes. 8-bit RGB
    comes back without a copy (it may share memory with ``arr``).
    """
    check_policy(multiframe)
    if arr is None:
        arr, photometric = decode(ds, multiframe, min_side)
    photometric = str(photometric or ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    colour = photometric not in MONOCHROME + ("PALETTE COLOR",)
    if arr.ndim == (3 if colour else 2):
        arr = arr[None]
    if colour and (arr.ndim != 4 or arr.shape[-1] < 3):
        raise DicomError(f"{photometric} pixel data of shape {arr.shape} is not a colour picture", stage="pixels")
    if len(arr) > 1 and multiframe in ("first", "middle"):
        arr = arr[frame_index(len(arr), multiframe)][None]

    if photometric in MONOCHROME:
        return _grey_to_rgb(arr, ds, photometric, modality_lut, multiframe)
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    elif photometric in YBR:
        arr = ybr_full_to_rgb(arr)
    elif photometric != "RGB":
        raise DicomError(f"photometric interpretation {photometric!r} is not supported", stage="pixels")
    return _scale_to_uint8(_project(arr[..., :3], multiframe), 0, 2.0 ** _colour_depth(ds, arr) - 1)


# pydicom's YBR_FULL -> RGB matrix (PS3.3 C.7.6.3.1.2; rows: Y, Cb, Cr in; columns: R, G, B out), laid out for
# cv2.transform with the -128 chroma offsets folded into the last column.
_YBR_TO_RGB = np.array([[1.000, 1.000, 1.000],
                        [0.000, -0.114 * 1.772 / 0.587, 1.772],
                        [1.402, -0.299 * 1.402 / 0.587, 0.000]], np.float32)
_YBR_TRANSFORM = np.hstack([_YBR_TO_RGB.T, -128.0 * _YBR_TO_RGB[1:].sum(axis=0)[:, None]]).astype(np.float32)


def ybr_full_to_rgb(arr: np.ndarray) -> np.ndarray:
    """YBR_FULL (or upsampled YBR_FULL_422) -> RGB, (..., 3).

    8-bit data: pydicom's own matrix and rounding (``floor(x + 0.5)``, clipped)
    in one ``cv2.transform`` pass per frame, ~3x faster than
    :func:`pydicom.pixels.convert_color_space` (the JPEG files of cameras are
    YBR_FULL_422: this runs for most colour DICOMs); tested equal to it but
    for float32 sums that land on exact halves (28 of the 16.7 million 8-bit
    inputs come out 1 higher). Other depths go through pydicom.
    """
    if arr.dtype != np.uint8:
        return convert_color_space(arr, "YBR_FULL", "RGB")
    frames = arr.reshape((-1,) + arr.shape[-3:])
    out = np.empty(frames.shape, np.uint8)
    for i, frame in enumerate(frames):
        rgb = cv2.transform(np.ascontiguousarray(frame).astype(np.float32), _YBR_TRANSFORM)
        np.floor(rgb + np.float32(0.5), out=rgb)
        np.clip(rgb, 0, 255, out=rgb)
        out[i] = rgb
    return out.reshape(arr.shape)


def _project(arr: np.ndarray, multiframe: str) -> np.ndarray:
    """(frames, ...) -> (...): the single frame, or the max / mean over frames."""
    if len(arr) == 1:
        return arr[0]
    if multiframe == "mip":
        return arr.max(axis=0)
    return arr.mean(axis=0, dtype=np.float32)


def _colour_depth(ds: Dataset, rgb: np.ndarray) -> int:
    """Bits per colour sample: 8 for uint8, else the palette's entry depth or BitsStored."""
    if rgb.dtype == np.uint8:
        return 8
    if "RedPaletteColorLookupTableDescriptor" in ds:
        return int(ds.RedPaletteColorLookupTableDescriptor[2])
    return int(ds.get("BitsStored", rgb.dtype.itemsize * 8))


def _grey_to_rgb(arr: np.ndarray, ds: Dataset, photometric: str, modality_lut: bool,
                 multiframe: str) -> np.ndarray:
    """Grey frames -> modality values -> projection -> VOI -> uint8, inverted for MONOCHROME1, three channels."""
    has_window = _first_float(ds, "WindowCenter") is not None and _first_float(ds, "WindowWidth") is not None
    if ((modality_lut and ds.get("ModalityLUTSequence")) or _has_voi_lut(ds)
            or (has_window and _window_bounds(ds) is None)):
        values, low, high = _lut_values(arr, ds, modality_lut, multiframe)
    else:
        values, low, high = _linear_values(arr, ds, modality_lut, multiframe)
    grey = _scale_to_uint8(values, low, high)
    if photometric == "MONOCHROME1":
        grey = 255 - grey  # not in place: grey may be the caller's own 8-bit array
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)


def _linear_values(arr: np.ndarray, ds: Dataset, modality_lut: bool,
                   multiframe: str) -> tuple[np.ndarray, float, float]:
    """Rescale slope/intercept and a LINEAR/LINEAR_EXACT window: the common case, in float32.

    pydicom's apply_modality_lut/apply_windowing make several float64 copies
    and masks (over 10x the decode time of an uncompressed 16-bit image); a
    linear window is just the modality range [low, high] that maps onto
    0..255 with clipping, which _scale_to_uint8 does in one float32 pass.
    Tests check this equals pydicom's functions.
    """
    slope, intercept = _rescale(ds) if modality_lut else (1.0, 0.0)
    values = arr
    if (slope, intercept) != (1.0, 0.0):
        values = arr.astype(np.float32)
        values *= np.float32(slope)
        values += np.float32(intercept)
    values = _project(values, multiframe)
    window = _window_bounds(ds)
    if window is not None:
        return values, *window
    bits = header_int(ds, "BitsStored", 16)
    if values.dtype.kind == "u" and bits <= 8:
        return values, 0.0, 2.0**bits - 1  # shallow data with no transform is already display values
    return values, *_data_range(values)


def _lut_values(arr: np.ndarray, ds: Dataset, modality_lut: bool,
                multiframe: str) -> tuple[np.ndarray, float, float]:
    """Modality LUT Sequence, VOI LUT Sequence, SIGMOID or degenerate windows: pydicom's functions (float64).

    Returns the values and the range they map onto (low -> black). A VOI that
    pydicom refuses (LINEAR width < 1, unknown function) falls back to the
    data range rather than losing the image.
    """
    if modality_lut:
        arr = apply_modality_lut(arr, ds)
    values = _project(arr, multiframe)
    try:
        if _has_voi_lut(ds):
            if values.dtype.kind == "f":
                values = np.rint(values).astype(np.int64)
            item = ds.VOILUTSequence[0]
            entries, first = item.LUTDescriptor[0] or 2**16, item.LUTDescriptor[1]
            lut = apply_voi(np.arange(first, first + entries), ds)
            return apply_voi(values, ds), float(lut.min()), float(lut.max())
        if "WindowCenter" in ds and "WindowWidth" in ds:
            # The window's output range is what pydicom maps -inf and +inf to.
            low, high = (float(v) for v in apply_windowing(np.array([-np.inf, np.inf]), ds))
            return apply_windowing(values, ds), low, high
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, NotImplementedError):
        pass
    return values, *_data_range(values)


def _first_float(ds: Dataset, keyword: str) -> float | None:
    """The first value of a (possibly multi-valued) numeric element, None when absent or not a number."""
    value = ds.get(keyword)
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _rescale(ds: Dataset) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept), (1, 0) when absent or unusable."""
    slope, intercept = _first_float(ds, "RescaleSlope"), _first_float(ds, "RescaleIntercept")
    return (slope if slope else 1.0), (intercept if intercept is not None else 0.0)


def _voi_function(ds: Dataset) -> str:
    return str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()


def _window_bounds(ds: Dataset) -> tuple[float, float] | None:
    """The modality values a LINEAR/LINEAR_EXACT window maps onto black and white (PS3.3 C.11.2.1.2).

    The first window when several are given. None without a window, and for
    the cases left to pydicom: SIGMOID, and widths that make the window a
    threshold or invalid (LINEAR below 2, LINEAR_EXACT not above 0).
    """
    center, width = _first_float(ds, "WindowCenter"), _first_float(ds, "WindowWidth")
    function = _voi_function(ds)
    if center is None or width is None or function not in ("LINEAR", "LINEAR_EXACT"):
        return None
    if function == "LINEAR":
        if width < 2:
            return None
        center, width = center - 0.5, width - 1
    elif width <= 0:
        return None
    return center - width / 2, center + width / 2


def _has_voi_lut(ds: Dataset) -> bool:
    """A usable VOI LUT Sequence (the same test as pydicom's apply_voi_lut)."""
    items = ds.get("VOILUTSequence")
    return bool(items) and None not in (items[0].get("LUTDescriptor"), items[0].get("LUTData"))


def _data_range(values: np.ndarray) -> tuple[float, float]:
    """Min and max of the finite values; (0, 0) when there are none."""
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)


def _contiguous(rgb: np.ndarray) -> np.ndarray:
    """C-contiguous (rows, cols, 3); decoders hand planar data back as a transposed view."""
    if rgb.flags.c_contiguous:
        return rgb
    if rgb.strides[-1] > rgb.strides[0] and rgb.dtype in (np.uint8, np.uint16, np.float32):
        return cv2.merge(list(np.moveaxis(rgb, -1, 0)))  # ~50x faster than a strided numpy copy
    return np.ascontiguousarray(rgb)


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low``..``high`` linearly onto 0..255 (rounded, clipped); a zero range gives 0."""
    if values.dtype == np.uint8 and (low, high) == (0, 255):
        return _contiguous(values)  # the common 8-bit case: no float, no copy unless planar
    out = values.astype(np.float32)
    out -= np.float32(low)
    out *= np.float32(255.0 / (high - low)) if high != low else np.float32(0)
    np.nan_to_num(out, copy=False, nan=0.0)
    np.clip(out, 0, 255, out=out)
    np.rint(out, out=out)
    return out.astype(np.uint8)
