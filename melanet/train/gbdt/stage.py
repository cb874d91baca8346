"""``melanet train-gbdt``'s stage runner: one model per fold into a run folder, and its output tables."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pandas as pd

from melanet.cohort import labelled_mask, read_cohort
from melanet.config import config_to_yaml
from melanet.console import console
from melanet.errors import ArtifactError
from melanet.io import write_csv, write_json, write_text
from melanet.runs import (RunDir, check_out_dir, check_run, comparable_config, fingerprint, merge_folds,
                          predictions_frame, read_exclude, resolve_target, run_identity)
from melanet.report import after_stage
from melanet.tracking import start_tracking
from melanet.train.gbdt.config import GBDTConfig
from melanet.train.gbdt.cv import class_prob, iter_fold_models, tune_params
from melanet.train.gbdt.dask import backend_client
from melanet.train.gbdt.engines import get_engine, n_classes_of
from melanet.train.gbdt.features import (FEATURES_FILE, apply_schema, feature_schema, feature_table,
                                         load_oof_features)
from melanet.train.gbdt.params import (check_engine_params, engine_params, model_factory, monotone_params,
                                       resolve_n_jobs, resolve_small_data)
from melanet.train.offset import resolve_mode as resolve_oof_mode

# Keys that do not change what a run computes: a resumed run may differ in them (see melanet.runs).
_OPERATIONAL = {"data_dir", "out_dir", "track", "track_uri", "report", "n_jobs", "scheduler", "dask_workers",
                "overwrite", "exclude", "with_oof"}


def identity(cfg: GBDTConfig, with_oof_ids: list[str]) -> tuple[str, dict]:
    """The run id of ``cfg``: its comparable settings, the cohort's and exclude list's bytes, the input runs' ids."""
    return run_identity("gbdt", comparable_config(cfg.model_dump(mode="json"), _OPERATIONAL), {
        "cohort": fingerprint(Path(cfg.data_dir) / "cohort.parquet"), "exclude": fingerprint(cfg.exclude),
        "with_oof": with_oof_ids})


