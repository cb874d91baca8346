"""Run-side faults: killed re-runs, bad engine parameters, damaged model files, outputs aimed at the wrong place.

Each case is what a user would do; each asserts the exit code, that the error is one line naming what to do,
and that earlier outputs are intact or clearly refused. Ingest-side faults live in test_faults_ingest.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melanet import blend, report, suspects
from melanet.config import load_config
from melanet.errors import ArtifactError, ConfigError, MelanetError
from melanet.runs import check_run, read_run
from melanet.train import gbdt
from test_gbdt import FAST, make_cohort

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m melanet ARGS`` in a real process (exit codes and signals are what a user sees)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "COLUMNS": "400"}
    return subprocess.run([sys.executable, "-m", "melanet", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The error a failed command printed: exit 2, one ``error:`` line, no traceback; contains ``fragments``."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    text = (result.stdout + result.stderr).strip()
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def gbdt_config(data_dir: Path, out: Path, *sets: str):
    return load_config(gbdt.GBDTConfig, "gbdt", [*FAST, *sets], extra={"data_dir": str(data_dir), "out_dir": str(out)})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faults_data")
    make_cohort(120, seed=3)[0].to_parquet(folder / "cohort.parquet", index=False)
    return folder


@pytest.fixture
def complete_run(data_dir, tmp_path) -> Path:
    out = tmp_path / "runs" / "gbdt"
    gbdt.run(gbdt_config(data_dir, out))
    return out


def readers_refuse(run_dir: Path, *fragments: str) -> None:
    """Every reader refuses ``run_dir`` with the same one-line ArtifactError."""
    calls = {"check_run": lambda: check_run(run_dir), "read_run": lambda: read_run(run_dir),
             "report": lambda: report.run(run_dir), "suspects": lambda: suspects.run(run_dir),
             "blend": lambda: blend.run(blend.BlendConfig(runs=[run_dir, run_dir], out_dir=run_dir.parent / "b")),
             "predict": lambda: gbdt.predict(run_dir, pd.DataFrame())}
    for name, call in calls.items():
        with pytest.raises(ArtifactError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message, (name, message)
        for fragment in fragments:
            assert fragment in message, (name, message)


# --------------------------------------------------------------------------- killed re-runs


def _new_run_id(run_dir: Path, old_id: str) -> str | None:
    try:
        run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return None
    return run_id if run_id != old_id else None


def _fold_done(k: int):
    def reached(run_dir: Path, old_id: str) -> bool:
        new = _new_run_id(run_dir, old_id)
        try:
            return new is not None and json.loads((run_dir / f"fold_{k}" / "DONE").read_text())["run_id"] == new
        except (OSError, ValueError, KeyError):
            return False
    return reached


KILL_POINTS = {
    "while clearing the old run": lambda run_dir, old_id: _new_run_id(run_dir, old_id) is not None,
    "after fold 0": _fold_done(0),
    "after fold 3": _fold_done(3),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_retrain_killed_into_a_complete_run_is_refused_then_resumes_to_the_uninterrupted_result(
        data_dir, tmp_path, point):
    big = tmp_path / "big"  # enough rows and rounds that a fold takes a noticeable time
    big.mkdir()
    make_cohort(1500, seed=4)[0].to_parquet(big / "cohort.parquet", index=False)
    run_dir = tmp_path / "run"
    gbdt.run(gbdt_config(big, run_dir))
    old_id = check_run(run_dir).run_id
    sets = [a for s in [*FAST, "num_boost_round=600", "early_stopping_rounds=null", "lightgbm.num_leaves=31",
                        "lightgbm.min_data_in_leaf=2"] for a in ("--set", s)]
    args = ["train-gbdt", "--data", big, "--out", run_dir, *sets]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "melanet", *map(str, args), "--overwrite"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while proc.poll() is None and not KILL_POINTS[point](run_dir, old_id) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"the run ended before the kill point {point!r}; make it slower"

    readers_refuse(run_dir, "incomplete gbdt run", "melanet train-gbdt", "--resume")
    result = cli("predict", run_dir, tmp_path, "--out", tmp_path / "p.csv")
    one_line_error(result, "incomplete gbdt run", "--resume")
    assert not (tmp_path / "p.csv").exists()
    result = cli("blend", run_dir, run_dir, "--out", tmp_path / "blend")
    one_line_error(result, "incomplete gbdt run")

    # the command the message names finishes the run, equal to one never interrupted
    assert cli(*args, "--resume").returncode == 0
    resumed, _, metrics = read_run(run_dir)
    assert metrics["run_id"] == check_run(run_dir).run_id != old_id
    gbdt.run(gbdt_config(big, tmp_path / "clean", "num_boost_round=600", "early_stopping_rounds=null",
                         "lightgbm.num_leaves=31", "lightgbm.min_data_in_leaf=2"))
    clean, _, _ = read_run(tmp_path / "clean")
    pd.testing.assert_frame_equal(resumed, clean)


def test_a_different_run_into_a_complete_folder_needs_overwrite_and_then_replaces_it_whole(
        data_dir, complete_run, tmp_path):
    before = tree_digest(complete_run)
    with pytest.raises(ArtifactError, match="holds a complete other run .*num_leaves: 7 -> 4.*--overwrite"):
        gbdt.run(gbdt_config(data_dir, complete_run, "lightgbm.num_leaves=4"))
    assert tree_digest(complete_run) == before
    gbdt.run(gbdt_config(data_dir, complete_run, "lightgbm.num_leaves=4", "overwrite=true"))
    oof, _, metrics = read_run(complete_run)
    record = check_run(complete_run)
    assert metrics["run_id"] == record.run_id
    assert all(json.loads((complete_run / f"fold_{k}" / "DONE").read_text())["run_id"] == record.run_id
               for k in range(5))
    # the same settings again are the same run: no --overwrite needed
    gbdt.run(gbdt_config(data_dir, complete_run, "lightgbm.num_leaves=4"))
    assert check_run(complete_run).run_id == record.run_id


def test_a_fold_or_table_from_another_run_is_refused_as_a_mix(data_dir, complete_run, tmp_path):
    other = tmp_path / "other"
    gbdt.run(gbdt_config(data_dir, other, "lightgbm.num_leaves=4"))
    (complete_run / "fold_2" / "DONE").write_bytes((other / "fold_2" / "DONE").read_bytes())
    readers_refuse(complete_run, "mixes two runs", "fold_2")
    (complete_run / "fold_2" / "DONE").unlink()
    (complete_run / "metrics.json").write_bytes((other / "metrics.json").read_bytes())
    with pytest.raises(ArtifactError, match="metrics.json .*since the run completed"):
        read_run(complete_run)


def test_bad_engine_parameter_fails_before_the_folder_is_touched(data_dir, complete_run, tmp_path):
    before = tree_digest(complete_run)
    for out in (complete_run, tmp_path / "new"):
        result = cli("train-gbdt", "--data", data_dir, "--out", out, "--set", "lightgbm.num_leaves=-3", "--overwrite")
        one_line_error(result, "lightgbm rejected a parameter", "num_leaves")
    assert tree_digest(complete_run) == before and not (tmp_path / "new").exists()
    with pytest.raises(ConfigError, match="xgboost rejected a parameter .*max_depth"):
        gbdt.run(gbdt_config(data_dir, tmp_path / "x", "engine=xgboost", "xgboost.max_depth=-3"))
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- damaged model files


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip a byte"])
def test_damaged_model_file_gives_one_line_not_a_crash(data_dir, complete_run, tmp_path, damage):
    model = complete_run / "fold_1" / "model.txt"
    if damage == "truncate":
        model.write_bytes(model.read_bytes()[:200])
    elif damage == "delete":
        model.unlink()
    else:
        data = bytearray(model.read_bytes())
        data[300] = ord("7") if data[300] != ord("7") else ord("8")
        model.write_bytes(bytes(data))
    # gbdt.predict is what `melanet predict` calls once the new files are decoded; no DICOMs are needed to reach it
    cohort = pd.read_parquet(data_dir / "cohort.parquet")
    with pytest.raises(ArtifactError) as err:
        gbdt.predict(complete_run, cohort)
    assert "fold_1/model.txt" in str(err.value) and "\n" not in str(err.value)
    assert "re-run `melanet train-gbdt" in str(err.value)
    result = cli("predict", complete_run, tmp_path, "--out", tmp_path / "p.csv")
    one_line_error(result, "fold_1/model.txt")  # the LightGBM loader is never reached: no SIGSEGV/SIGABRT


# --------------------------------------------------------------------------- outputs aimed at the wrong place


def test_blend_out_onto_an_existing_run_refuses_without_overwrite(data_dir, complete_run, tmp_path):
    other = tmp_path / "other"
    gbdt.run(gbdt_config(data_dir, other, "lightgbm.num_leaves=4"))
    victim = tmp_path / "victim"
    gbdt.run(gbdt_config(data_dir, victim, "lightgbm.num_leaves=5"))
    before = tree_digest(victim)
    result = cli("blend", complete_run, other, "--out", victim, "--set", "n_boot=0", "--set", "report=false")
    one_line_error(result, "holds a complete other run", "--overwrite")
    assert tree_digest(victim) == before
    result = cli("blend", complete_run, other, "--out", victim, "--set", "n_boot=0", "--set", "report=false",
                 "--overwrite")
    assert result.returncode == 0, result.stderr
    assert check_run(victim).kind == "blend" and not list(victim.glob("fold_*"))


def test_wrong_targets_and_typos_are_one_line(data_dir, complete_run, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    one_line_error(cli("merge", complete_run), "is a gbdt run", "fusion")
    one_line_error(cli("train-gbdt", "--data", data_dir, "--out", a_file), "is a file")
    one_line_error(cli("blend", complete_run, complete_run, "--out", a_file), "is a file")
    one_line_error(cli("ingest", tmp_path, "--out", a_file), "is a file")
    one_line_error(cli("predict", complete_run, tmp_path, "--out", a_file / "p.csv"), "is a file")
    one_line_error(cli("predict", complete_run, tmp_path, "--out", tmp_path), "is a folder")
    one_line_error(cli("predict", complete_run, tmp_path / "nowhere"), "not found")
    line = one_line_error(cli("train-gbdt", "--data", data_dir, "--out", tmp_path / "t", "--set",
                              "lightgbm.num_leavs=3"), "--set lightgbm.num_leavs=3", "did you mean 'num_leaves'")
    assert "gbdt.yaml" not in line  # the packaged file is not to blame
    one_line_error(cli("suspects", complete_run, "--out", tmp_path / "x.html"), "give the CSV")
    one_line_error(cli("report", tmp_path / "nowhere"), "not found")
    one_line_error(cli("report", data_dir), "not a melanet run folder")
    # predict with the training data's ingest settings gone: says which file and what to do (no KeyError/OSError)
    with pytest.raises(MelanetError, match="ingest_config.yaml not found"):
        from melanet import predict
        predict.run(complete_run, tmp_path, tmp_path / "p.csv")
