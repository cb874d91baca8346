"""The "Lesion descriptors" section of ``eda.html``: does segmentation work on this data, and what do the
descriptors look like per class?

- Mask outlines drawn on a sample of cached images (the mask of
  :func:`melanet.descriptors.lesion_mask`, recomputed for display), with
  failed masks included in the sample so a user sees where segmentation gives
  up.
- Mask success rate per class and modality rule.
- Distributions of the main descriptors by class (overlaid histograms), with
  each descriptor's AUC alone against a binary target (descriptive only; the
  models never see a label this way).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from melanet import plots
from melanet.descriptors import descriptor_rule, draw_outline, lesion_mask

#: Descriptors drawn as histograms (the rest are in the cohort table).
SHOWN = ["lesion_diameter_frac", "lesion_compactness", "lesion_solidity", "lesion_asymmetry",
         "lesion_color_asymmetry", "lesion_eccentricity", "lesion_L_mean", "lesion_color_spread",
         "lesion_n_colors", "lesion_delta_e", "lesion_border_blur", "lesion_area_frac"]


def mask_sample(cohort: pd.DataFrame, n: int, seed: int = 0) -> np.ndarray:
    """Row positions to show: up to ``n`` images, a quarter of them (if any) with failed masks."""
    rng = np.random.default_rng(seed)
    ok = cohort["lesion_mask_ok"].fillna(False).to_numpy(bool)
    failed = np.flatnonzero(~ok)
    n_failed = min(len(failed), max(1, n // 4)) if len(failed) else 0
    chosen = list(rng.choice(failed, n_failed, replace=False)) if n_failed else []
    good = np.flatnonzero(ok)
    chosen += list(rng.choice(good, min(len(good), n - n_failed), replace=False)) if len(good) else []
    return np.sort(np.asarray(chosen, dtype=int))


def descriptor_auc(values: pd.Series, target: pd.Series) -> float:
    """AUC of one descriptor alone against a 0/1 target (NaN rows left out; NaN if one class is missing)."""
    from sklearn.metrics import roc_auc_score

    keep = values.notna() & target.notna()
    y = target[keep].astype(float)
    if y.nunique() != 2:
        return float("nan")
    return float(roc_auc_score(y, values[keep]))


def section_html(data_dir: Path, cohort: pd.DataFrame, classes: pd.Series, target: str, n_thumbs: int,
                 thumb_px: int, seed: int) -> str:
    """Inner HTML of the section (a note only when the cohort has no descriptors)."""
    from melanet.eda import load_images, thumbnail_strip

    if "lesion_mask_ok" not in cohort.columns:
        return plots.note("No lesion_* columns: the cohort was ingested with descriptors=false.")
    rules = pd.Series([descriptor_rule(m, p) for m, p in zip(cohort["modality"], cohort["photometric"])],
                      index=cohort.index)
    ok = cohort["lesion_mask_ok"].fillna(False).astype(bool)
    rates = (pd.DataFrame({"class": classes, "rule": rules, "mask_ok": ok})
             .groupby(["class", "rule"]).agg(images=("mask_ok", "size"), mask_ok=("mask_ok", "mean")).reset_index())
    parts = [plots.note("Mask: Otsu threshold on the colour distance from the border skin, after hair removal, "
                        "field-of-view and vignetting correction; the largest central component "
                        "(melanet/descriptors.py). Rule: colour images all descriptors, MONOCHROME shape + "
                        "lightness only, radiology modalities none."),
             "<h3>Mask success by class</h3>", plots.table_html(rates, digits=3)]
    rows = mask_sample(cohort, n_thumbs, seed)
    if len(rows):
        images = load_images(data_dir, cohort["image_path"].iloc[rows].astype(str).tolist())
        drawn, captions = [], []
        for image, (_, r), cls in zip(images, cohort.iloc[rows].iterrows(), classes.iloc[rows]):
            drawn.append(None if image is None else draw_outline(image, lesion_mask(image)))
            status = (f"d={r['lesion_diameter_frac']:.2f} ΔE={r['lesion_delta_e']:.0f}" if r["lesion_mask_ok"]
                      else "no lesion found")
            captions.append(f"{r['image_id']}\n{cls} · {status}")
        parts.append(f"<h3>Mask outlines on {len(rows)} sampled images</h3>"
                     + plots.note("Green: the lesion border the descriptors are measured on. Check that it follows "
                                  "the lesion, not hair, a scope ring or dark corners.")
                     + thumbnail_strip(list(zip(drawn, captions)), thumb_px))
    shown = [c for c in SHOWN if c in cohort.columns and cohort[c].notna().any()]
    if shown:
        parts.append("<h3>Descriptor distributions by class</h3>")
        parts.append(plots.note("Images with a mask only. AUC: the descriptor alone against the target "
                                "(descriptive; 0.5 = no signal, below 0.5 = lower in positives)."))
        parts.append(plots.img_tag(plots.to_png(_histograms(cohort, classes, shown)), "descriptor histograms"))
        if target in cohort.columns and cohort[target].dropna().nunique() == 2:
            y = pd.to_numeric(cohort[target], errors="coerce")
            aucs = pd.DataFrame({"descriptor": shown, "AUC vs target": [descriptor_auc(cohort[c], y) for c in shown]})
            parts.append(plots.table_html(aucs, digits=3))
    return "\n".join(parts)


def _histograms(cohort: pd.DataFrame, classes: pd.Series, columns: list[str]):
    ncols = 4
    nrows = -(-len(columns) // ncols)
    fig, axes = plots.figure(3.0 * ncols, 2.3 * nrows, ncols=ncols, nrows=nrows)
    labels = [c for c in sorted(classes.unique())]
    for ax, col in zip(axes, columns):
        values = pd.to_numeric(cohort[col], errors="coerce")
        finite = values.dropna()
        edges = np.linspace(finite.quantile(0.01), finite.quantile(0.99) + 1e-9, 25)
        for i, cls in enumerate(labels):
            v = values[(classes == cls).to_numpy()].dropna()
            if len(v):
                ax.hist(v.clip(edges[0], edges[-1]), bins=edges, density=True, alpha=0.5,
                        color=plots.PALETTE[i % len(plots.PALETTE)], label=f"{cls} (n={len(v)})")
        ax.set_title(html.unescape(col), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(columns):]:
        ax.axis("off")
    axes[0].legend(fontsize=6)
    return fig
