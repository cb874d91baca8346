"""``melanet predict``: apply a trained fusion, gbdt or blend run to new DICOM files.

The new files are ingested with the pixel settings the run's training data was
ingested with (read from ``DATA_DIR/ingest_config.yaml`` via the run's
``config.yaml``, never re-specified), every fold model predicts (with TTA for
the CNN), a GBDT trained ``--with-oof`` gets its image-model scores from the
referenced runs, and a blend applies its saved recipe. For images that were in
the run's own test set, the result equals the run's ``test.parquet``.
"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from melanet.config import build_config
from melanet.console import console
from melanet.errors import ArtifactError, ConfigError
from melanet.io import read_json, write_csv
from melanet.runs import KINDS, blend_inputs, check_run, read_config, training_data_dir

def run_kind(run_dir: Path) -> str:
    """Which stage wrote ``run_dir``: fusion, gbdt or blend (refused unless the run is complete and unmixed)."""
    return check_run(run_dir, KINDS, reader="predict").kind


def check_runs(run_dir: Path) -> None:
    """Verify every file of ``run_dir`` and of the runs it feeds on, before new files are decoded."""
    record = check_run(run_dir, KINDS, reader="predict")
    record.verify_all()
    if record.kind == "blend":
        for src in blend_inputs(run_dir, reader="predict"):
            check_runs(src)
    for src in (read_config(run_dir).get("with_oof") or []) if record.kind == "gbdt" else []:
        check_runs(Path(src))


def predict_cohort(run_dir: Path, cohort: pd.DataFrame, data_dir: Path) -> np.ndarray:
    """Probabilities of ``run_dir`` for the rows of ``cohort`` (images cached under ``data_dir``).

    Binary runs give (n,); multiclass runs (n, n_classes).
    """
    kind = run_kind(run_dir)
    if kind == "fusion":
        from melanet.train import fusion

        return fusion.predict(run_dir, cohort, data_dir)
    if kind == "gbdt":
        check_with_oof_sources(run_dir)
        # the mean over fold models, exactly as gbdt.predict averages them
        return np.mean(list(_gbdt_fold_probs(run_dir, cohort, data_dir).values()), axis=0)
    from melanet import blend

    inputs = blend_inputs(run_dir, reader="predict")
    scores = pd.DataFrame({i: _score(predict_cohort(src, cohort, data_dir), src)
                           for i, src in enumerate(inputs)}, index=cohort.index)
    return blend.apply_blend(run_dir, scores)


def fold_scores(run_dir: Path, cohort: pd.DataFrame, data_dir: Path) -> dict[int, np.ndarray] | None:
    """Each fold model's binary score for ``cohort``'s rows, or None for a run without fold models (a blend)."""
    kind = run_kind(run_dir)
    if kind == "fusion":
        from melanet.train import fusion

        probs = fusion.predict(run_dir, cohort, data_dir, per_fold=True)
    elif kind == "gbdt":
        probs = _gbdt_fold_probs(run_dir, cohort, data_dir)
    else:
        return None
    return {k: _score(p, run_dir) for k, p in probs.items()}


def check_with_oof_sources(run_dir: Path) -> None:
    """Refuse a ``--with-oof`` GBDT run whose score runs now hold another run than it was trained on."""
    sources = read_config(run_dir).get("with_oof") or []
    recorded = check_run(run_dir).identity.get("inputs", {}).get("with_oof") or [None] * len(sources)
    for src, run_id in zip(sources, recorded):
        if run_id is not None and check_run(src, reader="predict").run_id != run_id:
            raise ArtifactError(f"{run_dir} was trained on the scores of run {run_id} in {src}, which now holds "
                                f"another run; re-train it (`{check_run(run_dir).command}`)")


def _gbdt_fold_probs(run_dir: Path, cohort: pd.DataFrame, data_dir: Path) -> dict[int, np.ndarray]:
    from melanet.train import gbdt

    extra, extra_folds = None, {}
    sources = read_config(run_dir).get("with_oof") or []
    if sources:
        extra = pd.DataFrame(index=cohort.index)
        for i, src in enumerate(sources):
            name, folds = gbdt.oof_feature_name(src, i), fold_scores(Path(src), cohort, data_dir)
            if folds is not None:
                extra_folds[name] = folds
                extra[name] = np.mean(list(folds.values()), axis=0)
            else:
                extra[name] = _score(predict_cohort(Path(src), cohort, data_dir), Path(src))
    return gbdt.predict(run_dir, cohort, extra=extra, extra_folds=extra_folds, per_fold=True)


def _score(prob: np.ndarray, run_dir: Path) -> np.ndarray:
    """The binary score of a run's predictions (its positive class for multiclass runs)."""
    prob = np.asarray(prob)
    if prob.ndim == 1:
        return prob
    from melanet.runs import spec_from_metrics

    spec = spec_from_metrics(read_json(Path(run_dir) / "metrics.json"))
    if spec.positive_class is None:
        raise ArtifactError(f"{run_dir} is multiclass without positive_class; it cannot feed a binary score")
    return prob[:, spec.classes.index(spec.positive_class)]


