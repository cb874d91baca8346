"""``melanet report RUN_DIR``: one self-contained ``report.html`` for any run (fusion, gbdt, blend).

Sections: summary, per-fold metrics, ROC and precision-recall curves,
calibration, score histograms, training curves (``fold_*/history.csv``),
feature importance (``feature_importance.csv``), blend weights, model
correlation and comparison (``blend.json``, ``comparison.csv``), and error
analysis: the confusion matrix at an operating point (Youden's J, and a fixed
sensitivity), the most confident false positives and false negatives with
their thumbnails and metadata, and metrics by subgroup (sex, age bin, site).

Every figure is embedded as a base64 PNG (the page opens without a server)
and also written beside the page as ``<name>.png``. This module is the one
author of a run's figures (``training_curves.png``, ``feature_importance.png``,
``roc.png``...): stages draw none themselves, they call :func:`after_stage`
once the run is complete. Images and metadata come from the cohort named by
the run's ``config.yaml`` ``data_dir`` (for a blend: its first input run's,
:func:`melanet.runs.find_data_dir`); without it the error analysis lists ids
only.

The computations (:func:`operating_point`, :func:`confusion_at`,
:func:`subgroup_metrics`, :func:`age_bins`, :func:`confident_errors`) are pure
functions of labels and scores.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from melanet import metrics as M
from melanet import plots
from melanet.cohort import load_image, read_cohort
from melanet.console import console
from melanet.errors import MelanetError
from melanet.io import read_table, write_text
from melanet.runs import (BLEND_FILE, COMPARISON_FILE, TargetSpec, find_data_dir, read_recipe, read_run,
                          spec_from_metrics)

REPORT_FILE = "report.html"
AGE_EDGES = [0, 30, 45, 60, 75, np.inf]
AGE_LABELS = ["<30", "30-44", "45-59", "60-74", "75+"]
SUBGROUPS = ["sex", "age_bin", "site"]
# every figure a report may write; a re-run removes the ones that no longer apply
FIGURES = ["roc", "precision_recall", "calibration", "score_histogram", "training_curves", "feature_importance",
           "blend_weights", "model_correlation", "false_positives", "false_negatives"]


# --- pure computations ------------------------------------------------------------------------


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def confusion_at(y, p, threshold: float) -> dict:
    """Confusion counts and rates when ``p >= threshold`` is called positive.

    Sensitivity = TP/(TP+FN), specificity = TN/(TN+FP), PPV = TP/(TP+FP),
    NPV = TN/(TN+FN); NaN where the denominator is zero.
    """
    y = np.asarray(y, dtype=int)
    called = np.asarray(p, dtype=float) >= threshold
    tp, fp = int(np.sum(called & (y == 1))), int(np.sum(called & (y == 0)))
    fn, tn = int(np.sum(~called & (y == 1))), int(np.sum(~called & (y == 0)))
    return {"threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn)}


def operating_point(y, p, sensitivity: float | None = None) -> dict:
    """The threshold maximising Youden's J (sensitivity + specificity - 1), or, with
    ``sensitivity``, the highest threshold whose sensitivity reaches it; plus the
    :func:`confusion_at` figures there. Needs both classes in ``y``."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    if len(np.unique(y)) < 2:
        raise ValueError("an operating point needs both classes in the labels")
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    if sensitivity is None:
        i, rule = int(np.argmax(tpr - fpr)), "Youden's J"
    else:
        i, rule = int(np.flatnonzero(tpr >= sensitivity)[0]), f"sensitivity ≥ {sensitivity:g}"
    out = {"rule": rule, **confusion_at(y, p, float(thresholds[i]))}
    out["youden_j"] = out["sensitivity"] + out["specificity"] - 1
    return out


def age_bins(age: pd.Series) -> pd.Series:
    """Age in years as ordered bins ``<30, 30-44, 45-59, 60-74, 75+, unknown`` (missing age)."""
    binned = pd.cut(pd.to_numeric(age, errors="coerce"), AGE_EDGES, right=False, labels=AGE_LABELS)
    return binned.cat.add_categories("unknown").fillna("unknown")