def run(cfg: GBDTConfig, resume: bool = False) -> dict:
    """Train one model per fold on ``cfg.data_dir``'s cohort; write ``cfg.out_dir``; return its metrics.

    ``resume`` keeps the folds an interrupted run of the same settings and data finished.
    """
    started = time.perf_counter()
    check_out_dir(cfg.out_dir)
    engine = get_engine(cfg.engine)
    cohort = read_cohort(cfg.data_dir)
    labelled = labelled_mask(cohort, cfg.target)
    # On Dask the threads are split among the workers: the one-thread rule of small tables is a local one.
    n_jobs = resolve_n_jobs(cfg.n_jobs, int(labelled.sum()) if cfg.backend == "local" else None)
    spec = resolve_target(cohort.loc[labelled, cfg.target], cfg.target, cfg.positive_class, cfg.target_type)
    excluded = read_exclude(cfg.exclude, cohort)
    extra, oof_scaling = (load_oof_features(cohort, labelled, cfg.with_oof, cfg.with_oof_scale) if cfg.with_oof
                          else (None, {}))
    X_all = feature_table(cohort, cfg.features, extra, cfg.with_oof_context, cfg.target)
    schema = feature_schema(X_all)
    X_all = apply_schema(X_all, schema)  # the exact encoding predict() will apply to new rows

    rows, test_rows = cohort.loc[labelled].reset_index(drop=True), cohort.loc[~labelled].reset_index(drop=True)
    X, X_test = X_all.loc[labelled].reset_index(drop=True), X_all.loc[~labelled].reset_index(drop=True)
    y = spec.encode(rows[cfg.target])
    groups = rows["patient_id"].astype(str).to_numpy()
    trainable = ~excluded[labelled]
    folds = sorted(int(k) for k in rows["fold"].unique())
    if len(folds) < 2:
        raise ArtifactError(f"{cfg.data_dir}: the labelled rows of cohort.parquet span {len(folds)} fold(s); "
                            f"re-run `melanet ingest` with --folds 5")
    check_engine_params(cfg, engine_params(cfg), spec, X, y)

    cfg, small_lines = resolve_small_data(cfg, int(trainable.sum()))
    mode, mode_line = resolve_oof_mode(cfg.with_oof_mode, cfg.with_oof, spec.is_binary)
    if mode_line:
        cfg = cfg.model_copy(update={"with_oof_mode": mode})
        console.print(f"train-gbdt: {mode_line}", highlight=False)
    if small_lines:
        console.print(f"train-gbdt: {int(trainable.sum())} labelled training rows < small_data.max_rows "
                      f"{cfg.small_data.max_rows}: small-data settings -> " + "; ".join(small_lines), highlight=False)
    out = RunDir(cfg.out_dir, folds).begin(
        "gbdt", identity(cfg, [check_run(r).run_id for r in cfg.with_oof]),
        f"melanet train-gbdt --data {cfg.data_dir} --out {cfg.out_dir} --config {Path(cfg.out_dir) / 'config.yaml'} "
        f"--resume", overwrite=cfg.overwrite)
    todo = [k for k in folds if not (resume and out.is_done(k))]
    if len(todo) < len(folds):
        console.print(f"resume: fold(s) {[k for k in folds if k not in todo]} already done, skipping")
    write_text(out.path / "config.yaml", config_to_yaml(cfg))
    tracker = start_tracking(cfg.track, out.path, cfg.track_uri, params=cfg.model_dump(mode="json"))
    with contextlib.ExitStack() as stack:
        stack.callback(tracker.close)
        client = stack.enter_context(backend_client(cfg, n_jobs))
        params = engine_params(cfg)
        if cfg.tune:
            params, study = tune_params(X, y, rows, groups, trainable, spec, cfg, n_jobs, client)
            cfg = cfg.model_copy(update={cfg.engine: params})
            write_json(out.path / "tune.json", {"engine": cfg.engine, "trials": cfg.tune,
                                                "metric": "auc" if spec.score_column else "macro_auc",
                                                "best_value": study.best_value, "best_params": study.best_params})
            write_csv(out.path / "tune_trials.csv", study.trials_dataframe())
            write_text(out.path / "config.yaml", config_to_yaml(cfg))
        write_json(out.path / FEATURES_FILE, {**schema, "classes": spec.classes, "folds": folds,
                                              "oof_columns": [] if extra is None else list(extra.columns),
                                              "oof_scaling": oof_scaling})
        make = model_factory(cfg, monotone_params(cfg, params, list(X.columns),
                                                  [] if extra is None else list(extra.columns)),
                             spec, n_jobs, client)
        gains: dict[int, pd.Series] = {k: engine.load(out.fold_dir(k) / engine.model_file, n_classes_of(spec),
                                                      n_jobs).feature_gain() for k in folds if k not in todo}
        fold_start = time.perf_counter()
        for k, val, model in iter_fold_models(X, y, rows["fold"].to_numpy(), groups, trainable, make,
                                              cfg.inner_valid_fraction, cfg.seed, todo, refit=cfg.refit,
                                              inner_splits=cfg.inner_splits):
            out.unmark_done(k)
            idx = np.flatnonzero(val)
            oof_k = predictions_frame(rows.iloc[idx], class_prob(model.predict_proba(X.iloc[idx]), spec), spec)
            test_k = (predictions_frame(test_rows, class_prob(model.predict_proba(X_test), spec), spec)
                      if len(test_rows) else oof_k.iloc[:0])
            model.save(out.fold_dir(k) / engine.model_file)
            write_csv(out.fold_dir(k) / "history.csv", history_table(model.history_))
            out.write_fold_predictions(k, oof_k, test_k)
            out.mark_done(k, {"engine": engine.name, "backend": cfg.backend, "rounds": int(model.best_iteration_),
                              "n_train": model.n_train_, "n_early_stopping": model.n_early_stopping_,
                              "n_excluded": int((~val & ~trainable).sum()),
                              "inner_best_rounds": [int(r) for r in getattr(model, "inner_best_rounds_", [])],
                              "seconds": round(time.perf_counter() - fold_start, 3)},
                          files=[engine.model_file, "history.csv", *getattr(model, "saved_files", [])])
            fold_start = time.perf_counter()
            gains[k] = model.feature_gain()
        _, _, metrics = merge_folds(out, folds, spec)
        for k, fold_metrics in metrics["per_fold"].items():
            tracker.log_metrics({"fold": fold_metrics}, step=int(k))
        importance = importance_table(dict(sorted(gains.items())))
        write_csv(out.path / "feature_importance.csv", importance)
        # figures are not recorded: `melanet report` draws them (feature_importance.png from the CSV)
        out.complete(["config.yaml", FEATURES_FILE, "oof.parquet", "test.parquet", "metrics.json",
                      "feature_importance.csv"]
                     + (["tune.json", "tune_trials.csv"] if cfg.tune else []))
        after_stage(out.path, cfg.report)
        tracker.log_metrics({"overall": metrics["overall"]})
        for name in ("config.yaml", "metrics.json", "oof.parquet", "test.parquet", "feature_importance.csv",
                     "feature_importance.png"):
            tracker.log_artifact(out.path / name)
    where = " on Dask" if cfg.backend == "dask" else ""
    print_summary(metrics, f"train-gbdt ({engine.name}{where}, {len(X.columns)} features) "
                           f"in {time.perf_counter() - started:.1f}s -> {out.path}")
    return metrics


