"""DICOM pixels -> displayed uint8 RGB: LUTs, windows, colour spaces, encodings, multi-frame, readers, errors."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing, get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from dicom_factory import BLUE, GREEN, RED, colour_bars, encode, gradient, make_dataset, write_dicom
from melanet.dicom.pixels import MULTIFRAME_POLICIES, to_uint8_rgb
from melanet.dicom.readers import READERS, read_dicom
from melanet.errors import ConfigError, DicomError


def _grey(rgb: np.ndarray) -> np.ndarray:
    """The grey level of a picture whose three channels must be identical."""
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    return rgb[..., 0]


def _bar_centres(rgb: np.ndarray, bars: int = 3) -> np.ndarray:
    """Mean colour in the middle of each vertical bar, away from the chroma-subsampled edges."""
    width = rgb.shape[1] // bars
    return np.array([rgb[:, i * width + width // 4:(i + 1) * width - width // 4].reshape(-1, 3).mean(0)
                     for i in range(bars)])


# --------------------------------------------------------------------------- grey: LUTs and windows


def test_monochrome1_is_inverted_high_stored_values_dark():
    ds = make_dataset(gradient(high=4095), "MONOCHROME1", 12, window=(2048, 4096))
    grey = _grey(to_uint8_rgb(ds))[0]
    assert grey[0] == 255 and grey[-1] == 0  # stored 0 is white, 4095 black
    assert (np.diff(grey.astype(int)) <= 0).all()
    mono2 = _grey(to_uint8_rgb(make_dataset(gradient(high=4095), "MONOCHROME2", 12, window=(2048, 4096))))[0]
    np.testing.assert_array_equal(grey, 255 - mono2)


def test_rescale_slope_intercept_moves_the_window():
    # Stored 900, 1000, 1100 are modality -100, 0, +100 with intercept -1000: the window (0, 200) spans them exactly.
    stored = np.array([[900, 1000, 1100]], np.uint16)
    rescaled = _grey(to_uint8_rgb(make_dataset(stored, "MONOCHROME2", 12, rescale=(1, -1000), window=(0, 200))))
    np.testing.assert_array_equal(rescaled[0], [0, 128, 255])
    # Without the rescale the same window sees stored values far above it: all white.
    raw = _grey(to_uint8_rgb(make_dataset(stored, "MONOCHROME2", 12, window=(0, 200))))
    np.testing.assert_array_equal(raw[0], [255, 255, 255])
    # Slope 2 doubles the modality values: 900 -> -200 clips to black, 1100 -> +200 to white.
    doubled = _grey(to_uint8_rgb(make_dataset(stored - 500, "MONOCHROME2", 12, rescale=(2, -1000),
                                              window=(0, 200))))
    np.testing.assert_array_equal(doubled[0], [0, 128, 255])


def test_voi_window_clips_and_is_linear_inside():
    stored = np.arange(0, 1001, 10, dtype=np.uint16)[None]
    grey = _grey(to_uint8_rgb(make_dataset(stored, "MONOCHROME2", 12, window=(500, 401))))[0].astype(int)
    values = stored[0].astype(float)
    assert (grey[values <= 300] == 0).all() and (grey[values >= 700] == 255).all()
    inside = (values > 310) & (values < 690)
    expected = ((values[inside] - 499.5) / 400 + 0.5) * 255  # DICOM LINEAR window onto 0-255
    assert np.abs(grey[inside] - expected).max() <= 1


@pytest.mark.parametrize("photometric, dtype, bits, rescale, window, function", [
    ("MONOCHROME2", np.uint16, 12, (2.0, -1000.0), (500, 3000), "LINEAR"),
    ("MONOCHROME1", np.uint16, 12, (2.0, -1000.0), (500, 3000), "LINEAR"),
    ("MONOCHROME2", np.int16, 16, (0.5, 10.0), (0, 1001), "LINEAR_EXACT"),
    ("MONOCHROME2", np.uint16, 16, None, (30000, 20000), None),
    ("MONOCHROME2", np.uint16, 12, None, (2000, 1), "LINEAR"),  # width 1: a threshold
    ("MONOCHROME2", np.uint16, 12, (1.5, 0.0), (2000, 1500), "SIGMOID"),
], ids=["rescale", "mono1", "signed-exact", "16bit", "threshold", "sigmoid"])
def test_grey_pipeline_equals_pydicoms_luts(photometric, dtype, bits, rescale, window, function):
    """The float32 fast path (rescale + linear window) gives pydicom's apply_modality_lut + apply_voi_lut."""
    info = np.iinfo(dtype)
    low, high = max(info.min, -(2 ** (bits - 1))), min(info.max, 2**bits - 1)
    stored = np.random.default_rng(2).integers(low, high, (64, 64), endpoint=True).astype(dtype)
    ds = make_dataset(stored, photometric, bits, rescale=rescale, window=window)
    if function:
        ds.VOILUTFunction = function
    values = apply_voi_lut(apply_modality_lut(stored, ds), ds)
    y_min, y_max = apply_windowing(np.array([-np.inf, np.inf]), ds)
    expected = np.rint(np.clip((values - y_min) / (y_max - y_min) * 255, 0, 255))
    if photometric == "MONOCHROME1":
        expected = 255 - expected
    got = _grey(to_uint8_rgb(ds)).astype(int)
    assert np.abs(got - expected).max() <= 1
    assert (got == expected).mean() > 0.99