def subgroup_metrics(df: pd.DataFrame, by: str, y: str = "target", p: str = "pred") -> pd.DataFrame:
    """Per value of ``df[by]`` (missing as ``unknown``): images, positives, prevalence and AUC.

    AUC is NaN in a group holding a single class.
    """
    col = df[by]
    # a categorical column (age bins) keeps its own order; "unknown" goes last
    order = [str(c) for c in col.cat.categories] if isinstance(col.dtype, pd.CategoricalDtype) else []
    groups = col.astype(object).where(col.notna(), "unknown").astype(str)
    rows = []
    for value, g in sorted(df.groupby(groups), key=lambda kv: (order.index(kv[0]) if kv[0] in order
                                                                 else len(order) + (kv[0] == "unknown"), kv[0])):
        yy = g[y].to_numpy(dtype=int)
        auc = float(roc_auc_score(yy, g[p])) if len(np.unique(yy)) == 2 else float("nan")
        rows.append({"variable": by, "group": value, "n": len(g), "positives": int(yy.sum()),
                     "prevalence": float(yy.mean()), "auc": auc})
    return pd.DataFrame(rows, columns=["variable", "group", "n", "positives", "prevalence", "auc"])


def confident_errors(df: pd.DataFrame, threshold: float, top: int = 8, y: str = "target",
                     p: str = "pred") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``top`` false positives with the highest scores and false negatives with the lowest."""
    fp = df[(df[y] == 0) & (df[p] >= threshold)].sort_values(p, ascending=False, kind="stable")
    fn = df[(df[y] == 1) & (df[p] < threshold)].sort_values(p, ascending=True, kind="stable")
    return fp.head(top), fn.head(top)


# --- page helpers -----------------------------------------------------------------------------


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else (
        f"{v:.4f}" if isinstance(v, float) else str(v))


class _Page:
    """Collects sections; figures are written beside the report and embedded in it."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.sections: list[tuple[str, str, str]] = []
        self.figures: list[str] = []

    def fig(self, name: str, fig, alt: str) -> str:
        png = plots.save_png(fig, self.run_dir / f"{name}.png")
        self.figures.append(f"{name}.png")
        return plots.img_tag(png, alt)

    def add(self, sid: str, heading: str, inner: str) -> None:
        self.sections.append((sid, heading, inner))


# --- sections ---------------------------------------------------------------------------------


def _per_fold_table(metrics: dict) -> pd.DataFrame:
    rows = [{"fold": k, **v} for k, v in metrics.get("per_fold", {}).items()]
    rows.append({"fold": "all (OOF)", **metrics.get("overall", {})})
    df = pd.DataFrame(rows)
    keep = ["fold", "n", "prevalence", "auc", "pauc80", "ap", "log_loss", "brier",
            "macro_auc", "balanced_accuracy", "macro_f1"]
    return df[[c for c in keep if c in df.columns]]


def _training_section(page: _Page) -> None:
    histories = sorted(page.run_dir.glob("fold_*/history.csv"))
    if not histories:
        return
    panels = training_panels({path.parent.name.replace("_", " "): read_table(path, ["epoch"], "training history")
                              for path in histories})
    if panels:
        img = page.fig("training_curves", plots.curves_plot(panels, "epoch"), "training curves")
        page.add("training", "Training curves", f'<div class="figs">{img}</div>'
                 + plots.note("dashed: training loss; solid: validation, per fold"))


def training_panels(histories: dict[str, pd.DataFrame]) -> dict[str, dict]:
    """``panel -> {line -> (epoch, values)}`` from each fold's ``history.csv`` (``{"fold 0": table}``).

    Panels: loss (``train_loss`` / ``val_loss``), validation metric (every other ``val_*`` column a
    trainer logged: ``val_auc``, ``val_macro_auc``..., so multiclass runs keep it), learning rate
    (``lr``); empty panels are left out. ``epoch`` is the epoch or boosting round. A ``seed`` column
    (train-fusion's seed ensemble) splits a fold's table into one line per network.
    """
    panels: dict[str, dict] = {"loss": {}, "validation metric": {}, "learning rate": {}}
    if any("seed" in h.columns for h in histories.values()):  # a seed ensemble (train.seeds): a line per network
        histories = {f"{fold} seed {int(j)}": part.drop(columns="seed")
                     for fold, h in histories.items() for j, part in h.groupby("seed", sort=True)}
    for fold, h in histories.items():
        x = h["epoch"].to_numpy()
        metrics = [c for c in h.columns if c.startswith("val_") and c != "val_loss"]
        for col, panel, label in (("train_loss", "loss", f"{fold} train"), ("val_loss", "loss", f"{fold} val"),
                                  *((m, "validation metric", f"{fold} {m.removeprefix('val_')}") for m in metrics),
                                  ("lr", "learning rate", fold)):
            if col in h.columns:
                panels[panel][label] = (x, h[col].to_numpy(dtype=float))
    return {k: v for k, v in panels.items() if v}


