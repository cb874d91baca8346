"""Figures and self-contained HTML pages shared by the reports (``report.html``, ``eda.html``).

Figures are built on :class:`matplotlib.figure.Figure` directly (Agg canvas),
never through ``pyplot``: no global figure registry, no backend switching,
nothing to close, safe to call from a training process or a server thread.
Every figure becomes PNG bytes, which a report both embeds as a base64 data URI
(so the HTML opens without a server or the files beside it) and writes beside
the HTML as a ``.png`` file.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from melanet import images
from melanet.cohort import load_image
from melanet.io import write_bytes

DPI = 100
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def figure(width: float = 5.0, height: float = 4.0, ncols: int = 1, nrows: int = 1) -> tuple[Figure, np.ndarray]:
    """A new Agg figure (``width`` x ``height`` inches) and its axes as a flat array."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes.ravel()


def to_png(fig: Figure) -> bytes:
    """PNG bytes of ``fig``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for embedding PNG bytes in HTML."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def save_png(fig: Figure, path: str | Path) -> bytes:
    """Write ``fig`` atomically as a PNG at ``path``; return the bytes for embedding."""
    png = to_png(fig)
    write_bytes(path, png)
    return png


# --- plot kinds ----------------------------------------------------------------------------


def roc_plot(curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """ROC curves, one per ``name -> (labels 0/1, scores)``, with AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, (ax,) = figure()
    for i, (name, (y, p)) in enumerate(curves.items()):
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, color=PALETTE[i % len(PALETTE)], label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.axhline(0.8, ls="--", color="grey", lw=0.8)  # pAUC80 integrates the area above this line
    ax.set(xlabel="false positive rate", ylabel="true positive rate (sensitivity)", title="ROC",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return fig


def pr_plot(curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """Precision-recall curves with average precision and the prevalence baseline."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, (ax,) = figure()
    for i, (name, (y, p)) in enumerate(curves.items()):
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, color=PALETTE[i % len(PALETTE)],
                label=f"{name} (AP {average_precision_score(y, p):.3f})")
        ax.axhline(np.mean(y), ls=":", color=PALETTE[i % len(PALETTE)], lw=1)
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper right", fontsize=8)
    return fig


def calibration_plot(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> Figure:
    """Reliability diagram on quantile bins (equal counts, so rare high scores still get bins)."""
    from sklearn.calibration import calibration_curve

    fig, (ax,) = figure()
    frac_pos, mean_pred = calibration_curve(y, p, n_bins=n_bins, strategy="quantile")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfectly calibrated")
    ax.plot(mean_pred, frac_pos, marker="o", color=PALETTE[0], label="OOF")
    ax.set(xlabel="mean predicted probability", ylabel="observed fraction positive",
           title=f"Calibration ({n_bins} quantile bins)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    return fig


def score_histogram(y: np.ndarray, p: np.ndarray, bins: int = 40) -> Figure:
    """Score distributions of negatives and positives (densities, log count axis)."""
    fig, (ax,) = figure(6, 3.5)
    edges = np.linspace(min(0.0, float(np.min(p))), max(1.0, float(np.max(p))), bins + 1)
    for label, color in ((0, PALETTE[0]), (1, PALETTE[1])):
        ax.hist(p[y == label], bins=edges, color=color, alpha=0.55, label=f"target={label} (n={int((y == label).sum())})")
    ax.set_yscale("log")
    ax.set(xlabel="predicted score", ylabel="images (log scale)", title="Scores by class")
    ax.legend(fontsize=8)
    return fig


def barh_plot(values: Mapping[str, float], title: str, xlabel: str) -> Figure:
    """Horizontal bars, first item on top."""
    names, vals = list(values.keys()), np.asarray(list(values.values()), dtype=float)
    fig, (ax,) = figure(6, max(2.0, 0.3 * len(names) + 1))
    ax.barh(np.arange(len(names))[::-1], vals, color=[PALETTE[0] if v >= 0 else PALETTE[1] for v in vals])
    ax.set_yticks(np.arange(len(names))[::-1], names, fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set(title=title, xlabel=xlabel)
    return fig


def heatmap(matrix: np.ndarray, labels: Sequence[str], title: str, vmin: float = -1, vmax: float = 1) -> Figure:
    """Annotated square matrix (e.g. correlations between models)."""
    matrix = np.asarray(matrix, dtype=float)
    size = 1.2 + 0.7 * len(labels)
    fig, (ax,) = figure(size + 1, size)
    im = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap="RdBu_r")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                color="white" if abs(v) > 0.6 * max(abs(vmin), abs(vmax)) else "black")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title)
    return fig


def curves_plot(series: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], xlabel: str) -> Figure:
    """One panel per ``panel -> {line name -> (x, y)}`` (e.g. loss and AUC by epoch per fold).

    Lines named ``"<group> train"`` and ``"<group> val"`` share a colour; train is dashed. The networks of a
    seed ensemble (``"<group> seed <j> ..."``) share their group's colour and legend entry.
    """
    from matplotlib.ticker import MaxNLocator

    fig, axes = figure(5 * len(series), 3.5, ncols=len(series))
    for ax, (panel, lines) in zip(axes, series.items()):
        groups: dict[str, int] = {}
        labelled: set[str] = set()
        for name, (x, y) in lines.items():
            label = re.sub(r" seed \d+", "", name)
            group = groups.setdefault(label.removesuffix(" train").removesuffix(" val"), len(groups))
            ax.plot(x, y, color=PALETTE[group % len(PALETTE)], ls="--" if name.endswith(" train") else "-",
                    label=label if label not in labelled else "_nolegend_")
            labelled.add(label)
        ax.set(title=panel, xlabel=xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    return fig


def image_grid(images: Sequence[np.ndarray], captions: Sequence[str], ncols: int = 4, side: float = 2.2) -> Figure:
    """Thumbnails with a caption under each (uint8 RGB arrays)."""
    nrows = max(1, -(-len(images) // ncols))
    fig, axes = figure(side * ncols, (side + 0.5) * nrows, ncols=ncols, nrows=nrows)
    for ax in axes:
        ax.axis("off")
    for ax, img, caption in zip(axes, images, captions):
        ax.imshow(img)
        ax.set_title(caption, fontsize=7)
    return fig


def thumbnail(img: np.ndarray, max_side: int = 128, enlarge: bool = False) -> np.ndarray:
    """Longest side ``max_side`` pixels, aspect kept: :func:`melanet.images.thumbnail` (area filter)."""
    return images.thumbnail(img, max_side, enlarge)


# --- HTML ----------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
img{max-width:100%}.note{color:#666;font-style:italic}.figs img{margin:0 8px 8px 0;vertical-align:top}
nav a{margin-right:1em}
"""


def img_tag(png: bytes, alt: str) -> str:
    """An ``<img>`` embedding ``png`` as a data URI."""
    return f'<img src="{data_uri(png)}" alt="{html.escape(alt)}">'


def table_html(df: pd.DataFrame, digits: int = 4, index: bool = False) -> str:
    """A pandas table as HTML with fixed float precision and a dash for missing values."""
    return df.to_html(index=index, float_format=lambda v: f"{v:.{digits}f}", na_rep="–", border=0)


def thumbnail_strip(items: list[tuple[np.ndarray | None, str]], max_side: int = 96) -> str:
    """HTML row of thumbnails (longest side ``max_side`` pixels) with captions; ``None`` shows a grey box."""
    cells = []
    for image, caption in items:
        if image is None:
            picture = (f'<div style="width:{max_side}px;height:{max_side}px;background:#ddd;'
                       f'font-size:0.7em">image not readable</div>')
        else:
            small = thumbnail(image, max_side, enlarge=True)
            png = cv2.imencode(".png", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))[1].tobytes()
            picture = img_tag(png, caption)
        text = "<br>".join(html.escape(line) for line in caption.split("\n"))
        cells.append(f'<figure style="margin:0;width:{max_side + 8}px;font-size:0.7em;overflow-wrap:anywhere">'
                     f"{picture}<figcaption>{text}</figcaption></figure>")
    return '<div style="display:flex;flex-wrap:wrap;gap:6px;margin:0.5em 0">' + "".join(cells) + "</div>"


def load_images(data_dir: str | Path, image_paths: list[str]) -> list[np.ndarray | None]:
    """Cached images for display; None for a file that cannot be read."""
    out: list[np.ndarray | None] = []
    for path in image_paths:
        try:
            out.append(load_image(data_dir, path))
        except (OSError, ValueError):
            out.append(None)
    return out


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def html_page(title: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """A self-contained page from ``(anchor id, heading, inner HTML)`` sections, with a contents bar."""
    nav = " ".join(f'<a href="#{sid}">{html.escape(head)}</a>' for sid, head, _ in sections)
    body = "\n".join(f'<section id="{sid}"><h2>{html.escape(head)}</h2>\n{inner}\n</section>'
                     for sid, head, inner in sections)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head>\n<body><h1>{html.escape(title)}</h1>\n<nav>{nav}</nav>\n{body}\n"
            f"</body></html>\n")
