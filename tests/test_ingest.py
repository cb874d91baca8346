"""melanet ingest: every file accounted for, labels joined and reported, patient-grouped folds, cache re-use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from melanet import ingest, synth
from melanet.cli import app
from melanet.cohort import DICOM_COLUMNS, load_image, read_cohort
from melanet.descriptors import LESION_COLUMNS
from melanet.errors import InputDataError


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth.run(synth.SynthConfig(out_dir=out, patients=30, image_size=48, faults=True, seed=3))
    return out


def _ingest(src: Path, out: Path, **kw) -> ingest.IngestResult:
    cfg = ingest.IngestConfig(dicom_dir=src / "dicom", out_dir=out, labels=src / "labels.csv",
                              image_size=32, folds=3, eda=False, **kw)
    return ingest.run(cfg)


@pytest.fixture(scope="module")
def ingested(cohort_dir, tmp_path_factory) -> tuple[Path, ingest.IngestResult]:
    out = tmp_path_factory.mktemp("data")
    return out, _ingest(cohort_dir, out, workers=1)


def test_every_file_is_a_row_or_an_error(cohort_dir, ingested):
    out, res = ingested
    files = [p for p in (cohort_dir / "dicom").rglob("*") if p.is_file()]
    cohort = read_cohort(out)
    errors = pd.read_csv(out / "ingest_errors.csv")
    assert res.n_files == len(files)
    assert len(cohort) + len(errors) == len(files)
    faults = pd.read_csv(cohort_dir / "faults.csv")
    broken = faults[~faults["decodable"].astype(bool)] if "decodable" in faults else faults
    assert len(errors) == len(broken)
    assert set(errors["stage"]) <= {"read", "pixels", "decoder", "decode", "ingest"}
    assert errors["error"].str.len().min() > 10  # a message, not an empty cell


def test_cohort_columns_and_cache(ingested):
    out, _ = ingested
    cohort = read_cohort(out)
    assert list(cohort.columns[: len(DICOM_COLUMNS)]) == DICOM_COLUMNS
    assert {"target", "diagnosis", "fold"} <= set(cohort.columns)
    assert cohort["image_id"].is_unique
    img = load_image(out, cohort["image_path"].iloc[0])
    assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
    assert set(cohort["sex"].dropna()) <= {"male", "female"}
    assert cohort["age"].between(0, 120).all() or cohort["age"].isna().any()


def test_labels_join_and_report(cohort_dir, ingested):
    out, res = ingested
    cohort = read_cohort(out)
    labels = pd.read_csv(cohort_dir / "labels.csv", dtype={"image_id": str})
    truth = pd.read_csv(cohort_dir / "truth.csv", dtype={"image_id": str})
    labelled = cohort[cohort["target"].notna()]
    merged = labelled.merge(truth, on="image_id", suffixes=("", "_truth"))
    assert len(merged) == len(labelled)
    assert (merged["target"].astype(int) == merged["target_truth"].astype(int)).all()
    report = pd.read_csv(out / "labels_report.csv")
    # labels of the broken files are reported, not silently dropped
    assert len(report) == len(labels) - len(labelled)
    assert set(report["status"]) == {"label_for_failed_file"}
    unlabelled = cohort[cohort["target"].isna()]
    assert len(unlabelled) > 0 and (unlabelled["fold"] == -1).all()


def test_folds_are_patient_grouped_and_stratified(ingested):
    out, _ = ingested
    cohort = read_cohort(out)
    lab = cohort[cohort["fold"] >= 0]
    assert lab.groupby("patient_id")["fold"].nunique().max() == 1
    assert sorted(lab["fold"].unique()) == [0, 1, 2]
    assert lab.groupby("fold")["target"].sum().min() > 0


def test_folds_do_not_depend_on_the_pseudonym_key(cohort_dir, ingested, tmp_path, monkeypatch):
    out, _ = ingested
    monkeypatch.setenv("MELANET_PSEUDONYM_KEY", "another-site-key")
    _ingest(cohort_dir, tmp_path / "other_key", workers=1)
    first, second = read_cohort(out), read_cohort(tmp_path / "other_key")
    assert not set(first["patient_id"]) & set(second["patient_id"])  # the key did change the pseudonyms
    pd.testing.assert_series_equal(first["fold"], second["fold"])


def test_no_direct_identifiers_in_outputs(cohort_dir, ingested):
    out, _ = ingested
    names, ids = set(), set()
    for f in (cohort_dir / "dicom").rglob("*"):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        except Exception:
            continue
        if "PatientName" in ds and str(ds.PatientName):
            names.add(str(ds.PatientName))
        if "PatientID" in ds and str(ds.PatientID):
            ids.add(str(ds.PatientID))
    assert names and ids
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix != ".npy")
    for value in names | ids:
        assert value.encode() not in blob


def test_rerun_skips_unchanged_files(cohort_dir, ingested, tmp_path):
    out, first = ingested
    before = read_cohort(out)
    again = _ingest(cohort_dir, out, workers=1)
    assert again.n_skipped == first.n_rows
    pd.testing.assert_frame_equal(before, read_cohort(out))


def test_lesion_descriptors_are_columns_and_reused(cohort_dir, ingested, tmp_path):
    out, _ = ingested
    cohort = read_cohort(out)
    assert list(cohort.columns[len(DICOM_COLUMNS):len(DICOM_COLUMNS) + len(LESION_COLUMNS)]) == LESION_COLUMNS
    assert cohort["lesion_mask_ok"].dtype == bool and cohort["lesion_mask_ok"].mean() > 0.8
    ok = cohort[cohort["lesion_mask_ok"]]
    assert ok["lesion_area_frac"].between(0, 1).all() and (ok["lesion_n_colors"] >= 1).all()
    assert cohort.loc[~cohort["lesion_mask_ok"], "lesion_area_frac"].isna().all()
    # A run without descriptors has no lesion_* column; the next run with descriptors measures them from
    # the cached pixels and keeps them with the cache entry, so a later run reads them back (a changed value
    # in the sidecar shows through) instead of measuring again.
    plain = tmp_path / "plain"
    _ingest(cohort_dir, plain, workers=1, descriptors=False)
    assert not any(c.startswith("lesion_") for c in read_cohort(plain).columns)
    _ingest(cohort_dir, plain, workers=1)
    pd.testing.assert_frame_equal(read_cohort(plain)[LESION_COLUMNS], cohort[LESION_COLUMNS])
    sidecar = (plain / cohort["image_path"].iloc[0]).with_suffix(".json")
    entry = json.loads(sidecar.read_text())
    entry["lesion"]["lesion_perimeter_px"] = 12345.0
    sidecar.write_text(json.dumps(entry))
    _ingest(cohort_dir, plain, workers=1)
    assert read_cohort(plain)["lesion_perimeter_px"].iloc[0] == 12345.0


def test_two_workers_same_cohort(cohort_dir, ingested, tmp_path):
    out, _ = ingested
    _ingest(cohort_dir, tmp_path / "w2", workers=2)
    # Exactly: the descriptors are the same in every process (melanet.descriptors' border gradient is exact).
    pd.testing.assert_frame_equal(read_cohort(out), read_cohort(tmp_path / "w2"), check_exact=True)


def test_read_once_or_from_disk_same_cohort_and_cache(cohort_dir, ingested, tmp_path, monkeypatch):
    # Files are normally read once (hashed and parsed from memory); above READ_ONCE_MAX_BYTES they are hashed
    # in blocks and parsed from disk. Both give the same rows, errors, cached pixels and descriptors.
    out, _ = ingested
    monkeypatch.setattr(ingest, "READ_ONCE_MAX_BYTES", 0)
    disk = tmp_path / "disk"
    _ingest(cohort_dir, disk, workers=1)
    cohort = read_cohort(out)
    pd.testing.assert_frame_equal(cohort, read_cohort(disk))
    pd.testing.assert_frame_equal(pd.read_csv(out / "ingest_errors.csv"), pd.read_csv(disk / "ingest_errors.csv"))
    for path in cohort["image_path"]:
        assert (out / path).read_bytes() == (disk / path).read_bytes()
        a, b = (json.loads((d / path).with_suffix(".json").read_text()) for d in (out, disk))
        la, lb = a.pop("lesion"), b.pop("lesion")
        assert a == b and la.keys() == lb.keys()
        np.testing.assert_array_equal([float(la[k]) for k in la], [float(lb[k]) for k in la])  # NaN == NaN here


def test_labels_by_sop_uid_and_relative_path(cohort_dir, ingested, tmp_path):
    out, _ = ingested
    cohort = read_cohort(out)
    row = cohort.iloc[0]
    table = pd.DataFrame({"key": [row["sop_instance_uid"], cohort.iloc[1]["image_id"] + ".dcm", "nope"],
                          "target": [1, 0, 1]})
    joined, report = ingest.join_labels(cohort[ingest.DICOM_COLUMNS], table, "key", "target")
    assert joined.loc[0, "target"] == 1
    assert report["key"].tolist() == ["nope"] and report["status"].tolist() == ["label_without_image"]


def test_label_errors_name_the_problem(ingested):
    out, _ = ingested
    cohort = read_cohort(out)[DICOM_COLUMNS]
    with pytest.raises(InputDataError, match="did you mean 'imageid'"):
        ingest.join_labels(cohort, pd.DataFrame({"imageid": ["a"], "target": [1]}), "image_id", "target")
    with pytest.raises(InputDataError, match="appears twice"):
        ingest.join_labels(cohort, pd.DataFrame({"image_id": ["a", "a"], "target": [1, 0]}), "image_id", "target")


def test_image_id_keeps_uid_dots():
    assert ingest.image_id_for("1.2.840.113619.2.55.3") == "1.2.840.113619.2.55.3"
    assert ingest.image_id_for("sub/ISIC_1.dcm") == "sub/ISIC_1"
    assert ingest.image_id_for("x/IMG.DCM") == "x/IMG"


def test_cli_bad_folder_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "missing"), "--out", str(tmp_path / "d")])
    assert result.exit_code != 0
    assert "does not exist" in str(result.exception) or "does not exist" in result.output


def test_multiframe_and_grayscale_files_ingest(tmp_path):
    src = tmp_path / "g"
    synth.run(synth.SynthConfig(out_dir=src, patients=12, image_size=32, grayscale_fraction=1.0, seed=1))
    res = _ingest(src, tmp_path / "d", workers=1)
    assert res.n_errors == 0
    cohort = read_cohort(tmp_path / "d")
    assert set(cohort["photometric"]) <= {"MONOCHROME1", "MONOCHROME2"}
    img = load_image(tmp_path / "d", cohort["image_path"].iloc[0])
    assert img.std() > 5  # windowed into a visible picture, not a flat field


def test_dask_engine_matches_local_and_writes_parts(cohort_dir, ingested, tmp_path):
    pytest.importorskip("dask.distributed")
    out, _ = ingested
    parts = tmp_path / "dask" / ingest.PARTS_DIR
    parts.mkdir(parents=True)
    (parts / "part-00099.parquet").write_bytes(b"left by an earlier run")
    _ingest(cohort_dir, tmp_path / "dask", workers=2, engine="dask", part_rows=25)
    cohort = read_cohort(tmp_path / "dask")
    pd.testing.assert_frame_equal(read_cohort(out), cohort)
    # The decoded rows also sit in parquet parts of ~part_rows rows (only this run's), which read back as the
    # cohort's header columns.
    files = sorted(parts.glob("part-*.parquet"))
    assert len(files) >= len(cohort) // 25 and parts / "part-00099.parquet" not in files
    rows = pd.concat([pd.read_parquet(f) for f in files]).sort_values("image_id").reset_index(drop=True)
    assert list(rows.columns) == DICOM_COLUMNS + LESION_COLUMNS
    pd.testing.assert_frame_equal(rows, cohort[DICOM_COLUMNS + LESION_COLUMNS])
    assert not (out / ingest.PARTS_DIR).exists()  # --engine local writes cohort.parquet only