def _importance_section(page: _Page, top: int = 25) -> None:
    path = page.run_dir / "feature_importance.csv"
    if not path.is_file():
        return
    imp = read_table(path, ["feature", "gain"], "feature importance")
    gain = imp.groupby("feature")["gain"].mean().sort_values(ascending=False)
    share = (gain / gain.sum()).head(top) if gain.sum() > 0 else gain.head(top)
    img = page.fig("feature_importance", plots.barh_plot(share.to_dict(), f"Top {len(share)} features",
                                                         "share of total gain (mean over folds)"),
                   "feature importance")
    inner = f'<div class="figs">{img}</div>'
    by_descriptor = descriptor_importance(gain)
    if len(by_descriptor):
        inner += ("<h3>Lesion descriptors</h3>" + plots.note(
            "Share of total gain per lesion descriptor, its patient-context variants (_pat_diff, _pat_z, _pat_rank, "
            "_pat_range) included; duckling = the ugly-duckling distance and its rank within the patient.")
            + plots.table_html(by_descriptor, digits=3))
    page.add("importance", "Feature importance", inner)


def descriptor_importance(gain: pd.Series) -> pd.DataFrame:
    """Gain share summed per lesion descriptor (own value + patient context) and for the duckling features."""
    total = float(gain.sum())
    if total <= 0:
        return pd.DataFrame(columns=["descriptor", "share", "own", "patient_context"])
    rows = {}
    for feature, value in gain.items():
        name = str(feature)
        base = re.sub(r"_pat_(diff|z|rank|range)$", "", name)
        if not (base.startswith("lesion_") or base.startswith("duckling_")):
            continue
        base = "duckling" if base.startswith("duckling_") else base
        own, ctx = rows.get(base, (0.0, 0.0))
        rows[base] = (own + value, ctx) if name == base or base == "duckling" and name == "duckling_distance" \
            else (own, ctx + value)
    table = pd.DataFrame([(k, (o + c) / total, o / total, c / total) for k, (o, c) in rows.items()],
                         columns=["descriptor", "share", "own", "patient_context"])
    return table.sort_values("share", ascending=False).reset_index(drop=True)


def _blend_section(page: _Page) -> str:
    """Blend weights, model correlation, comparison table; returns a summary sentence."""
    if not (page.run_dir / BLEND_FILE).is_file():
        return ""
    recipe = read_recipe(page.run_dir, reader="report")
    parts = [page.fig("blend_weights", plots.barh_plot(recipe["weights"], f"Blend ({recipe['method']})",
                                                       recipe.get("weights_meaning", "weight")), "blend weights")]
    corr = recipe.get("correlation")
    if corr:
        parts.append(page.fig("model_correlation", plots.heatmap(np.array(corr["matrix"]), corr["names"],
                                                                 f"OOF score correlation ({corr['method']})"),
                              "model correlation"))
    inner = f'<div class="figs">{"".join(parts)}</div>'
    sentence = f"Blend of {', '.join(recipe['weights'])} by {recipe['method']}."
    auto = recipe.get("auto")
    if auto:
        inner += (f"<h3>Method chosen by nested cross validation: {html.escape(auto['choice'])}</h3>"
                  f"<p>{html.escape(auto['reason'])}. Rule: {html.escape(auto['rule'])}. Outer folds chose "
                  f"{html.escape(str(auto['outer_choices']))}; the reported OOF is on "
                  f"{html.escape(auto['oof_scale'])}.</p>"
                  + plots.table_html(pd.DataFrame(auto["selection"])))
        sentence += f" Auto chose {auto['choice']}" + (" (input passed through)." if auto["passthrough"] else ".")
    cmp_path = page.run_dir / COMPARISON_FILE
    if cmp_path.is_file():
        table = read_table(cmp_path, ["model", "auc"], "blend comparison")
        inner += "<h3>Comparison on the OOF rows</h3>" + plots.table_html(table)
        blend_auc = float(table.loc[table["model"] == "blend", "auc"].iloc[0])
        verdicts = [f"{'beats' if blend_auc > r.auc else 'does not beat'} {r.model} ({r.auc:.4f})"
                    for r in table[table["model"] != "blend"].itertuples()]
        sentence += f" Blend AUC {blend_auc:.4f} " + "; ".join(verdicts) + "."
    page.add("blend", "Blend", inner)
    return sentence


