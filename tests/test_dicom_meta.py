"""DICOM header -> cohort metadata: age, sex, anatomic site, the meta dict, identical across readers."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from dicom_factory import gradient, make_dataset, write_dicom
from melanet.dicom.meta import DAYS_PER_YEAR, extract_meta, normalise_sex, normalise_site, parse_age
from melanet.dicom.readers import READERS, read_dicom

META_KEYS = {"sop_instance_uid", "study_instance_uid", "patient_id_raw", "sex", "age", "site", "modality",
             "photometric", "rows", "cols", "frames", "bits_stored", "transfer_syntax"}


@pytest.mark.parametrize("patient_age, years", [
    ("045Y", 45.0), ("006M", 0.5), ("012W", 12 * 7 / DAYS_PER_YEAR), ("010D", 10 / DAYS_PER_YEAR),
    ("45Y", 45.0), ("45", 45.0), (" 070y ", 70.0), ("000D", 0.0),
])
def test_patient_age_units(patient_age, years):
    assert parse_age(patient_age, "19000101", "20000101", exact=True) == pytest.approx(years)


@pytest.mark.parametrize("patient_age", [None, "", "abc", "45X", "1234Y", "999Y", "-5Y", "4.5Y"])
def test_unusable_patient_age_falls_back_to_birth_date(patient_age):
    days = 40 * 365 + 10  # ten 29 Februaries
    assert parse_age(patient_age, "19800615", "20200615", exact=True) == pytest.approx(days / DAYS_PER_YEAR)
    assert parse_age(patient_age, None, None) is None


def test_birth_date_edge_cases():
    assert parse_age(None, "20000101", "19990101") is None  # born after the study
    assert parse_age(None, "garbage", "20200101") is None
    assert parse_age(None, "1980.06.15", "2020.06.15", exact=True) == pytest.approx(40.0, abs=0.01)  # ACR-NEMA dots
    born, seen = pydicom.valuerep.DA("19800615"), pydicom.valuerep.DA("20000615")
    assert parse_age(None, born, seen, exact=True) == pytest.approx(20.0, abs=0.01)


@pytest.mark.parametrize("patient_age, birth, study, years", [
    ("045Y", None, None, 45.0), ("006M", None, None, 0.0), ("012M", None, None, 1.0), ("011M", None, None, 0.0),
    ("052W", None, None, 0.0), ("365D", None, None, 0.0), ("089Y", None, None, 89.0), ("090Y", None, None, 90.0),
    ("104Y", None, None, 90.0), (None, "19800616", "20200615", 39.0), (None, "19800615", "20200615", 40.0),
    (None, "19120101", "20200615", 90.0), (None, "19300615", "20200614", 89.0),
])
def test_age_is_whole_years_capped_at_90(patient_age, birth, study, years):
    """Safe Harbor: no age to the day (it gives the birth date back), nobody older than 90."""
    age = parse_age(patient_age, birth, study)
    assert age == years and float(age).is_integer()


def test_extracted_age_from_birth_date_is_whole_and_capped():
    ds = make_dataset(gradient(), PatientAge=None, PatientBirthDate="19120229", StudyDate="20200815")
    assert extract_meta(ds)["age"] == 90.0
    ds = make_dataset(gradient(), PatientAge=None, PatientBirthDate="19610301", StudyDate="20200815")
    assert extract_meta(ds)["age"] == 59.0


@pytest.mark.parametrize("raw, sex", [("M", "male"), ("F", "female"), ("f", "female"), ("Male", "male"),
                                      ("O", None), ("", None), (None, None), ("X", None)])
def test_sex(raw, sex):
    assert normalise_sex(raw) == sex


@pytest.mark.parametrize("raw, site", [
    ("HEAD/NECK", "head/neck"), ("head-neck", "head/neck"), ("Head / Neck", "head/neck"), ("NECK", "head/neck"),
    ("HEAD", "head/neck"), ("UPPER EXTREMITY", "upper extremity"), ("upper_extremity", "upper extremity"),
    ("ARM", "upper extremity"), ("HAND", "upper extremity"), ("LEG", "lower extremity"),
    ("FOOT", "lower extremity"), ("lower  extremity", "lower extremity"), ("TORSO", "torso"),
    ("ANTERIOR TORSO", "anterior torso"), ("CHEST", "anterior torso"), ("ABDOMEN", "anterior torso"),
    ("BACK", "posterior torso"), ("posterior-torso", "posterior torso"), ("PALMS/SOLES", "palms/soles"),
    ("palms soles", "palms/soles"), ("ORAL/GENITAL", "oral/genital"), ("SKIN", None), ("", None),
    (None, None), ("  ", None), ("LEFT_EYEBROW", "left eyebrow"),  # unknown: kept, normalised
])
def test_site_vocabulary(raw, site):
    assert normalise_site(raw) == site


def test_extract_meta_reads_the_contract_fields():
    ds = make_dataset(gradient(rows=6, cols=7), "MONOCHROME1", 12, PatientID="P-17", PatientSex="M",
                      PatientAge="052Y", BodyPartExamined="BACK", Modality="XC")
    meta = extract_meta(ds)
    assert set(meta) == META_KEYS
    assert meta == {
        "sop_instance_uid": ds.SOPInstanceUID, "study_instance_uid": ds.StudyInstanceUID, "patient_id_raw": "P-17",
        "sex": "male", "age": 52.0, "site": "posterior torso", "modality": "XC", "photometric": "MONOCHROME1",
        "rows": 6, "cols": 7, "frames": 1, "bits_stored": 12, "transfer_syntax": "1.2.840.10008.1.2.1",
    }


def test_missing_fields_are_none_and_age_comes_from_birth_date():
    ds = make_dataset(np.stack([gradient()] * 3), "MONOCHROME2", 12, PatientAge=None, PatientID=None,
                      PatientSex="", BodyPartExamined=None, PatientBirthDate="19700101", StudyDate="20200101")
    meta = extract_meta(ds)
    assert meta["age"] == pytest.approx(50.0, abs=0.01)
    assert meta["patient_id_raw"] is None and meta["sex"] is None and meta["site"] is None
    assert meta["frames"] == 3
    del ds.StudyDate
    ds.SeriesDate = "20100101"  # the next date in the header stands in for the study date
    assert extract_meta(ds)["age"] == pytest.approx(40.0, abs=0.01)


def test_site_from_anatomic_region_code_when_body_part_is_absent():
    region = pydicom.Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "40983000", "SCT", "Upper arm"
    ds = make_dataset(gradient(), "MONOCHROME2", 12, BodyPartExamined=None, AnatomicRegionSequence=[region])
    assert extract_meta(ds)["site"] == "upper extremity"


def test_no_direct_identifier_in_meta():
    ds = make_dataset(gradient(), "MONOCHROME2", 12, PatientName="Doe^Jane", PatientBirthDate="19700101")
    values = {str(v) for v in extract_meta(ds).values()}
    assert "Doe^Jane" not in values and "19700101" not in values


def test_readers_give_identical_meta(tmp_path):
    ds = make_dataset(gradient(), "MONOCHROME2", 12, PatientAge=None, PatientBirthDate="19610301",
                      BodyPartExamined="LOWER EXTREMITY", PatientSex="F")
    path = write_dicom(tmp_path / "one.dcm", ds)
    metas = [read_dicom(path, reader=name).meta for name in sorted(READERS)]
    assert all(m == metas[0] for m in metas)
    assert metas[0]["site"] == "lower extremity" and metas[0]["sex"] == "female"
    assert metas[0]["age"] == 59.0  # whole years (born 1961-03-01, seen 2020-03-15)
