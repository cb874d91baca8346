"""train-fusion end to end on a tiny synthetic cohort made here (no melanet synth/ingest needed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melanet.cohort import DICOM_COLUMNS
from melanet.config import load_config
from melanet.descriptors import lesion_descriptors
from melanet.errors import ArtifactError, ConfigError, WeightsNotFoundError
from melanet.runs import read_config

SIZE = 32


def make_cohort(data_dir: Path, n_patients: int = 36, n_folds: int = 3, seed: int = 0,
                test_patients: int = 4, descriptors: bool = True) -> pd.DataFrame:
    """A cohort.parquet + 32 px .npy images: a bright disc whose radius grows with the target.

    ``descriptors`` adds the lesion_* columns measured from the images, as ingest does by default.
    """
    rng = np.random.default_rng(seed)
    (data_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for p in range(n_patients):
        sex = ["male", "female", None][p % 3]
        age = float(rng.integers(20, 80)) if p % 7 else None
        for j in range(int(rng.integers(1, 5))):
            image_id = f"p{p:03d}_{j}"
            age_j = None if age is None else age
            logit = -0.5 + (0.04 * (age_j - 50) if age_j is not None else 0) + rng.normal(0, 1.0)
            target = int(rng.random() < 1 / (1 + np.exp(-logit)))
            radius = (9 if target else 5) + rng.normal(0, 1.2)
            img = np.full((SIZE, SIZE, 3), 60, np.uint8)
            disc = (yy - SIZE / 2 - rng.normal(0, 2)) ** 2 + (xx - SIZE / 2 - rng.normal(0, 2)) ** 2 < radius ** 2
            img[disc] = (200, 150, 120)
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            np.save(data_dir / "images" / f"{image_id}.npy", img)
            test = p >= n_patients - test_patients
            rows.append({
                "image_id": image_id, "sop_instance_uid": f"1.2.3.{p}.{j}", "patient_id": f"pat{p:03d}",
                "sex": sex, "age": age_j, "site": ["torso", "lower extremity", None][j % 3],
                "modality": "XC", "photometric": "RGB", "rows": SIZE, "cols": SIZE, "frames": 1,
                "bits_stored": 8, "transfer_syntax": "1.2.840.10008.1.2.1", "sha256": f"{p}{j}",
                "image_path": f"images/{image_id}.npy",
                "target": np.nan if test else float(target),
                "diagnosis": None if test else ("melanoma" if target else ["nevus", "keratosis"][j % 2]),
                "fold": -1 if test else p % n_folds,
            })
    cohort = pd.DataFrame(rows)[DICOM_COLUMNS + ["target", "diagnosis", "fold"]]
    if descriptors:
        measured = [lesion_descriptors(np.load(data_dir / p)) for p in cohort["image_path"]]
        cohort = pd.concat([cohort, pd.DataFrame(measured)], axis=1)
    cohort.to_parquet(data_dir / "cohort.parquet", index=False)
    return cohort


def tiny_config(data_dir: Path, out_dir: Path, overrides: list[str] | None = None):
    from melanet.train.fusion import FusionConfig

    base = ["image_size=32", "model.backbone=test_resnet", "model.pretrained=false", "model.meta_hidden=[16,8]",
            "train.epochs=1", "train.batch_size=16", "train.lr=3e-3", "train.workers=0",
            "train.warmup_epochs=0", "eval.tta=2", "engine.accelerator=cpu", "engine.devices=1"]
    return load_config(FusionConfig, "fusion-cpu-small", base + (overrides or []),
                       extra={"data_dir": str(data_dir), "out_dir": str(out_dir)})


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("data")
    make_cohort(data_dir)
    return data_dir


@pytest.fixture(scope="module")
def trained_run(cohort_dir, tmp_path_factory) -> Path:
    """All three folds of the tiny model, trained once for the tests below."""
    from melanet.train import fusion

    out = tmp_path_factory.mktemp("run")
    fusion.run(tiny_config(cohort_dir, out, ["train.epochs=2"]))
    return out


def test_run_writes_every_artifact_and_oof_covers_each_labelled_row_once(trained_run, cohort_dir):
    cohort = pd.read_parquet(cohort_dir / "cohort.parquet")
    labelled = cohort[cohort["target"].notna()]
    for name in ("config.yaml", "oof.parquet", "test.parquet", "metrics.json", "training_curves.png"):
        assert (trained_run / name).is_file(), name
    for k in range(3):
        for name in ("model.safetensors", "meta_encoder.json", "history.csv", "oof.parquet", "test.parquet", "DONE"):
            assert (trained_run / f"fold_{k}" / name).is_file(), (k, name)
        history = pd.read_csv(trained_run / f"fold_{k}" / "history.csv")
        assert list(history.columns) == ["epoch", "lr", "train_loss", "val_loss", "val_auc", "seconds"]
        assert len(history) == 2
    oof = pd.read_parquet(trained_run / "oof.parquet")
    assert sorted(oof["image_id"]) == sorted(labelled["image_id"])
    # Each row predicted by the fold model that did not train on it: its own fold's OOF file.
    for k in range(3):
        fold_oof = pd.read_parquet(trained_run / f"fold_{k}" / "oof.parquet")
        assert set(fold_oof["image_id"]) == set(labelled.loc[labelled["fold"] == k, "image_id"])
    merged = oof.merge(labelled[["image_id", "fold"]], on="image_id", suffixes=("", "_cohort"))
    assert (merged["fold"] == merged["fold_cohort"]).all()
    assert oof["pred"].between(0, 1).all()
    test = pd.read_parquet(trained_run / "test.parquet")
    assert sorted(test["image_id"]) == sorted(cohort.loc[cohort["target"].isna(), "image_id"])


def test_saved_fold_model_reloads_and_reproduces_predictions(trained_run, cohort_dir):
    from melanet.train import fusion

    cohort = pd.read_parquet(cohort_dir / "cohort.parquet")
    test_rows = cohort[cohort["target"].isna()].reset_index(drop=True)
    # Predict on the whole cohort so patient-context features see the same rows as in training.
    prob = fusion.predict(trained_run, cohort, cohort_dir)
    expected = pd.read_parquet(trained_run / "test.parquet").set_index("image_id")["pred"]
    got = pd.Series(prob, index=cohort["image_id"]).loc[test_rows["image_id"]]
    np.testing.assert_allclose(got.to_numpy(), expected.loc[test_rows["image_id"]].to_numpy(), atol=1e-5)
    # One fold's weights alone reproduce that fold's OOF predictions.
    fold0 = pd.read_parquet(trained_run / "fold_0" / "oof.parquet").set_index("image_id")["pred"]
    single = trained_run.parent / (trained_run.name + "_fold0")
    shutil.copytree(trained_run, single)
    for k in (1, 2):
        shutil.rmtree(single / f"fold_{k}")
    _rewrite_done_folds(single, [0])
    _mark_complete(single, [0])
    rows = cohort[cohort["image_id"].isin(fold0.index)].reset_index(drop=True)
    pred = fusion.predict(single, cohort, cohort_dir)
    got0 = pd.Series(pred, index=cohort["image_id"]).loc[rows["image_id"]]
    np.testing.assert_allclose(got0.to_numpy(), fold0.loc[rows["image_id"]].to_numpy(), atol=1e-5)


def _mark_complete(run_dir: Path, folds: list[int]) -> None:
    """Record the edited folder as a complete run of ``folds`` (what `melanet merge` does for a finished run)."""
    import json

    from melanet.runs import RunDir

    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    RunDir(run_dir, run_id=run_id, kind="fusion").complete(["config.yaml"], folds=folds)


def _rewrite_done_folds(run_dir: Path, folds: list[int]) -> None:
    import json

    for k in folds:
        path = run_dir / f"fold_{k}" / "DONE"
        info = json.loads(path.read_text())
        info["folds"] = folds
        path.write_text(json.dumps(info))


def test_resume_skips_finished_folds_and_merge_refuses_missing(cohort_dir, tmp_path):
    from melanet.train import fusion

    out = tmp_path / "run"
    cfg = tiny_config(cohort_dir, out)
    fusion.run(cfg, folds=[0])
    assert (out / "fold_0" / "DONE").is_file() and not (out / "oof.parquet").exists()
    with pytest.raises(ArtifactError, match=r"fold\(s\) \[1, 2\] are not finished"):
        fusion.merge(out)
    stamp = (out / "fold_0" / "model.safetensors").stat().st_mtime_ns
    fusion.run(cfg, resume=True)
    assert (out / "fold_0" / "model.safetensors").stat().st_mtime_ns == stamp  # not retrained
    assert all((out / f"fold_{k}" / "DONE").is_file() for k in range(3))
    assert (out / "oof.parquet").is_file()
    # A finished run refuses folds trained with a different recipe, naming what differs.
    with pytest.raises(ArtifactError, match=r"complete other run \(different settings or data: train.lr"):
        fusion.run(tiny_config(cohort_dir, out, ["train.lr=0.1"]), resume=True)


@pytest.mark.parametrize("overrides", [
    ["model.use_meta=false", "track=tensorboard"],
    ["target=diagnosis", "positive_class=melanoma", "train.imbalance=pos_weight", "augment.mixup_alpha=0.4",
     "augment.cutmix_alpha=1.0", "augment.mix_p=1.0", "train.aux_descriptors=0", "train.label_smoothing=0.1",
     "train.meta_drop_p=0.2"],
    ["train.imbalance=focal", "train.scheduler=plateau", "train.accumulate=2", "eval.oof_epoch=best",
     "train.workers=1", "train.epochs=2"],
    ["train.ema_decay=0.9", "model.image_aux_weight=0.5", "train.epochs=2"],
    ["train.swa_epochs=2", "train.epochs=2", "train.meta_epochs=2"],  # the metadata stage on the averaged backbone
])
def test_variants_run_one_fold(cohort_dir, tmp_path, overrides):
    from melanet.train import fusion

    out = tmp_path / "run"
    fusion.run(tiny_config(cohort_dir, out, overrides), folds=[1])
    oof = pd.read_parquet(out / "fold_1" / "oof.parquet")
    if "target=diagnosis" in overrides:
        assert [c for c in oof.columns if c.startswith("pred_")] == ["pred_keratosis", "pred_melanoma", "pred_nevus"]
        np.testing.assert_allclose(oof.filter(like="pred_").sum(axis=1), 1.0, rtol=1e-5)
    else:
        assert oof["pred"].notna().all()
    if "track=tensorboard" in overrides:  # per-epoch metrics were logged
        assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    if "train.ema_decay=0.9" in overrides:  # the saved weights are the averaged ones that predicted the OOF
        _rewrite_done_folds(out, [1])
        _mark_complete(out, [1])
        cohort = pd.read_parquet(cohort_dir / "cohort.parquet")
        pred = pd.Series(fusion.predict(out, cohort, cohort_dir), index=cohort["image_id"])
        np.testing.assert_allclose(pred.loc[oof["image_id"]].to_numpy(), oof["pred"].to_numpy(), atol=1e-5)


def test_config_errors_are_clear(cohort_dir, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        tiny_config(cohort_dir, tmp_path, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="did you mean 'resnet18d'|did you mean 'resnet18'"):
        tiny_config(cohort_dir, tmp_path, ["model.backbone=resnet18dd"])
    with pytest.raises(ConfigError, match="scheduler"):
        tiny_config(cohort_dir, tmp_path, ["train.scheduler=cosin"])


def test_pretrained_without_local_weights_names_the_option(cohort_dir, tmp_path):
    from melanet.train import fusion

    cfg = tiny_config(cohort_dir, tmp_path / "run", ["model.pretrained=true",
                                                      f"model.pretrained_path={tmp_path / 'missing.safetensors'}"])
    with pytest.raises(WeightsNotFoundError, match="model.pretrained_path"):
        fusion.run(cfg, folds=[0])


# Installed into the torchrun workers through PYTHONPATH: records every file each rank creates or renames.
_AUDIT = """
import atexit, os, sys
_root, _seen = os.environ["MELANET_AUDIT_ROOT"], []
def _hook(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)) and os.fspath(args[0]).startswith(_root):
        flags = args[2] if isinstance(args[2], int) else 0
        if (args[1] and set(args[1]) & set("wax+")) or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            _seen.append(os.fspath(args[0]))
    elif event == "os.rename" and str(args[1]).startswith(_root):
        _seen.append(str(args[1]))
