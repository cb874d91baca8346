"""``melanet suspects``: planted label flips come first, the CSV feeds --exclude, thumbnails follow the data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from melanet import blend, suspects
from melanet.cli import app
from melanet.cohort import DICOM_COLUMNS
from melanet.errors import ArtifactError, ConfigError
from melanet.io import write_json, write_parquet
from melanet.runs import TargetSpec, finish_run, predictions_frame

N = 40
FLIPPED = ["ISIC_0007", "ISIC_0021", "ISIC_0033"]  # most confident first


def write_cohort(data_dir: Path, rng: np.random.Generator) -> pd.DataFrame:
    """N labelled images (random uint8 RGB .npy), 10 patients, 5 folds; binary target and a 3-class diagnosis."""
    (data_dir / "images").mkdir(parents=True)
    cohort = pd.DataFrame({c: "x" for c in DICOM_COLUMNS}, index=range(N))
    cohort["image_id"] = [f"ISIC_{i:04d}" for i in range(N)]
    cohort["patient_id"] = [f"P{i // 4:02d}" for i in range(N)]
    cohort["image_path"] = [f"images/{i}.npy" for i in cohort["image_id"]]
    for path in cohort["image_path"]:
        np.save(data_dir / path, rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    cohort["target"] = (np.arange(N) % 3 == 0).astype(int)
    cohort["diagnosis"] = np.where(cohort["target"] == 1, "melanoma", np.where(np.arange(N) % 2, "nevus", "bkl"))
    cohort["fold"] = (np.arange(N) // 4) % 5
    write_parquet(data_dir / "cohort.parquet", cohort)
    return cohort


def write_run(run_dir: Path, cohort: pd.DataFrame, prob: np.ndarray, spec: TargetSpec, config: dict) -> Path:
    run_dir.mkdir(parents=True)
    write_parquet(run_dir / "oof.parquet", predictions_frame(cohort, prob, spec))
    write_parquet(run_dir / "test.parquet", predictions_frame(cohort.iloc[:0], prob[:0], spec))
    write_json(run_dir / "metrics.json", {"target": spec.column, "classes": spec.classes,
                                          "positive_class": spec.positive_class})
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    finish_run(run_dir, "fusion")
    return run_dir


@pytest.fixture()
def binary_run(tmp_path) -> tuple[Path, pd.DataFrame]:
    """A binary run whose OOF agrees with the label (|label - p| <= 0.3) except three flipped rows."""
    rng = np.random.default_rng(0)
    cohort = write_cohort(tmp_path / "data", rng)
    y = cohort["target"].to_numpy()
    prob = np.where(y == 1, rng.uniform(0.7, 0.95, N), rng.uniform(0.05, 0.3, N))
    ids = cohort["image_id"].tolist()
    for image_id, confident in zip(FLIPPED, (0.01, 0.05, 0.2)):  # the model is sure of the other class
        i = ids.index(image_id)
        prob[i] = confident if y[i] == 1 else 1 - confident
    run = write_run(tmp_path / "runs" / "gbdt", cohort, prob, TargetSpec(), {"data_dir": str(tmp_path / "data")})
    return run, cohort


def test_cli_lists_flipped_labels_first_with_thumbnails(binary_run, tmp_path):
    run, cohort = binary_run
    out = tmp_path / "clean" / "suspects.csv"
    result = CliRunner().invoke(app, ["suspects", str(run), "--top", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert table.columns.tolist() == ["rank", "image_id", "patient_id", "fold", "target", "pred", "suspicion"]
    assert table["image_id"].tolist()[:3] == FLIPPED and len(table) == 5
    assert table["suspicion"].is_monotonic_decreasing and table.loc[0, "suspicion"] == pytest.approx(0.99)
    text = out.with_suffix(".html").read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 5
    assert all(image_id in text for image_id in FLIPPED)
    # The CSV is an exclude list as the trainers read it.
    from melanet.runs import read_exclude

    assert cohort.loc[read_exclude(out, cohort), "image_id"].tolist() == sorted(table["image_id"])


def test_default_output_in_run_dir_and_bad_arguments(binary_run, tmp_path):
    run, _ = binary_run
    assert suspects.run(run, top=3) == run / "suspects.csv"
    assert (run / "suspects.html").is_file()
    with pytest.raises(ConfigError, match="--top 0"):
        suspects.run(run, top=0)
    with pytest.raises(ArtifactError, match="no-such-run not found"):
        suspects.run(tmp_path / "no-such-run")
    with pytest.raises(ConfigError, match="give the CSV"):  # would have written the page over the CSV
        suspects.run(run, out=tmp_path / "x.html")


def test_multiclass_runs_use_positive_class_or_labelled_class(tmp_path):
    rng = np.random.default_rng(1)
    cohort = write_cohort(tmp_path / "data", rng)
    classes = ["bkl", "melanoma", "nevus"]
    truth = cohort["diagnosis"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    prob = np.full((N, 3), 0.05)
    prob[np.arange(N), truth] = 0.9
    prob[4] = [0.05, 0.05, 0.9]   # labelled bkl, looks like a nevus: suspect for "labelled class"
    prob[3] = [0.05, 0.05, 0.9]   # labelled melanoma, scored 0.05 on melanoma: suspect for both
    data = {"data_dir": str(tmp_path / "data")}

    spec = TargetSpec("diagnosis", classes)
    table = suspects.suspicion_scores(predictions_frame(cohort, prob, spec), spec)
    assert table["image_id"].tolist()[:2] == ["ISIC_0003", "ISIC_0004"]  # ties broken by image_id
    assert table.loc[0, "pred"] == pytest.approx(0.05) and table.loc[0, "predicted"] == "nevus"

    spec = TargetSpec("diagnosis", classes, positive_class="melanoma")
    run = write_run(tmp_path / "mel", cohort, prob, spec, data)
    table = pd.read_csv(suspects.run(run, top=2))
    # Scored on melanoma: the bkl-labelled nevus look-alike is no suspect, the unscored melanoma is.
    assert table["image_id"].tolist()[0] == "ISIC_0003" and "ISIC_0004" not in table["image_id"].tolist()
    assert table.loc[0, "suspicion"] == pytest.approx(0.95)


def test_blend_run_follows_first_input_and_missing_data_still_writes_csv(binary_run, tmp_path):
    run, cohort = binary_run
    noisier = pd.read_parquet(run / "oof.parquet")
    noisier["pred"] = np.clip(noisier["pred"] + np.random.default_rng(2).normal(0, 0.02, N), 0, 1)
    other = write_run(tmp_path / "runs" / "fusion", cohort, noisier["pred"].to_numpy(), TargetSpec(),
                      {"data_dir": str(tmp_path / "data")})
    blend_dir = tmp_path / "runs" / "blend"
    blend.run(blend.BlendConfig(runs=[run, other], out_dir=blend_dir, n_boot=0, report=False))
    text = suspects.run(blend_dir, top=4).with_suffix(".html").read_text()
    assert len(re.findall(r"<img ", text)) == 4 and f"Images from {tmp_path / 'data'}" in text

    (run / "config.yaml").write_text(yaml.safe_dump({"data_dir": str(tmp_path / "moved")}))
    csv = suspects.run(blend_dir, top=4)
    # A rank blend scores ranks, not probabilities: the two confident flips still lead.
    assert pd.read_csv(csv)["image_id"].tolist()[:2] == FLIPPED[:2]
    assert "data folder of" in csv.with_suffix(".html").read_text()