def test_voi_lut_sequence_is_applied():
    ds = make_dataset(gradient(rows=2, cols=5, high=4), "MONOCHROME2", 12)
    item = pydicom.Dataset()
    item.LUTDescriptor = [5, 0, 16]
    item.LUTData = [0, 4000, 4000, 0, 8000]  # not monotonic: the LUT, not the data, decides
    ds.VOILUTSequence = [item]
    np.testing.assert_array_equal(_grey(to_uint8_rgb(ds))[0], [0, 128, 128, 0, 255])


def test_without_window_deep_data_is_stretched_and_8_bit_kept():
    deep = _grey(to_uint8_rgb(make_dataset(gradient(low=1000, high=3000, cols=11), "MONOCHROME2", 12)))[0]
    assert deep[0] == 0 and deep[-1] == 255
    np.testing.assert_array_equal(deep, np.rint(np.linspace(0, 255, 11)))
    shallow = np.array([[10, 20, 30]], np.uint8)
    np.testing.assert_array_equal(_grey(to_uint8_rgb(make_dataset(shallow, "MONOCHROME2", 8)))[0], [10, 20, 30])
    flat = make_dataset(np.full((4, 4), 700, np.uint16), "MONOCHROME2", 12)
    assert (_grey(to_uint8_rgb(flat)) == 0).all()  # a constant picture: no division by zero


def test_unusable_window_falls_back_to_the_data_range():
    ds = make_dataset(gradient(low=100, high=200, cols=3), "MONOCHROME2", 12, window=(150, 0))  # width 0 invalid
    np.testing.assert_array_equal(_grey(to_uint8_rgb(ds))[0], [0, 128, 255])


def test_12_bit_and_signed_16_bit():
    twelve = make_dataset(gradient(high=4095, cols=4), "MONOCHROME2", 12, window=(2048, 4096))
    assert _grey(to_uint8_rgb(twelve))[0].tolist() == [0, 85, 170, 255]
    signed = np.array([[-2000, -1000, 0, 1000, 2000]], np.int16)
    ds = make_dataset(signed, "MONOCHROME2", 16, window=(0, 4001))
    assert ds.PixelRepresentation == 1
    np.testing.assert_array_equal(_grey(to_uint8_rgb(ds))[0], [0, 64, 128, 191, 255])
    no_window = _grey(to_uint8_rgb(make_dataset(signed, "MONOCHROME2", 16)))[0]
    np.testing.assert_array_equal(no_window, [0, 64, 128, 191, 255])  # min/max of signed data


# --------------------------------------------------------------------------- colour


@pytest.mark.parametrize("reader", sorted(READERS))
def test_jpeg_baseline_ybr_full_422_colours_come_out_right(tmp_path, reader):
    bars = colour_bars(height=32, bar_width=32)
    ds = encode(make_dataset(bars, "RGB"), JPEGBaseline8Bit)
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    rgb = read_dicom(write_dicom(tmp_path / "bars.dcm", ds), reader=reader).pixels
    np.testing.assert_allclose(_bar_centres(rgb), [RED, GREEN, BLUE], atol=6)


