"""The Python API (``melanet.synth`` ... ``melanet.predict``): same outputs as the CLI, cheap import, results, config."""

from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import melanet
from melanet.errors import ConfigError

GBDT_FAST = {"num_boost_round": 60, "early_stopping_rounds": 10, "lightgbm.num_leaves": 7,
             "lightgbm.min_data_in_leaf": 5, "xgboost.max_depth": 3, "n_jobs": 1, "report": False}
FUSION_TINY = {"image_size": 32, "model.meta_hidden": [16, 8], "train.epochs": 1, "train.batch_size": 16,
               "train.workers": 0, "train.warmup_epochs": 0, "eval.tta": 2, "engine.accelerator": "cpu",
               "engine.devices": 1, "engine.threads": 1}


def as_set(options: dict) -> list[str]:
    """The same options as the CLI's ``--set key=value`` arguments."""
    out = []
    for key, value in options.items():
        out += ["--set", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]
    return out


def cli(*args) -> subprocess.CompletedProcess:
    """``python -m melanet ARGS`` in a fresh process (the environment, pseudonym key included, is inherited)."""
    result = subprocess.run([sys.executable, "-m", "melanet", *map(str, args)], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def folder_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_run(api_run: melanet.Run, cli_dir: Path, rtol: float = 0.0) -> None:
    """Same predictions, metrics and config. ``rtol`` > 0 for CNN runs: float32 sums over a different
    number of CPU threads (a pytest worker vs a fresh CLI process) differ in the last bits."""
    cli_run = melanet.Run(cli_dir)
    exact = rtol == 0.0
    pd.testing.assert_frame_equal(api_run.oof, cli_run.oof, check_exact=exact, rtol=rtol or 1e-5)
    pd.testing.assert_frame_equal(api_run.test, cli_run.test, check_exact=exact, rtol=rtol or 1e-5)
    if exact:
        assert api_run.metrics["overall"] == cli_run.metrics["overall"]
    else:
        assert api_run.metrics["overall"] == pytest.approx(cli_run.metrics["overall"], rel=1e-3, nan_ok=True)
    api_cfg, cli_cfg = api_run.config, cli_run.config
    api_cfg.pop("out_dir"), cli_cfg.pop("out_dir")
    assert api_cfg == cli_cfg


# --------------------------------------------------------------------------- package surface


def test_import_melanet_is_cheap_and_changes_no_process_setting():
    code = ("import os, sys; import melanet, melanet.api; "
            "print(sorted(m for m in ('torch', 'pandas', 'timm', 'lightgbm') if m in sys.modules)); "
            "mask = os.umask(0o022); os.umask(mask); "
            "import melanet.io, melanet.train.fusion, melanet.train.gbdt, melanet.blend, melanet.report; "
            "new = os.umask(0o022); os.umask(new); "  # none of them sets anything at import any more
            "print([k for k in ('HF_HUB_OFFLINE', 'OMP_WAIT_POLICY', 'NO_ALBUMENTATIONS_UPDATE') if k in os.environ], "
            "mask == new)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "OMP_WAIT_POLICY", "NO_ALBUMENTATIONS_UPDATE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.splitlines() == ["[]", "[] True"]


def test_stage_modules_are_also_the_api_functions():
    from melanet import ingest

    assert ingest is melanet.ingest and callable(ingest)
    assert ingest.IngestConfig.__name__ == "IngestConfig"  # still the module the stages import
    assert "labels" in inspect.signature(melanet.ingest).parameters
    for name in ("synth", "ingest", "train_fusion", "train_gbdt", "blend", "predict", "report", "Run", "Cohort"):
        assert name in melanet.__all__ and getattr(melanet, name) is not None
    with pytest.raises(AttributeError):
        melanet.train_cnn  # noqa: B018


def test_api_call_sets_the_process_settings_the_cli_sets(tmp_path):
    code = ("import os, melanet; melanet.synth(os.environ['OUT'], patients=2, image_size=32); "
            "print(os.environ.get('HF_HUB_OFFLINE'), os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "OMP_WAIT_POLICY")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**env, "OUT": str(tmp_path / "s")}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "PASSIVE"]
    assert "synth: " in result.stderr  # the same progress message as the shell's


def test_config_precedence_defaults_file_flags_overrides_set():
    from melanet.api import _config
    from melanet.train.gbdt import GBDTConfig

    cfg = _config(GBDTConfig, {"num_boost_round": 10, "seed": 3, "lightgbm": {"num_leaves": 5}}, ["seed=5"],
                  {"data_dir": Path("d"), "out_dir": "o", "engine": "xgboost", "tune": None},
                  {"num_boost_round": 20}, {"lightgbm.num_leaves": 9})
    assert (cfg.num_boost_round, cfg.seed, cfg.engine, cfg.lightgbm["num_leaves"], cfg.tune) == (20, 5, "xgboost", 9, 0)
    assert str(cfg.data_dir) == "d"


def test_unknown_key_fails_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'num_boost_round'"):
        melanet.train_gbdt(tmp_path / "data", out=tmp_path / "run", num_boost_rounds=5)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- API vs CLI on the same inputs


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[melanet.Synth, melanet.Cohort, Path]:
    root = tmp_path_factory.mktemp("api")
    src = melanet.synth(root / "synth", patients=24, image_size=32, seed=3, test_fraction=0.2)
    data = melanet.ingest(src, out=root / "data", image_size=32, workers=1, eda=False)
    return src, data, root


def test_synth_and_ingest_match_the_cli(cohort):
    src, data, root = cohort
    assert isinstance(src, melanet.Synth) and src.labels_path.is_file() and len(src.truth) > len(src.labels)
    table = data.table
    assert len(table) == len(src.truth) and data.errors.empty and set(table["fold"]) >= {-1, 0, 1, 2, 3, 4}

    cli("synth", root / "synth_cli", "--patients", 24, "--image-size", 32, "--seed", 3, "--set", "test_fraction=0.2")
    assert folder_digest(root / "synth_cli") == folder_digest(src.path)  # byte-identical cohort
    cli("ingest", root / "synth_cli" / "dicom", "--labels", root / "synth_cli" / "labels.csv", "--out",
        root / "data_cli", "--image-size", 32, "--workers", 1, "--set", "eda=false")
    cli_cohort = melanet.Cohort(root / "data_cli")
    pd.testing.assert_frame_equal(table, cli_cohort.table)
    pd.testing.assert_frame_equal(data.errors, cli_cohort.errors)
    assert cli_cohort.summary["rows"] == data.summary["rows"]


def test_train_gbdt_matches_the_cli(cohort):
    _, data, root = cohort
    run = melanet.train_gbdt(data, out=root / "gbdt", **GBDT_FAST)
    assert isinstance(run, melanet.Run) and run.kind == "gbdt"
    labelled = data.table.loc[data.table["fold"] >= 0, "image_id"]
    assert sorted(run.oof["image_id"]) == sorted(labelled)  # every labelled row predicted out of fold
    assert 0 <= run.score <= 1 and run.config["num_boost_round"] == 60
    cli("train-gbdt", "--data", data.path, "--out", root / "gbdt_cli", *as_set(GBDT_FAST))
    assert_same_run(run, root / "gbdt_cli")


@pytest.mark.slow
def test_fusion_blend_predict_match_the_cli(cohort):
    src, data, root = cohort
    fusion = melanet.train_fusion(data, out=root / "fusion", config="fusion-cpu-small", **FUSION_TINY)
    cli("train-fusion", "--data", data.path, "--out", root / "fusion_cli", "--config", "fusion-cpu-small",
        *as_set(FUSION_TINY))
    assert_same_run(fusion, root / "fusion_cli", rtol=1e-5)

    gbdt = root / "gbdt_for_blend"
    melanet.train_gbdt(data, gbdt, with_oof=fusion, **GBDT_FAST)
    blend = melanet.blend([fusion, gbdt], out=root / "blend", method="weights", report=False)
    cli("blend", fusion.path, gbdt, "--out", root / "blend_cli", "--method", "weights", "--set", "report=false")
    assert_same_run(blend, root / "blend_cli")
    assert blend.kind == "blend" and blend.report().name == "report.html" and blend.report().is_file()

    predictions = blend.predict(src.dicom_dir, out=root / "pred.csv", workers=1)
    cli("predict", blend.path, src.dicom_dir, "--out", root / "pred_cli.csv", "--workers", 1)
    pd.testing.assert_frame_equal(predictions.table, pd.read_csv(root / "pred_cli.csv"), check_exact=False, rtol=1e-5)
    assert predictions.errors.empty and len(predictions.table) == len(data.table)
    test_ids = set(blend.test["image_id"])  # images of the run's own test set get the run's test predictions
    mine = predictions.table.set_index("image_id").loc[sorted(test_ids), "pred"]
    assert mine.to_numpy() == pytest.approx(blend.test.set_index("image_id").loc[sorted(test_ids), "pred"].to_numpy())