def history_table(history: pd.DataFrame) -> pd.DataFrame:
    """Early-stopping metric per boosting round, in the columns ``melanet report`` plots.

    ``epoch`` is the boosting round (1-based); log losses become ``val_loss``,
    AUC ``val_auc``, anything else ``val_<metric>``.
    """
    names = {"binary_logloss": "val_loss", "multi_logloss": "val_loss", "logloss": "val_loss",
             "mlogloss": "val_loss", "auc": "val_auc"}
    table = history.rename(columns=lambda c: names.get(c, f"val_{c}"))
    table.insert(0, "epoch", np.arange(1, len(table) + 1))
    return table


def importance_table(gains: dict[int, pd.Series]) -> pd.DataFrame:
    """``feature, gain, gain_std, gain_fold_<k>...``: total gain per fold and its mean, largest first."""
    per_fold = pd.DataFrame({f"gain_fold_{k}": g for k, g in gains.items()}).fillna(0.0)
    table = pd.DataFrame({"gain": per_fold.mean(axis=1), "gain_std": per_fold.std(axis=1, ddof=0)})
    table = pd.concat([table, per_fold], axis=1).rename_axis("feature").reset_index()
    return table.sort_values(["gain", "feature"], ascending=[False, True], kind="stable").reset_index(drop=True)


def print_summary(metrics: dict, title: str) -> None:
    """Rich table of per-fold and overall metrics."""
    from rich.table import Table

    names = (["n", "auc", "pauc80", "ap", "log_loss", "brier"] if metrics["task"] == "binary" else
             ["n", "macro_auc", "balanced_accuracy", "macro_f1"] + (["auc", "pauc80", "ap"] if
                                                                    metrics["positive_class"] else []))
    table = Table(title=title, title_justify="left")
    table.add_column("fold")
    for name in names:  # short, spaced headers wrap, so a multiclass table fits 80 columns
        header = {"balanced_accuracy": "bal acc"}.get(name, name.replace("_", " "))
        table.add_column(header, justify="right")

    def cells(values: dict) -> list[str]:
        return [str(values[n]) if n == "n" else f"{values.get(n, float('nan')):.3f}" for n in names]

    for k, values in metrics["per_fold"].items():
        table.add_row(k, *cells(values))
    table.add_row("all", *cells(metrics["overall"]), style="bold")
    console.print(table)

