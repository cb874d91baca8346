"""melanet blend --method auto: nested-CV choice with the one-standard-error rule, pass-through, recipe."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from melanet import blend, blend_auto
from tests.test_blend import N, N_TEST, make_run


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


@pytest.fixture
def y() -> np.ndarray:
    return (np.random.default_rng(3).random(N) < 0.3).astype(int)


def run_auto(runs, out):
    return blend.run(blend.BlendConfig(runs=[str(r) for r in runs], out_dir=out, n_boot=0, report=False))


def test_auto_is_the_default_method(tmp_path):
    assert blend.BlendConfig(runs=[tmp_path, tmp_path], out_dir=tmp_path / "b").method == "auto"


def test_auto_passes_the_informative_input_through_when_the_other_is_noise(tmp_path, y):
    rng = np.random.default_rng(4)
    good = _sigmoid(2.0 * y - 1 + rng.normal(0, 1, N))
    noise = rng.random(N)
    runs = [make_run(tmp_path / "fusion", good, rng.random(N_TEST), target=y),
            make_run(tmp_path / "noise", noise, rng.random(N_TEST), target=y)]
    out = tmp_path / "out"
    result = run_auto(runs, out)
    assert result["auto"]["choice"] == "input:fusion" and result["auto"]["passthrough"]
    assert "passed through" in result["auto"]["reason"]
    oof = pd.read_parquet(out / "oof.parquet")
    fusion_oof = pd.read_parquet(runs[0] / "oof.parquet").set_index("image_id").loc[oof["image_id"], "pred"]
    # every outer fold chose the input too: the reported OOF is the input's own, so the blend never loses to it
    assert set(result["auto"]["outer_choices"].values()) == {"input:fusion"}
    np.testing.assert_array_equal(oof["pred"].to_numpy(), fusion_oof.to_numpy())
    test = pd.read_parquet(out / "test.parquet")
    fusion_test = pd.read_parquet(runs[0] / "test.parquet").set_index("image_id").loc[test["image_id"], "pred"]
    np.testing.assert_array_equal(test["pred"].to_numpy(), fusion_test.to_numpy())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["auto"]["choice"] == "input:fusion" and metrics["method"] == "auto"


def test_auto_combines_inputs_that_carry_independent_signal(tmp_path):
    rng = np.random.default_rng(5)
    n = 1500
    a, b = rng.normal(0, 1, n), rng.normal(0, 1, n)
    y = (rng.random(n) < _sigmoid(-1 + 1.2 * a + 1.2 * b)).astype(int)
    folds = np.arange(n) % 5
    X = np.column_stack([_sigmoid(a + rng.normal(0, 0.3, n)), _sigmoid(b + rng.normal(0, 0.3, n))])
    est = blend.make_blender("auto", names=("a", "b")).fit(X, y, folds)
    assert est.method_ in {"rank", "weights", "stack"}, est.selection_
    cands = blend_auto.candidates(["a", "b"])
    oof, choices, _ = blend_auto.nested_oof(X, y, folds, cands)
    assert all(c in {"rank", "weights", "stack"} for c in choices.values())
    assert roc_auc_score(y, oof) > max(roc_auc_score(y, X[:, 0]), roc_auc_score(y, X[:, 1])) + 0.03


def test_reported_oof_is_the_nested_cv_prediction(tmp_path, y):
    """Each fold of oof.parquet equals the candidate chosen on the other folds, fitted on them."""
    rng = np.random.default_rng(6)
    a = _sigmoid(1.2 * y - 1 + rng.normal(0, 1, N))
    b = _sigmoid(1.0 * y - 0.5 + rng.normal(0, 1.1, N))
    runs = [make_run(tmp_path / "fusion", a, rng.random(N_TEST), target=y),
            make_run(tmp_path / "gbdt", b, rng.random(N_TEST), target=y)]
    out = tmp_path / "out"
    result = run_auto(runs, out)
    oof = pd.read_parquet(out / "oof.parquet").sort_values("image_id")
    inputs = blend.load_inputs(runs)
    X, folds, target = inputs.X_oof, inputs.oof["fold"].to_numpy(), inputs.oof["target"].to_numpy()
    patients = inputs.oof["patient_id"].to_numpy()
    cands = blend_auto.candidates(inputs.names)
    expected = np.empty(len(target))
    for k in np.unique(folds):
        held = folds == k
        chosen, _ = blend_auto.select(X[~held], target[~held], folds[~held], cands, patients[~held])
        assert result["auto"]["outer_choices"][str(k)] == chosen
        est = clone(cands[chosen])
        est = est.fit(X[~held], target[~held]) if est.uses_labels else est.fit(X[~held])
        expected[held] = est.predict(X[held])
    if len(set(result["auto"]["outer_choices"].values())) > 1:  # mapped to one scale: same order within a fold
        for k in np.unique(folds):
            held = folds == k
            assert (np.argsort(np.argsort(expected[held])) == np.argsort(np.argsort(oof["pred"].to_numpy()[held]))
                    ).all()
    else:
        np.testing.assert_allclose(oof["pred"].to_numpy(), expected, rtol=0, atol=1e-12)


def test_one_standard_error_rule_prefers_the_simpler_candidate():
    """A combination only marginally better than one input (within noise) loses to the input."""
    rng = np.random.default_rng(7)
    n = 600
    y = (rng.random(n) < 0.3).astype(int)
    good = _sigmoid(1.5 * y + rng.normal(0, 1, n))
    weak = _sigmoid(0.05 * y + rng.normal(0, 1, n))
    chosen, table = blend_auto.select(np.column_stack([good, weak]), y, np.arange(n) % 5,
                                      blend_auto.candidates(["good", "weak"]))
    assert chosen == "input:good", table
    assert table.loc[table["chosen"], "within_1se"].all()


def test_apply_blend_reproduces_an_auto_blend(tmp_path, y):
    rng = np.random.default_rng(8)
    runs = [make_run(tmp_path / "fusion", _sigmoid(1.5 * y - 1 + rng.normal(0, 1, N)), rng.random(N_TEST), target=y),
            make_run(tmp_path / "gbdt", _sigmoid(1.5 * y - 1 + rng.normal(0, 1, N)), rng.random(N_TEST), target=y)]
    out = tmp_path / "out"
    run_auto(runs, out)
    expected = pd.read_parquet(out / "test.parquet")
    tests = [pd.read_parquet(r / "test.parquet").set_index("image_id").loc[expected["image_id"], "pred"].to_numpy()
             for r in runs]
    got = blend.apply_blend(out, pd.DataFrame({"fusion": tests[0], "gbdt": tests[1]}))
    np.testing.assert_array_equal(got, expected["pred"].to_numpy())
    recipe = blend.read_recipe(out)
    assert recipe["method"] == "auto" and recipe["auto"]["choice"] == recipe["state"]["choice"]


def test_auto_blender_is_a_scikit_learn_estimator():
    from sklearn.exceptions import NotFittedError

    est = blend.make_blender("auto", C=0.5)
    assert clone(est).get_params()["C"] == 0.5
    with pytest.raises(NotFittedError):
        est.predict(np.zeros((3, 2)))
    rng = np.random.default_rng(0)
    X, y = rng.random((100, 2)), (rng.random(100) < 0.4).astype(int)
    assert est.fit(X, y) is est


@pytest.mark.parametrize("lo, hi, verdict", [(-0.0105, -0.0004, "clearly worse"), (0.001, 0.02, "clearly better"),
                                             (-0.01, 0.02, "within noise")])
def test_demo_pair_verdict_names_a_clearly_worse_blend(lo, hi, verdict):
    from melanet.demo import pair_verdict

    assert pair_verdict(lo, hi) == verdict


def test_report_shows_what_auto_chose_and_why(tmp_path, y):
    rng = np.random.default_rng(9)
    runs = [make_run(tmp_path / "fusion", _sigmoid(2.0 * y - 1 + rng.normal(0, 1, N)), rng.random(N_TEST), target=y),
            make_run(tmp_path / "noise", rng.random(N), rng.random(N_TEST), target=y)]
    out = tmp_path / "out"
    blend.run(blend.BlendConfig(runs=[str(r) for r in runs], out_dir=out, n_boot=0, report=True))
    text = (out / "report.html").read_text()
    assert "Method chosen by nested cross validation: input:fusion" in text and "passed through" in text
