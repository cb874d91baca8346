"""``melanet blend``: combine runs' out-of-fold and test scores, checked by cross validation.

Methods (chosen by name, :data:`BLENDERS`):

- ``rank``: equal-weight average of each input's rank, the 2020 winners'
  ensemble. Each input's scores are mapped through the empirical CDF of its
  own OOF scores (mid-ranks, linearly interpolated between distinct OOF
  values), so the blend OOF is one global rank scale comparable across folds
  and a test row gets the value its score would have had among the OOF rows.
  The outputs lie in [0, 1] but are **not probabilities**: log loss and Brier
  are reported as NaN. The mapping uses no labels, so it is fitted once on the
  whole OOF table.
- ``weights``: non-negative weights summing to one on the inputs'
  probabilities, fitted by minimising OOF log loss (a convex problem; scipy
  SLSQP). The output is a probability.
- ``stack``: logistic regression on the inputs' logits. The output is a
  probability.

For ``weights`` and ``stack`` the blend's OOF (and so every reported score) is
cross-validated over the folds: fold k is predicted by a blender fitted on the
other folds' OOF rows. The weights used for ``test.parquet`` and by
:func:`apply_blend` are fitted on the whole OOF table. The in-sample score is
kept in ``metrics.json`` under ``in_sample`` for comparison.

Writes a run directory like any trainer's (``oof.parquet``, ``test.parquet``,
``metrics.json``, ``config.yaml``) plus ``blend.json`` (the recipe
:func:`apply_blend` needs to score new rows) and ``comparison.csv`` (each
input and the blend, per metric, with fold-to-fold spread and bootstrap AUC
intervals).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import Field
from scipy.optimize import minimize
from scipy.special import expit, logit
from sklearn.base import BaseEstimator, clone
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from melanet import metrics as M
from melanet.config import StageConfig, config_to_yaml
from melanet.console import console
from melanet.errors import ArtifactError, ConfigError, unknown_choice
from melanet.io import write_csv, write_json, write_parquet, write_text
from melanet.report import after_stage
from melanet.runs import (BLEND_FILE, COMPARISON_FILE, CONFIG_FILE, RunDir, TargetSpec, check_out_dir, check_run,
                          comparable_config, evaluate, predictions_frame, read_recipe, read_run, recipe_inputs,
                          run_identity, spec_from_metrics)
METRICS = ["auc", "pauc80", "ap", "log_loss", "brier"]
PROBABILITY_METRICS = ["log_loss", "brier"]


class BlendConfig(StageConfig):
    """``melanet blend`` options."""

    runs: list[Path] = Field(min_length=2, description="Run folders to blend (each with oof/test.parquet).")
    out_dir: Path = Field(description="Blend run folder to write.")
    method: str = Field("auto", description="auto (chosen by nested cross validation, melanet/blend_auto.py), "
                                            "rank, weights or stack.")
    stack_c: float = Field(1.0, gt=0, description="Inverse L2 strength of the stacking logistic regression.")
    n_boot: int = Field(500, ge=0, description="Bootstrap resamples for AUC intervals (0 = off).")
    seed: int = Field(0, description="Bootstrap seed.")
    report: bool = Field(True, description="Write report.html into the blend folder.")
    track: str = "none"
    track_uri: str | None = None
    overwrite: bool = Field(False, description="Replace another run found in out_dir (otherwise refused).")


# Keys that do not change the blend (the input runs enter the id by their run ids, not their paths).
_OPERATIONAL = {"runs", "out_dir", "report", "track", "track_uri", "overwrite"}


# --- blenders (scikit-learn estimator contract) -------------------------------------------


class RankBlender(BaseEstimator):
    """Equal-weight mean of each column's OOF empirical-CDF value (mid-rank scaled to 0-1)."""

    uses_labels: ClassVar[bool] = False
    probabilities: ClassVar[bool] = False

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> RankBlender:
        X = np.asarray(X, dtype=float)
        n = len(X)
        self.knots_, self.quantiles_ = [], []
        for col in X.T:
            knots, counts = np.unique(col, return_counts=True)
            below = np.cumsum(counts) - counts
            self.knots_.append(knots)
            # mid-rank: ties share the mean of the ranks they span, so ties stay ties
            self.quantiles_.append((below + counts / 2.0) / n)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "knots_")
        X = _check_columns(X, len(self.knots_))
        ranks = [np.interp(X[:, j], k, q, left=0.0, right=1.0)
                 for j, (k, q) in enumerate(zip(self.knots_, self.quantiles_))]
        return np.mean(ranks, axis=0)

    def weights(self) -> np.ndarray:
        check_is_fitted(self, "knots_")
        return np.full(len(self.knots_), 1.0 / len(self.knots_))

    def state(self) -> dict:
        check_is_fitted(self, "knots_")
        return {"knots": [k.tolist() for k in self.knots_], "quantiles": [q.tolist() for q in self.quantiles_]}

    def set_state(self, state: dict) -> RankBlender:
        self.knots_ = [np.asarray(k, dtype=float) for k in state["knots"]]
        self.quantiles_ = [np.asarray(q, dtype=float) for q in state["quantiles"]]
        return self