sys.addaudithook(_hook)
_log = os.environ["MELANET_AUDIT_LOG"] + os.environ.get("RANK", "x")
atexit.register(lambda: open(_log, "w").write("\\n".join(_seen)))
"""


@pytest.mark.slow
def test_torchrun_two_cpu_processes_gather_oof_and_only_rank0_writes(cohort_dir, tmp_path):
    out = tmp_path / "run"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_AUDIT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]),
           "MELANET_AUDIT_ROOT": str(out), "MELANET_AUDIT_LOG": str(tmp_path / "writes_rank")}
    sets = ["image_size=32", "model.backbone=test_resnet", "model.pretrained=false", "model.meta_hidden=[16,8]",
            "train.epochs=1", "train.batch_size=8", "train.workers=0", "eval.tta=2", "engine.accelerator=cpu",
            "engine.threads=1", "train.aux_descriptors=0"]  # one epoch on 30 images: the label alone
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "melanet", "train-fusion", "--data", str(cohort_dir), "--out", str(out),
           "--config", "fusion-cpu-small", "--folds", "0", *[a for s in sets for a in ("--set", s)]]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    cohort = pd.read_parquet(cohort_dir / "cohort.parquet")
    fold_oof = pd.read_parquet(out / "fold_0" / "oof.parquet")
    expected = cohort.loc[(cohort["fold"] == 0) & cohort["target"].notna(), "image_id"]
    assert sorted(fold_oof["image_id"]) == sorted(expected)  # every row exactly once
    assert len(pd.read_parquet(out / "fold_0" / "test.parquet")) == int(cohort["target"].isna().sum())
    # Rank 0 wrote the artifacts; rank 1 created nothing under the run directory.
    written = {r: (tmp_path / f"writes_rank{r}").read_text().split() for r in (0, 1)}
    assert written[1] == []
    assert {str(out / "fold_0" / "DONE"), str(out / "fold_0" / "model.safetensors")} <= set(written[0])
    assert result.stderr.count("train-fusion finished") == 1
    # Same fold in one process: the same rows, and a score within the noise of two processes' batch order.
    from melanet import metrics
    from melanet.train import fusion

    single = tmp_path / "single"
    fusion.run(tiny_config(cohort_dir, single, ["train.batch_size=16", "train.lr=2e-3", "train.warmup_epochs=1",
                                                "engine.threads=1", "train.aux_descriptors=0"]), folds=[0])
    one = pd.read_parquet(single / "fold_0" / "oof.parquet").set_index("image_id").loc[fold_oof["image_id"]]
    aucs = [metrics.binary_metrics(t["target"], t["pred"])["auc"] for t in (fold_oof, one)]
    assert min(aucs) > 0.6 and abs(aucs[0] - aucs[1]) < 0.15, aucs


def test_staged_training_fits_metadata_on_the_image_model_and_predict_reproduces_it(cohort_dir, tmp_path):
    from melanet.train import fusion

    out = tmp_path / "staged"
    fusion.run(tiny_config(cohort_dir, out, ["train.epochs=2", "train.meta_epochs=3"]), folds=[1])
    history = pd.read_csv(out / "fold_1" / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4, 5]  # 2 image epochs, then 3 metadata epochs
    assert history["val_auc"].notna().all()
    oof = pd.read_parquet(out / "fold_1" / "oof.parquet")
    _rewrite_done_folds(out, [1])
    _mark_complete(out, [1])
    cohort = pd.read_parquet(cohort_dir / "cohort.parquet")
    pred = pd.Series(fusion.predict(out, cohort, cohort_dir), index=cohort["image_id"])
    np.testing.assert_allclose(pred.loc[oof["image_id"]].to_numpy(), oof["pred"].to_numpy(), atol=1e-5)
    # The saved network uses metadata: the same image with other metadata gets another score.
    from melanet.features import MetaEncoder
    from melanet.io import read_json
    from melanet.train.data import ImageStore
    from melanet.train.model import load_weights

    cfg = read_config(out, fusion.FusionConfig)
    encoder = MetaEncoder.from_dict(read_json(out / "fold_1" / "meta_encoder.json"))
    meta = encoder.transform(fusion.meta_features(cohort, cfg.features))
    model = fusion.build_model(cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": False})}),
                               meta.shape[1], 1)
    load_weights(model, out / "fold_1" / "model.safetensors").eval()
    assert not model.image_stage
    store = ImageStore(cohort_dir, cohort["image_path"].tolist(), SIZE, 100)
    rows = np.arange(4)
    a = fusion.predict_rows(model, store, rows, meta, channels_last=False)
    b = fusion.predict_rows(model, store, rows, np.zeros_like(meta), channels_last=False)
    assert not np.allclose(a, b)


def test_staged_head_starts_equal_to_the_image_head():
    import torch

    from melanet.train.model import FusionNet
    from melanet.train.staged import begin_image_stage, init_fused_head

    torch.manual_seed(0)
    net = FusionNet("test_resnet", n_meta=3, n_outputs=1, meta_hidden=(8, 4), image_aux_head=True).eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    begin_image_stage(net)
    image_only = net(images, torch.randn(4, 3))
    torch.testing.assert_close(image_only, net(images, torch.randn(4, 3)))  # stage 1 ignores metadata
    init_fused_head(net)
    net.image_stage = False
    torch.testing.assert_close(net(images, torch.randn(4, 3)), image_only)  # stage 2 starts from the image model


# --------------------------------------------------------------------------- stochastic weight averaging


def test_swa_saves_the_averaged_weights_with_batchnorm_measured_on_the_training_rows(cohort_dir, tmp_path):
    import torch

    from melanet.train import fusion
    from melanet.train.data import ImageStore
    from melanet.train.model import load_weights
    from melanet.train.swa import recompute_batchnorm

    runs = {}
    for name, extra in (("off", []), ("swa", ["train.swa_epochs=2", "train.swa_lr=1e-3"])):
        runs[name] = tmp_path / name
        fusion.run(tiny_config(cohort_dir, runs[name], ["train.epochs=3", "model.use_meta=false"] + extra),
                   folds=[1])
    cfg = read_config(runs["swa"], fusion.FusionConfig)
    cohort = pd.read_parquet(cohort_dir / "cohort.parquet")

    def saved(run):
        model = fusion.build_model(cfg, 0, 1)
        return load_weights(model, run / "fold_1" / "model.safetensors").eval()

    off, averaged = saved(runs["off"]), saved(runs["swa"])
    assert any(not torch.equal(dict(off.named_parameters())[n], p) for n, p in averaged.named_parameters())
    # Its BatchNorm statistics are those of the averaged weights over the fold's unaugmented training rows
    # (not the training's running estimates), so measuring them again gives the same numbers.
    meta = np.zeros((len(cohort), 0), np.float32)
    train_rows = np.flatnonzero(cohort["target"].notna().to_numpy() & (cohort["fold"] != 1).to_numpy())
    store = ImageStore(cohort_dir, cohort["image_path"].tolist(), SIZE, 100)
    again = saved(runs["swa"])
    recompute_batchnorm(again, store, train_rows, meta, batch_size=2 * cfg.train.batch_size,
                        device=torch.device("cpu"), channels_last=cfg.train.channels_last)
    for (name, a), b in zip(averaged.named_buffers(), again.buffers()):
        if "running" in name:
            torch.testing.assert_close(a, b, msg=name)
    assert json.loads((runs["swa"] / "fold_1" / "DONE").read_text())["swa_epochs"] == 2
    # The saved weights are those that predicted the OOF.
    oof = pd.read_parquet(runs["swa"] / "fold_1" / "oof.parquet")
    _rewrite_done_folds(runs["swa"], [1])
    _mark_complete(runs["swa"], [1])
    pred = pd.Series(fusion.predict(runs["swa"], cohort, cohort_dir), index=cohort["image_id"])
    np.testing.assert_allclose(pred.loc[oof["image_id"]].to_numpy(), oof["pred"].to_numpy(), atol=1e-5)


def test_seed_ensemble_averages_its_networks_and_predict_reproduces_it(cohort_dir, tmp_path):
    from melanet.report import training_panels
    from melanet.train import fusion
    from melanet.train.data import ImageStore
    from melanet.train.model import load_weights

    runs = {}
    for seeds in (1, 2):
        runs[seeds] = tmp_path / f"seeds{seeds}"
        fusion.run(tiny_config(cohort_dir, runs[seeds], ["model.use_meta=false", f"train.seeds={seeds}"]), folds=[1])
    fold = runs[2] / "fold_1"
    assert (fold / "model.safetensors").is_file() and (fold / "model_seed1.safetensors").is_file()
    assert not (runs[1] / "fold_1" / "model_seed1.safetensors").exists()
    done = json.loads((fold / "DONE").read_text())
    assert done["seeds"] == 2 and len(done["epoch_used"]) == 2
    history = pd.read_csv(fold / "history.csv")
    assert history["seed"].tolist() == [0, 1]
    assert set(training_panels({"fold 1": history})["loss"]) == {"fold 1 seed 0 train", "fold 1 seed 0 val",
                                                                 "fold 1 seed 1 train", "fold 1 seed 1 val"}
    # Network 0 is the single-seed run's network; the fold's OOF is the mean of both networks' probabilities.
    cohort = pd.read_parquet(cohort_dir / "cohort.parquet")
    single = pd.read_parquet(runs[1] / "fold_1" / "oof.parquet").set_index("image_id")["pred"]
    pair = pd.read_parquet(fold / "oof.parquet").set_index("image_id")["pred"]
    cfg = read_config(runs[2], fusion.FusionConfig)
    store = ImageStore(cohort_dir, cohort["image_path"].tolist(), SIZE, 100)
    rows = np.flatnonzero(cohort["image_id"].isin(pair.index).to_numpy())
    second = load_weights(fusion.build_model(cfg, 0, 1), fold / "model_seed1.safetensors")
    prob = fusion.predict_rows(second, store, rows, np.zeros((len(cohort), 0), np.float32), tta=cfg.eval.tta,
                               channels_last=cfg.train.channels_last)
    ids = cohort["image_id"].to_numpy()[rows]
    np.testing.assert_allclose(pair.loc[ids].to_numpy(), (single.loc[ids].to_numpy() + prob) / 2, atol=1e-5)
    assert np.abs(prob - single.loc[ids].to_numpy()).max() > 1e-4  # two different networks
    # predict() loads every network of the fold and reproduces the OOF.
    _rewrite_done_folds(runs[2], [1])
    _mark_complete(runs[2], [1])
    pred = pd.Series(fusion.predict(runs[2], cohort, cohort_dir), index=cohort["image_id"])
    np.testing.assert_allclose(pred.loc[ids].to_numpy(), pair.loc[ids].to_numpy(), atol=1e-5)


def test_recompute_batchnorm_measures_the_mean_of_the_given_rows(cohort_dir):
    import torch

    from melanet.train.data import ImageStore
    from melanet.train.model import FusionNet
    from melanet.train.swa import recompute_batchnorm

    cohort = pd.read_parquet(cohort_dir / "cohort.parquet")
    store = ImageStore(cohort_dir, cohort["image_path"].tolist(), SIZE, 100)
    rows = np.arange(0, len(cohort), 3)
    torch.manual_seed(0)
    net = FusionNet("test_resnet", n_meta=0, n_outputs=1, use_meta=False).eval()
    first = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    handle = first.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    recompute_batchnorm(net, store, rows, np.zeros((len(cohort), 0), np.float32), batch_size=len(rows),
                        device=torch.device("cpu"))
    handle.remove()
    assert not net.training and first.momentum == 0.1  # left in eval mode, momentum restored
    (inputs,) = seen  # one pass, one batch of every row
    assert len(inputs) == len(rows)
    torch.testing.assert_close(first.running_mean, inputs.mean(dim=(0, 2, 3)))


def test_swa_lr_holds_the_rate_over_the_averaged_epochs():
    import torch

    from melanet.train.fusion import TrainConfig
    from melanet.train.optim import LRSchedule

    train = TrainConfig(epochs=6, lr=4e-3, min_lr=1e-6, warmup_epochs=1, swa_epochs=2, swa_lr=1e-3)
    schedule = LRSchedule(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=train.lr), train, 5)
    lrs = []
    for _ in range(6 * 5):
        lrs.append(schedule.lr)
        schedule.step()
    assert max(lrs) == pytest.approx(4e-3)
    assert lrs[4 * 5:] == pytest.approx([1e-3] * 10)  # epochs 5-6: held at swa_lr
    assert all(a >= b for a, b in zip(lrs[5:20], lrs[6:21]))  # the cosine decays to it, never below


@pytest.mark.parametrize("overrides,match", [
    (["train.swa_epochs=1", "eval.oof_epoch=best"], "eval.oof_epoch=last"),
    (["train.epochs=3", "train.swa_epochs=4"], "at most 3"),
    (["train.swa_lr=1e-3"], "swa_epochs > 0"),
    (["train.swa_epochs=1", "train.swa_lr=1e-3", "train.scheduler=plateau"], "scheduler=cosine"),
    (["train.swa_epochs=1", "train.ema_decay=0.9"], "one of them"),
])
def test_swa_config_errors_name_the_keys(cohort_dir, tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(cohort_dir, tmp_path, overrides)