def _thumbnails(rows: pd.DataFrame, data_dir: Path | None) -> tuple[object | None, str]:
    """Image grid of ``rows`` (if images load) and a metadata table."""
    cols = [c for c in ["image_id", "patient_id", "fold", "pred", "sex", "age", "site"] if c in rows.columns]
    table = plots.table_html(rows[cols], digits=3)
    if data_dir is None or "image_path" not in rows.columns or rows.empty:
        return None, table
    images, captions = [], []
    for r in rows.itertuples():
        try:
            if pd.isna(r.image_path):
                raise FileNotFoundError(r.image_id)  # not in the cohort the run names
            images.append(plots.thumbnail(load_image(data_dir, r.image_path)))
        except (OSError, ValueError):
            images.append(np.full((8, 8, 3), 200, np.uint8))  # missing image: grey tile, still captioned
        sex, age, site = (getattr(r, c, None) for c in ("sex", "age", "site"))
        meta = " ".join(["sex ?" if pd.isna(sex) else str(sex), "age ?" if pd.isna(age) else f"{age:.0f}y",
                         "site ?" if pd.isna(site) else str(site)])
        captions.append(f"{r.image_id}\np={r.pred:.3f}\n{meta}")
    return plots.image_grid(images, captions, ncols=4), table


def _error_section(page: _Page, df: pd.DataFrame, data_dir: Path | None, sensitivity: float, top: int,
                   probabilities: bool) -> str:
    points = [operating_point(df["target"], df["pred"]), operating_point(df["target"], df["pred"], sensitivity)]
    op_table = pd.DataFrame(points)[["rule", "threshold", "sensitivity", "specificity", "ppv", "npv",
                                     "tp", "fp", "tn", "fn"]]
    op = points[0]
    cm = pd.DataFrame({"": ["actual negative", "actual positive"],
                       "called negative": [op["tn"], op["fn"]], "called positive": [op["fp"], op["tp"]]})
    inner = (f"<h3>Confusion matrix at {html.escape(op['rule'])} (score ≥ {op['threshold']:.4f})</h3>"
             + plots.table_html(cm) + "<h3>Operating points</h3>" + plots.table_html(op_table)
             + ("" if probabilities else plots.note("scores are blend ranks (0-1), not probabilities; "
                                                    "thresholds are on the rank scale")))
    fps, fns = confident_errors(df, op["threshold"], top)
    if data_dir is None:
        inner += plots.note("cohort not found (no readable data_dir in config.yaml): thumbnails and "
                            "subgroups need it")
    for name, rows, heading in (("false_positives", fps, "Most confident false positives"),
                                ("false_negatives", fns, "Most confident false negatives")):
        fig, table = _thumbnails(rows, data_dir)
        inner += f"<h3>{heading} (n={len(rows)} shown)</h3>"
        if fig is not None:
            inner += f'<div class="figs">{page.fig(name, fig, heading)}</div>'
        inner += table
    page.add("errors", "Error analysis", inner)
    return (f"At Youden's threshold {op['threshold']:.4f}: sensitivity {op['sensitivity']:.3f}, "
            f"specificity {op['specificity']:.3f}, PPV {op['ppv']:.3f}, NPV {op['npv']:.3f}.")


def _subgroup_section(page: _Page, df: pd.DataFrame) -> None:
    present = [c for c in SUBGROUPS if c in df.columns]
    if not present:
        return
    table = pd.concat([subgroup_metrics(df, c) for c in present], ignore_index=True)
    page.add("subgroups", "Metrics by subgroup",
             plots.table_html(table) + plots.note("AUC is blank where a group holds a single class"))


# --- stage runner -----------------------------------------------------------------------------


def after_stage(run_dir: str | Path, enabled: bool = True) -> Path | None:
    """The report of a run a stage has just completed: the one place stages call the report from.

    Returns the page's path, or None when ``enabled`` is False or the report failed. A failed report
    leaves the complete run as it is and prints one warning line with the command that retries it.
    """
    if not enabled:
        return None
    try:
        return run(run_dir)
    except Exception as exc:  # the run's artifacts are complete; a report failure must not hide or undo that
        console.print(f"[yellow]warning:[/] report.html not written ({type(exc).__name__}: {exc}); the run is "
                      f"complete - retry with `melanet report {run_dir}`", highlight=False, soft_wrap=True)
        return None



