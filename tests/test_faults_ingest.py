"""Faults and bad input at ingest: real processes killed, bad label sets, identifiers planted, symlinks.

Every case asserts what a user would see: the exit code or exception, a one-line
message that names the problem, and that an existing good data folder is left
exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml

from dicom_factory import gradient, make_dataset, write_dicom
from melanet import ingest, ingest_write, synth
from melanet.cohort import INGEST_JOURNAL, read_cohort
from melanet.errors import ArtifactError, ConfigError, InputDataError
from melanet.runs import resolve_target

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth.run(synth.SynthConfig(out_dir=out, patients=8, image_size=32, seed=5))
    return out


def _cfg(src: Path, out: Path, labels: Path | None = None, **kw) -> ingest.IngestConfig:
    kw.setdefault("workers", 1)
    kw.setdefault("eda", False)
    return ingest.IngestConfig(dicom_dir=kw.pop("dicom_dir", src / "dicom"), out_dir=out,
                               labels=labels if labels is not None else src / "labels.csv",
                               image_size=32, folds=2, **kw)


@pytest.fixture(scope="module")
def good(src, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good") / "data"
    ingest.run(_cfg(src, out))
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _labels(tmp_path: Path, src: Path, change, name: str = "bad_labels.csv") -> Path:
    table = pd.read_csv(src / "labels.csv", dtype={"image_id": str})
    path = tmp_path / name
    change(table).to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- bad label sets, empty folders

BAD_LABELS = {
    "duplicate key": (lambda t: pd.concat([t, t.head(1)]), "appears 2 times"),
    "all NaN target": (lambda t: t.assign(target=np.nan), "has no values"),
    "0/1/2": (lambda t: t.assign(target=np.arange(len(t)) % 3), "'0', '1', '2', not 0/1"),
    "yes/no": (lambda t: t.assign(target=np.where(t["target"] == 1, "yes", "no")), "'no', 'yes', not 0/1"),
    "0.05/0.95": (lambda t: t.assign(target=np.where(t["target"] == 1, 0.95, 0.05)), "'0.05', '0.95', not 0/1"),
    "-1/1": (lambda t: t.assign(target=np.where(t["target"] == 1, 1, -1)), "'1', '-1', not 0/1"),
    "one class": (lambda t: t.assign(target=0), "single class"),
    "keys match nothing": (lambda t: t.assign(image_id="nope_" + t["image_id"]), "names a file"),
    "no key column": (lambda t: t.rename(columns={"image_id": "imageid"}), "did you mean 'imageid'"),
    "no rows": (lambda t: t.head(0), "has no rows"),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_bad_labels_fail_before_decoding_and_leave_data_intact(case, src, good, tmp_path):
    change, message = BAD_LABELS[case]
    labels = _labels(tmp_path, src, change)
    before = _digest(good)
    with pytest.raises(InputDataError, match=message) as info:
        ingest.run(_cfg(src, good, labels))
    assert "\n" not in str(info.value) and str(labels) in str(info.value)
    assert _digest(good) == before
    fresh = tmp_path / "fresh"  # checked before anything is written: not even the folder is made
    with pytest.raises(InputDataError, match=message):
        ingest.run(_cfg(src, fresh, labels))
    assert not fresh.exists()


def test_empty_missing_and_unusable_folders_leave_data_intact(src, good, tmp_path):
    before = _digest(good)
    (tmp_path / "empty").mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a DICOM file")
    (junk / "img.dcm").write_bytes(b"\0" * 200)
    cases = [(tmp_path / "empty", "holds no files"), (tmp_path / "missing", "does not exist"),
             (junk, r"none of the 2 file\(s\).*could be ingested.*left as it was")]
    for folder, message in cases:
        with pytest.raises(InputDataError, match=message) as info:
            ingest.run(_cfg(src, good, dicom_dir=folder).model_copy(update={"labels": None}))
        assert "\n" not in str(info.value)
        assert _digest(good) == before
    uid_labels = tmp_path / "uids.csv"  # UID-looking keys can only be checked against the headers
    pd.DataFrame({"image_id": ["1.2.3.4", "1.2.3.5"], "target": [0, 1]}).to_csv(uid_labels, index=False)
    with pytest.raises(InputDataError, match="none of its 2 labels matched"):
        ingest.run(_cfg(src, good, uid_labels))
    assert _digest(good) == before


def test_cli_bad_input_is_one_line_and_non_zero(src, good, tmp_path):
    before = _digest(good)
    labels = _labels(tmp_path, src, lambda t: t.assign(target=np.arange(len(t)) % 3))
    for args in ([str(tmp_path / "nothing-here"), "--out", str(good)],
                 [str(src / "dicom"), "--out", str(good), "--labels", str(labels)]):
        proc = subprocess.run([sys.executable, "-m", "melanet", "ingest", *args], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "COLUMNS": "400"}, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in proc.stderr
    assert _digest(good) == before


# --------------------------------------------------------------------------- targets

@pytest.mark.parametrize("values, kw, expected", [
    ([0, 1, 2, 1], {}, "not 0/1"), (["yes", "no"], {}, "not 0/1"), ([0.05, 0.95], {}, "not 0/1"),
    ([-1, 1], {}, "not 0/1"), ([1, 1, np.nan], {}, "single class"), ([np.nan, np.nan], {}, "no values"),
    (["mel", "nev"], {"target_type": "binary"}, "not 0/1"), ([0, 1], {"positive_class": "mel"}, "binary 0/1"),
    (["mel", "nev"], {"target_type": "bogus"}, "did you mean|choose one of"),
])
def test_trainers_refuse_unusable_targets(values, kw, expected):
    with pytest.raises((InputDataError, ConfigError), match=expected):
        resolve_target(pd.Series(values), "target", **kw)


def test_explicit_target_choices():
    assert resolve_target(pd.Series([0, 1, 2]), "target", target_type="multiclass").classes == ["0", "1", "2"]
    spec = resolve_target(pd.Series(["mel", "nev", "bkl"]), "dx", positive_class="mel")
    assert spec.classes == ["bkl", "mel", "nev"] and spec.positive_class == "mel"
    assert resolve_target(pd.Series([0.0, 1.0, np.nan]), "target").is_binary


def test_positive_class_binarises_and_empty_targets_are_reported(src, tmp_path, capsys):
    def change(t):
        t = t.assign(target=np.where(t["target"] == 1, "yes", "no"))
        t.loc[t.index[:2], "target"] = np.nan
        return t
    labels = _labels(tmp_path, src, change)
    out = tmp_path / "data"
    ingest.run(_cfg(src, out, labels, positive_class="yes"))
    cohort = read_cohort(out)
    lab = cohort[cohort["target"].notna()]
    assert set(lab["target"]) == {0.0, 1.0}
    assert (lab["target"] == (lab["target_original"] == "yes")).all()
    summary = json.loads((out / "ingest_summary.json").read_text())
    assert summary["labels_with_empty_target"] == 2 and summary["target_binarised_on"] == "yes"
    report = pd.read_csv(out / "labels_report.csv")
    empty = report[report["status"] == "empty_target_test_row"]
    assert len(empty) == 2 and set(empty["row"]) == {1, 2}
    assert (cohort.set_index("image_id").loc[empty["key"].astype(str), "fold"] == -1).all()
    assert "empty 'target'" in capsys.readouterr().err
    ingest.run(_cfg(src, tmp_path / "mc", target="diagnosis", target_type="multiclass"))
    assert read_cohort(tmp_path / "mc")["diagnosis"].nunique() >= 2


# --------------------------------------------------------------------------- all-or-nothing writes

def _consistent(data: Path, expected_labelled: dict[str, int]) -> str:
    """Which run the data folder holds ("journal" while a swap is pending); fail if its files disagree."""
    if (data / INGEST_JOURNAL).exists():
        with pytest.raises(ArtifactError, match="re-run"):
            read_cohort(data)
        return "journal"
    config = yaml.safe_load((data / "ingest_config.yaml").read_text())
    summary = json.loads((data / "ingest_summary.json").read_text())
    cohort = read_cohort(data)
    want = expected_labelled[Path(config["labels"]).name]
    assert summary["labelled"] == int((cohort["fold"] >= 0).sum()) == want
    assert len(pd.read_csv(data / "labels_report.csv")) == summary["labels_without_image"] + \
        summary["labels_for_failed_files"] + summary["labels_with_empty_target"]
    return Path(config["labels"]).name


def test_swap_interrupted_midway_is_refused_then_completed(src, tmp_path, monkeypatch):
    data = tmp_path / "data"
    half = _labels(tmp_path, src, lambda t: t.iloc[::2])
    ingest.run(_cfg(src, data))
    full_n = int((read_cohort(data)["fold"] >= 0).sum())
    real_replace, calls = os.replace, []

    def dies_after_two(a, b):
        if ingest_write.STAGING_PREFIX in str(a) and Path(b).parent == data:  # a rename of the swap
            if len(calls) == 2:
                raise KeyboardInterrupt  # as if killed between two renames
            calls.append(a)
        return real_replace(a, b)

    monkeypatch.setattr(ingest_write.os, "replace", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        ingest.run(_cfg(src, data, half))
    monkeypatch.setattr(ingest_write.os, "replace", real_replace)
    assert _consistent(data, {}) == "journal"
    ingest.run(_cfg(src, data))  # the next run finishes the old swap, then writes its own
    assert _consistent(data, {"labels.csv": full_n}) == "labels.csv"
    assert not list(data.glob(".ingest-*"))


def test_eda_files_belong_to_the_run(src, tmp_path):
    data = tmp_path / "data"
    ingest.run(_cfg(src, data).model_copy(update={"eda": True}))
    assert (data / "eda.html").is_file() and (data / "duplicates.csv").is_file()
    ingest.run(_cfg(src, data))  # eda off: the old page would describe another run, so it goes
    assert not (data / "eda.html").exists() and not (data / "duplicates.csv").exists()


# --------------------------------------------------------------------------- killed processes

def _spawn_ingest(src: Path, out: Path, labels: Path, workers: int = 2, image_size: int = 32) -> subprocess.Popen:
    """``melanet ingest`` in a child process (an ``image_size`` not cached yet keeps its workers busy)."""
    return subprocess.Popen(
        [sys.executable, "-m", "melanet", "ingest", str(src / "dicom"), "--out", str(out), "--labels", str(labels),
         "--folds", "2", "--image-size", str(image_size), "--workers", str(workers), "--set", "eda=false",
         "--set", "chunk_size=1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "400"})


def _workers_of(proc: subprocess.Popen, n: int, timeout: float = 60.0) -> list:
    psutil = pytest.importorskip("psutil")
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = [c for c in parent.children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
        if len(children) >= n:
            return children
        if proc.poll() is not None:
            pytest.fail(f"ingest ended before its workers started: {proc.stderr.read()}")
        time.sleep(0.02)
    pytest.fail("ingest workers did not start")


def _gone(children, timeout: float = 10.0) -> bool:
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def big_src(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bigsynth")
    synth.run(synth.SynthConfig(out_dir=out, patients=20, image_size=96, seed=11))
    return out


def test_kill_9_leaves_no_workers_and_never_mixes_runs(big_src, tmp_path):
    half = _labels(tmp_path, big_src, lambda t: t.iloc[::2])
    ingest.run(_cfg(big_src, tmp_path / "full", big_src / "labels.csv"))
    data = tmp_path / "data"
    ingest.run(_cfg(big_src, data, half))
    counts = {"labels.csv": int((read_cohort(tmp_path / "full")["fold"] >= 0).sum()),
              half.name: int((read_cohort(data)["fold"] >= 0).sum())}
    assert counts["labels.csv"] != counts[half.name]
    for delay, size in ((0.0, 40), (0.6, 48)):
        (data / "images" / ".planted.npy.x1.tmp").write_bytes(b"partial")
        proc = _spawn_ingest(big_src, data, big_src / "labels.csv", image_size=size)
        children = _workers_of(proc, 2)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        assert _gone(children), "worker processes outlived their killed parent"
        _consistent(data, counts)  # the old run, the new one, or a pending swap: never a mix
    ingest.run(_cfg(big_src, data))  # the next run succeeds and removes what the kills left
    assert _consistent(data, counts) == "labels.csv"
    assert not list(data.rglob("*.tmp")) and not list(data.glob(".ingest-*"))


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_one_line_and_workers_stop(big_src, good, tmp_path, sig, code):
    data = tmp_path / "data"
    # 64 px: decoded in full (96 px files are decoded at half scale for a cache of at most 48 px), so the run
    # is still busy when the signal comes.
    proc = _spawn_ingest(big_src, data, big_src / "labels.csv", image_size=64)
    children = _workers_of(proc, 2)
    time.sleep(0.1)  # the whole run takes ~0.4 s on an idle 2-core machine
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0 or (data / "cohort.parquet").exists():
        # Finished first; a signal during the interpreter's exit ends it with the signal's default action (-2).
        pytest.skip("ingest finished before the signal arrived")
    assert proc.returncode == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted by SIG") and "Traceback" not in err
    assert _gone(children)
    assert not (data / "cohort.parquet").exists() and not list(data.glob(".ingest-*"))


# --------------------------------------------------------------------------- privacy

def _uids(folder: Path) -> set[str]:
    out = set()
    for f in folder.rglob("*"):
        if f.is_file():
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            out |= {str(ds.get(k)) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if k in ds}
    return out


def test_no_raw_uid_anywhere_and_labels_join_by_uid(src, good, tmp_path):
    uids = _uids(src / "dicom")
    assert len(uids) > 10
    blob = b"".join(p.read_bytes() for p in good.rglob("*") if p.is_file())
    leaked = [u for u in uids if u.encode() in blob]
    assert not leaked, leaked[:3]
    assert read_cohort(good)["sop_instance_uid"].str.startswith("uid_").all()
    # a labels table keyed by the raw SOPInstanceUID still joins
    table = pd.read_csv(src / "labels.csv", dtype={"image_id": str})
    by_uid = {}
    for f in (src / "dicom").rglob("*"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        by_uid[ingest.image_id_for(f.relative_to(src / "dicom").as_posix())] = str(ds.SOPInstanceUID)
    table["sop"] = table["image_id"].map(by_uid)
    path = tmp_path / "by_uid.csv"
    table.drop(columns=["image_id"]).to_csv(path, index=False)
    out = tmp_path / "data"
    ingest.run(_cfg(src, out, path, label_key="sop"))
    joined = read_cohort(out).set_index("image_id")["target"]
    expected = pd.read_csv(src / "labels.csv", dtype={"image_id": str}).set_index("image_id")["target"]
    pd.testing.assert_series_equal(joined.loc[expected.index], expected.astype(float), check_names=False)
    unmatched = pd.read_csv(out / "labels_report.csv")
    assert not any(u in " ".join(unmatched["key"].astype(str)) for u in uids)


def test_identifier_columns_dropped_unless_kept(src, tmp_path, capsys):
    planted = {"patient_name": "Doe^Jane", "MRN": "MRN-7731", "birth_date": "19700101", "DOB": "1970-01-01",
               "email": "jane@example.org", "Phone Number": "555-0100", "AccessionNumber": "ACC991",
               "StudyInstanceUID": "1.2.3.4.5"}
    labels = _labels(tmp_path, src, lambda t: t.assign(**planted, site_name="arm"))
    out = tmp_path / "data"
    ingest.run(_cfg(src, out, labels, eda=True))
    cohort = read_cohort(out)
    assert not set(planted) & set(cohort.columns) and "site_name" in cohort.columns
    err = capsys.readouterr().err
    assert "'patient_name'" in err and "'MRN'" in err and "--keep-columns" in err
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for value in planted.values():
        assert value.encode() not in blob
    ingest.run(_cfg(src, tmp_path / "kept", labels, keep_columns=["MRN"]))
    assert "MRN" in read_cohort(tmp_path / "kept").columns


def test_age_whole_years_and_capped(tmp_path):
    folder = tmp_path / "dicom"
    births = {"old": "19120301", "young": "19800616", "ninety": "19300101"}
    for i, (name, born) in enumerate(births.items()):
        ds = make_dataset(gradient(16, 16, high=255, dtype=np.uint8), "MONOCHROME2", 8, PatientAge=None,
                          PatientBirthDate=born, StudyDate="20200615", PatientID=f"P{i}")
        write_dicom(folder / f"{name}.dcm", ds)
    out = tmp_path / "data"
    ingest.run(ingest.IngestConfig(dicom_dir=folder, out_dir=out, image_size=16, eda=False, workers=1))
    age = read_cohort(out).set_index("image_id")["age"]
    assert age.to_dict() == {"old": 90.0, "young": 39.0, "ninety": 90.0}


def test_key_outside_data_folder_0600_and_none_for_missing_folder(src, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MELANET_PSEUDONYM_KEY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    key_file = tmp_path / "config" / "melanet" / "pseudonym_key"
    with pytest.raises(InputDataError, match="does not exist"):
        ingest.run(_cfg(src, tmp_path / "d0", dicom_dir=tmp_path / "no-such-folder"))
    assert not key_file.exists() and not (tmp_path / "d0").exists()
    out = tmp_path / "data"
    ingest.run(_cfg(src, out))
    assert key_file.is_file() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not (out / ".pseudonym_key").exists()
    first = read_cohort(out)["patient_id"]
    key_file.chmod(0o644)
    capsys.readouterr()
    ingest.run(_cfg(src, out))
    assert "readable by others" in capsys.readouterr().err
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    pd.testing.assert_series_equal(first, read_cohort(out)["patient_id"])  # same key, same pseudonyms
    from melanet.privacy import load_key
    assert load_key(out, create=False) == key_file.read_text().strip().encode()


# --------------------------------------------------------------------------- symlinks

def test_symlinks_followed_only_inside_the_folder(tmp_path):
    folder, outside = tmp_path / "dicom", tmp_path / "outside"
    img = gradient(16, 16, high=255, dtype=np.uint8)
    write_dicom(folder / "a.dcm", make_dataset(img, "MONOCHROME2", 8))
    write_dicom(outside / "secret.dcm", make_dataset(img, "MONOCHROME2", 8))
    (outside / "passwd").write_text("root:x:0:0")
    (folder / "link_out.dcm").symlink_to(outside / "secret.dcm")
    (folder / "link_passwd").symlink_to(outside / "passwd")
    (folder / "link_in.dcm").symlink_to(folder / "a.dcm")
    (folder / "broken").symlink_to(tmp_path / "gone")
    (folder / "dir_out").symlink_to(outside, target_is_directory=True)
    out = tmp_path / "data"
    res = ingest.run(ingest.IngestConfig(dicom_dir=folder, out_dir=out, image_size=16, eda=False, workers=1))
    cohort, errors = read_cohort(out), pd.read_csv(out / "ingest_errors.csv")
    assert sorted(cohort["image_id"]) == ["a", "link_in"]
    assert set(errors.loc[errors["stage"] == "symlink", "path"]) == {"link_out.dcm", "link_passwd", "broken",
                                                                     "dir_out"}
    assert errors["error"].str.contains("--follow-symlinks|broken").all()
    assert res.n_files == len(cohort) + len(errors)
    ingest.run(ingest.IngestConfig(dicom_dir=folder, out_dir=out, image_size=16, eda=False, workers=1,
                                   follow_symlinks=True))
    assert {"link_out", "dir_out/secret"} <= set(read_cohort(out)["image_id"])


def test_predict_reads_the_key_writes_none_and_leaves_no_temp_folder(src, tmp_path, monkeypatch):
    import tempfile

    from melanet import predict
    from melanet.config import load_config
    from melanet.train import gbdt

    monkeypatch.delenv("MELANET_PSEUDONYM_KEY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    data = tmp_path / "data"
    ingest.run(_cfg(src, data))
    run = tmp_path / "gbdt"
    gbdt.run(load_config(gbdt.GBDTConfig, "gbdt", ["num_boost_round=20", "early_stopping_rounds=null", "lightgbm.num_leaves=4",
                                                   "lightgbm.min_data_in_leaf=2", "n_jobs=1", "report=false"],
                         extra={"data_dir": str(data), "out_dir": str(run)}))
    key_file = tmp_path / "config" / "melanet" / "pseudonym_key"
    key_before = key_file.read_bytes()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    before = _digest(data)
    pred = predict.run(run, src / "dicom", tmp_path / "pred.csv", workers=1)
    assert len(pred) == len(read_cohort(data))
    assert not list((tmp_path / "tmp").iterdir())  # decoded images and headers removed
    assert _digest(data) == before and not (data / ".pseudonym_key").exists()
    assert key_file.read_bytes() == key_before
