"""``melanet blend --method auto``: choose the blend by nested cross validation, never worse than its best input.

Candidates, simplest first (:data:`COMPLEXITY`): each single input passed
through unchanged (``input:<name>``), ``rank``, ``weights``, ``stack``.

Selection on a set of folds (:func:`select`): every candidate's OOF on those
folds is cross-validated (fold j predicted by the candidate fitted on the
other folds; label-free candidates are fitted once), and scored by its pooled
AUC. The best candidate sets the bar; the **simplest** candidate whose AUC is
within one standard error of the best is chosen (ties in simplicity: the
higher AUC). The standard error is that of the AUC *difference* to the best
candidate, from a patient-grouped bootstrap of the rows (the candidates are
scored on the same rows, so their difference is much less noisy than either
AUC; a per-fold estimate from four or five folds was itself too noisy and let
combinations through on luck). The rule only gives up a combination that is
not reliably better.

Reported OOF (:func:`nested_oof`): outer folds are the cohort folds. For
outer fold k the selection above runs on the other folds only, the chosen
candidate is fitted on them and predicts fold k; fold k's labels are used
nowhere. When every outer fold chose the same candidate, its predictions are
reported on its own scale (a passed-through input: exactly its OOF scores).
Otherwise each fold's predictions are mapped to their percentile among the
chosen candidate's predictions for all OOF rows (a label-free rescaling), so
that folds that chose different candidates share one scale.

The final blend (``test.parquet``, :func:`melanet.blend.apply_blend`) is the
candidate the selection picks on all folds, fitted on all OOF rows. When that
is a single input, the blend passes the input's scores through and says so.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.metrics import roc_auc_score
from sklearn.utils.validation import check_is_fitted, validate_data

from melanet.blend import BLENDERS, RankBlender, _Blender, cross_val_blend, make_blender
from melanet.metrics import fast_auc

#: Simplicity order of the candidate kinds (lower = simpler, preferred within one standard error).
COMPLEXITY = {"input": 0, "rank": 1, "weights": 2, "stack": 3}
COMBINATIONS = ("rank", "weights", "stack")


class SelectInput(_Blender):
    """Pass one input's score through unchanged (the "no blend" candidate)."""

    uses_labels: ClassVar[bool] = False
    probabilities: ClassVar[bool] = True  # as probable as the input itself; blend.run checks the input

    def __init__(self, column: int = 0):
        self.column = column

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> SelectInput:
        self.n_columns_ = self._fit_columns(X).shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "n_columns_")
        return self._predict_columns(X, self.n_columns_)[:, self.column]

    def weights(self) -> np.ndarray:
        check_is_fitted(self, "n_columns_")
        return np.eye(self.n_columns_)[self.column]

    def state(self) -> dict:
        return {"column": self.column, "n_columns": self.n_columns_}

    def set_state(self, state: dict) -> SelectInput:
        self.column, self.n_columns_ = int(state["column"]), int(state["n_columns"])
        return self


def candidates(names: list[str], C: float = 1.0) -> dict[str, BaseEstimator]:
    """Every candidate for inputs ``names``: ``input:<name>`` per input, then rank, weights, stack."""
    out: dict[str, BaseEstimator] = {f"input:{n}": SelectInput(j) for j, n in enumerate(names)}
    out.update({m: make_blender(m, C=C) for m in COMBINATIONS})
    return out


def complexity(name: str) -> int:
    return COMPLEXITY[name.split(":", 1)[0]]


def _fold_aucs(y: np.ndarray, p: np.ndarray, folds: np.ndarray) -> np.ndarray:
    return np.array([roc_auc_score(y[folds == k], p[folds == k]) if len(np.unique(y[folds == k])) == 2 else np.nan
                     for k in np.unique(folds)])


def bootstrap_diff_se(y: np.ndarray, preds: dict[str, np.ndarray], best: str, groups: np.ndarray | None,
                      n_boot: int = 200, seed: int = 0) -> dict[str, float]:
    """Standard error of AUC(best) - AUC(c) for every candidate c, resampling patients (rows without groups)."""
    codes = np.arange(len(y)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    members = np.split(np.argsort(codes, kind="stable"), np.cumsum(np.bincount(codes))[:-1])
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[float]] = {name: [] for name in preds}
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        yb = y[idx]
        if yb.min() == yb.max():
            continue
        ref = fast_auc(yb, preds[best][idx])
        for name, p in preds.items():
            diffs[name].append(ref - fast_auc(yb, p[idx]))
    return {name: float(np.std(d, ddof=1)) if len(d) > 1 else 0.0 for name, d in diffs.items()}


