"""``melanet train-gbdt``: OOF coverage, determinism, engines, Dask backend, targets, OOF stacking, exclude, tuning,
config errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from melanet.cli import app
from melanet.cohort import REQUIRED_COLUMNS
from melanet.config import load_config
from melanet.errors import ArtifactError, ConfigError, InputDataError
from melanet.io import read_json
from melanet.runs import read_config, finish_run, evaluate, predictions_frame, resolve_target
from melanet.train import gbdt

SITES = ["TORSO", "LOWER EXTREMITY", "HEAD/NECK", "UPPER EXTREMITY"]
# Small, fast models: the data has a few hundred rows.
FAST = ["num_boost_round=300", "early_stopping_rounds=20", "lightgbm.num_leaves=7", "lightgbm.min_data_in_leaf=5",
        "xgboost.max_depth=3", "xgboost.eta=0.1", "n_jobs=1", "report=false"]


def make_cohort(n_patients: int = 150, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A cohort.parquet table (no images needed) whose metadata carries signal; also the true logit.

    Risk rises after 60, with torso in men, and with a lesion's age above the
    patient's other studies (a signal only patient context sees).
    """
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 7, n_patients)
    pat = np.repeat(np.arange(n_patients), counts)
    n = len(pat)
    male = rng.random(n_patients) < 0.5
    first_age = rng.uniform(20, 85, n_patients)
    later = rng.integers(0, 4, n).astype(float)  # years since the patient's first study
    age = first_age[pat] + later
    site = np.asarray(SITES)[rng.integers(0, len(SITES), n)]
    logit = -2.0 + 2.5 * (age > 60) + 1.5 * ((site == "TORSO") & male[pat]) + 0.8 * (later - 1.5)
    target = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    test_patient = rng.random(n_patients) < 0.15
    fold = (rng.permutation(n_patients) % 5)[pat]
    ids = [f"ISIC_{i:07d}" for i in rng.choice(9_000_000, n, replace=False)]
    cohort = pd.DataFrame({
        "image_id": ids,
        "sop_instance_uid": [f"1.2.3.{i}" for i in range(n)],
        "patient_id": [f"P{p:04d}" for p in pat],
        "sex": pd.Series(np.where(male[pat], "male", "female")).where(rng.random(n) > 0.05, None),
        "age": pd.Series(age).where(rng.random(n) > 0.05),
        "site": pd.Series(site).where(rng.random(n) > 0.1, None),
        "modality": "XC", "photometric": "RGB", "rows": 128, "cols": 128, "frames": 1, "bits_stored": 8,
        "transfer_syntax": "1.2.840.10008.1.2.4.50",
        "sha256": [f"{i:064x}" for i in range(n)],
        "image_path": [f"images/{i}.npy" for i in ids],
        "target": np.where(test_patient[pat], np.nan, target),
        "diagnosis": pd.Series(np.where(target == 1, "melanoma", np.where(age > 50, "keratosis", "nevus")))
        .where(~test_patient[pat], None),
        "fold": np.where(test_patient[pat], -1, fold),
    })
    assert set(REQUIRED_COLUMNS) <= set(cohort.columns)
    return cohort, logit


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, pd.DataFrame, np.ndarray]:
    data_dir = tmp_path_factory.mktemp("data")
    cohort, logit = make_cohort()
    cohort.to_parquet(data_dir / "cohort.parquet", index=False)
    return data_dir, cohort, logit


def config(data_dir: Path, out_dir: Path, *overrides: str, **extra) -> gbdt.GBDTConfig:
    return load_config(gbdt.GBDTConfig, "gbdt", [*FAST, *overrides],
                       extra={"data_dir": str(data_dir), "out_dir": str(out_dir), **extra})