def test_ycbcr_is_converted_exactly_once():
    ds = encode(make_dataset(colour_bars(height=32, bar_width=32), "RGB"), JPEGBaseline8Bit)
    expected = [RED, GREEN, BLUE]
    np.testing.assert_allclose(_bar_centres(to_uint8_rgb(ds)), expected, atol=6)
    # pydicom's pixel_array already converted to RGB: saying so must not convert again.
    np.testing.assert_allclose(_bar_centres(to_uint8_rgb(ds, ds.pixel_array, photometric="RGB")), expected, atol=6)
    # Raw YCbCr handed over as such is converted.
    raw = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, as_rgb=False)[0]
    np.testing.assert_allclose(_bar_centres(to_uint8_rgb(ds, raw)), expected, atol=6)


def test_fast_ycbcr_conversion_equals_pydicoms():
    from pydicom.pixels import convert_color_space

    from melanet.dicom.pixels import ybr_full_to_rgb

    values = np.arange(256, dtype=np.uint8)
    grid = np.stack(np.meshgrid(values[::5], values, values, indexing="ij"), axis=-1)  # every Cb, Cr; Y in 5s
    frames = grid.reshape(2, -1, 256, 3)  # two frames, as a multi-frame decode gives them
    ours, theirs = ybr_full_to_rgb(frames).astype(int), convert_color_space(frames, "YBR_FULL", "RGB")
    assert ours.shape == theirs.shape
    diff = np.abs(ours - theirs)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-5  # float32 sums differ only at exact halves


def test_uncompressed_ybr_full_is_converted():
    rgb = to_uint8_rgb(make_dataset(colour_bars(), "YBR_FULL"))
    np.testing.assert_allclose(_bar_centres(rgb), [RED, GREEN, BLUE], atol=2)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_lossless_encodings_round_trip_exactly(tmp_path, syntax):
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    path = write_dicom(tmp_path / "lossless.dcm", encode(make_dataset(picture, "RGB"), syntax))
    record = read_dicom(path)
    np.testing.assert_array_equal(record.pixels, picture)
    assert record.meta["transfer_syntax"] == syntax


