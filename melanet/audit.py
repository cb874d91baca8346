"""Signal audit: how much of each true logit term a model's out-of-fold score holds.

A synthetic cohort knows the terms of each label's logit (``truth.csv`` of
``melanet synth``: ``image_term``, ``meta_term``, ``duckling_term``,
``noise_term``, ``p_true``). Given a model's OOF table (``image_id, target,
pred``), :func:`audit_oof` reports, on the OOF rows:

- ``auc``, ``pauc80``: the model's OOF AUC and partial AUC above 80% TPR;
- ``corr_<term>`` (image, meta, duckling, noise): Pearson correlation of the
  OOF logit, ``logit(clip(pred, 1e-6, 1 - 1e-6))``, with the true term. For a
  rank-average blend (pred in 0-1 but not a probability) the logit is a
  monotone stand-in; correlations of such runs read as "roughly";
- ``share_<term>`` (image, meta, duckling) and ``r2``: Pratt's decomposition
  of the R² of an ordinary least-squares fit of the OOF logit on the three
  observable terms (``share_k = beta_k * corr_k`` with standardised
  variables). The shares add up to ``r2``, the fraction of the OOF logit's
  variance the observable terms explain; a share is the part of it credited to
  one term, which - unlike squared correlations - stays additive although the
  image and duckling terms are correlated (both see a lesion's atypia). A
  share can be slightly negative when a term only suppresses another's noise;
- ``pcorr_<term>`` (image, meta, duckling): partial correlation of the OOF
  logit with the term, the other two observable terms held fixed (both
  regressed on them by least squares, then the residuals correlated): how
  much of that term the score holds beyond the others. It is the figure to
  compare across models that use different inputs: a fusion that also uses
  the metadata well has a LOWER ``corr_image`` than the image-only model (its
  score varies with the metadata too; the observable logit itself correlates
  only ~0.73 with the image term on the default cohort) but the same
  ``pcorr_image`` if it kept all of the image signal;
- ``ceiling_auc``, ``ceiling_pauc80``: AUC and pAUC80 of the observable logit
  (image + meta + duckling terms) on the same rows, the best score a model can
  reach from the files; ``gap`` = ``ceiling_auc - auc``;
- ``image_term_auc``: AUC of the image term alone on the same rows (the
  yardstick of an image-only model);
- ``p_true_auc``: AUC of the true probability (it also holds the unseen noise).

Pure: tables in, numbers out. ``scripts/bench_accuracy.py`` runs the trainers
and prints these figures for a matrix of cohorts.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from melanet.errors import InputDataError
from melanet.metrics import partial_auc_above_tpr

#: Observable logit terms of ``truth.csv`` (the noise term is unseen by any model).
OBSERVABLE = ("image", "meta", "duckling")
TERMS = (*OBSERVABLE, "noise")
TRUTH_COLUMNS = ("image_id", *(f"{t}_term" for t in TERMS), "p_true")
#: Column order of :func:`audit_runs`.
COLUMNS = ("model", "n", "auc", "pauc80", *(f"corr_{t}" for t in TERMS), *(f"pcorr_{t}" for t in OBSERVABLE),
           *(f"share_{t}" for t in OBSERVABLE), "r2", "ceiling_auc", "ceiling_pauc80", "gap", "image_term_auc", "p_true_auc")

_CLIP = 1e-6


def oof_logit(pred: np.ndarray | pd.Series) -> np.ndarray:
    """``log(p / (1 - p))`` of predictions clipped to [1e-6, 1 - 1e-6] (logit units)."""
    p = np.clip(np.asarray(pred, dtype=float), _CLIP, 1.0 - _CLIP)
    return np.log(p) - np.log1p(-p)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def pratt_shares(score: np.ndarray, terms: np.ndarray) -> tuple[np.ndarray, float]:
    """Pratt's R² decomposition of an OLS fit of ``score`` (n,) on ``terms`` (n, k).

    Returns (shares (k,), R²): ``share_j = beta_j * corr(score, term_j)`` with
    every variable standardised, so the shares sum to R². A constant term (std
    0, e.g. ``meta_signal=0``) gets share 0.
    """
    z = lambda v: (v - v.mean(axis=0)) / np.where(v.std(axis=0) > 0, v.std(axis=0), np.inf)  # noqa: E731
    y, x = z(np.asarray(score, float)), z(np.asarray(terms, float))
    if not np.any(y):
        return np.zeros(x.shape[1]), 0.0
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    corr = x.T @ y / len(y)
    shares = beta * corr
    return shares, float(shares.sum())


def partial_correlations(score: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """Partial correlation of ``score`` (n,) with each column of ``terms`` (n, k), the other columns held fixed.

    Column j: Pearson r of the residuals of ``score`` and of ``terms[:, j]``
    after a least-squares fit (with intercept) on the other k - 1 columns. A
    constant column gets NaN.
    """
    score, terms = np.asarray(score, float), np.asarray(terms, float)
    out = np.full(terms.shape[1], np.nan)
    for j in range(terms.shape[1]):
        others = np.column_stack([np.ones(len(score)), np.delete(terms, j, axis=1)])
        resid = lambda v: v - others @ np.linalg.lstsq(others, v, rcond=None)[0]  # noqa: E731
        out[j] = _pearson(resid(score), resid(terms[:, j]))
    return out


def _join(oof: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    for name, table, needed in (("OOF table", oof, ("image_id", "target", "pred")),
                                ("truth table", truth, TRUTH_COLUMNS)):
        missing = [c for c in needed if c not in table.columns]
        if missing:
            hint = (" (a multiclass run has pred_<class> columns; audit a binary run)"
                    if name == "OOF table" and "pred" in missing else "")
            raise InputDataError(f"{name} lacks column(s) {', '.join(missing)}{hint}")
    both = oof[["image_id", "target", "pred"]].merge(truth[list(TRUTH_COLUMNS)], on="image_id", how="left",
                                                     validate="one_to_one")
    unknown = both.loc[both["p_true"].isna(), "image_id"]
    if len(unknown):
        raise InputDataError(f"{len(unknown)} OOF image_id(s) are not in the truth table, e.g. "
                             f"{unknown.iloc[0]!r}: audit a run trained on that synthetic cohort")
    if both["target"].nunique() < 2:
        raise InputDataError("the OOF table holds one class only: AUC and correlations need both")
    return both


def audit_oof(oof: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """The audit figures (module docstring) of one model's OOF table against ``truth``.

    ``oof``: ``image_id, target, pred`` (pred = positive-class score in 0-1);
    ``truth``: ``melanet synth``'s truth.csv (``image_id``, the four terms,
    ``p_true``). Every OOF row must be in ``truth``; truth rows without an
    OOF prediction (the test split) are ignored.
    """
    both = _join(oof, truth)
    y = both["target"].astype(int).to_numpy()
    logit = oof_logit(both["pred"])
    terms = {t: both[f"{t}_term"].to_numpy(float) for t in TERMS}
    ceiling = sum(terms[t] for t in OBSERVABLE)
    observed = np.column_stack([terms[t] for t in OBSERVABLE])
    shares, r2 = pratt_shares(logit, observed)
    auc = float(roc_auc_score(y, both["pred"]))
    ceiling_auc = float(roc_auc_score(y, ceiling))
    return {
        "n": int(len(y)),
        "auc": auc,
        "pauc80": partial_auc_above_tpr(y, both["pred"].to_numpy(float)),
        **{f"corr_{t}": _pearson(logit, terms[t]) for t in TERMS},
        **{f"pcorr_{t}": float(r) for t, r in zip(OBSERVABLE, partial_correlations(logit, observed))},
        **{f"share_{t}": float(s) for t, s in zip(OBSERVABLE, shares)},
        "r2": r2,
        "ceiling_auc": ceiling_auc,
        "ceiling_pauc80": partial_auc_above_tpr(y, ceiling),
        "gap": ceiling_auc - auc,
        "image_term_auc": float(roc_auc_score(y, terms["image"])),
        "p_true_auc": float(roc_auc_score(y, both["p_true"])),
    }


def ceiling_oof(truth: pd.DataFrame) -> pd.DataFrame:
    """The observable logit (:func:`melanet.synth.observable_logit`) of the labelled rows (``split == "train"``,
    the rows a model's OOF table covers) as an OOF-shaped table: the perfect model's row.

    Audited like a model (:func:`audit_oof`), it shows what the best score a
    model can reach from the files looks like: e.g. its ``corr_image`` is the
    most a score that uses every observable term can correlate with the image
    term.
    """
    from scipy.special import expit

    from melanet.synth.sampler import observable_logit

    rows = truth[truth["split"] == "train"] if "split" in truth.columns else truth
    return pd.DataFrame({"image_id": rows["image_id"].to_numpy(), "target": rows["target"].to_numpy(),
                         "pred": expit(observable_logit(rows))})


def audit_runs(oofs: Mapping[str, pd.DataFrame], truth: pd.DataFrame) -> pd.DataFrame:
    """One row per model (``oofs``: model name -> OOF table), columns COLUMNS."""
    rows = [{"model": name, **audit_oof(oof, truth)} for name, oof in oofs.items()]
    return pd.DataFrame(rows, columns=list(COLUMNS))
