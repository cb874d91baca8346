"""Run-side faults: killed re-runs, bad engine parameters, damaged model files, outputs aimed at the wrong place.

Each case is what a user would do; each asserts the exit code, that the error is one line naming what to do,
and that earlier outputs are intact or clearly refused. Ingest-side faults live in test_faults_ingest.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from melanet import blend, report, suspects
from melanet.config import load_config
from melanet.cli import app
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


def user_error(*args: str) -> str:
    """The one-line MelanetError ``melanet ARGS`` fails with, in this process (the CLI prints it as ``error: ...``)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert isinstance(result.exception, MelanetError), (result.exception, result.output)
    assert "\n" not in str(result.exception), str(result.exception)
    return str(result.exception)


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


SLOW_SETS = ["num_boost_round=600", "early_stopping_rounds=null", "lightgbm.num_leaves=31", "lightgbm.min_data_in_leaf=2"]


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Path, Path, pd.DataFrame]:
    """A cohort with enough rows that a fold takes a noticeable time; a complete run on it; the OOF that the
    retrain (SLOW_SETS) gives when nothing interrupts it."""
    root = tmp_path_factory.mktemp("big")
    data = root / "data"
    data.mkdir()
    make_cohort(1500, seed=4)[0].to_parquet(data / "cohort.parquet", index=False)
    gbdt.run(gbdt_config(data, root / "old"))
    gbdt.run(gbdt_config(data, root / "clean", *SLOW_SETS))
    return data, root / "old", read_run(root / "clean")[0]


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_retrain_killed_into_a_complete_run_is_refused_then_resumes_to_the_uninterrupted_result(big, tmp_path, point):
    data, old, clean = big
    run_dir = tmp_path / "run"
    shutil.copytree(old, run_dir)
    old_id = check_run(run_dir).run_id
    sets = [a for s in [*FAST, *SLOW_SETS] for a in ("--set", s)]
    args = ["train-gbdt", "--data", data, "--out", run_dir, *sets]
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
    assert "incomplete gbdt run" in user_error("blend", run_dir, old, "--out", tmp_path / "blend")

    # the command the message names finishes the run, equal to one never interrupted
    assert cli(*args, "--resume").returncode == 0
    resumed, _, metrics = read_run(run_dir)
    assert metrics["run_id"] == check_run(run_dir).run_id != old_id
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
    result = cli("train-gbdt", "--data", data_dir, "--out", complete_run, "--set", "lightgbm.num_leaves=-3",
                 "--overwrite")
    one_line_error(result, "lightgbm rejected a parameter", "num_leaves")
    assert "rejected a parameter" in user_error("train-gbdt", "--data", data_dir, "--out", tmp_path / "new",
                                                "--set", "lightgbm.num_leaves=-3")
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
    if damage == "truncate":  # a real process: the LightGBM loader is never reached, so no SIGSEGV/SIGABRT
        one_line_error(cli("predict", complete_run, tmp_path, "--out", tmp_path / "p.csv"), "fold_1/model.txt")
    else:
        assert "fold_1/model.txt" in user_error("predict", complete_run, tmp_path, "--out", tmp_path / "p.csv")


# --------------------------------------------------------------------------- outputs aimed at the wrong place


def test_blend_out_onto_an_existing_run_refuses_without_overwrite(data_dir, complete_run, tmp_path):
    other = tmp_path / "other"
    gbdt.run(gbdt_config(data_dir, other, "lightgbm.num_leaves=4"))
    victim = tmp_path / "victim"
    gbdt.run(gbdt_config(data_dir, victim, "lightgbm.num_leaves=5"))
    before = tree_digest(victim)
    args = ["blend", complete_run, other, "--out", victim, "--set", "n_boot=0", "--set", "report=false"]
    message = user_error(*args)
    assert "holds a complete other run" in message and "--overwrite" in message
    assert tree_digest(victim) == before
    result = CliRunner().invoke(app, [*map(str, args), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert check_run(victim).kind == "blend" and not list(victim.glob("fold_*"))


def test_wrong_targets_and_typos_are_one_line(data_dir, complete_run, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    cases = [
        (["merge", complete_run], ["is a gbdt run", "fusion"]),
        (["train-gbdt", "--data", data_dir, "--out", a_file], ["is a file"]),
        (["blend", complete_run, complete_run, "--out", a_file], ["is a file"]),
        (["ingest", tmp_path, "--out", a_file], ["is a file"]),
        (["predict", complete_run, tmp_path, "--out", a_file / "p.csv"], ["is a file"]),
        (["predict", complete_run, tmp_path, "--out", tmp_path], ["is a folder"]),  # refused before any decoding
        (["predict", complete_run, tmp_path / "nowhere"], ["not found"]),
        (["train-gbdt", "--data", data_dir, "--out", tmp_path / "t", "--set", "lightgbm.num_leavs=3"],
         ["--set lightgbm.num_leavs=3", "did you mean 'num_leaves'"]),
        (["suspects", complete_run, "--out", tmp_path / "x.html"], ["give the CSV"]),
        (["report", tmp_path / "nowhere"], ["not found"]),
        (["report", data_dir], ["not a melanet run folder"]),
        # the training data's ingest settings gone: which file and what to do (was an OSError traceback)
        (["predict", complete_run, tmp_path, "--out", tmp_path / "p.csv"], ["ingest_config.yaml not found"]),
    ]
    for args, fragments in cases:
        message = user_error(*args)
        for fragment in fragments:
            assert fragment in message, (args, message)
    assert "gbdt.yaml" not in user_error(*cases[7][0])  # a --set typo is not blamed on the packaged file
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "t").exists()