@pytest.fixture(scope="module")
def lgb_run(data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "gbdt"
    return out, gbdt.run(config(data[0], out, "report=true"))


def labelled(cohort: pd.DataFrame) -> pd.DataFrame:
    return cohort[cohort["target"].notna()]


def test_oof_covers_every_labelled_row_once(data, lgb_run):
    _, cohort, _ = data
    out, metrics = lgb_run
    oof, test = pd.read_parquet(out / "oof.parquet"), pd.read_parquet(out / "test.parquet")
    assert sorted(oof["image_id"]) == sorted(labelled(cohort)["image_id"]) and not oof["image_id"].duplicated().any()
    folds = oof.set_index("image_id")["fold"]
    assert (folds[labelled(cohort)["image_id"]].to_numpy() == labelled(cohort)["fold"].to_numpy()).all()
    assert sorted(test["image_id"]) == sorted(cohort.loc[cohort["target"].isna(), "image_id"])
    assert oof["pred"].between(0, 1).all() and test["pred"].between(0, 1).all()
    assert metrics["overall"]["auc"] > 0.6 and set(metrics["per_fold"]) == {"0", "1", "2", "3", "4"}
    for k in range(5):
        assert (out / f"fold_{k}" / "DONE").is_file()
        assert "[num_threads: 1]" in (out / f"fold_{k}" / "model.txt").read_text()  # n_jobs honoured
        assert len(pd.read_csv(out / f"fold_{k}" / "history.csv")) > 0
    importance = pd.read_csv(out / "feature_importance.csv")
    assert {"age", "sex", "site", "n_images_patient", "age_pat_diff"} <= set(importance["feature"])
    assert importance["gain"].is_monotonic_decreasing and (out / "feature_importance.png").stat().st_size > 0
    assert read_config(out, gbdt.GBDTConfig).lightgbm["num_leaves"] == 7
    if importlib.util.find_spec("melanet.report"):  # written by another stage; skipped when absent
        assert (out / "report.html").is_file()


def test_rerun_with_same_seed_gives_identical_predictions(data, lgb_run, tmp_path):
    out, _ = lgb_run
    gbdt.run(config(data[0], tmp_path / "again"))
    for name in ("oof.parquet", "test.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / name), pd.read_parquet(tmp_path / "again" / name))


def test_predict_reproduces_test_parquet(data, lgb_run):
    _, cohort, _ = data
    out, _ = lgb_run
    new = cohort[cohort["target"].isna()].drop(columns=["target", "diagnosis"]).sample(frac=1.0, random_state=0)
    expected = pd.read_parquet(out / "test.parquet").set_index("image_id").loc[new["image_id"], "pred"]
    np.testing.assert_allclose(gbdt.predict(out, new), expected.to_numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("engine", ["lightgbm", "xgboost"])
def test_multiclass_target_scores_positive_class(data, tmp_path, engine):
    data_dir, cohort, _ = data
    metrics = gbdt.run(config(data_dir, tmp_path / "run", "target=diagnosis", "positive_class=melanoma",
                              f"engine={engine}"))
    oof = pd.read_parquet(tmp_path / "run" / "oof.parquet")
    classes = ["keratosis", "melanoma", "nevus"]
    np.testing.assert_allclose(oof[[f"pred_{c}" for c in classes]].sum(axis=1), 1.0, atol=1e-6)
    assert metrics["task"] == "multiclass" and metrics["overall"]["auc"] > 0.6 and "macro_auc" in metrics["overall"]
    new = cohort[cohort["target"].isna()]
    assert gbdt.predict(tmp_path / "run", new).shape == (len(new), 3)


def test_xgboost_engine_writes_json_models_and_predicts_like_test_parquet(data, tmp_path):
    data_dir, cohort, _ = data
    metrics = gbdt.run(config(data_dir, tmp_path / "xgb", "engine=xgboost"))
    assert metrics["overall"]["auc"] > 0.6
    assert all((tmp_path / "xgb" / f"fold_{k}" / "model.json").is_file() for k in range(5))
    new = cohort[cohort["target"].isna()]
    expected = pd.read_parquet(tmp_path / "xgb" / "test.parquet").set_index("image_id").loc[new["image_id"], "pred"]
    np.testing.assert_allclose(gbdt.predict(tmp_path / "xgb", new), expected.to_numpy(), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def dask_scheduler():
    """Address of a 2-worker Dask cluster in this process (threads: no worker start-up cost)."""
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        yield cluster.scheduler_address


# LightGBM's Dask interface cannot stop early; XGBoost's stops early on the inner split as locally.
DASK_CASES = {"lightgbm": ["early_stopping_rounds=null", "num_boost_round=60"], "xgboost": []}


@pytest.mark.parametrize("engine", DASK_CASES)
def test_dask_backend_trains_the_same_folds_into_ordinary_model_files(data, tmp_path, dask_scheduler, engine):
    data_dir, cohort, _ = data
    sets = [*FAST, f"engine={engine}", *DASK_CASES[engine]]
    local = gbdt.run(config(data_dir, tmp_path / "local", *sets))
    out = tmp_path / "dask"
    result = CliRunner().invoke(app, ["train-gbdt", "--data", str(data_dir), "--out", str(out), "--backend", "dask",
                                      "--scheduler", dask_scheduler, *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    metrics = read_json(out / "metrics.json")
    oof, test = pd.read_parquet(out / "oof.parquet"), pd.read_parquet(out / "test.parquet")
    lab = labelled(cohort)
    assert sorted(oof["image_id"]) == sorted(lab["image_id"]) and not oof["image_id"].duplicated().any()
    assert (oof.set_index("image_id").loc[lab["image_id"], "fold"].to_numpy() == lab["fold"].to_numpy()).all()
    assert sorted(test["image_id"]) == sorted(cohort.loc[cohort["target"].isna(), "image_id"])
    # Distributed histograms and bin boundaries differ from one process's, so the trees differ a little.
    assert metrics["overall"]["auc"] > 0.6 and abs(metrics["overall"]["auc"] - local["overall"]["auc"]) < 0.1
    for k in range(5):
        done = read_json(out / f"fold_{k}" / "DONE")
        assert done["backend"] == "dask" and done["rounds"] >= 1
        if engine == "xgboost":  # early-stopped on the inner split, and the curve kept
            assert done["n_early_stopping"] > 0 and len(pd.read_csv(out / f"fold_{k}" / "history.csv")) > 0
    # The saved files are ordinary boosters: predict() (no Dask involved) reproduces test.parquet.
    new = cohort[cohort["target"].isna()]
    expected = test.set_index("image_id").loc[new["image_id"], "pred"]
    np.testing.assert_allclose(gbdt.predict(out, new), expected.to_numpy(), rtol=0, atol=1e-6)


def test_context_features_can_be_switched_off(data, tmp_path):
    gbdt.run(config(data[0], tmp_path / "plain", "features.context=false"))
    columns = read_json(tmp_path / "plain" / "features.json")["columns"]
    assert "age" in columns and not any("_pat_" in c or c == "n_images_patient" for c in columns)


def write_image_run(run_dir: Path, cohort: pd.DataFrame, score: np.ndarray) -> Path:
    """A finished image-model run (oof/test/metrics) as train-fusion would write it."""
    spec = resolve_target(labelled(cohort)["target"], "target")
    mask = cohort["target"].notna().to_numpy()
    oof = predictions_frame(cohort[mask], score[mask], spec)
    run_dir.mkdir(parents=True)
    oof.to_parquet(run_dir / "oof.parquet", index=False)
    predictions_frame(cohort[~mask], score[~mask], spec).to_parquet(run_dir / "test.parquet", index=False)
    (run_dir / "metrics.json").write_text(pd.Series(evaluate(oof, spec)).to_json())
    finish_run(run_dir, "fusion")
    return run_dir


def test_with_oof_adds_image_scores_and_their_patient_context(data, tmp_path):
    data_dir, cohort, logit = data
    rng = np.random.default_rng(1)
    image_run = write_image_run(tmp_path / "fusion", cohort, 1 / (1 + np.exp(-(logit + rng.normal(0, 0.5, len(logit))))))
    out = tmp_path / "stacked"
    metrics = gbdt.run(config(data_dir, out, with_oof=[str(image_run)]))
    name = gbdt.oof_feature_name(image_run, 0)
    assert name == "oof0_fusion"
    assert read_json(out / "features.json")["oof_columns"] == [name]
    assert {name, f"{name}_pat_diff", f"{name}_pat_rank"} <= set(pd.read_csv(out / "feature_importance.csv")["feature"])
    assert metrics["overall"]["auc"] > 0.75
    assert yaml.safe_load((out / "config.yaml").read_text())["with_oof"] == [str(image_run)]
    # predict with the image scores passed as `extra` reproduces test.parquet
    new = cohort[cohort["target"].isna()]
    extra = pd.DataFrame({name: pd.read_parquet(image_run / "test.parquet").set_index("image_id")
                          .loc[new["image_id"], "pred"].to_numpy()})
    expected = pd.read_parquet(out / "test.parquet").set_index("image_id").loc[new["image_id"], "pred"]
    np.testing.assert_allclose(gbdt.predict(out, new, extra=extra), expected.to_numpy(), atol=1e-12)
    with pytest.raises(ArtifactError, match=name):
        gbdt.predict(out, new)


def test_with_oof_refuses_a_run_from_other_ids_or_folds(data, tmp_path):
    data_dir, cohort, logit = data
    short = write_image_run(tmp_path / "short", cohort.iloc[1:], logit[1:])
    missing = cohort["image_id"].iloc[0]
    with pytest.raises(ArtifactError, match=f"short.*{missing}"):
        gbdt.run(config(data_dir, tmp_path / "out", with_oof=[str(short)]))
    shifted = cohort.assign(fold=np.where(cohort["fold"] >= 0, (cohort["fold"] + 1) % 5, -1))
    other = write_image_run(tmp_path / "other_folds", shifted, logit)
    with pytest.raises(ArtifactError, match="other_folds.*fold"):
        gbdt.run(config(data_dir, tmp_path / "out", with_oof=[str(other)]))


def test_excluded_rows_are_not_trained_on_but_still_predicted(data, tmp_path):
    data_dir, cohort, _ = data
    excluded = labelled(cohort)["image_id"].iloc[:20]
    pd.DataFrame({"image_id": excluded}).to_csv(tmp_path / "exclude.csv", index=False)
    gbdt.run(config(data_dir, tmp_path / "run", exclude=str(tmp_path / "exclude.csv")))
    oof = pd.read_parquet(tmp_path / "run" / "oof.parquet")
    assert set(excluded) <= set(oof["image_id"])
    done = [read_json(tmp_path / "run" / f"fold_{k}" / "DONE") for k in range(5)]
    assert sum(d["n_excluded"] for d in done) == 20 * 4  # each excluded row sits in 4 folds' training part
    n_lab = len(labelled(cohort))
    for k, d in enumerate(done):
        in_fold = (labelled(cohort)["fold"] == k).sum()
        assert d["n_train"] == n_lab - in_fold - d["n_excluded"]  # refit on every training row
    pd.DataFrame({"image_id": ["ISIC_nope"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputDataError, match="ISIC_nope"):
        gbdt.run(config(data_dir, tmp_path / "bad", exclude=str(tmp_path / "bad.csv")))


def test_refit_boosts_on_every_training_row_for_the_rounds_early_stopping_chose(data, tmp_path):
    data_dir, cohort, _ = data
    # one inner split in both runs (small-data settings would average several: tested below)
    gbdt.run(config(data_dir, tmp_path / "stopped", "refit=false", "inner_splits=1", "small_data.max_rows=0"))
    gbdt.run(config(data_dir, tmp_path / "refit", "inner_splits=1", "small_data.max_rows=0"))
    n_lab = len(labelled(cohort))
    for k in range(5):
        stopped, refit = (read_json(tmp_path / run / f"fold_{k}" / "DONE") for run in ("stopped", "refit"))
        n_training = n_lab - int((labelled(cohort)["fold"] == k).sum())
        assert stopped["n_train"] + stopped["n_early_stopping"] == n_training
        assert refit["n_train"] == n_training and refit["n_early_stopping"] == stopped["n_early_stopping"]
        assert refit["rounds"] == max(1, round(stopped["rounds"] / 0.8))  # inner_valid_fraction 0.2
    oof = {run: pd.read_parquet(tmp_path / run / "oof.parquet") for run in ("stopped", "refit")}
    assert (oof["stopped"]["image_id"] == oof["refit"]["image_id"]).all()
    assert not np.allclose(oof["stopped"]["pred"], oof["refit"]["pred"])


def test_tune_writes_best_params_into_the_run(data, tmp_path):
    gbdt.run(config(data[0], tmp_path / "tuned", "num_boost_round=60", tune=2))
    best = read_json(tmp_path / "tuned" / "tune.json")["best_params"]
    assert set(best) >= {"learning_rate", "num_leaves"}
    used = read_config(tmp_path / "tuned", gbdt.GBDTConfig).lightgbm
    assert all(used[k] == v for k, v in best.items())
    assert len(pd.read_csv(tmp_path / "tuned" / "tune_trials.csv")) == 2


@pytest.mark.parametrize("override, message", [
    ("lightgbm.num_leavs=3", "did you mean 'num_leaves'"),
    ("engine=lightgbn", "did you mean 'lightgbm'"),
    ("lightgbm.objective=multiclass", "top-level key 'target'"),
    ("featurs.context=false", "did you mean 'features'"),
    ("xgboost.colsample_bytre=0.5", "did you mean 'colsample_bytree'"),
    ("early_stopping_round=10", "did you mean 'early_stopping_rounds'"),
    ("backend=dusk", "unknown GBDT backend 'dusk' \\(did you mean 'dask'\\?\\)"),
    ("backend=dask", "cannot stop early.*early_stopping_rounds: null"),
])
def test_bad_config_keys_give_clear_errors(tmp_path, override, message):
    engine = ["engine=xgboost"] if override.startswith("xgboost") else []
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, tmp_path / "out", *engine, override)


@pytest.mark.parametrize("override, message", [
    ("features.numeric=[agee]", "'agee' is not in the cohort.*did you mean 'age'"),
    ("features.categorical=[target]", "is the label"),
    ("target=diagnoses", "no column 'diagnoses'"),
    ("positive_class=melanomma", "did you mean 'melanoma'"),
])
def test_bad_feature_and_target_columns_give_clear_errors(data, tmp_path, override, message):
    extra = ["target=diagnosis"] if override.startswith("positive") else []
    with pytest.raises((ConfigError, ArtifactError), match=message):
        gbdt.run(config(data[0], tmp_path / "out", *extra, override))


def test_cli_trains_and_reports_bad_engine(data, tmp_path):
    runner = CliRunner()
    args = ["train-gbdt", "--data", str(data[0]), "--out", str(tmp_path / "cli")]
    sets = [a for s in FAST for a in ("--set", s)]
    result = runner.invoke(app, [*args, "--engine", "xgboost", *sets])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())["engine"] == "xgboost"
    result = runner.invoke(app, [*args, "--engine", "catboost"])
    assert isinstance(result.exception, ConfigError) and "choose one of: lightgbm, xgboost" in str(result.exception)


def test_inner_split_holds_out_whole_patients_of_both_classes():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(200), 3)
    y = (rng.random(600) < 0.2).astype(int)
    fit, stop = gbdt.inner_split(y, groups, 0.2, seed=3)
    assert len(fit) + len(stop) == 600 and not set(groups[fit]) & set(groups[stop])
    assert 0.15 < len(set(groups[stop])) / 200 < 0.25 and y[stop].sum() > 0
    again = gbdt.inner_split(y, groups, 0.2, seed=3)
    assert np.array_equal(stop, again[1])


def test_packaged_config_equals_the_defaults(tmp_path):
    packaged = load_config(gbdt.GBDTConfig, "gbdt", extra={"data_dir": str(tmp_path), "out_dir": str(tmp_path)})
    assert packaged == gbdt.GBDTConfig(data_dir=tmp_path, out_dir=tmp_path)


def test_with_oof_scores_enter_on_one_scale_fold_model_by_fold_model(data, tmp_path):
    """Fold models with shifted score scales: rank features per fold model, test rows from each fold's own scores."""
    data_dir, cohort, logit = data
    rng = np.random.default_rng(2)
    fold = cohort["fold"].to_numpy()
    shift = {k: 1.5 * k - 3.0 for k in range(5)}  # fold model k scores everything shift[k] logits higher
    noisy = logit + rng.normal(0, 0.5, len(logit))
    own = 1 / (1 + np.exp(-(noisy + np.array([shift.get(int(f), 0.0) for f in fold]))))
    image_run = write_image_run(tmp_path / "cnn", cohort, own)
    mask = cohort["target"].isna().to_numpy()
    spec = resolve_target(labelled(cohort)["target"], "target")
    per_fold = {k: 1 / (1 + np.exp(-(noisy[mask] + shift[k]))) for k in range(5)}
    for k, p in per_fold.items():
        (image_run / f"fold_{k}").mkdir()
        predictions_frame(cohort[mask], p, spec).to_parquet(image_run / f"fold_{k}" / "test.parquet", index=False)
    out = tmp_path / "stacked"
    gbdt.run(config(data_dir, out, with_oof=[str(image_run)]))
    name = gbdt.oof_feature_name(image_run, 0)
    scaling = read_json(out / "features.json")["oof_scaling"][name]
    assert scaling["scale"] == "rank" and scaling["test_scores"] == "per_fold" and len(scaling["maps"]) == 5
    new = cohort[mask]
    expected = pd.read_parquet(out / "test.parquet").set_index("image_id").loc[new["image_id"], "pred"].to_numpy()
    got = gbdt.predict(out, new, extra_folds={name: per_fold})
    np.testing.assert_allclose(got, expected, atol=1e-12)
    with pytest.raises(ArtifactError, match="extra_folds"):
        gbdt.predict(out, new, extra=pd.DataFrame({name: np.mean(list(per_fold.values()), axis=0)}))
    raw = gbdt.run(config(data_dir, tmp_path / "raw", "with_oof_scale=raw", with_oof=[str(image_run)]))
    ranked = read_json(out / "metrics.json")
    assert ranked["overall"]["auc"] > raw["overall"]["auc"]


def test_small_data_settings_are_printed_and_written_resolved(data, tmp_path, capsys):
    data_dir, cohort, _ = data
    out = tmp_path / "small"
    gbdt.run(config(data_dir, out, "lightgbm.num_leaves=31", "lightgbm.lambda_l2=3.0"))
    printed = " ".join(capsys.readouterr().err.split())  # the console writes to stderr, wrapped at 80 columns
    assert "small-data settings" in printed and "num_leaves: 31 -> 7" in printed
    used = read_config(out, gbdt.GBDTConfig)
    assert used.small_data.applied is True and used.inner_splits == 5
    assert used.lightgbm["num_leaves"] == 7 and used.lightgbm["max_depth"] == 3
    assert used.lightgbm["lambda_l2"] == 3.0  # set by the user: kept
    assert used.lightgbm["min_data_in_leaf"] == 5  # FAST sets it: kept
    # on a tiny cohort a leaf may hold at most 1/20 of the rows, so trees still split
    from melanet.train.small_data import fit_to_rows
    assert fit_to_rows({"min_data_in_leaf": 40}, 300)["min_data_in_leaf"] == 15
    done = read_json(out / "fold_0" / "DONE")  # round count: the mean over 5 inner splits, scaled for the refit
    assert len(done["inner_best_rounds"]) == 5
    assert done["rounds"] == gbdt.refit_rounds(round(np.mean(done["inner_best_rounds"])), 0.2)
    off = config(data_dir, tmp_path / "off", "small_data.max_rows=0")
    gbdt.run(off)
    assert read_config(tmp_path / "off", gbdt.GBDTConfig).small_data.applied is False
    assert "small-data settings" not in capsys.readouterr().err


def test_feature_table_adds_lesion_descriptors_with_patient_context_and_duckling(data):
    _, cohort, _ = data
    rng = np.random.default_rng(0)
    with_lesions = cohort.assign(lesion_mask_ok=True, lesion_area_frac=rng.uniform(0.05, 0.3, len(cohort)),
                                 lesion_delta_e=rng.uniform(10, 40, len(cohort)))
    X = gbdt.feature_table(with_lesions, gbdt.FeatureConfig())
    assert {"lesion_area_frac", "lesion_delta_e_pat_z", "lesion_area_frac_pat_rank", "duckling_distance"} <= set(X)
    assert "lesion_mask_ok" not in X  # the NaN descriptors already say it
    off = gbdt.feature_table(with_lesions, gbdt.FeatureConfig(descriptors=False))
    assert not any(c.startswith(("lesion_", "duckling_")) for c in off.columns)
    # A cohort ingested without descriptors trains on the rest (one warning line), as before.
    pd.testing.assert_frame_equal(gbdt.feature_table(cohort, gbdt.FeatureConfig()), off)


def test_thread_count_is_one_on_small_tables_and_every_core_on_large_ones():
    from melanet.runtime import available_cores
    from melanet.train.gbdt import resolve_n_jobs

    assert resolve_n_jobs(0, 920) == 1  # the demo: waking threads costs more than a round on 920 rows
    assert resolve_n_jobs(0, 200_000) == available_cores()
    assert resolve_n_jobs(0) == available_cores()  # rows unknown (prediction, Dask)
    assert resolve_n_jobs(3, 920) == 3  # an explicit count is kept