class WeightsBlender(BaseEstimator):
    """Convex combination of the inputs' probabilities minimising log loss (weights >= 0, sum 1)."""

    uses_labels: ClassVar[bool] = True
    probabilities: ClassVar[bool] = True

    def fit(self, X: np.ndarray, y: np.ndarray) -> WeightsBlender:
        X = np.clip(np.asarray(X, dtype=float), M.EPS, 1 - M.EPS)
        y = np.asarray(y, dtype=float)
        m = X.shape[1]

        def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
            p = np.clip(X @ w, M.EPS, 1 - M.EPS)
            loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
            grad = -X.T @ (y / p - (1 - y) / (1 - p)) / len(y)
            return float(loss), grad

        res = minimize(loss_and_grad, np.full(m, 1.0 / m), jac=True, method="SLSQP",
                       bounds=[(0.0, 1.0)] * m,
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(m)}],
                       options={"ftol": 1e-12, "maxiter": 500})
        w = np.clip(res.x, 0.0, None)
        self.weights_ = w / w.sum()
        self.loss_ = float(res.fun)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "weights_")
        return _dot(_check_columns(X, len(self.weights_)), self.weights_)

    def weights(self) -> np.ndarray:
        check_is_fitted(self, "weights_")
        return self.weights_

    def state(self) -> dict:
        return {"weights": self.weights().tolist()}

    def set_state(self, state: dict) -> WeightsBlender:
        self.weights_ = np.asarray(state["weights"], dtype=float)
        return self


class StackBlender(BaseEstimator):
    """Logistic regression on the inputs' logits (L2, strength ``1/C``)."""

    uses_labels: ClassVar[bool] = True
    probabilities: ClassVar[bool] = True

    def __init__(self, C: float = 1.0):
        self.C = C

    def fit(self, X: np.ndarray, y: np.ndarray) -> StackBlender:
        lr = LogisticRegression(C=self.C, max_iter=1000).fit(_logits(X), np.asarray(y, dtype=int))
        # keep plain arrays: predict must be reproducible from blend.json alone
        self.coef_ = lr.coef_.ravel().astype(float)
        self.intercept_ = float(lr.intercept_[0])
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "coef_")
        return expit(_dot(_logits(_check_columns(X, len(self.coef_))), self.coef_) + self.intercept_)

    def weights(self) -> np.ndarray:
        check_is_fitted(self, "coef_")
        return self.coef_

    def state(self) -> dict:
        return {"coef": self.weights().tolist(), "intercept": self.intercept_}

    def set_state(self, state: dict) -> StackBlender:
        self.coef_ = np.asarray(state["coef"], dtype=float)
        self.intercept_ = float(state["intercept"])
        return self


BLENDERS: dict[str, type[BaseEstimator]] = {"rank": RankBlender, "weights": WeightsBlender, "stack": StackBlender}


#: Every name ``method`` accepts: ``auto`` chooses among the others (and each single input) by nested CV.
METHODS = ("auto", *BLENDERS)


