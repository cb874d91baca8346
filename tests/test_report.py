"""melanet report: hand-checked error-analysis figures and a self-contained report.html."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melanet import blend, report
from melanet.cohort import DICOM_COLUMNS
from melanet.io import write_csv, write_json, write_parquet, write_text
from melanet.runs import TargetSpec, finish_run, evaluate, predictions_frame

# 7 rows by hand: at threshold 0.5, called positive = rows 1, 2, 3, 6
Y = np.array([0, 0, 0, 1, 1, 0, 1])
P = np.array([0.1, 0.6, 0.55, 0.7, 0.4, 0.2, 0.9])


def test_confusion_at_matches_hand_count():
    c = report.confusion_at(Y, P, 0.5)
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (2, 2, 2, 1)
    assert c["sensitivity"] == pytest.approx(2 / 3)
    assert c["specificity"] == pytest.approx(2 / 4)
    assert c["ppv"] == pytest.approx(2 / 4)
    assert c["npv"] == pytest.approx(2 / 3)
    assert np.isnan(report.confusion_at(Y, P, 0.95)["ppv"])  # nothing called positive


def test_operating_points_by_hand():
    # J by threshold: .9 -> 1/3, .7 -> 2/3, .6 -> 2/3-1/4, .55 -> 2/3-2/4, .4 -> 1-2/4, ...
    op = report.operating_point(Y, P)
    assert op["threshold"] == 0.7 and (op["tp"], op["fp"], op["tn"], op["fn"]) == (2, 0, 4, 1)
    assert op["youden_j"] == pytest.approx(2 / 3)
    # the highest threshold reaching sensitivity 0.8 is 0.4 (all 3 positives called)
    op80 = report.operating_point(Y, P, sensitivity=0.8)
    assert op80["threshold"] == 0.4 and (op80["tp"], op80["fp"], op80["tn"], op80["fn"]) == (3, 2, 2, 0)


def test_subgroup_metrics_counts():
    df = pd.DataFrame({"sex": ["male", "female", None, "male", "female", "male", None],
                       "target": Y, "pred": P})
    table = report.subgroup_metrics(df, "sex").set_index("group")
    assert table.loc["male", ["n", "positives"]].tolist() == [3, 1]      # rows 0, 3, 5
    assert table.loc["female", ["n", "positives"]].tolist() == [2, 1]    # rows 1, 4
    assert table.loc["unknown", ["n", "positives"]].tolist() == [2, 1]   # rows 2, 6
    assert table.loc["male", "prevalence"] == pytest.approx(1 / 3)
    assert table.loc["male", "auc"] == 1.0                               # 0.7 above 0.1 and 0.2
    assert table.loc["female", "auc"] == 0.0                             # 0.4 below 0.6
    ages = pd.DataFrame({"age_bin": report.age_bins(pd.Series([None, 75, 59.9, 12.0, 30])),
                         "target": [0, 1, 0, 1, 0], "pred": [0.1, 0.2, 0.3, 0.4, 0.5]})
    assert ages["age_bin"].tolist() == ["unknown", "75+", "45-59", "<30", "30-44"]
    # bins listed youngest first, unknown last, whatever the row order
    assert report.subgroup_metrics(ages, "age_bin")["group"].tolist() == ["<30", "30-44", "45-59", "75+", "unknown"]


def test_confident_errors_order():
    df = pd.DataFrame({"target": Y, "pred": P, "image_id": list("abcdefg")})
    fps, fns = report.confident_errors(df, 0.5)
    assert fps["image_id"].tolist() == ["b", "c"]    # highest-scored negatives first
    assert fns["image_id"].tolist() == ["e"]


def make_cohort(data_dir: Path, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """A tiny cohort.parquet with .npy images (uint8 RGB) under DATA_DIR/images/."""
    ids = [f"ISIC_{i:05d}" for i in range(n)]
    cohort = pd.DataFrame({c: "x" for c in DICOM_COLUMNS}, index=range(n))
    cohort["image_id"] = ids
    cohort["patient_id"] = [f"P{i // 4:04d}" for i in range(n)]
    cohort["sex"] = rng.choice(["male", "female", None], n)
    cohort["age"] = np.where(rng.random(n) < 0.1, np.nan, rng.uniform(20, 85, n))
    cohort["site"] = rng.choice(["torso", "head/neck", "lower extremity"], n)
    cohort["image_path"] = [f"images/{i}.npy" for i in ids]
    cohort["target"] = (rng.random(n) < 0.2).astype(int)
    cohort["fold"] = (np.arange(n) // 4) % 5
    (data_dir / "images").mkdir(parents=True)
    for path in cohort["image_path"][::2]:  # the rest are missing: the report shows a grey tile
        np.save(data_dir / path, rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    write_parquet(data_dir / "cohort.parquet", cohort)
    return cohort


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A gbdt-like run: OOF on a cohort, training histories, feature importance."""
    rng = np.random.default_rng(0)
    cohort = make_cohort(tmp_path / "data", 1000, rng)
    spec = TargetSpec()
    y = cohort["target"].to_numpy()
    pred = 1 / (1 + np.exp(-(2 * y - 1.5 + rng.normal(0, 1, len(y)))))
    run = tmp_path / "runs" / "gbdt"
    oof = predictions_frame(cohort, pred, spec)
    write_parquet(run / "oof.parquet", oof)
    write_parquet(run / "test.parquet", oof.head(0))  # no unlabelled images: the blend must cope too
    write_json(run / "metrics.json", evaluate(oof, spec))
    write_text(run / "config.yaml", f"data_dir: {tmp_path / 'data'}\n")
    finish_run(run, "gbdt")
    for k in range(5):
        write_csv(run / f"fold_{k}" / "history.csv", pd.DataFrame({
            "epoch": range(4), "lr": [1e-3, 8e-4, 4e-4, 1e-4], "train_loss": [0.7, 0.5, 0.4, 0.35],
            "val_loss": [0.7, 0.55, 0.5, 0.5], "val_auc": [0.6, 0.7, 0.75, 0.76]}))
    write_csv(run / "feature_importance.csv", pd.DataFrame({"feature": ["age", "site", "sex"] * 2,
                                                            "gain": [5.0, 3.0, 1.0, 7.0, 2.0, 0.5]}))
    return run


