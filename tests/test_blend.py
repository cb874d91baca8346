"""melanet blend: input checks, rank/weights/stack, cross-validated scores, recipe reproduction."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from melanet import blend
from melanet.errors import ArtifactError, ConfigError
from melanet.io import write_json, write_parquet, write_text
from melanet.runs import TargetSpec, blend_inputs, evaluate, finish_run, predictions_frame

N, N_TEST, FOLDS = 300, 40, 5


def make_run(path: Path, pred: np.ndarray, test_pred: np.ndarray, *, target=None, folds=None, ids=None,
             spec: TargetSpec | None = None) -> Path:
    """A finished run directory written with melanet.runs' own helpers."""
    rng = np.random.default_rng(0)
    spec = spec or TargetSpec()
    ids = ids if ids is not None else [f"ISIC_{i:05d}" for i in range(N)]
    rows = pd.DataFrame({
        "image_id": ids, "patient_id": [f"P{i // 3:04d}" for i in range(N)],
        "fold": folds if folds is not None else (np.arange(N) // 3) % FOLDS,
        "target": target if target is not None else (rng.random(N) < 0.3).astype(int),
    })
    test_rows = pd.DataFrame({"image_id": [f"T_{i:04d}" for i in range(N_TEST)], "patient_id": "PT",
                              "fold": -1, "target": np.nan})
    oof = predictions_frame(rows, pred, spec)
    write_parquet(path / "oof.parquet", oof)
    write_parquet(path / "test.parquet", predictions_frame(test_rows, test_pred, spec))
    write_json(path / "metrics.json", evaluate(oof, spec))
    write_text(path / "config.yaml", "data_dir: nowhere\n")
    finish_run(path, "fusion")
    return path


@pytest.fixture
def y() -> np.ndarray:
    return (np.random.default_rng(0).random(N) < 0.3).astype(int)


@pytest.fixture
def two_runs(tmp_path, y) -> list[Path]:
    """Two informative, differently calibrated runs on the same rows."""
    rng = np.random.default_rng(1)
    a = 1 / (1 + np.exp(-(1.5 * y - 1 + rng.normal(0, 1, N))))
    b = 1 / (1 + np.exp(-(1.0 * y - 0.5 + rng.normal(0, 1.2, N)))) ** 2
    ta, tb = rng.random(N_TEST), rng.random(N_TEST)
    return [make_run(tmp_path / "fusion", a, ta, target=y), make_run(tmp_path / "gbdt", b, tb, target=y)]


def cfg(runs, out, method="rank", **kw) -> blend.BlendConfig:
    return blend.BlendConfig(runs=[str(r) for r in runs], out_dir=out, method=method, n_boot=20,
                             report=False, **kw)


def test_refuses_mismatched_ids_naming_run_and_id(tmp_path, two_runs, y):
    ids = [f"ISIC_{i:05d}" for i in range(N)]
    ids[17] = "ISIC_99999"
    other = make_run(tmp_path / "other", np.random.default_rng(2).random(N), np.zeros(N_TEST), target=y, ids=ids)
    with pytest.raises(ArtifactError, match=r"'fusion' and 'other'.*ISIC_00017.*in 'fusion' but not in 'other'"):
        blend.run(cfg([two_runs[0], other], tmp_path / "out"))


def test_refuses_mismatched_folds(tmp_path, two_runs, y):
    folds = (np.arange(N) // 3) % FOLDS
    folds[[5, 40]] = (folds[[5, 40]] + 1) % FOLDS
    other = make_run(tmp_path / "other", np.random.default_rng(2).random(N), np.zeros(N_TEST), target=y, folds=folds)
    with pytest.raises(ArtifactError, match=r"'fusion' and 'other' disagree on the fold of image_id 'ISIC_00005'"):
        blend.run(cfg([two_runs[0], other], tmp_path / "out"))


def test_refuses_mismatched_targets(tmp_path, two_runs, y):
    flipped = y.copy()
    flipped[123] = 1 - flipped[123]
    other = make_run(tmp_path / "other", np.random.default_rng(2).random(N), np.zeros(N_TEST), target=flipped)
    with pytest.raises(ArtifactError, match=r"disagree on the target of image_id 'ISIC_00123'"):
        blend.run(cfg([two_runs[0], other], tmp_path / "out"))
    assert not (tmp_path / "out" / "oof.parquet").exists()


def test_multiclass_input_blends_on_positive_class_and_refuses_without(tmp_path, two_runs, y):
    classes = ["melanoma", "nevus", "other"]
    diagnosis = np.where(y == 1, "melanoma", np.where(np.arange(N) % 2, "nevus", "other"))
    prob = np.random.default_rng(3).dirichlet([1, 1, 1], N)
    test_prob = np.random.default_rng(4).dirichlet([1, 1, 1], N_TEST)
    scored = make_run(tmp_path / "mc", prob, test_prob, target=diagnosis,
                      spec=TargetSpec(classes=classes, positive_class="melanoma"))
    result = blend.run(cfg([two_runs[0], scored], tmp_path / "out"))
    assert blend.read_recipe(tmp_path / "out")["inputs"][1]["score_column"] == "pred_melanoma"
    assert np.isfinite(result["metrics"]["auc"])

    unscored = make_run(tmp_path / "mc2", prob, test_prob, target=diagnosis, spec=TargetSpec(classes=classes))
    with pytest.raises(ConfigError, match=r"'mc2'.*without a positive_class"):
        blend.run(cfg([two_runs[0], unscored], tmp_path / "out2"))


def test_unknown_method_suggests_the_closest(tmp_path, two_runs):
    with pytest.raises(ConfigError, match=r"unknown blend method 'rnak' \(did you mean 'rank'\?\)"):
        blend.run(cfg(two_runs, tmp_path / "out", method="rnak"))


def test_unfitted_blender_raises():
    with pytest.raises(NotFittedError):
        blend.WeightsBlender().predict(np.zeros((3, 2)))


def test_rank_of_two_identical_runs_equals_the_run(tmp_path, two_runs):
    copy = tmp_path / "copy" / "fusion"
    shutil.copytree(two_runs[0], copy)
    result = blend.run(cfg([two_runs[0], copy], tmp_path / "out"))
    src = pd.read_parquet(two_runs[0] / "oof.parquet")
    out = pd.read_parquet(tmp_path / "out" / "oof.parquet")
    assert out["image_id"].tolist() == src["image_id"].tolist()
    assert result["metrics"]["auc"] == roc_auc_score(src["target"], src["pred"])
    assert np.array_equal(np.argsort(out["pred"], kind="stable"), np.argsort(src["pred"], kind="stable"))
    test_src = pd.read_parquet(two_runs[0] / "test.parquet")
    test_out = pd.read_parquet(tmp_path / "out" / "test.parquet")
    assert np.array_equal(np.argsort(test_out["pred"], kind="stable"), np.argsort(test_src["pred"], kind="stable"))
    assert result["weights"] == {"fusion": 0.5, "fusion_2": 0.5}
    # ranks are not probabilities: no log loss for the blend
    table = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert table["model"].tolist() == ["fusion", "fusion_2", "blend"]
    assert table.loc[2, ["log_loss", "brier"]].isna().all() and table.loc[0, "log_loss"] > 0


def test_weights_score_is_cross_validated(tmp_path, two_runs, y):
    result = blend.run(cfg(two_runs, tmp_path / "out", method="weights"))
    a = pd.read_parquet(two_runs[0] / "oof.parquet")
    b = pd.read_parquet(two_runs[1] / "oof.parquet")
    folds = a["fold"].to_numpy()

    def best_weight(rows: np.ndarray) -> float:  # independent fit: 1-D search on w*a + (1-w)*b
        def loss(w):
            p = np.clip(w * a["pred"].to_numpy()[rows] + (1 - w) * b["pred"].to_numpy()[rows], 1e-7, 1 - 1e-7)
            return -np.mean(y[rows] * np.log(p) + (1 - y[rows]) * np.log(1 - p))
        return minimize_scalar(loss, bounds=(0, 1), method="bounded", options={"xatol": 1e-9}).x

    cv_pred = np.empty(N)
    for k in range(FOLDS):
        w = best_weight(folds != k)
        cv_pred[folds == k] = w * a["pred"].to_numpy()[folds == k] + (1 - w) * b["pred"].to_numpy()[folds == k]
    out = pd.read_parquet(tmp_path / "out" / "oof.parquet")
    np.testing.assert_allclose(out["pred"], cv_pred, atol=1e-4)
    assert result["metrics"]["auc"] == pytest.approx(roc_auc_score(y, cv_pred), abs=1e-3)
    assert result["metrics"]["auc"] != result["in_sample"]["auc"]
    assert result["metrics"]["log_loss"] > result["in_sample"]["log_loss"]  # in-sample is optimistic
    w_all = best_weight(np.ones(N, bool))
    assert result["weights"]["fusion"] == pytest.approx(w_all, abs=1e-4)
    assert sum(result["weights"].values()) == pytest.approx(1.0)


def test_stack_matches_per_fold_logistic_regression(tmp_path, two_runs, y):
    result = blend.run(cfg(two_runs, tmp_path / "out", method="stack"))
    X = np.column_stack([pd.read_parquet(r / "oof.parquet")["pred"] for r in two_runs])
    logits = np.log(np.clip(X, 1e-7, 1 - 1e-7) / (1 - np.clip(X, 1e-7, 1 - 1e-7)))
    folds = pd.read_parquet(two_runs[0] / "oof.parquet")["fold"].to_numpy()
    expected = np.empty(N)
    for k in range(FOLDS):
        lr = LogisticRegression(max_iter=1000).fit(logits[folds != k], y[folds != k])
        expected[folds == k] = lr.predict_proba(logits[folds == k])[:, 1]
    out = pd.read_parquet(tmp_path / "out" / "oof.parquet")
    np.testing.assert_allclose(out["pred"], expected, atol=1e-6)
    assert set(result["weights"]) == {"fusion", "gbdt"}
    assert result["weights"]["fusion"] > 0  # the informative input gets a positive coefficient
    assert set(result["beats"]) == {"fusion", "gbdt"}


@pytest.mark.parametrize("method", ["rank", "weights", "stack"])
def test_apply_blend_reproduces_test_parquet(tmp_path, two_runs, method):
    out = tmp_path / "out"
    blend.run(cfg(two_runs, out, method=method))
    expected = pd.read_parquet(out / "test.parquet")
    tests = [pd.read_parquet(r / "test.parquet").set_index("image_id").loc[expected["image_id"], "pred"].to_numpy()
             for r in two_runs]
    by_name = blend.apply_blend(out, pd.DataFrame({"fusion": tests[0], "gbdt": tests[1]}))
    by_index = blend.apply_blend(out, pd.DataFrame({0: tests[0], 1: tests[1]}))
    assert np.array_equal(by_name, expected["pred"].to_numpy())
    assert np.array_equal(by_index, expected["pred"].to_numpy())
    with pytest.raises(ArtifactError, match="named \\['fusion', 'gbdt'\\]"):
        blend.apply_blend(out, pd.DataFrame({"a": tests[0], "b": tests[1]}))
    assert blend_inputs(out) == [p.resolve() for p in two_runs]


def test_blend_dir_is_a_run_with_report(tmp_path, two_runs):
    out = tmp_path / "out"
    result = blend.run(cfg(two_runs, out, method="weights").model_copy(update={"report": True}))
    oof = pd.read_parquet(out / "oof.parquet")
    assert list(oof.columns) == ["image_id", "patient_id", "fold", "target", "pred"]
    assert len(pd.read_parquet(out / "test.parquet")) == N_TEST
    for name in ("metrics.json", "config.yaml", "blend.json", "comparison.csv", "report.html"):
        assert (out / name).is_file(), name
    table = result["comparison"]
    assert {"auc", "auc_lo", "auc_hi", "auc_fold_std", "pauc80", "ap", "log_loss", "brier"} <= set(table.columns)
    assert (table["auc_lo"] <= table["auc"]).all() and (table["auc"] <= table["auc_hi"]).all()


def test_cli_blend(tmp_path, two_runs):
    from typer.testing import CliRunner

    from melanet.cli import app

    res = CliRunner().invoke(app, ["blend", *map(str, two_runs), "--out", str(tmp_path / "out"),
                                   "--method", "stack", "--set", "report=false", "--set", "n_boot=10"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "blend.json").is_file()


def test_blend_inputs_are_stored_once_and_found_after_a_move(tmp_path, two_runs):
    out = tmp_path / "out"
    blend.run(cfg(two_runs, out))
    recipe = blend.read_recipe(out)
    assert "runs" not in recipe and "runs_relative" not in recipe  # one stored form: "inputs"
    assert [i["name"] for i in recipe["inputs"]] == ["fusion", "gbdt"]
    # the blend and its inputs moved together: found beside the blend, though the old paths are gone
    moved = tmp_path / "moved"
    moved.mkdir()
    for p in [*two_runs, out]:
        shutil.move(p, moved / p.name)
    assert blend_inputs(moved / "out") == [(moved / p.name).resolve() for p in two_runs]
    # an input folder now holding another run is refused, naming the blend to re-run
    make_run(moved / "gbdt", np.linspace(0, 1, N), np.zeros(N_TEST))
    with pytest.raises(ArtifactError, match="now holds run .* re-run the blend"):
        blend_inputs(moved / "out")


def test_blend_inputs_of_a_recipe_with_the_old_flat_lists(tmp_path, two_runs):
    from melanet.runs import recipe_inputs

    old = {"inputs": ["fusion", "gbdt"], "runs": [str(p) for p in two_runs], "runs_relative": ["../a", "../b"]}
    assert [(i["name"], i["path"], i["relative_path"]) for i in recipe_inputs(old)] == [
        ("fusion", str(two_runs[0]), "../a"), ("gbdt", str(two_runs[1]), "../b")]