def run(run_dir: str | Path, sensitivity: float = 0.8, top: int = 8, n_boot: int = 200) -> Path:
    """Write ``RUN_DIR/report.html`` (and its figures as PNGs beside it); return its path.

    ``sensitivity``: the second operating point reported; ``top``: false positives
    and false negatives shown; ``n_boot``: bootstrap resamples for the AUC interval.
    """
    run_dir = Path(run_dir)
    oof, test, metrics = read_run(run_dir, reader="report")
    spec = spec_from_metrics(metrics)
    page = _Page(run_dir)
    probabilities = bool(metrics.get("probabilities", True))
    summary = [f"{len(oof)} labelled images from {oof['patient_id'].nunique()} patients in "
               f"{oof['fold'].nunique()} folds; {len(test)} test images."]

    per_fold = _per_fold_table(metrics)
    page.add("metrics", "Per-fold metrics", plots.table_html(per_fold)
             + plots.note(f"primary metric: {metrics.get('primary_metric', 'auc')}; "
                          f"validation: {metrics.get('validation', 'out-of-fold predictions of k-fold models')}"))

    y = spec.binary_labels(oof["target"]) if spec.score_column in oof.columns else None
    if y is None or len(np.unique(y)) < 2:
        _multiclass_curves(page, oof, spec)
        summary.append("No binary score (multiclass without positive_class, or a single class): "
                       "curves are one-vs-rest and error analysis is skipped.")
    else:
        p = oof[spec.score_column].to_numpy(dtype=float)
        label = spec.positive_class or "target"
        overall = M.binary_metrics(y, p)
        lo, hi = M.bootstrap_auc(y, p, n_boot) if n_boot else (np.nan, np.nan)
        fold_auc = per_fold.loc[per_fold["fold"] != "all (OOF)", "auc"].astype(float)
        summary.append(
            f"Scored class: {label}; prevalence {overall['prevalence']:.3%}. OOF AUC {overall['auc']:.4f} "
            f"(95% bootstrap CI {_fmt(lo)}–{_fmt(hi)}; folds {fold_auc.min():.4f}–{fold_auc.max():.4f}), "
            f"pAUC80 {overall['pauc80']:.4f}, AP {overall['ap']:.4f}"
            + (f", log loss {overall['log_loss']:.4f}, Brier {overall['brier']:.4f}." if probabilities else "."))
        curves = {label: (y, p)}
        imgs = [page.fig("roc", plots.roc_plot(curves), "ROC curve"),
                page.fig("precision_recall", plots.pr_plot(curves), "precision-recall curve")]
        page.add("curves", "ROC and precision-recall", f'<div class="figs">{"".join(imgs)}</div>')
        dist = [page.fig("score_histogram", plots.score_histogram(y, p), "score histogram")]
        if probabilities:
            dist.insert(0, page.fig("calibration", plots.calibration_plot(y, p), "calibration curve"))
            heading = "Calibration and score distributions"
        else:
            heading = "Score distributions"
        page.add("calibration", heading, f'<div class="figs">{"".join(dist)}</div>'
                 + ("" if probabilities else plots.note("rank blend: scores are not probabilities, "
                                                        "so no calibration curve")))
        df = pd.DataFrame({"image_id": oof["image_id"].astype(str), "patient_id": oof["patient_id"],
                           "fold": oof["fold"], "target": y, "pred": p})
        data_dir = find_data_dir(run_dir)
        if data_dir is not None:
            try:
                meta = read_cohort(data_dir)[["image_id", "sex", "age", "site", "image_path"]]
                df = df.merge(meta.assign(image_id=meta["image_id"].astype(str)), on="image_id", how="left")
                df["age_bin"] = age_bins(df["age"])
            except MelanetError:
                data_dir = None
        summary.append(_error_section(page, df, data_dir, sensitivity, top, probabilities))
        _subgroup_section(page, df)
    _training_section(page)
    _importance_section(page)
    blend_sentence = _blend_section(page)
    if blend_sentence:
        summary.append(blend_sentence)

    for name in FIGURES:
        if f"{name}.png" not in page.figures:
            (run_dir / f"{name}.png").unlink(missing_ok=True)
    title = f"melanet report: {run_dir.resolve().name}"
    page.sections.insert(0, ("summary", "Summary", "".join(f"<p>{html.escape(s)}</p>" for s in summary)))
    return write_text(run_dir / REPORT_FILE, plots.html_page(title, page.sections))


def _multiclass_curves(page: _Page, oof: pd.DataFrame, spec: TargetSpec) -> None:
    if spec.is_binary:
        return
    codes = spec.encode(oof["target"])
    curves = {c: ((codes == k).astype(int), oof[f"pred_{c}"].to_numpy(dtype=float))
              for k, c in enumerate(spec.classes) if 0 < (codes == k).sum() < len(codes)}
    if curves:
        img = page.fig("roc", plots.roc_plot(curves), "one-vs-rest ROC curves")
        page.add("curves", "ROC (one-vs-rest)", f'<div class="figs">{img}</div>')