def embedded_pngs(text: str) -> int:
    return len(re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', text))


def test_report_sections_and_embedded_images(run_dir):
    path = report.run(run_dir)
    text = path.read_text()
    assert path == run_dir / "report.html"
    for sid in ("summary", "metrics", "curves", "calibration", "errors", "subgroups", "training", "importance"):
        assert f'<section id="{sid}">' in text, sid
    assert "blend" not in re.findall(r'<section id="(\w+)"', text)
    for name in ("roc", "precision_recall", "calibration", "score_histogram", "training_curves",
                 "feature_importance", "false_positives", "false_negatives"):
        assert (run_dir / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert embedded_pngs(text) == 8
    assert "src=\"http" not in text and "<script" not in text  # opens offline, no server
    # the confusion matrix in the page is the Youden point computed by hand here
    oof = pd.read_parquet(run_dir / "oof.parquet")
    op = report.operating_point(oof["target"], oof["pred"])
    assert re.search(rf"<td>actual positive</td>\s*<td>{op['fn']}</td>\s*<td>{op['tp']}</td>", text)
    # subgroup counts add up to every labelled image, per variable
    assert "age_bin" in text and "head/neck" in text


def test_report_for_rank_blend_follows_first_input(run_dir, tmp_path):
    other = tmp_path / "runs" / "fusion"
    oof = pd.read_parquet(run_dir / "oof.parquet")
    oof["pred"] = np.random.default_rng(5).random(len(oof)) * 0.5 + 0.5 * oof["target"]
    write_parquet(other / "oof.parquet", oof)
    write_parquet(other / "test.parquet", pd.read_parquet(run_dir / "test.parquet"))
    write_json(other / "metrics.json", evaluate(oof, TargetSpec()))
    finish_run(other, "fusion")
    out = tmp_path / "runs" / "blend"
    blend.run(blend.BlendConfig(runs=[run_dir, other], out_dir=out, method="rank", n_boot=20))
    text = (out / "report.html").read_text()
    assert '<section id="blend">' in text and '<section id="errors">' in text
    assert (out / "blend_weights.png").is_file() and (out / "model_correlation.png").is_file()
    assert not (out / "calibration.png").exists()  # rank scores are not probabilities
    assert (out / "false_positives.png").is_file()  # images found through gbdt's config.yaml data_dir
    assert "Blend AUC" in text and "beat" in text


def test_report_without_cohort_still_lists_errors(tmp_path):
    rng = np.random.default_rng(1)
    n = 200
    rows = pd.DataFrame({"image_id": [f"I{i}" for i in range(n)], "patient_id": [f"P{i // 2}" for i in range(n)],
                         "fold": np.arange(n) % 4, "target": (rng.random(n) < 0.3).astype(int)})
    oof = predictions_frame(rows, rng.random(n), TargetSpec())
    write_parquet(tmp_path / "oof.parquet", oof)
    write_parquet(tmp_path / "test.parquet", oof.head(0))
    write_json(tmp_path / "metrics.json", evaluate(oof, TargetSpec()))
    finish_run(tmp_path, "gbdt")
    text = report.run(tmp_path).read_text()
    assert "cohort not found" in text and "Most confident false positives" in text
    assert '<section id="subgroups">' not in text and not (tmp_path / "false_positives.png").exists()


def test_report_multiclass_without_positive_class(tmp_path):
    rng = np.random.default_rng(2)
    n, classes = 150, ["melanoma", "nevus", "other"]
    rows = pd.DataFrame({"image_id": [f"I{i}" for i in range(n)], "patient_id": [f"P{i}" for i in range(n)],
                         "fold": np.arange(n) % 3, "diagnosis": rng.choice(classes, n)})
    spec = TargetSpec(column="diagnosis", classes=classes)
    oof = predictions_frame(rows, rng.dirichlet([1, 1, 1], n), spec)
    write_parquet(tmp_path / "oof.parquet", oof)
    write_parquet(tmp_path / "test.parquet", oof.head(0))
    write_json(tmp_path / "metrics.json", evaluate(oof, spec))
    finish_run(tmp_path, "gbdt")
    (tmp_path / "calibration.png").write_bytes(b"stale")  # from an earlier binary run in the same folder
    text = report.run(tmp_path).read_text()
    assert "ROC (one-vs-rest)" in text and "macro_auc" in text and "error analysis is skipped" in text
    assert embedded_pngs(text) == 1 and not (tmp_path / "calibration.png").exists()


def test_descriptor_importance_groups_patient_context_with_its_descriptor():
    from melanet.report import descriptor_importance

    gain = pd.Series({"age": 50.0, "lesion_asymmetry": 20.0, "lesion_asymmetry_pat_z": 10.0,
                      "lesion_asymmetry_pat_rank": 5.0, "lesion_delta_e": 5.0, "duckling_distance": 8.0,
                      "duckling_pat_rank": 2.0})
    table = descriptor_importance(gain).set_index("descriptor")
    assert list(table.index) == ["lesion_asymmetry", "duckling", "lesion_delta_e"]
    assert table.loc["lesion_asymmetry", "share"] == pytest.approx(0.35)
    assert table.loc["lesion_asymmetry", "patient_context"] == pytest.approx(0.15)
    assert table.loc["duckling", "own"] == pytest.approx(0.08)
    assert descriptor_importance(pd.Series({"age": 1.0})).empty


def test_training_panels_keep_each_trainers_validation_metric():
    fusion_multiclass = pd.DataFrame({"epoch": [1, 2], "lr": [1e-3, 1e-4], "train_loss": [1.2, 0.9],
                                      "val_loss": [1.3, 1.0], "val_macro_auc": [0.6, 0.7], "seconds": [3, 3]})
    gbdt = pd.DataFrame({"epoch": [1, 2, 3], "val_loss": [0.6, 0.5, 0.45], "val_auc": [0.7, 0.75, 0.8]})
    panels = report.training_panels({"fold 0": fusion_multiclass, "fold 1": gbdt})
    assert list(panels) == ["loss", "validation metric", "learning rate"]
    assert set(panels["validation metric"]) == {"fold 0 macro_auc", "fold 1 auc"}
    assert set(panels["loss"]) == {"fold 0 train", "fold 0 val", "fold 1 val"}
    assert list(report.training_panels({"fold 1": gbdt})) == ["loss", "validation metric"]


def test_after_stage_is_the_one_report_call_and_a_failure_keeps_the_run(run_dir, capsys):
    assert report.after_stage(run_dir, enabled=False) is None and not (run_dir / "report.html").exists()
    assert report.after_stage(run_dir) == run_dir / "report.html"
    (run_dir / "oof.parquet").write_bytes(b"damaged")  # the report refuses the run; the stage must not fail
    (run_dir / "report.html").unlink()
    assert report.after_stage(run_dir) is None
    out = capsys.readouterr().err  # melanet's console writes to stderr
    assert "report.html not written" in out and f"melanet report {run_dir}" in " ".join(out.split())
    assert not (run_dir / "report.html").exists() and (run_dir / "COMPLETE").is_file()


def test_a_seed_ensemble_draws_every_network_in_its_folds_colour_with_one_legend_entry():
    from melanet import plots

    history = pd.DataFrame({"epoch": [1, 2, 1, 2], "lr": [1e-3, 1e-4] * 2, "train_loss": [0.7, 0.5, 0.8, 0.6],
                            "val_loss": [0.6, 0.5, 0.65, 0.55], "val_auc": [0.6, 0.7, 0.62, 0.68],
                            "seed": [0, 0, 1, 1]})
    panels = report.training_panels({"fold 0": history, "fold 1": history})
    assert set(panels["validation metric"]) == {f"fold {k} seed {j} auc" for k in (0, 1) for j in (0, 1)}
    fig = plots.curves_plot(panels, "epoch")
    loss, metric = fig.axes[0], fig.axes[1]
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["fold 0 train", "fold 0 val", "fold 1 train",
                                                                     "fold 1 val"]
    assert len(loss.lines) == 8  # every network drawn
    colours = {line.get_label(): line.get_color() for line in metric.lines if not line.get_label().startswith("_")}
    assert len(colours) == 2 and all(line.get_color() in colours.values() for line in metric.lines)
    assert [line.get_color() for line in metric.lines] == [colours["fold 0 auc"]] * 2 + [colours["fold 1 auc"]] * 2
