"""Image-model scores as GBDT features on one scale across the image model's fold models.

``train-gbdt --with-oof RUN`` stacks an image model's out-of-fold scores. Each
OOF row was scored by the fold model that did not train on it, and each fold
model has its own score scale (a CNN trained for a few epochs on 700 rows can
put its median at 0.2 in one fold and 0.4 in the next). A tree split learnt on
fold j's scores means something else on fold k's, so the raw scores are noise
at the scale of the fold-to-fold shift. :class:`ScoreScaler` maps each score
through the distribution of *its own fold model's* OOF scores:

- ``rank`` (default): the mid-rank percentile (0-1) of the score among the
  producing fold model's OOF scores (linear interpolation between distinct
  OOF values, clipped to [0, 1] outside them). A row's feature means "how high
  this fold model ranks it", whichever fold model that was.
- ``logit``: the score's logit standardised by the mean and standard deviation
  of the fold model's OOF logits (a z-score); keeps the spacing of the scores,
  which ``rank`` flattens.
- ``raw``: the score as the run wrote it (melanet before 0.x).

Test rows (and new rows at ``melanet predict`` time) were scored by every fold
model; each fold model's score is mapped through that fold model's map and the
mapped values are averaged. When a run has no per-fold test scores (a blend
run, or a run written by another tool), the fold-averaged score goes through
every fold's map instead (``test_scores: fold_mean``); predict does the same.

Pure functions and one small estimator; :func:`fold_test_scores` reads a run's per-fold test tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import logit as _logit

from melanet.errors import ArtifactError, unknown_choice

#: Ways an image-model score can enter the GBDT (config key ``with_oof_scale``).
SCALES = ("rank", "logit", "raw")
#: Most knots kept per fold map: beyond this the percentile is interpolated on a quantile grid (0.01% steps),
#: so features.json stays small for 100,000-row folds.
MAX_KNOTS = 10_001
_EPS = 1e-6


def rank_map(scores: np.ndarray, max_knots: int = MAX_KNOTS) -> tuple[np.ndarray, np.ndarray]:
    """``(knots, percentiles)`` of the empirical CDF of ``scores`` (mid-ranks, so ties stay ties)."""
    scores = np.asarray(scores, dtype=float)
    knots, counts = np.unique(scores, return_counts=True)
    below = np.cumsum(counts) - counts
    pct = (below + counts / 2.0) / len(scores)
    if len(knots) > max_knots:
        keep = np.unique(np.linspace(0, len(knots) - 1, max_knots).round().astype(int))
        knots, pct = knots[keep], pct[keep]
    return knots, pct


class ScoreScaler:
    """Per-fold-model score maps, scikit-learn style: ``fit`` on OOF rows, learned state in ``maps_``.

    ``fit(scores, fold)``: ``fold[i]`` is the fold whose model produced
    ``scores[i]`` (the OOF table's ``fold`` column).
    """

    def __init__(self, scale: str = "rank"):
        self.scale = scale

    def fit(self, scores: np.ndarray, fold: np.ndarray) -> ScoreScaler:
        if self.scale not in SCALES:
            raise unknown_choice("with_oof_scale", self.scale, SCALES)
        scores, fold = np.asarray(scores, dtype=float), np.asarray(fold).astype(int)
        self.maps_: dict[int, dict[str, Any]] = {}
        for k in np.unique(fold):
            s = scores[fold == k]
            if self.scale == "rank":
                knots, pct = rank_map(s)
                self.maps_[int(k)] = {"knots": knots, "percentiles": pct}
            elif self.scale == "logit":
                z = _logit(np.clip(s, _EPS, 1 - _EPS))
                sd = float(z.std())
                self.maps_[int(k)] = {"mean": float(z.mean()), "std": sd if sd > 0 else 1.0}
            else:
                self.maps_[int(k)] = {}
        return self

    def _check(self) -> None:
        if not hasattr(self, "maps_"):
            raise RuntimeError("ScoreScaler is not fitted; call fit() first")

    @property
    def folds(self) -> list[int]:
        self._check()
        return sorted(self.maps_)

    def map_fold(self, scores: np.ndarray, k: int) -> np.ndarray:
        """``scores`` of fold model ``k`` on the common scale."""
        self._check()
        if k not in self.maps_:
            raise ArtifactError(f"no score map for fold model {k} (maps exist for folds {self.folds})")
        s = np.asarray(scores, dtype=float)
        m = self.maps_[k]
        if self.scale == "rank":
            return np.interp(s, m["knots"], m["percentiles"], left=0.0, right=1.0)
        if self.scale == "logit":
            return (_logit(np.clip(s, _EPS, 1 - _EPS)) - m["mean"]) / m["std"]
        return s

    def transform_oof(self, scores: np.ndarray, fold: np.ndarray) -> np.ndarray:
        """OOF rows: each score through the map of the fold model that produced it."""
        scores, fold = np.asarray(scores, dtype=float), np.asarray(fold).astype(int)
        out = np.empty(len(scores), dtype=float)
        for k in np.unique(fold):
            out[fold == k] = self.map_fold(scores[fold == k], int(k))
        return out

    def transform_new(self, per_fold: Mapping[int, np.ndarray] | np.ndarray) -> np.ndarray:
        """Rows scored by every fold model: the mean over fold models of each one's mapped score.

        ``per_fold`` maps fold -> that fold model's scores; a single array (the
        fold-averaged score) is put through every fold's map instead.
        """
        self._check()
        if self.scale == "raw":
            return (np.asarray(per_fold, dtype=float) if not isinstance(per_fold, Mapping)
                    else np.mean([np.asarray(v, dtype=float) for v in per_fold.values()], axis=0))
        if not isinstance(per_fold, Mapping):
            return np.mean([self.map_fold(per_fold, k) for k in self.folds], axis=0)
        missing = [k for k in self.folds if k not in per_fold]
        if missing:
            raise ArtifactError(f"scores of fold model(s) {missing} are missing; the image model's fold models "
                                f"must all score the new rows")
        return np.mean([self.map_fold(per_fold[k], k) for k in self.folds], axis=0)

    def state(self) -> dict[str, Any]:
        """JSON-ready state (float64 round-trips exactly through JSON)."""
        self._check()
        return {"scale": self.scale,
                "maps": {str(k): {n: (v.tolist() if isinstance(v, np.ndarray) else v) for n, v in m.items()}
                         for k, m in self.maps_.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ScoreScaler:
        scaler = cls(state["scale"])
        scaler.maps_ = {int(k): {n: (np.asarray(v, dtype=float) if isinstance(v, list) else v) for n, v in m.items()}
                        for k, m in state["maps"].items()}
        return scaler


# --------------------------------------------------------------------------- reading a run's per-fold scores


def fold_test_scores(run_dir: str | Path, column: str, ids: pd.Series) -> dict[int, np.ndarray] | None:
    """Each fold model's scores for the rows ``ids`` (``fold_<k>/test.parquet``), or None where any is lacking.

    None means the run keeps only fold-averaged test scores (a blend run, or
    a fold folder without its own test table); see :meth:`ScoreScaler.transform_new`.
    """
    run_dir = Path(run_dir)
    fold_dirs = sorted(run_dir.glob("fold_*/test.parquet"))
    if not fold_dirs or len(ids) == 0:
        return None
    out: dict[int, np.ndarray] = {}
    for path in fold_dirs:
        try:
            k = int(path.parent.name.split("_", 1)[1])
        except ValueError:
            continue
        table = pd.read_parquet(path)
        if column not in table.columns or "image_id" not in table.columns:
            return None
        scores = table.set_index(table["image_id"].astype(str))[column]
        if scores.index.duplicated().any() or not ids.astype(str).isin(scores.index).all():
            return None
        out[k] = scores.loc[ids.astype(str)].to_numpy(dtype=float)
    return out