def _smooth_picture(rows: int, cols: int, grey: bool = False) -> np.ndarray:
    """A smooth picture (gradients and a dark disc): its downscaled versions agree whatever the filter."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    disc = np.hypot(x - cols / 2, y - rows / 2) < min(rows, cols) / 4
    rgb = np.stack([60 + 150 * x / cols, 40 + 120 * y / rows, 90 + 0 * x], axis=2)
    rgb[disc] *= 0.4
    picture = rgb.astype(np.uint8)
    return picture[..., 1].copy() if grey else picture


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGBaseline8Bit], ids=["jpeg2000", "jpeg"])
@pytest.mark.parametrize("grey", [False, True], ids=["rgb", "grey"])
def test_jpeg_and_jpeg2000_are_decoded_at_reduced_resolution_when_the_cache_is_smaller(tmp_path, grey, syntax):
    import cv2

    picture = _smooth_picture(128, 160, grey)
    path = write_dicom(tmp_path / "small.dcm", encode(make_dataset(picture, "MONOCHROME2" if grey else "RGB"), syntax))
    full = read_dicom(path).pixels
    assert full.shape[:2] == (128, 160)
    for min_side, expected in ((64, (64, 80)), (40, (64, 80)), (32, (32, 40)), (100, (128, 160))):
        small = read_dicom(path, min_side=min_side).pixels  # halved while both sides stay >= min_side
        assert small.shape == expected + (3,) and small.dtype == np.uint8
    small = read_dicom(path, min_side=32).pixels
    area = cv2.resize(full, (40, 32), interpolation=cv2.INTER_AREA)
    # The wavelet's low-pass picture or the scaled inverse DCT's, in the same colours: not something else.
    assert np.abs(small.astype(int) - area).mean() < 3
    np.testing.assert_allclose(small.mean(axis=(0, 1)), area.mean(axis=(0, 1)), atol=1.5)
    assert read_dicom(path, reader="pydicom", min_side=32).meta["rows"] == 128  # the header is untouched


def test_reduced_jpeg_keeps_the_colours_of_every_writer_in_pydicoms_test_files():
    """dcmtk, gdcm, dcmd, Adobe APP14 and no-colour-transform JPEGs (RGB and YCbCr, 4:2:2 and 4:4:4, one and 30
    frames): the half-scale decode shows the colours of the full decode."""
    import cv2
    from pydicom.data import get_testdata_file

    names = ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_app14_dcmd.dcm", "SC_jpeg_no_color_transform.dcm",
             "SC_rgb_dcmtk_+eb+cy+s2.dcm", "SC_rgb_dcmtk_+eb+cr.dcm", "SC_rgb_jpeg_lossy_gdcm.dcm",
             "examples_ybr_color.dcm"]
    for name in names:
        path = get_testdata_file(name)
        full = read_dicom(path).pixels
        small = read_dicom(path, min_side=min(full.shape[:2]) // 2).pixels
        assert min(small.shape[:2]) == min(full.shape[:2]) // 2, name
        area = cv2.resize(full, small.shape[1::-1], interpolation=cv2.INTER_AREA)
        np.testing.assert_allclose(small.mean(axis=(0, 1)), area.mean(axis=(0, 1)), atol=1.0, err_msg=name)


def test_reduced_decoding_leaves_other_encodings_at_full_resolution(tmp_path):
    picture = _smooth_picture(64, 64)
    path = write_dicom(tmp_path / "rle.dcm", encode(make_dataset(picture.copy(), "RGB"), RLELossless))
    assert read_dicom(path, min_side=16).pixels.shape == (64, 64, 3)


def test_planar_configuration_1_is_read():
    picture = colour_bars()
    ds = make_dataset(picture, "RGB")
    ds.PlanarConfiguration = 1
    ds.PixelData = np.ascontiguousarray(picture.transpose(2, 0, 1)).tobytes()
    np.testing.assert_array_equal(to_uint8_rgb(ds), picture)


def _palette_dataset(indices: np.ndarray) -> pydicom.Dataset:
    """Index i -> (i, 255 - i, 0), as 16-bit palette entries."""
    ds = make_dataset(indices, "PALETTE COLOR", 8)
    ramp = np.arange(256, dtype="<u2") * 257
    for colour, lut in (("Red", ramp), ("Green", ramp[::-1]), ("Blue", np.zeros(256, "<u2"))):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut.tobytes())
    return ds


def test_palette_colour_goes_through_its_lut(tmp_path):
    indices = np.array([[0, 100, 255]], np.uint8)
    expected = [[0, 255, 0], [100, 155, 0], [255, 0, 0]]
    np.testing.assert_array_equal(to_uint8_rgb(_palette_dataset(indices))[0], expected)
    path = write_dicom(tmp_path / "palette.dcm", _palette_dataset(np.tile(indices, (4, 1))))
    np.testing.assert_array_equal(read_dicom(path).pixels[0], expected)


# --------------------------------------------------------------------------- multi-frame


def test_multiframe_policies_pick_different_frames():
    levels = [100, 300, 200, 50]  # middle = frame 2 (frames // 2)
    frames = np.stack([np.full((4, 4), v, np.uint16) for v in levels])
    ds = make_dataset(frames, "MONOCHROME2", 12, window=(200, 401))
    out = {policy: int(_grey(to_uint8_rgb(ds, multiframe=policy))[0, 0]) for policy in MULTIFRAME_POLICIES}
    expected = {"first": 100, "middle": 200, "mip": 300, "mean": np.mean(levels)}
    for policy, value in expected.items():
        assert abs(out[policy] - ((value - 199.5) / 400 + 0.5) * 255) <= 1, policy
    assert len(set(out.values())) == 4


def test_colour_multiframe_and_already_decoded_frames():
    frames = np.stack([np.full((4, 6, 3), c, np.uint8) for c in (RED, GREEN, BLUE)])
    ds = make_dataset(frames, "RGB")
    got = {p: to_uint8_rgb(ds, multiframe=p)[0, 0].tolist() for p in MULTIFRAME_POLICIES}
    assert got == {"first": list(RED), "middle": list(GREEN), "mip": [255, 255, 255], "mean": [85, 85, 85]}
    # An array decoded beforehand, all frames, gives the same picture.
    assert to_uint8_rgb(ds, ds.pixel_array, multiframe="middle")[0, 0].tolist() == list(GREEN)


def test_unknown_policy_is_a_config_error():
    with pytest.raises(ConfigError, match="did you mean 'middle'"):
        to_uint8_rgb(make_dataset(gradient(), "MONOCHROME2", 12), multiframe="midle")


# --------------------------------------------------------------------------- readers and errors


def test_file_without_preamble_or_file_meta_is_read(tmp_path):
    ds = make_dataset(gradient(high=4095), "MONOCHROME2", 12, window=(2048, 4096))
    path = write_dicom(tmp_path / "bare", ds, file_meta=False)
    assert path.read_bytes()[128:132] != b"DICM"
    record = read_dicom(path)
    assert record.meta["transfer_syntax"] == "1.2.840.10008.1.2"  # guessed: implicit VR little endian
    np.testing.assert_array_equal(record.pixels, to_uint8_rgb(ds))


def test_encapsulated_file_without_file_meta_guesses_its_codestream(tmp_path):
    picture = colour_bars(height=32, bar_width=32)
    for syntax in (JPEGBaseline8Bit, RLELossless, JPEG2000Lossless):
        bare = encode(make_dataset(picture, "RGB"), syntax)
        bare.file_meta = pydicom.dataset.FileMetaDataset()
        path = tmp_path / syntax.name
        pydicom.dcmwrite(path, bare, implicit_vr=False, little_endian=True)  # no preamble, no file meta
        record = read_dicom(path)
        assert record.meta["transfer_syntax"] in (syntax, "1.2.840.10008.1.2.4.91"), syntax.name  # J2K: either
        np.testing.assert_allclose(_bar_centres(record.pixels), [RED, GREEN, BLUE], atol=6, err_msg=syntax.name)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_not_dicom_is_a_read_error_naming_the_file(tmp_path, reader):
    text = tmp_path / "README.txt"
    text.write_text("Exported by the clinic's viewer.\n" * 5)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    for path in (text, empty, tmp_path / "missing.dcm", tmp_path):
        with pytest.raises(DicomError) as err:
            read_dicom(path, reader=reader)
        assert err.value.stage == "read" and str(path) in str(err.value)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_no_pixel_data_and_truncated_pixels_are_pixel_errors(tmp_path, reader):
    ds = make_dataset(gradient(rows=32, cols=32), "MONOCHROME2", 12)
    full = write_dicom(tmp_path / "full.dcm", ds).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(full[: len(full) - 700])  # inside the pixel data: the header still reads
    del ds.PixelData
    for path in (write_dicom(tmp_path / "nopixels.dcm", ds), cut):
        with pytest.raises(DicomError) as err:
            read_dicom(path, reader=reader)
        assert err.value.stage == "pixels" and str(path) in str(err.value)


def test_missing_decoder_plugin_names_the_package(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "jpeg.dcm", encode(make_dataset(colour_bars(), "RGB"), JPEGBaseline8Bit))
    # As on a machine without pylibjpeg, gdcm or Pillow's JPEG plugin: pydicom has no usable plugin.
    monkeypatch.setattr(get_decoder(JPEGBaseline8Bit), "_available", {})
    with pytest.raises(DicomError, match="pip install pylibjpeg and pylibjpeg-libjpeg") as err:
        read_dicom(path)
    assert err.value.stage == "decoder" and str(path) in str(err.value)


def test_unknown_reader_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'sitk'"):
        read_dicom(tmp_path / "x.dcm", reader="stik")


def test_sitk_reader_matches_pydicom(tmp_path):
    picture = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    files = {
        "mono1_window": make_dataset(gradient(high=4095), "MONOCHROME1", 12, window=(2000, 3000)),
        "mono1_rescaled": make_dataset(gradient(high=4095), "MONOCHROME1", 12, rescale=(2, -1000),
                                       window=(1000, 6000)),
        "mono2_rescale_minmax": make_dataset(gradient(high=4095), "MONOCHROME2", 12, rescale=(0.5, 10)),
        "signed": make_dataset(np.array([[-2000, -10, 0, 900, 2000]], np.int16), "MONOCHROME2", 16),
        "rgb_jpeg": encode(make_dataset(picture, "RGB"), JPEGBaseline8Bit),
        "rgb_rle": encode(make_dataset(picture, "RGB"), RLELossless),
        "ybr_full": make_dataset(picture, "YBR_FULL"),
        "palette": _palette_dataset(np.arange(256, dtype=np.uint8).reshape(16, 16)),
        "multiframe_mono": make_dataset(np.stack([gradient(), gradient() // 2, gradient() // 4]), "MONOCHROME2", 12),
    }
    for name, ds in files.items():
        path = write_dicom(tmp_path / name, ds)
        for policy in ("middle", "mip") if name.startswith("multiframe") else ("middle",):
            ours, theirs = read_dicom(path, multiframe=policy), read_dicom(path, reader="sitk", multiframe=policy)
            assert ours.meta == theirs.meta, name
            assert ours.pixels.shape == theirs.pixels.shape, name
            assert np.abs(ours.pixels.astype(int) - theirs.pixels).max() <= 2, (name, policy)
