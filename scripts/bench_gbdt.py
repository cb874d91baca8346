"""Benchmark: ``train-gbdt`` against bare ``lightgbm.train`` calls, same data, folds and parameters.

    python scripts/bench_gbdt.py [--rows 100000] [--repeats 2] [--n-jobs 2]

Writes a synthetic metadata cohort (``--rows`` images, ~4 per patient, 10% of
patients unlabelled, 5 patient-grouped folds), then times, alternately:

- ``train-gbdt``: ``melanet.train.gbdt.run`` exactly as the CLI calls it with
  the packaged ``gbdt`` config (``report: false``: report.html is a separate
  step, ``melanet report``, timed on its own below);
- bare LightGBM: on the same feature matrix, built once and not timed, the
  same folds, the same patient-grouped early-stopping split and the same
  parameters: ``lgb.Dataset`` + ``lgb.train`` + OOF and test predictions per
  fold, nothing written.

Everything train-gbdt does besides those calls (reading the cohort, features,
inner split, model/prediction/metric files, importance table and plot) is its
overhead. Prints the best time of each over ``--repeats``, the ratio (target
<= 1.3) and checks that both produce the same OOF predictions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from melanet.config import load_config
from melanet.cohort import labelled_mask, read_cohort
from melanet.metrics import binary_metrics
from melanet.train import gbdt

SITES = np.array(["TORSO", "ANTERIOR TORSO", "POSTERIOR TORSO", "LOWER EXTREMITY", "UPPER EXTREMITY",
                  "HEAD/NECK", "PALMS/SOLES", "ORAL/GENITAL"])


def synthetic_cohort(n_rows: int, seed: int = 0) -> pd.DataFrame:
    """cohort.parquet columns for ``n_rows`` images; risk from age, sex x site and within-patient age."""
    rng = np.random.default_rng(seed)
    counts = 1 + rng.poisson(3.0, n_rows)
    pat = np.repeat(np.arange(len(counts)), counts)[:n_rows]
    n_pat = pat.max() + 1
    male = rng.random(n_pat) < 0.5
    age0 = np.clip(rng.normal(50, 16, n_pat), 2, 90)
    later = rng.integers(0, 5, n_rows).astype(float)
    age = age0[pat] + later
    site = SITES[rng.integers(0, len(SITES), n_rows)]
    logit = (-3.0 + 2.0 / (1 + np.exp(-(age - 58) / 7)) + 1.0 * (np.isin(site, SITES[:3]) & male[pat])
             + 0.3 * (later - 2) + rng.normal(0, 1.0, n_rows))
    target = (rng.random(n_rows) < 1 / (1 + np.exp(-logit))).astype(float)
    test_patient = rng.random(n_pat) < 0.1
    ids = np.char.add("ISIC_", np.char.zfill(rng.permutation(n_rows).astype(str), 7))
    return pd.DataFrame({
        "image_id": ids, "sop_instance_uid": np.char.add("1.2.3.", np.arange(n_rows).astype(str)),
        "patient_id": np.char.add("IP_", pat.astype(str)),
        "sex": pd.Series(np.where(male[pat], "male", "female")).where(rng.random(n_rows) > 0.03, None),
        "age": pd.Series(age).where(rng.random(n_rows) > 0.05),
        "site": pd.Series(site).where(rng.random(n_rows) > 0.1, None),
        "modality": "XC", "photometric": np.where(rng.random(n_rows) < 0.9, "YBR_FULL_422", "RGB"),
        "rows": rng.choice([512, 1024, 2048], n_rows), "cols": rng.choice([512, 1024, 2048], n_rows),
        "frames": 1, "bits_stored": 8, "transfer_syntax": "1.2.840.10008.1.2.4.50",
        "sha256": "0" * 64, "image_path": np.char.add(np.char.add("images/", ids), ".npy"),
        "target": np.where(test_patient[pat], np.nan, target),
        "fold": np.where(test_patient[pat], -1, rng.permutation(n_pat)[pat] % 5),
    })


def bare_lightgbm(cfg: gbdt.GBDTConfig) -> tuple[float, float, np.ndarray]:
    """Wall and CPU seconds in lgb.Dataset/train/predict over the folds, and the OOF predictions (labelled rows)."""
    cohort = read_cohort(cfg.data_dir)
    labelled = labelled_mask(cohort, cfg.target)
    X_all = gbdt.feature_table(cohort, cfg.features)
    X_all = gbdt.apply_schema(X_all, gbdt.feature_schema(X_all))
    X, X_test = X_all.loc[labelled].reset_index(drop=True), X_all.loc[~labelled].reset_index(drop=True)
    rows = cohort.loc[labelled].reset_index(drop=True)
    y, fold, groups = rows["target"].to_numpy(int), rows["fold"].to_numpy(), rows["patient_id"].astype(str).to_numpy()
    splits = {}
    for k in sorted(set(fold)):
        train = np.flatnonzero(fold != k)
        fit, stop = gbdt.inner_split(y[train], groups[train], cfg.inner_valid_fraction, cfg.seed + int(k))
        splits[k] = (train[fit], train[stop], np.flatnonzero(fold == k))
    params = {**cfg.lightgbm, "objective": "binary", "seed": cfg.seed, "num_threads": gbdt.resolve_n_jobs(cfg.n_jobs)}
    oof, test = np.zeros(len(rows)), np.zeros(len(X_test))
    start, cpu = time.perf_counter(), time.process_time()
    for fit, stop, val in splits.values():
        dtrain = lgb.Dataset(X.iloc[fit], y[fit])
        dstop = lgb.Dataset(X.iloc[stop], y[stop], reference=dtrain)
        booster = lgb.train(params, dtrain, cfg.num_boost_round, valid_sets=[dstop],
                            callbacks=[lgb.early_stopping(cfg.early_stopping_rounds, verbose=False)])
        rounds = booster.best_iteration
        if cfg.refit:  # as train-gbdt does: boost again on all training rows, rounds scaled up
            rounds = gbdt.refit_rounds(rounds, cfg.inner_valid_fraction)
            train = np.sort(np.concatenate([fit, stop]))  # the fold's training rows in cohort order
            booster = lgb.train(params, lgb.Dataset(X.iloc[train], y[train]), rounds)
        oof[val] = booster.predict(X.iloc[val], num_iteration=rounds)
        test += booster.predict(X_test, num_iteration=rounds) / len(splits)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return seconds, cpu, pd.Series(oof, index=rows["image_id"].to_numpy()).sort_index().to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="Folder for the cohort and runs (default: temp).")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-gbdt-"))
    (work / "data").mkdir(parents=True, exist_ok=True)
    cohort = synthetic_cohort(args.rows)
    cohort.to_parquet(work / "data" / "cohort.parquet", index=False)
    print(f"cohort: {len(cohort)} rows, {cohort['patient_id'].nunique()} patients, "
          f"{int(cohort['target'].notna().sum())} labelled, prevalence {cohort['target'].mean():.3f}; n_jobs {args.n_jobs}")

    def config(out: Path) -> gbdt.GBDTConfig:
        return load_config(gbdt.GBDTConfig, "gbdt", ["report=false"], extra={
            "data_dir": str(work / "data"), "out_dir": str(out), "n_jobs": args.n_jobs})

    melanet_s, bare_s, melanet_cpu, bare_cpu = [], [], [], []
    for r in range(args.repeats):
        seconds, cpu, bare_oof = bare_lightgbm(config(work / "unused"))
        bare_s.append(seconds)
        bare_cpu.append(cpu)
        out = work / f"run_{r}"
        start, cpu = time.perf_counter(), time.process_time()
        metrics = gbdt.run(config(out))
        melanet_s.append(time.perf_counter() - start)
        melanet_cpu.append(time.process_time() - cpu)
        print(f"repeat {r}: bare lightgbm.train {bare_s[-1]:.2f}s wall / {bare_cpu[-1]:.2f}s CPU, "
              f"train-gbdt {melanet_s[-1]:.2f}s wall / {melanet_cpu[-1]:.2f}s CPU")

    oof = pd.read_parquet(out / "oof.parquet").sort_values("image_id")
    same = float(np.abs(oof["pred"].to_numpy() - bare_oof).max())
    bare_auc = binary_metrics(oof["target"].astype(int), bare_oof)["auc"]
    print(f"OOF AUC train-gbdt {metrics['overall']['auc']:.4f}, bare {bare_auc:.4f}; max |difference| {same:.2e}")
    try:
        from melanet import report

        start = time.perf_counter()
        report.run(out)
        print(f"(separately: melanet report on the run {time.perf_counter() - start:.2f}s)")
    except ImportError:
        pass
    # Best of the repeats: on a shared machine the minimum is the least disturbed measurement.
    ratio = min(melanet_s) / min(bare_s)
    print(f"CPU time: train-gbdt {min(melanet_cpu):.2f}s / bare {min(bare_cpu):.2f}s "
          f"= {min(melanet_cpu) / min(bare_cpu):.3f}")
    print(f"best of {args.repeats}: train-gbdt {min(melanet_s):.2f}s / bare lightgbm.train {min(bare_s):.2f}s "
          f"= overhead ratio {ratio:.3f} (target <= 1.3)")


if __name__ == "__main__":
    main()
