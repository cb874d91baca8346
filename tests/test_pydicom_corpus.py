"""pydicom's own test files (offline, ~190 odd and broken DICOMs): read_dicom fails only with DicomError,
and every file pydicom itself can decode becomes a uint8 (H, W, 3) picture."""

from __future__ import annotations

import collections
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files

from melanet.dicom.readers import read_dicom
from melanet.errors import DicomError

# Every local file is well under this; the cap keeps the test fast if pydicom ever ships bigger ones.
MAX_BYTES = 20_000_000


def _pydicom_decodes(path: str) -> bool:
    try:
        return pydicom.dcmread(path, force=True).pixel_array is not None
    except Exception:  # noqa: BLE001 - the reference: whatever pydicom cannot do is not expected of us
        return False


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    files = [f for f in get_testdata_files() if not os.path.isfile(f) or os.path.getsize(f) <= MAX_BYTES]
    if not files:
        pytest.skip("pydicom's test files are not installed")
    return files


def test_pydicom_corpus_reads_or_fails_cleanly(corpus):
    tally: collections.Counter[str] = collections.Counter()
    missed = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the corpus is full of deliberately invalid values
        for path in corpus:
            try:
                pixels = read_dicom(path).pixels
            except DicomError as exc:
                tally[exc.stage] += 1
                assert Path(path).name in str(exc)
                if _pydicom_decodes(path):
                    missed.append(f"{Path(path).name}: {exc}")
                continue
            tally["ok"] += 1
            assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, path
    print(f"\npydicom corpus: {len(corpus)} entries, stages {dict(sorted(tally.items()))}")
    assert not missed, missed
    assert tally["ok"] >= 80


def test_third_party_colour_encodings_agree(corpus):
    """dcmtk/GDCM-written RGB, YBR_FULL, YBR_FULL_422 (JPEG baseline, JPEG-LS, JPEG 2000, 16/32-bit RLE)
    of the same picture: no encoding converts colour twice or not at all."""
    files = {Path(f).name: f for f in corpus}
    if "SC_rgb_rle.dcm" not in files:
        pytest.skip("SC_rgb_rle.dcm not in this pydicom's test files")
    reference = read_dicom(files["SC_rgb_rle.dcm"]).pixels.astype(int)
    variants = [n for n in files if n.startswith("SC_rgb_") and "small" not in n and n != "SC_rgb_rle.dcm"]
    compared = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in variants:
            pixels = read_dicom(files[name], multiframe="first").pixels
            if pixels.shape == reference.shape:
                compared += 1
                assert np.abs(pixels - reference).mean() < 4, name
    assert compared >= 10
