"""How much of the synthetic "ugly duckling" term a label-trained GBDT can catch, and why.

    python scripts/duckling_ceiling.py SYNTH_DIR DATA_DIR

SYNTH_DIR is a ``melanet synth`` output (``truth.csv``, ``synth.json``),
DATA_DIR its ``melanet ingest`` folder (with descriptors). On the labelled
rows, with the cohort's folds, it prints the Pearson correlation of each
model's OOF logit with the true duckling term (the figure ``melanet.audit``
reports as ``corr_duckling``) and its OOF AUC, for LightGBM (small-data
settings, inner early stopping) on:

1. the observable logit itself (image + meta + duckling terms): a perfect model;
2. melanet's GBDT feature table (metadata, descriptors, patient context);
3. the same plus the true image and meta terms: what the descriptors alone
   give of the duckling term when everything else is known;
4. the same plus PERFECT measurements of what the renderer draws per lesion
   (hue, pattern, radius, irregularity, variegation, asymmetry) with melanet's
   own patient context on them: the best any pixel descriptor could give;
5. the same plus the true duckling term (the model's ceiling with these labels).

It also regresses the duckling term itself on the features of 2 and 4 (OOF
correlation): how much of the term those features hold at all. The render
parameters come from re-drawing the cohort with its seed
(``melanet.synth.sampler.sample_cohort``): a diagnostic of the generator,
never a feature of melanet.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

warnings.filterwarnings("ignore", category=UserWarning)

PARAMS = dict(objective="binary", learning_rate=0.05, num_leaves=7, max_depth=3, min_data_in_leaf=40, lambda_l2=10.0,
              feature_fraction=0.7, bagging_fraction=0.8, bagging_freq=1, verbosity=-1, num_threads=1,
              max_cat_to_onehot=4, deterministic=True, force_col_wise=True, seed=0)


def oof_scores(X: pd.DataFrame, y: np.ndarray, fold: np.ndarray, groups: np.ndarray,
               objective: str = "binary") -> np.ndarray:
    """OOF predictions over the labelled rows' folds; rounds by early stopping on 20 % of the training patients."""
    out = np.full(len(X), np.nan)
    params = dict(PARAMS, objective=objective)
    for k in np.unique(fold[fold >= 0]):
        train, valid = (fold >= 0) & (fold != k), fold == k
        patients = np.unique(groups[train])
        inner = np.isin(groups, np.random.default_rng(k).choice(patients, len(patients) // 5, replace=False))
        fit, stop = train & ~inner, train & inner
        probe = lgb.train(params, lgb.Dataset(X[fit], y[fit]), 3000, valid_sets=[lgb.Dataset(X[stop], y[stop])],
                          callbacks=[lgb.early_stopping(100, verbose=False)])
        model = lgb.train(params, lgb.Dataset(X[train], y[train]), max(50, int(probe.best_iteration * 1.1)))
        out[valid] = model.predict(X[valid])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("synth_dir", type=Path)
    ap.add_argument("data_dir", type=Path)
    args = ap.parse_args()

    from sklearn.metrics import roc_auc_score

    from melanet import features as F
    from melanet.audit import oof_logit
    from melanet.cohort import read_cohort
    from melanet.synth import SynthConfig
    from melanet.synth.sampler import sample_cohort
    from melanet.train.gbdt.config import FeatureConfig
    from melanet.train.gbdt.features import feature_table

    cohort = read_cohort(args.data_dir)
    truth = cohort[["image_id"]].merge(pd.read_csv(args.synth_dir / "truth.csv"), on="image_id", how="left")
    cfg = json.loads((args.synth_dir / "synth.json").read_text())["config"]
    drawn = cohort[["image_id"]].merge(sample_cohort(SynthConfig(out_dir=args.synth_dir, **cfg)), on="image_id",
                                       how="left")
    fold, groups = cohort["fold"].to_numpy(), cohort["patient_id"].astype(str).to_numpy()
    lab = fold >= 0
    y = cohort["target"].to_numpy(float)
    duck = truth["duckling_term"].to_numpy()
    observable = (truth["image_term"] + truth["meta_term"] + truth["duckling_term"]).to_numpy()

    def corr(score: np.ndarray) -> float:
        return float(np.corrcoef(score[lab], duck[lab])[0, 1])

    base = feature_table(cohort, FeatureConfig())
    terms = pd.DataFrame({"true_image_term": truth["image_term"], "true_meta_term": truth["meta_term"]},
                         index=cohort.index)
    render = pd.DataFrame({"hue": drawn["hue"], "log_radius": np.log(drawn["radius"]),
                           "irregularity": drawn["irregularity"], "variegation": drawn["variegation"],
                           "asymmetry": drawn["asymmetry"],
                           **{f"pattern_{k}": (drawn["pattern"] == k).astype(float) for k in range(3)}},
                          index=cohort.index)
    render = pd.concat([render, F.patient_context(cohort["patient_id"], render),
                        F.ugly_duckling_distance(cohort["patient_id"], render).rename("render_duckling")], axis=1)
    render = render.loc[:, ~render.columns.duplicated()].add_prefix("render_")
    tables = {"melanet features": base,
              "+ true image, meta terms": pd.concat([base, terms], axis=1),
              "+ perfect render measurements": pd.concat([base, terms, render], axis=1),
              "+ true duckling term": pd.concat([base, terms, render,
                                                 truth[["duckling_term"]].set_index(cohort.index)], axis=1)}
    print(f"{args.synth_dir}: {lab.sum()} labelled rows")
    print(f"{'perfect model (observable logit)':<46} corr duckling {corr(observable):.3f}  "
          f"AUC {roc_auc_score(y[lab], observable[lab]):.3f}")
    for name, X in tables.items():
        pred = oof_scores(X, y, fold, groups)
        print(f"{'GBDT on labels, ' + name:<46} corr duckling {corr(oof_logit(pred)):.3f}  "
              f"AUC {roc_auc_score(y[lab], pred[lab]):.3f}")
    for name in ("melanet features", "+ perfect render measurements"):
        X = tables[name].drop(columns=list(terms.columns), errors="ignore")
        pred = oof_scores(X, duck, fold, groups, objective="regression")
        print(f"{'regression on the term, ' + name:<46} corr duckling {corr(pred):.3f}")


if __name__ == "__main__":
    main()
