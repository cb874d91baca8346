"""Auxiliary descriptor targets (train.aux_descriptors) and descriptor inputs (features.descriptors) of train-fusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from melanet.errors import ConfigError, InputDataError
from melanet.train.aux import fit_targets, masked_mse
from test_fusion import make_cohort, tiny_config


@pytest.fixture(scope="module")
def described_dir(tmp_path_factory) -> Path:
    """The tiny fusion cohort with lesion_* columns measured from its images, as ingest adds them."""
    data_dir = tmp_path_factory.mktemp("described")
    cohort = make_cohort(data_dir)
    assert 0 < cohort["lesion_mask_ok"].mean() < 1  # some masks fail on 32 px discs: the loss must skip them
    return data_dir


def test_masked_mse_ignores_missing_targets_and_their_gradients():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    target = torch.tensor([[0.0, float("nan")], [1.0, float("nan")]])
    loss = masked_mse(pred, target)
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[:, 1].abs().sum() == 0  # the NaN column pulls on nothing
    empty = masked_mse(pred, torch.full((2, 2), float("nan")))
    assert empty.item() == 0 and empty.requires_grad


def test_targets_are_standardised_on_training_rows_and_failed_masks_are_missing():
    cohort = pd.DataFrame({"lesion_mask_ok": [True, True, True, False, True],
                           "lesion_area_frac": [0.1, 0.2, 0.3, 0.9, 10.0],
                           "lesion_a_mean": [np.nan] * 5,            # grayscale: no chroma anywhere
                           "lesion_solidity": [0.5, 0.5, 0.5, 0.5, 0.7],  # no spread on the training rows
                           "age": [1, 2, 3, 4, 5]})
    t = fit_targets(cohort, np.array([0, 1, 2, 3]))
    assert t.columns == ["lesion_area_frac"]
    np.testing.assert_allclose(t.values[:3, 0], [-1, 0, 1], atol=1e-6)  # mean 0.2, std 0.1 of rows 0-2
    assert np.isnan(t.values[3, 0])  # its mask failed: the 0.9 is not a measurement
    assert t.values[4, 0] == pytest.approx(5.0)  # a validation outlier is clipped, not allowed to dominate


def test_cohort_without_descriptors_names_the_ingest_fix(tmp_path):
    with pytest.raises(InputDataError, match=r"train.aux_descriptors=0.5 .*--set descriptors=true"):
        fit_targets(pd.DataFrame({"age": [1.0, 2.0]}), np.array([0, 1]), data_dir=tmp_path, weight=0.5)
    with pytest.raises(InputDataError, match="every lesion mask failed"):
        fit_targets(pd.DataFrame({"lesion_mask_ok": [False, False], "lesion_area_frac": [np.nan, np.nan]}),
                    np.array([0, 1]))


def test_aux_refuses_mixup(described_dir, tmp_path):
    with pytest.raises(ConfigError, match="Mixup"):
        tiny_config(described_dir, tmp_path, ["train.aux_descriptors=1", "augment.mixup_alpha=0.4"])


def test_cohort_without_descriptors_trains_with_both_options_off_and_says_so(cohort_dir, tmp_path, capsys):
    # Radiology cohorts get no descriptors: the default CPU recipe (both options on) must still train on them.
    import yaml

    from melanet.train import fusion

    run_dir = fusion.run(tiny_config(cohort_dir, tmp_path / "run", ["train.aux_descriptors=1",
                                                                     "features.descriptors=true"]), folds=[1])
    out = " ".join(capsys.readouterr().err.split())
    assert "no lesion descriptor was measured" in out
    assert "train.aux_descriptors and features.descriptors turned off" in out
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["aux_descriptors"] == 0 and saved["features"]["descriptors"] is False
    assert (run_dir / "fold_1" / "oof.parquet").is_file()


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("plain")
    make_cohort(data_dir, descriptors=False)  # as ingested with --set descriptors=false
    return data_dir


def test_aux_run_predicts_without_descriptors(described_dir, tmp_path):
    """Trained with the descriptor head; the weights, the OOF and predict never need a descriptor."""
    from melanet.train import fusion
    from test_fusion import _mark_complete, _rewrite_done_folds

    out = tmp_path / "run"
    fusion.run(tiny_config(described_dir, out, ["train.aux_descriptors=1.0", "features.descriptors=false",
                                                       "train.epochs=2"]), folds=[1])
    weights = load_file(str(out / "fold_1" / "model.safetensors"))
    assert not any(k.startswith("descriptor_head") for k in weights)
    oof = pd.read_parquet(out / "fold_1" / "oof.parquet")
    assert oof["pred"].notna().all()
    _rewrite_done_folds(out, [1])
    _mark_complete(out, [1])
    # A prediction cohort ingested with descriptors=false: no lesion_* column at all.
    cohort = pd.read_parquet(described_dir / "cohort.parquet")
    bare = cohort.drop(columns=[c for c in cohort.columns if c.startswith("lesion_")])
    pred = pd.Series(fusion.predict(out, bare, described_dir), index=bare["image_id"])
    np.testing.assert_allclose(pred.loc[oof["image_id"]].to_numpy(), oof["pred"].to_numpy(), atol=1e-5)


def test_descriptor_inputs_feed_the_metadata_branch_and_predict_needs_them(described_dir, tmp_path):
    from melanet.io import read_json
    from melanet.train import fusion
    from test_fusion import _mark_complete, _rewrite_done_folds

    out = tmp_path / "run"
    fusion.run(tiny_config(described_dir, out, ["features.descriptors=true"]), folds=[1])
    names = read_json(out / "fold_1" / "meta_encoder.json")["feature_names"]
    assert "lesion_area_frac" in names and "lesion_area_frac_missing" in names  # failed masks: NaN + indicator
    _rewrite_done_folds(out, [1])
    _mark_complete(out, [1])
    cohort = pd.read_parquet(described_dir / "cohort.parquet")
    oof = pd.read_parquet(out / "fold_1" / "oof.parquet")
    pred = pd.Series(fusion.predict(out, cohort, described_dir), index=cohort["image_id"])
    np.testing.assert_allclose(pred.loc[oof["image_id"]].to_numpy(), oof["pred"].to_numpy(), atol=1e-5)
    with pytest.raises(InputDataError, match="features.descriptors"):
        fusion.predict(out, cohort.drop(columns=[c for c in cohort.columns if c.startswith("lesion_")]),
                       described_dir)