def _training_key(data_dir: Path) -> bytes:
    """The training data's pseudonym key, read only (never made in, nor written to, the data folder).

    Without it (another machine or user) a one-off key is used: pseudonyms then group this
    call's images by patient consistently, which is all that prediction needs of them.
    """
    from melanet import privacy

    key = privacy.load_key(data_dir, create=False)
    if key is None:
        console.print("[yellow]note:[/] the training data's pseudonym key is not available here; patient ids of "
                      "this prediction use a one-off key", highlight=False)
        return secrets.token_bytes(32)
    return key


def check_out_file(out: Path) -> None:
    """Refuse an ``--out`` that cannot become a CSV file, before any work is done."""
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the CSV file to write, e.g. --out {out / 'predictions.csv'}")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--out {out}: {parent} is a file, so {out} cannot be written; give another path")


def run(run_dir: Path, dicom_dir: Path, out: Path, workers: int | None = None,
        cache_dir: Path | None = None) -> pd.DataFrame:
    """Predict ``dicom_dir`` with ``run_dir``; write ``out`` (CSV) and ``<out>.errors.csv`` if any failed."""
    from melanet import ingest
    from melanet.runs import spec_from_metrics

    run_dir, dicom_dir, out = Path(run_dir), Path(dicom_dir), Path(out)
    check_out_file(out)
    if not dicom_dir.is_dir():
        raise ArtifactError(f"DICOM folder {dicom_dir} {'is a file' if dicom_dir.exists() else 'not found'}; "
                            f"give the folder of new DICOM files")
    kind = run_kind(run_dir)
    check_runs(run_dir)
    data_dir = training_data_dir(run_dir, reader="predict")
    settings = data_dir / "ingest_config.yaml"
    if not settings.is_file():
        raise ArtifactError(f"{settings} not found: predict re-uses the pixel settings the run's data was ingested "
                            f"with; restore {data_dir} or re-run `melanet ingest ... --out {data_dir}`")
    trained = build_config(ingest.IngestConfig, yaml.safe_load(settings.read_text()), str(settings))
    if cache_dir is None:  # decoded images and headers of the new files are removed after the call
        with tempfile.TemporaryDirectory(prefix="melanet-predict-") as tmp:
            return run(run_dir, dicom_dir, out, workers, Path(tmp))
    work = Path(cache_dir)
    cfg = trained.model_copy(update={"dicom_dir": dicom_dir, "out_dir": work, "labels": None, "eda": False,
                                     "engine": "local", "workers": workers if workers is not None else trained.workers})
    cohort, errors, n_files, _ = ingest.decode_folder(cfg, work, _training_key(data_dir), label="predict: ingest")
    cohort["fold"] = -1
    if len(cohort) == 0:
        raise ArtifactError(f"no file under {dicom_dir} could be used ({len(errors)} errors; first: "
                            f"{errors.iloc[0].to_dict() if len(errors) else 'no files'})")
    prob = predict_cohort(run_dir, cohort, work)
    spec = spec_from_metrics(read_json(run_dir / "metrics.json")) if kind != "blend" else None
    table = pd.DataFrame({"image_id": cohort["image_id"].to_numpy()})
    if prob.ndim == 1:
        table["pred"] = prob
    else:
        for j, c in enumerate(spec.classes):
            table[f"pred_{c}"] = prob[:, j]
        if spec.positive_class is not None:
            table.insert(1, "pred", prob[:, spec.classes.index(spec.positive_class)])
    write_csv(out, table)
    if len(errors):
        write_csv(out.with_suffix(".errors.csv"), errors)
    else:  # a list left by an earlier call must not describe this one
        out.with_suffix(".errors.csv").unlink(missing_ok=True)
    console.print(f"[bold]predict[/] ({kind}): {n_files} files seen = {len(table)} predicted + {len(errors)} "
                  f"not usable{' (see ' + str(out.with_suffix('.errors.csv')) + ')' if len(errors) else ''} -> {out}")
    return table
