"""Patient-grouped inner split of one outer fold's training rows, for choosing a recipe honestly.

Issue 12's rule: settings are chosen on a patient-grouped inner split of a
fold's training rows, never on the OOF folds. ``split`` writes a new data
folder whose ``cohort.parquet`` holds only outer fold K's labelled training
rows (fold != K; unlabelled rows are left out), with fresh StratifiedGroupKFold
folds (melanet.ingest.assign_folds, grouped by patient); the image cache is
reached through a symlink, so ``melanet train-fusion`` / ``train-gbdt`` run on
it unchanged. ``audit`` scores finished runs on it against the synthetic
cohort's ``truth.csv`` (melanet.audit), pooled over the inner folds and as the
mean over inner folds (the figures quoted in configs/fusion-cpu-small.yaml and image-cpu-small.yaml)::

    python scripts/inner_split.py split DATA_DIR --fold 0 --out /tmp/inner0        # 4 inner folds
    python -m melanet train-fusion --data /tmp/inner0 --config image-cpu-small --out /tmp/inner0-runs/base
    python scripts/inner_split.py audit SYNTH_DIR/truth.csv /tmp/inner0-runs/base /tmp/inner0-runs/ema
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def split(data_dir: Path, fold: int, out: Path, folds: int = 4, seed: int = 0, target: str = "target") -> Path:
    """Write ``out``: outer fold ``fold``'s training rows of ``data_dir`` with ``folds`` new patient-grouped folds."""
    from melanet.cohort import COHORT_FILE, labelled_mask, read_cohort
    from melanet.ingest import assign_folds
    from melanet.io import write_parquet

    cohort = read_cohort(data_dir)
    if fold not in set(cohort["fold"]):
        raise SystemExit(f"{data_dir}: no outer fold {fold}; its folds are {sorted(set(cohort['fold']) - {-1})}")
    keep = labelled_mask(cohort, target) & (cohort["fold"] != fold).to_numpy()
    inner = cohort.loc[keep].reset_index(drop=True)
    inner["fold"] = assign_folds(inner, target, folds, seed)
    out.mkdir(parents=True, exist_ok=True)
    for name in {Path(p).parts[0] for p in inner["image_path"]}:  # the image cache folder(s), shared not copied
        link = out / name
        if not link.exists():
            link.symlink_to((Path(data_dir) / name).resolve(), target_is_directory=True)
    for name in ("ingest_config.yaml", "ingest_summary.json"):
        if (Path(data_dir) / name).is_file():
            shutil.copy2(Path(data_dir) / name, out / name)
    write_parquet(out / COHORT_FILE, inner)
    counts = inner.groupby("fold")[target].agg(["size", "sum"])
    print(f"{out}: outer fold {fold}'s {len(inner)} training rows "
          f"({inner['patient_id'].nunique()} patients), inner folds (rows, positives): "
          + ", ".join(f"{k}: ({int(r['size'])}, {int(r['sum'])})" for k, r in counts.iterrows()))
    return out


def audit(truth_csv: Path, runs: list[Path]):
    """Audit figures of each run: pooled over its OOF rows, and the mean of AUC and r(image) over inner folds
    (every finished fold when the run trained a subset of them)."""
    import pandas as pd

    from melanet.audit import audit_oof

    truth = pd.read_csv(truth_csv, dtype={"image_id": str})
    rows = []
    for run in runs:
        merged = run / "oof.parquet"  # a run of a subset of the inner folds (--folds) has only fold_<k>/oof.parquet
        oof = pd.read_parquet(merged) if merged.is_file() else pd.concat(
            [pd.read_parquet(p) for p in sorted(run.glob("fold_*/oof.parquet"))], ignore_index=True)
        pooled = audit_oof(oof, truth)
        per_fold = pd.DataFrame([audit_oof(part, truth) for _, part in oof.groupby("fold")])
        rows.append({"run": run.name, "auc": pooled["auc"], "corr_image": pooled["corr_image"],
                     "fold_mean_auc": per_fold["auc"].mean(), "fold_mean_corr_image": per_fold["corr_image"].mean(),
                     "fold_aucs": " ".join(f"{v:.3f}" for v in per_fold["auc"]),
                     "image_term_auc": pooled["image_term_auc"]})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="Write the inner-split data folder.")
    s.add_argument("data_dir", type=Path, help="A `melanet ingest` output folder.")
    s.add_argument("--fold", type=int, default=0, help="Outer fold whose training rows are split.")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--folds", type=int, default=4, help="Inner folds.")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--target", default="target")
    a = sub.add_parser("audit", help="Audit finished runs on an inner split against truth.csv.")
    a.add_argument("truth", type=Path, help="truth.csv of the `melanet synth` cohort.")
    a.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    if args.command == "split":
        split(args.data_dir, args.fold, args.out, args.folds, args.seed, args.target)
    else:
        audit(args.truth, args.runs)


if __name__ == "__main__":
    main()