def make_blender(method: str, **params: Any) -> BaseEstimator:
    """A blender by name (``auto``, ``rank``, ``weights``, ``stack``); unknown names get a did-you-mean."""
    if method not in METHODS:
        raise unknown_choice("blend method", method, METHODS)
    if method == "auto":
        from melanet.blend_auto import AutoBlender

        cls = AutoBlender
    else:
        cls = BLENDERS[method]
    return cls(**{k: v for k, v in params.items() if k in cls._get_param_names()})


def _dot(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Row-wise ``X @ w`` without BLAS: BLAS picks kernels by memory layout and thread count, so the same rows
    could give different last bits in ``run`` and in ``apply_blend``; blend.json must reproduce test.parquet."""
    return np.einsum("ij,j->i", np.asarray(X, dtype=float), np.asarray(w, dtype=float))


def _logits(X: np.ndarray) -> np.ndarray:
    return logit(np.clip(np.asarray(X, dtype=float), M.EPS, 1 - M.EPS))


def _check_columns(X: np.ndarray, m: int) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[1] != m:
        raise ArtifactError(f"blend expects {m} score columns (one per input run), got shape {X.shape}")
    return X


def cross_val_blend(blender: BaseEstimator, X: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Blend OOF: each fold predicted by a clone of ``blender`` fitted on the other folds' rows.

    A blender that uses no labels (rank) is fitted once on all rows instead: there
    is nothing for it to overfit, and one global rank scale keeps folds comparable.
    """
    if not blender.uses_labels:
        return clone(blender).fit(X).predict(X)
    out = np.empty(len(y), dtype=float)
    for k in np.unique(folds):
        held = folds == k
        if len(np.unique(y[~held])) < 2:
            raise ArtifactError(f"the OOF rows outside fold {k} hold a single class; cannot fit the blend")
        out[held] = clone(blender).fit(X[~held], y[~held]).predict(X[held])
    return out


# --- inputs ---------------------------------------------------------------------------------


@dataclass
class BlendInputs:
    """Input runs aligned on ``image_id``: OOF/test score matrices (one column per run)."""

    names: list[str]
    paths: list[Path]
    score_columns: list[str]
    probabilities: list[bool]
    oof: pd.DataFrame        # image_id, patient_id, fold, target (0/1 of the scored class)
    X_oof: np.ndarray        # (n_oof, n_runs)
    test: pd.DataFrame       # image_id, patient_id, fold, target
    X_test: np.ndarray       # (n_test, n_runs)


def _input_names(paths: list[Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        base = p.resolve().name or "run"
        name, i = base, 2
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names.append(name)
    return names


def _first_difference(a: pd.Series, b: pd.Series) -> int | None:
    diff = np.flatnonzero(a.to_numpy() != b.to_numpy())
    return int(diff[0]) if len(diff) else None


def check_aligned(tables: dict[str, pd.DataFrame], what: str = "OOF") -> None:
    """Refuse tables (sorted by ``image_id``; columns image_id[, fold, y]) whose ids, folds or labels differ.

    The message names both runs and the first differing ``image_id``.
    """
    names = list(tables)
    ref_name, ref = names[0], tables[names[0]]
    for name in names[1:]:
        df = tables[name]
        if len(df) != len(ref) or _first_difference(df["image_id"], ref["image_id"]) is not None:
            only_ref = set(ref["image_id"]) - set(df["image_id"])
            only_df = set(df["image_id"]) - set(ref["image_id"])
            first = min(only_ref | only_df)
            holder, lacker = (ref_name, name) if first in only_ref else (name, ref_name)
            raise ArtifactError(
                f"runs {ref_name!r} and {name!r} have different {what} image ids: "
                f"image_id {first!r} is in {holder!r} but not in {lacker!r} "
                f"({len(only_ref) + len(only_df)} ids differ); blend runs trained on the same cohort"
            )
        for col, meaning in (("fold", "fold"), ("y", "target")):
            if col in df and col in ref:
                i = _first_difference(df[col], ref[col])
                if i is not None:
                    raise ArtifactError(
                        f"runs {ref_name!r} and {name!r} disagree on the {meaning} of image_id "
                        f"{ref['image_id'].iloc[i]!r} ({ref[col].iloc[i]!r} vs {df[col].iloc[i]!r}); "
                        f"blend only runs trained on the same folds and labels"
                    )


def load_inputs(paths: list[str | Path]) -> BlendInputs:
    """Read the runs, pick each one's binary score column, and check they describe the same rows."""
    paths = [Path(p) for p in paths]
    names = _input_names(paths)
    oofs, tests, score_cols, probs = {}, {}, [], []
    for name, path in zip(names, paths):
        oof, test, metrics = read_run(path)
        spec = spec_from_metrics(metrics)
        col = spec.score_column
        if col is None:
            raise ConfigError(
                f"run {name!r} ({path}) is multiclass ({spec.classes}) without a positive_class, so it has no "
                f"binary score to blend; re-train it with positive_class set (e.g. melanoma)"
            )
        for table, label in ((oof, "oof.parquet"), (test, "test.parquet")):
            if col not in table.columns and len(table):
                raise ArtifactError(f"{path / label} lacks the score column {col!r}; re-run that stage")
            if len(table) and table[col].isna().any():
                bad = table.loc[table[col].isna(), "image_id"].iloc[0]
                raise ArtifactError(f"{path / label}: score {col!r} is missing for image_id {bad!r}")
        if oof["image_id"].duplicated().any():
            raise ArtifactError(f"{path / 'oof.parquet'}: image_id "
                                f"{oof.loc[oof['image_id'].duplicated(), 'image_id'].iloc[0]!r} appears twice")
        oof = oof.assign(image_id=oof["image_id"].astype(str), y=spec.binary_labels(oof["target"]),
                         fold=oof["fold"].astype(int))
        oofs[name] = oof.sort_values("image_id", kind="stable").reset_index(drop=True)
        test = test.assign(image_id=test["image_id"].astype(str))
        tests[name] = test.sort_values("image_id", kind="stable").reset_index(drop=True)
        score_cols.append(col)
        probs.append(bool(metrics.get("probabilities", True)))
    check_aligned(oofs, "OOF")
    check_aligned({n: t[["image_id"]] for n, t in tests.items()}, "test")
    ref_oof, ref_test = oofs[names[0]], tests[names[0]]
    base_oof = pd.DataFrame({"image_id": ref_oof["image_id"], "patient_id": ref_oof["patient_id"].astype(str),
                             "fold": ref_oof["fold"], "target": ref_oof["y"].astype(int)})
    base_test = pd.DataFrame({
        "image_id": ref_test["image_id"],
        "patient_id": ref_test["patient_id"].astype(str) if "patient_id" in ref_test else "",
        "fold": ref_test["fold"].astype(int) if "fold" in ref_test else -1,
        "target": np.nan,
    })
    X_oof = np.column_stack([oofs[n][c].to_numpy(dtype=float) for n, c in zip(names, score_cols)])
    X_test = np.column_stack([tests[n][c].to_numpy(dtype=float) if len(tests[n]) else np.empty(0)
                              for n, c in zip(names, score_cols)])
    return BlendInputs(names, paths, score_cols, probs, base_oof, X_oof, base_test, X_test)


# --- comparison -------------------------------------------------------------------------------


def score_table(scores: dict[str, np.ndarray], y: np.ndarray, folds: np.ndarray,
                probabilities: dict[str, bool], n_boot: int = 500, seed: int = 0) -> pd.DataFrame:
    """One row per model: overall metrics, their fold-to-fold standard deviation, bootstrap AUC interval.

    Log loss and Brier are NaN for a model whose scores are not probabilities (rank blends).
    """
    spec = TargetSpec()
    rows = []
    for name, p in scores.items():
        frame = pd.DataFrame({"fold": folds, "target": y, "pred": p})
        ev = evaluate(frame, spec)
        per_fold = pd.DataFrame(ev["per_fold"]).T
        row: dict[str, Any] = {"model": name, "n": ev["overall"]["n"]}
        for m in METRICS:
            row[m] = ev["overall"][m]
            row[f"{m}_fold_std"] = float(per_fold[m].std(ddof=1)) if len(per_fold) > 1 else float("nan")
        row["auc_lo"], row["auc_hi"] = M.bootstrap_auc(y, p, n_boot, seed) if n_boot else (np.nan, np.nan)
        if not probabilities.get(name, True):
            for m in PROBABILITY_METRICS:
                row[m] = row[f"{m}_fold_std"] = float("nan")
        rows.append(row)
    cols = ["model", "n", "auc", "auc_lo", "auc_hi", "auc_fold_std"]
    cols += [c for m in METRICS[1:] for c in (m, f"{m}_fold_std")]
    return pd.DataFrame(rows)[cols]


def _print_comparison(table: pd.DataFrame, blend_name: str, validation: str) -> dict[str, bool]:
    from rich.table import Table

    def fmt(v: float) -> str:
        return "–" if not np.isfinite(v) else f"{v:.4f}"

    t = Table(title=f"blend vs inputs on the OOF rows (blend {validation})")
    for head in ("model", "AUC", "95% CI", "AUC fold sd", "pAUC80", "AP", "log loss", "Brier"):
        t.add_column(head, justify="left" if head == "model" else "right")
    for r in table.itertuples():
        ci = f"{r.auc_lo:.3f}–{r.auc_hi:.3f}" if np.isfinite(r.auc_lo) else "–"
        t.add_row(str(r.model), fmt(r.auc), ci, fmt(r.auc_fold_std), fmt(r.pauc80), fmt(r.ap), fmt(r.log_loss),
                  fmt(r.brier),
                  style="bold" if r.model == blend_name else None)
    console.print(t)
    blend_auc = float(table.loc[table["model"] == blend_name, "auc"].iloc[0])
    beats = {}
    for r in table[table["model"] != blend_name].itertuples():
        beats[str(r.model)] = bool(blend_auc > r.auc)
        verb = "[green]beats[/]" if beats[r.model] else "[red]does not beat[/]"
        console.print(f"blend AUC {blend_auc:.4f} {verb} {r.model} ({r.auc:.4f}, {blend_auc - r.auc:+.4f})")
    return beats


def _gives_probabilities(candidate: str, inputs: BlendInputs) -> bool:
    """Whether an auto-blend candidate's output is a probability (see each blender's docstring)."""
    kind, _, name = candidate.partition(":")
    if kind == "input":
        return inputs.probabilities[inputs.names.index(name)]
    return {"rank": False, "weights": all(inputs.probabilities), "stack": True}[kind]


def _auto_summary(final: BaseEstimator, outer: dict[int, str], common_scale: bool, inputs: BlendInputs) -> dict:
    """What ``--method auto`` chose and why, for metrics.json, blend.json, the console and the report."""
    table = final.selection_
    best = table.loc[table["cv_auc"].idxmax()]
    chosen = table.loc[table["chosen"]].iloc[0]
    if chosen["candidate"] == best["candidate"]:
        reason = (f"{chosen['candidate']} has the highest cross-validated AUC ({chosen['cv_auc']:.4f}) and no "
                  f"simpler candidate is within one standard error of it")
    else:
        reason = (f"{chosen['candidate']} (cross-validated AUC {chosen['cv_auc']:.4f}) is the simplest candidate "
                  f"within one standard error of the best, {best['candidate']} ({best['cv_auc']:.4f}; gap "
                  f"{chosen['gap']:.4f} <= SE {chosen['se']:.4f})")
    passthrough = final.method_ == "input"
    if passthrough:
        reason += f"; no blend reliably beats input {chosen['candidate'].split(':', 1)[1]!r}, which is passed through"
    return {"choice": final.choice_, "method": final.method_, "passthrough": passthrough, "reason": reason,
            "rule": "simplest candidate (input < rank < weights < stack) whose cross-validated AUC is within one "
                    "standard error (patient bootstrap of the AUC difference) of the best",
            "outer_choices": {str(k): v for k, v in outer.items()},
            "oof_scale": ("percentile among all OOF rows (outer folds chose different candidates)" if common_scale
                          else f"the scale of {next(iter(outer.values()))} (every outer fold chose it)"),
            "selection": table.to_dict(orient="records")}


def _print_auto(auto: dict) -> None:
    from rich.table import Table

    t = Table(title="blend --method auto: candidates by cross-validated AUC on all folds")
    for head in ("candidate", "CV AUC", "mean fold AUC", "gap to best", "SE", "within 1 SE", "chosen"):
        t.add_column(head, justify="left" if head == "candidate" else "right")
    for r in auto["selection"]:
        t.add_row(r["candidate"], f"{r['cv_auc']:.4f}", f"{r['fold_auc_mean']:.4f}", f"{r['gap']:.4f}",
                  f"{r['se']:.4f}", "yes" if r["within_1se"] else "no", "[bold]yes[/]" if r["chosen"] else "",
                  style="bold" if r["chosen"] else None)
    console.print(t)
    console.print(f"auto chose {auto['choice']}: {auto['reason']}", highlight=False)
    console.print(f"nested CV (outer fold: choice): {auto['outer_choices']}; reported OOF on {auto['oof_scale']}",
                  highlight=False)


# --- recipe and applying it -----------------------------------------------------------------


def _blender_from_recipe(recipe: dict) -> BaseEstimator:
    return make_blender(recipe["method"], **recipe.get("params", {})).set_state(recipe["state"])


def apply_blend(run_dir: str | Path, scores: pd.DataFrame) -> np.ndarray:
    """Blend new rows' scores with a blend run's saved recipe (final weights, OOF rank mapping).

    ``scores`` has one column per input run holding that run's binary score
    (``pred`` or ``pred_<positive_class>``), named by the run's name in
    ``blend.json`` (``inputs[i].name``) or by its position (``0``, ``1``, ...).
    Reproduces the blend's ``test.parquet`` exactly for the same rows.
    """
    recipe = read_recipe(run_dir)
    names = [inp["name"] for inp in recipe_inputs(recipe)]
    cols = list(scores.columns)
    if all(n in cols for n in names):
        X = scores[names]
    elif sorted(map(str, cols)) == sorted(str(i) for i in range(len(names))):
        X = scores.rename(columns=str)[[str(i) for i in range(len(names))]]
    else:
        raise ArtifactError(f"scores for blend {run_dir} need one column per input run, named {names} "
                            f"or 0..{len(names) - 1}; got {cols}")
    return _blender_from_recipe(recipe).predict(X.to_numpy(dtype=float))


# --- stage runner -----------------------------------------------------------------------------


def run(cfg: BlendConfig) -> dict:
    """Blend ``cfg.runs`` into ``cfg.out_dir``; return the blend and input scores."""
    from melanet.tracking import BACKENDS, start_tracking

    blender = make_blender(cfg.method, C=cfg.stack_c)
    if cfg.track not in BACKENDS:  # fail before the work, not after it
        raise unknown_choice("tracking backend", cfg.track, BACKENDS)
    out = check_out_dir(cfg.out_dir)
    if any(Path(p).resolve() == out.resolve() for p in cfg.runs):
        raise ConfigError(f"--out {out} is one of the input runs; choose a new folder for the blend")
    inputs = load_inputs(cfg.runs)
    y, folds = inputs.oof["target"].to_numpy(), inputs.oof["fold"].to_numpy()

    if cfg.method == "auto":
        from melanet import blend_auto

        blender.set_params(names=tuple(inputs.names))
        patients = inputs.oof["patient_id"].to_numpy()
        oof_pred, outer, common_scale = blend_auto.nested_oof(inputs.X_oof, y, folds,
                                                              blend_auto.candidates(inputs.names, cfg.stack_c),
                                                              patients)
        final = clone(blender).fit(inputs.X_oof, y, folds, patients)
        agreed = None if common_scale else next(iter(outer.values()))
        probabilities = agreed is not None and _gives_probabilities(agreed, inputs)
        auto = _auto_summary(final, outer, common_scale, inputs)
        method_shown = final.method_
    else:
        # a weighted mean is a probability only if every input is one; stacking re-calibrates whatever it gets
        probabilities = blender.probabilities and (cfg.method == "stack" or all(inputs.probabilities))
        oof_pred = cross_val_blend(blender, inputs.X_oof, y, folds)
        final = clone(blender).fit(inputs.X_oof, y)
        auto, method_shown = None, cfg.method
    recipe = {
        "method": cfg.method,
        "params": final.get_params(),
        "inputs": [{"name": n, "path": str(p.resolve()), "relative_path": os.path.relpath(p.resolve(), out.resolve()),
                    "score_column": c, "run_id": check_run(p).run_id}
                   for n, p, c in zip(inputs.names, inputs.paths, inputs.score_columns)],
        "weights": dict(zip(inputs.names, final.weights().tolist())),
        "weights_meaning": {"rank": "equal weights on OOF-CDF ranks", "weights": "convex weights on probabilities",
                            "stack": "logistic-regression coefficients on logits",
                            "input": "one input passed through"}[method_shown],
        "probabilities": (probabilities if auto is None else
                          _gives_probabilities(final.choice_, inputs)),
        "auto": auto,
        "correlation": {"method": "spearman", "names": inputs.names,
                        "matrix": pd.DataFrame(inputs.X_oof).corr(method="spearman").to_numpy().tolist()},
        "state": final.state(),
    }
    # JSON keeps float64 exactly (repr round-trips), so apply_blend on blend.json reproduces these scores
    test_pred = final.predict(inputs.X_test) if len(inputs.test) else np.empty(0)

    spec = TargetSpec()
    oof = predictions_frame(inputs.oof, oof_pred, spec)
    # predictions_frame cannot reshape zero rows; a cohort without unlabelled images has no test set
    test = predictions_frame(inputs.test, test_pred, spec) if len(inputs.test) else oof.head(0)
    metrics = evaluate(oof, spec)
    if not probabilities:
        for part in [metrics["overall"], *metrics["per_fold"].values()]:
            part.update({m: float("nan") for m in PROBABILITY_METRICS})
    metrics.update({
        "method": cfg.method,
        "probabilities": probabilities,
        "validation": ("nested cross-validated: each fold blended by the candidate chosen and fitted on the other "
                       "folds" if auto is not None else
                       "cross-validated: each fold blended by weights fitted on the other folds"
                       if blender.uses_labels else "label-free: one rank mapping fitted on all OOF rows"),
        "auto": auto,
        "inputs": inputs.names,
        "in_sample": M.binary_metrics(y, final.predict(inputs.X_oof)) if blender.uses_labels else None,
    })
    table = score_table({**dict(zip(inputs.names, inputs.X_oof.T)), "blend": oof_pred}, y, folds,
                        {**dict(zip(inputs.names, inputs.probabilities)), "blend": probabilities},
                        cfg.n_boot, cfg.seed)

    run = RunDir(out).begin("blend", run_identity("blend", comparable_config(cfg.model_dump(mode="json"), _OPERATIONAL),
                                                  {"runs": [i["run_id"] for i in recipe["inputs"]]}),
                            f"melanet blend {' '.join(map(str, cfg.runs))} --out {out} --method {cfg.method}",
                            overwrite=cfg.overwrite)
    metrics["run_id"] = run.run_id
    write_parquet(out / "oof.parquet", oof)
    write_parquet(out / "test.parquet", test)
    write_json(out / "metrics.json", metrics)
    write_csv(out / COMPARISON_FILE, table)
    write_text(out / CONFIG_FILE, config_to_yaml(cfg))
    write_json(out / BLEND_FILE, recipe)
    run.complete(["oof.parquet", "test.parquet", "metrics.json", COMPARISON_FILE, CONFIG_FILE, BLEND_FILE])
    if auto is not None:
        _print_auto(auto)
    beats = _print_comparison(table, "blend", metrics["validation"])
    report_path = after_stage(out, cfg.report)
    tracker = start_tracking(cfg.track, out, cfg.track_uri, params=cfg.model_dump(mode="json"))
    try:
        tracker.log_metrics(metrics["overall"])
        for name in ("metrics.json", COMPARISON_FILE, BLEND_FILE, "report.html"):
            tracker.log_artifact(out / name)
    finally:
        tracker.close()
    return {"out_dir": out, "method": cfg.method, "auto": auto, "metrics": metrics["overall"],
            "in_sample": metrics["in_sample"],
            "weights": recipe["weights"], "comparison": table, "beats": beats, "report": report_path}