def select(X: np.ndarray, y: np.ndarray, folds: np.ndarray, cands: dict[str, BaseEstimator],
           groups: np.ndarray | None = None, n_boot: int = 200) -> tuple[str, pd.DataFrame]:
    """Pick a candidate by cross-validated AUC with the one-standard-error rule; return it and the score table.

    The table has one row per candidate: ``candidate, complexity, cv_auc``
    (pooled AUC of its cross-validated OOF), ``fold_auc_mean``, ``gap`` (best
    ``cv_auc`` minus this one), ``se`` (bootstrap standard error of that
    difference, resampling ``groups``), ``within_1se`` and ``chosen``.
    """
    preds = {name: cross_val_blend(est, X, y, folds) for name, est in cands.items()}
    cv = {name: roc_auc_score(y, p) for name, p in preds.items()}
    per_fold = {name: _fold_aucs(y, p, folds) for name, p in preds.items()}
    best = max(cv, key=lambda n: (cv[n], -complexity(n)))
    ses = bootstrap_diff_se(np.asarray(y), preds, best, groups, n_boot)
    rows = []
    for name in cands:
        se = ses[name]
        gap = cv[best] - cv[name]
        rows.append({"candidate": name, "complexity": complexity(name), "cv_auc": cv[name],
                     "fold_auc_mean": float(np.nanmean(per_fold[name])), "gap": gap, "se": se,
                     "within_1se": bool(gap <= se)})
    table = pd.DataFrame(rows)
    eligible = table[table["within_1se"]].sort_values(["complexity", "cv_auc"], ascending=[True, False],
                                                      kind="stable")
    chosen = str(eligible["candidate"].iloc[0])
    table["chosen"] = table["candidate"] == chosen
    return chosen, table


def _percentile_among(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Mid-rank percentile of each of ``values`` among ``reference`` (the RankBlender mapping)."""
    ranker = RankBlender().fit(np.asarray(reference, dtype=float)[:, None])
    return ranker.predict(np.asarray(values, dtype=float)[:, None])


def nested_oof(X: np.ndarray, y: np.ndarray, folds: np.ndarray, cands: dict[str, BaseEstimator],
               groups: np.ndarray | None = None) -> tuple[np.ndarray, dict[int, str], bool]:
    """Nested-CV OOF of the auto blend: ``(predictions, {outer fold: chosen candidate}, on_common_scale)``.

    ``on_common_scale`` is False when every outer fold chose the same
    candidate (its own scale is kept) and True when the predictions were
    mapped to percentiles among all OOF rows (see the module docstring).
    """
    X, y, folds = np.asarray(X, dtype=float), np.asarray(y), np.asarray(folds)
    out = np.empty(len(y), dtype=float)
    choices: dict[int, str] = {}
    fitted: dict[int, BaseEstimator] = {}
    for k in np.unique(folds):
        held = folds == k
        chosen, _ = select(X[~held], y[~held], folds[~held], cands, None if groups is None else groups[~held])
        est = clone(cands[chosen])
        est = est.fit(X[~held], y[~held]) if est.uses_labels else est.fit(X[~held])
        choices[int(k)], fitted[int(k)] = chosen, est
        out[held] = est.predict(X[held])
    if len(set(choices.values())) == 1:
        return out, choices, False
    for k, est in fitted.items():
        held = folds == k
        # the rank of fold k's rows among all rows under the model fold k chose: uses no label of fold k
        out[held] = _percentile_among(out[held], est.predict(X))
    return out, choices, True


class AutoBlender(_Blender):
    """The candidate :func:`select` picks on the given folds, fitted on all rows (scikit-learn contract).

    ``fit(X, y, folds, groups)`` (groups: patient ids for the bootstrap) sets ``choice_`` (candidate name), ``blender_``
    (the fitted candidate) and ``selection_`` (the score table). ``names``
    labels the inputs (for ``input:<name>``).
    """

    uses_labels: ClassVar[bool] = True
    probabilities: ClassVar[bool] = True

    def __init__(self, C: float = 1.0, names: tuple[str, ...] | None = None):
        self.C = C
        self.names = names

    def _names(self, m: int) -> list[str]:
        return list(self.names) if self.names is not None else [str(j) for j in range(m)]

    def fit(self, X: np.ndarray, y: np.ndarray, folds: np.ndarray | None = None,
            groups: np.ndarray | None = None) -> AutoBlender:
        X, y = self._fit_columns(X, y), np.asarray(y)
        if folds is None:  # no fold column given: patient-blind stratified folds, seeded
            from sklearn.model_selection import StratifiedKFold

            folds = np.empty(len(y), int)
            for k, (_, idx) in enumerate(StratifiedKFold(5, shuffle=True, random_state=0).split(X, y)):
                folds[idx] = k
        cands = candidates(self._names(X.shape[1]), self.C)
        self.choice_, self.selection_ = select(X, y, np.asarray(folds), cands, groups)
        est = clone(cands[self.choice_])
        self.blender_ = est.fit(X, y) if est.uses_labels else est.fit(X)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "blender_")
        return self.blender_.predict(validate_data(self, X, dtype=float, reset=False))

    def weights(self) -> np.ndarray:
        check_is_fitted(self, "blender_")
        return self.blender_.weights()

    @property
    def method_(self) -> str:
        """The chosen candidate's kind: input, rank, weights or stack."""
        return self.choice_.split(":", 1)[0]

    def state(self) -> dict:
        check_is_fitted(self, "blender_")
        return {"choice": self.choice_, "method": self.method_, "params": self.blender_.get_params(),
                "state": self.blender_.state()}

    def set_state(self, state: dict) -> AutoBlender:
        method = state["method"]
        est = SelectInput() if method == "input" else BLENDERS[method]()
        est.set_params(**{k: v for k, v in state.get("params", {}).items() if k in est._get_param_names()})
        self.blender_ = est.set_state(state["state"])
        self.choice_ = state["choice"]
        return self
