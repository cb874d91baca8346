"""melanet demo end to end on a tiny cohort, then melanet predict against the runs it wrote."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from melanet import demo, predict

pytestmark = pytest.mark.slow

TINY = ["train.epochs=1", "image_size=32", "eval.tta=2"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = demo.DemoConfig(out_dir=out, patients=24, image_size=32, fusion_set=TINY)
    table = demo.run(cfg)
    return out, cfg, table


def test_demo_table_has_every_model_and_the_ceiling(demo_dir):
    out, _, table = demo_dir
    assert list(table["model"]) == ["CNN image-only", "CNN + metadata (fusion)", "GBDT metadata + descriptors",
                                    "GBDT metadata + descriptors + fusion OOF", "blend", demo.OBSERVABLE_CEILING,
                                    demo.TRUE_PROBABILITY]
    assert table["auc"].between(0, 1).all() and table["pauc80"].between(0, 0.2).all()
    assert (out / "summary.csv").is_file()
    pairs = pd.read_csv(out / "comparisons.csv")
    assert list(zip(pairs["model"], pairs["baseline"])) == list(demo.PAIRS)
    assert (pairs["lo"] <= pairs["auc_diff"]).all() and (pairs["auc_diff"] <= pairs["hi"]).all()
    for run in ("image_only", "fusion", "gbdt", "gbdt_img", "blend"):
        assert (out / "runs" / run / "report.html").is_file()
    assert (out / "data" / "eda.html").is_file()


def test_demo_rerun_reuses_finished_stages(demo_dir):
    out, cfg, table = demo_dir
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/oof.parquet")}
    again = demo.run(cfg)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/oof.parquet")} == before
    pd.testing.assert_frame_equal(table, again)


@pytest.mark.parametrize("run", ["blend", "gbdt_img", "fusion"])
def test_predict_reproduces_test_predictions(demo_dir, run, tmp_path):
    out, _, _ = demo_dir
    pred = predict.run(out / "runs" / run, out / "synth" / "dicom", tmp_path / "pred.csv")
    test = pd.read_parquet(out / "runs" / run / "test.parquet")
    assert len(test) > 0
    merged = test.merge(pred, on="image_id", suffixes=("_run", "_new"))
    assert len(merged) == len(test)
    np.testing.assert_allclose(merged["pred_run"], merged["pred_new"], atol=1e-5)
    assert set(pred.columns) >= {"image_id", "pred"}


def test_predict_reports_unusable_files(demo_dir, tmp_path):
    out, _, _ = demo_dir
    src = tmp_path / "new"
    src.mkdir()
    first = next((out / "synth" / "dicom").glob("*.dcm"))
    (src / first.name).write_bytes(first.read_bytes())
    (src / "notes.txt").write_text("not an image")
    pred = predict.run(out / "runs" / "gbdt", src, tmp_path / "p.csv")
    assert len(pred) == 1
    errors = pd.read_csv(tmp_path / "p.errors.csv")
    assert errors["path"].tolist() == ["notes.txt"]


def test_the_image_only_run_uses_its_own_config_and_both_take_fusion_set():
    from melanet.config import load_config
    from melanet.train.fusion import FusionConfig

    runs = demo.cnn_runs(demo.DemoConfig())
    paths = {"data_dir": ".", "out_dir": "."}
    image_only, fusion = (load_config(FusionConfig, *runs[k], extra=paths) for k in ("image_only", "fusion"))
    assert runs["image_only"][0] == "image-cpu-small" and runs["fusion"][0] == "fusion-cpu-small"
    assert not image_only.model.use_meta and fusion.model.use_meta
    assert (image_only.train.epochs, fusion.train.epochs) == (10, 8)  # the fusion keeps its own recipe
    runs = demo.cnn_runs(demo.DemoConfig(fusion_set=["train.epochs=1", "model.use_meta=true"], image_config="fusion"))
    image_only = load_config(FusionConfig, *runs["image_only"], extra=paths)
    assert image_only.train.epochs == 1 and not image_only.model.use_meta  # image-only whatever the overrides say
    assert image_only.model.backbone == load_config(FusionConfig, "fusion", extra=paths).model.backbone
