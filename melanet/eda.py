"""``melanet eda DATA_DIR``: a self-contained HTML page about a cohort, before any model is trained.

Written as ``DATA_DIR/eda.html`` (also at the end of ``melanet ingest``), with
``DATA_DIR/duplicates.csv`` beside it. Sections:

- Cohort overview: images, patients, images per patient, labelled vs
  unlabelled, target prevalence overall and per fold.
- Metadata: distribution and missingness of every header and label field.
- Target rate by sex, age bin and site, with counts and 95% intervals, so a
  user sees where the metadata signal is (and where a rate rests on 5 images).
- Images: size / photometric / transfer-syntax table, sample thumbnails and
  the mean image per class.
- Lesion descriptors: mask outlines on sampled thumbnails, mask success per
  class, descriptor distributions by class (:mod:`melanet.eda_lesions`).
- Duplicates: images with the same file ``sha256`` or a perceptual hash a few
  bits apart (:mod:`melanet.imagehash`). A group that spans folds leaks
  between training and validation; one that spans patients or disagrees on the
  label points at a data problem.

Pure functions (tables in, tables out) come first; :func:`scan_images` reads the
image cache once (hash and class means in one pass), :func:`render` builds the
page and :func:`run` ties them together. Cost: about 2 s of CPU for 1,063
images at 128 px (half of it drawing the four charts), so ingest can always
write the page.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator
from pydantic import Field
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from melanet import eda_lesions, plots
from melanet.plots import load_images, thumbnail_strip  # noqa: F401  (re-exported: melanet.eda.thumbnail_strip)
from melanet.cohort import DICOM_COLUMNS, IDENTIFIER_COLUMNS, age_bins, load_image, read_cohort
from melanet.config import StageConfig
from melanet.imagehash import HASH_BITS, HASH_WORDS, hamming, near_pairs, phash
from melanet.io import write_csv, write_text

EDA_FILE = "eda.html"
DUPLICATES_FILE = "duplicates.csv"
MISSING = "(missing)"
UNLABELLED = "unlabelled"
# Identifiers and file references: not metadata a model could learn from.
FORMAT_COLUMNS = ["modality", "photometric", "transfer_syntax", "bits_stored", "rows", "cols", "frames"]
# Perceptual-hash bits (of 256) for near-duplicates: copies measured at <= 16, distinct lesions >= 38
# (see melanet.imagehash).
DEFAULT_HASH_DISTANCE = 24
# Wilson interval z for 95%.
_Z95 = 1.959963984540054


class EDAConfig(StageConfig):
    """Settings of ``melanet eda``."""

    target: str = Field("target", description="Label column whose prevalence and rates are shown.")
    age_bin_years: int = Field(10, ge=1, description="Width of the age bins of the rate table, years.")
    thumbnails_per_class: int = Field(8, ge=0, description="Sample thumbnails shown per class.")
    thumbnail_px: int = Field(96, ge=16, description="Longest side of a thumbnail, pixels.")
    mask_thumbnails: int = Field(16, ge=0, description="Sampled images shown with their lesion mask outline.")
    max_hash_distance: int = Field(
        DEFAULT_HASH_DISTANCE, ge=0, le=HASH_BITS,
        description=f"Perceptual-hash bits (of {HASH_BITS}) within which two images count as near-duplicates.")
    duplicate_groups_shown: int = Field(30, ge=0, description="Duplicate groups shown with thumbnails.")
    top_values: int = Field(12, ge=1, description="Most frequent values plotted per categorical field.")
    seed: int = Field(0, description="Seed of the thumbnail sample.")


# --- pure functions: tables in, tables out --------------------------------------------------


def labelled_rows(cohort: pd.DataFrame, target: str = "target") -> np.ndarray:
    """Rows with a label in ``target`` and a fold (a cohort ingested without labels has none)."""
    if target not in cohort.columns:
        return np.zeros(len(cohort), dtype=bool)
    return (cohort[target].notna() & (cohort["fold"] >= 0)).to_numpy()


def is_binary(values: pd.Series) -> bool:
    """True when the non-missing values are all 0/1 (as numbers or strings)."""
    numeric = pd.to_numeric(values.dropna(), errors="coerce")
    return bool(numeric.notna().all() and numeric.isin([0, 1]).all())


def class_labels(cohort: pd.DataFrame, target: str = "target") -> pd.Series:
    """Per row ``"target=1"``, ``"target=nevus"``... or ``"unlabelled"``: the classes of the image sections."""
    labelled = labelled_rows(cohort, target)
    out = pd.Series(UNLABELLED, index=cohort.index, dtype=object)
    if labelled.any():
        values = cohort.loc[labelled, target]
        if is_binary(values):
            values = pd.to_numeric(values).astype(int)
        out[labelled] = [f"{target}={v}" for v in values]
    return out


def wilson_interval(positives: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95% Wilson score interval of a proportion (NaN where ``n`` is 0)."""
    positives, n = np.asarray(positives, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = positives / n
        denom = 1 + _Z95**2 / n
        centre = (p + _Z95**2 / (2 * n)) / denom
        half = _Z95 * np.sqrt(p * (1 - p) / n + _Z95**2 / (4 * n**2)) / denom
    # Clip: at a rate of 0 or 1 rounding puts a bound a hair past the rate.
    return np.minimum(centre - half, p), np.maximum(centre + half, p)


def cohort_overview(cohort: pd.DataFrame, target: str = "target") -> dict:
    """Headline counts: images, patients, images per patient, labelled/unlabelled, folds, classes.

    ``prevalence`` is the fraction of labelled images with ``target == 1``
    (None for a non-binary or absent target); ``class_counts`` counts every
    class of :func:`class_labels`.
    """
    labelled = labelled_rows(cohort, target)
    per_patient = cohort.groupby("patient_id", dropna=False).size()
    values = cohort.loc[labelled, target] if labelled.any() else pd.Series(dtype=float)
    binary = labelled.any() and is_binary(values)
    return {
        "images": len(cohort),
        "patients": int(cohort["patient_id"].nunique(dropna=False)),
        "labelled": int(labelled.sum()),
        "unlabelled": int((~labelled).sum()),
        "folds": int(cohort.loc[cohort["fold"] >= 0, "fold"].nunique()),
        "images_per_patient": {
            "min": int(per_patient.min()) if len(per_patient) else 0,
            "median": float(per_patient.median()) if len(per_patient) else 0.0,
            "mean": float(per_patient.mean()) if len(per_patient) else 0.0,
            "max": int(per_patient.max()) if len(per_patient) else 0,
        },
        "target": target,
        "prevalence": float(pd.to_numeric(values).mean()) if binary else None,
        "class_counts": class_labels(cohort, target).value_counts().to_dict(),
    }


def target_rates(cohort: pd.DataFrame, by: str | pd.Series, target: str = "target") -> pd.DataFrame:
    """Per value of ``by``: images, patients, labelled images and the label among them.

    ``by`` is a cohort column name or a Series aligned with the cohort (e.g.
    :func:`melanet.cohort.age_bins`). Binary targets get ``positives``, ``rate`` and its 95%
    Wilson interval ``rate_low``/``rate_high``; other targets one ``frac_<class>``
    column per class. Missing values form a ``(missing)`` row, last. Order:
    ordered categories in order, numbers ascending, other values most images first.
    """
    key = cohort[by] if isinstance(by, str) else by
    name = by if isinstance(by, str) else (key.name or "group")
    values = key.astype(object).where(key.notna(), MISSING)
    labelled = labelled_rows(cohort, target)
    groups = values.groupby(values, sort=False)
    out = pd.DataFrame({
        "images": groups.size(),
        "patients": cohort["patient_id"].groupby(values, sort=False).nunique(),
        "labelled": pd.Series(labelled, index=cohort.index).groupby(values, sort=False).sum(),
    })
    if isinstance(key.dtype, pd.CategoricalDtype) and key.cat.ordered:
        order = [c for c in key.cat.categories if c in out.index]
    elif pd.api.types.is_numeric_dtype(key):
        order = sorted(v for v in out.index if v != MISSING)
    else:
        order = out.drop(MISSING, errors="ignore").sort_values("images", ascending=False, kind="stable").index.tolist()
    out = out.reindex(order + ([MISSING] if MISSING in out.index else []))
    y = cohort.loc[labelled, target] if labelled.any() else pd.Series(dtype=float)
    if len(y) and not is_binary(y):
        fractions = pd.crosstab(values[labelled], y.astype(str), normalize="index")
        out = out.join(fractions.add_prefix("frac_"))
    else:
        positives = pd.to_numeric(y).groupby(values[labelled]).sum() if len(y) else pd.Series(dtype=float)
        out["positives"] = positives.reindex(out.index).fillna(0).astype(int)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["rate"] = out["positives"] / out["labelled"].where(out["labelled"] > 0)
        out["rate_low"], out["rate_high"] = wilson_interval(out["positives"], out["labelled"])
    return out.rename_axis(name).reset_index()


def metadata_summary(cohort: pd.DataFrame) -> pd.DataFrame:
    """Per field (header and label columns, not identifiers): kind, missing count and %, distinct values, summary."""
    rows = []
    for col in (c for c in cohort.columns if c not in IDENTIFIER_COLUMNS):
        values = cohort[col]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        present = values.dropna()
        if numeric and len(present):
            summary = f"min {present.min():g} / median {present.median():g} / max {present.max():g}"
        else:
            summary = ", ".join(f"{v} ({n})" for v, n in present.astype(str).value_counts().head(4).items())
        rows.append({
            "field": col, "kind": "numeric" if numeric else "categorical",
            "missing": int(values.isna().sum()),
            "missing_pct": 100.0 * values.isna().mean() if len(values) else 0.0,
            "distinct": int(present.nunique()), "summary": summary,
        })
    return pd.DataFrame(rows, columns=["field", "kind", "missing", "missing_pct", "distinct", "summary"])


def image_formats(cohort: pd.DataFrame) -> pd.DataFrame:
    """Images per combination of modality, photometric, transfer syntax, bit depth and size (most common first)."""
    from pydicom.uid import UID

    cols = [c for c in FORMAT_COLUMNS if c in cohort.columns]
    table = cohort[cols].astype(object).where(cohort[cols].notna(), MISSING)
    out = table.groupby(cols, sort=False).size().rename("images").reset_index()
    if "transfer_syntax" in out:
        # Keep the UID (what the header says) and add its name (what a person reads).
        out.insert(cols.index("transfer_syntax") + 1, "transfer_syntax_name",
                   [UID(v).name if v != MISSING else MISSING for v in out["transfer_syntax"]])
    return out.sort_values("images", ascending=False, kind="stable").reset_index(drop=True)


def find_duplicates(
    cohort: pd.DataFrame,
    hashes: np.ndarray,
    max_distance: int = DEFAULT_HASH_DISTANCE,
    valid: np.ndarray | None = None,
    target: str = "target",
) -> pd.DataFrame:
    """Groups of duplicate images: same file ``sha256``, or perceptual hashes at most ``max_distance`` bits apart.

    ``hashes`` is (N, 4) from :func:`melanet.imagehash.phash`, aligned with
    ``cohort``; rows where ``valid`` is False (image unreadable) join groups by
    ``sha256`` only. Near-duplicates chain (A~B, B~C puts A, B, C in one group).

    One row per image in a group: ``group`` (1 = first), ``kind`` (``exact``
    when the whole group shares one sha256, else ``near``), ``group_size``,
    ``cross_fold`` (members in more than one fold, the test set counting as
    fold -1: the leak), ``cross_patient``, ``labels_disagree`` (labelled
    members carry different labels), ``hash_distance`` (largest perceptual-hash
    distance between members, bits), then ``image_id, patient_id, fold, <target>,
    sha256``. Cross-fold groups first, then larger groups.
    """
    n = len(cohort)
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(n, HASH_WORDS)
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    columns = ["group", "kind", "group_size", "cross_fold", "cross_patient", "labels_disagree", "hash_distance",
               "image_id", "patient_id", "fold"] + ([target] if target in cohort.columns else []) + ["sha256"]
    # Edges: consecutive rows of each sha256, and near pairs among readable images.
    sha = cohort["sha256"].astype(object).where(cohort["sha256"].notna(), None).to_numpy()
    order = np.argsort(sha.astype(str), kind="stable")
    same = (sha[order][1:] == sha[order][:-1]) & pd.notna(sha[order][1:])
    edges = [np.stack([order[:-1][same], order[1:][same]], axis=1)]
    readable = np.flatnonzero(valid)
    edges.append(readable[near_pairs(hashes[readable], max_distance)])
    edges = np.concatenate(edges)
    if n == 0 or len(edges) == 0:
        return pd.DataFrame(columns=columns)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    members = np.flatnonzero(sizes[component] > 1)
    labelled = labelled_rows(cohort, target)
    groups = []
    for comp in np.unique(component[members]):
        rows = np.flatnonzero(component == comp)
        ok = rows[valid[rows]]
        dist = hamming(hashes[ok][:, None], hashes[ok][None]).max() if len(ok) > 1 else np.nan
        labels = cohort[target].iloc[rows[labelled[rows]]].astype(str) if target in cohort else pd.Series()
        groups.append({
            "rows": rows,
            "kind": "exact" if cohort["sha256"].iloc[rows].nunique(dropna=False) == 1 else "near",
            "group_size": len(rows),
            "cross_fold": cohort["fold"].iloc[rows].nunique() > 1,
            "cross_patient": cohort["patient_id"].iloc[rows].nunique(dropna=False) > 1,
            "labels_disagree": labels.nunique() > 1,
            "hash_distance": float(dist),
        })
    groups.sort(key=lambda g: (not g["cross_fold"], -g["group_size"], g["rows"][0]))
    parts = []
    for number, g in enumerate(groups, start=1):
        part = cohort.iloc[g.pop("rows")][[c for c in columns if c in cohort.columns]].copy()
        for key, value in {"group": number, **g}.items():
            part[key] = value
        parts.append(part)
    return pd.concat(parts, ignore_index=True)[columns]


# --- reading the image cache ----------------------------------------------------------------


@dataclass
class ImageScan:
    """What one pass over the image cache found (rows aligned with the cohort)."""

    hashes: np.ndarray  # (N, 4) uint64 perceptual hashes; zeros where unreadable
    valid: np.ndarray  # (N,) bool: the cached image could be read
    means: dict[str, np.ndarray] = field(default_factory=dict)  # class -> mean image, uint8 RGB
    counts: dict[str, int] = field(default_factory=dict)  # class -> images averaged
    failures: list[tuple[str, str]] = field(default_factory=list)  # (image_path, error)


def scan_images(data_dir: str | Path, cohort: pd.DataFrame, classes: pd.Series) -> ImageScan:
    """Read every cached image once: perceptual hash and per-class running mean.

    Byte-identical DICOM files share one cache file, read once. Images of a size
    other than the first one's are resized for the mean. An unreadable cache file
    is recorded in ``failures``, not raised: the page then says which to re-ingest.
    """
    n = len(cohort)
    scan = ImageScan(hashes=np.zeros((n, HASH_WORDS), dtype=np.uint64), valid=np.zeros(n, dtype=bool))
    sums: dict[str, np.ndarray] = {}
    shape: tuple[int, ...] | None = None
    positions = pd.Series(np.arange(n)).groupby(cohort["image_path"].astype(str).to_numpy(), sort=False)
    for image_path, rows in positions:
        try:
            image = load_image(data_dir, image_path)
        except (OSError, ValueError) as exc:  # missing or corrupt cache file: report it on the page
            scan.failures.append((image_path, f"{type(exc).__name__}: {exc}"))
            continue
        rows = rows.to_numpy()
        scan.hashes[rows] = phash(image)
        scan.valid[rows] = True
        shape = shape or image.shape
        if image.shape != shape:
            image = cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
        for cls in classes.iloc[rows]:
            sums[cls] = sums.get(cls, 0.0) + image
            scan.counts[cls] = scan.counts.get(cls, 0) + 1
    scan.means = {c: np.clip(s / scan.counts[c], 0, 255).astype(np.uint8) for c, s in sums.items()}
    return scan


# --- HTML -----------------------------------------------------------------------------------


def _fig(fig) -> str:
    return plots.img_tag(plots.to_png(fig), fig.axes[0].get_title() if fig.axes else "figure")


def _overview_html(cohort: pd.DataFrame, cfg: EDAConfig) -> str:
    info = cohort_overview(cohort, cfg.target)
    ipp = info["images_per_patient"]
    facts = pd.DataFrame([
        ("images", info["images"]), ("patients", info["patients"]),
        ("images per patient (min / median / mean / max)",
         f"{ipp['min']} / {ipp['median']:g} / {ipp['mean']:.2f} / {ipp['max']}"),
        ("labelled (training set)", info["labelled"]), ("unlabelled (test set, fold -1)", info["unlabelled"]),
        ("folds", info["folds"]),
        (f"{cfg.target} prevalence (labelled)", "–" if info["prevalence"] is None else f"{info['prevalence']:.4f}"),
    ], columns=["", "value"]).astype(str)
    classes = pd.DataFrame(list(info["class_counts"].items()), columns=["class", "images"])
    parts = [plots.table_html(facts), plots.table_html(classes)]
    if len(cohort):
        per_patient = cohort.groupby("patient_id", dropna=False).size()
        fig, (ax,) = plots.figure(6, 3)
        ax.hist(per_patient, bins=np.arange(0.5, per_patient.max() + 1.5), color=plots.PALETTE[0])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title="Images per patient", xlabel="images of the patient", ylabel="patients")
        parts.append(_fig(fig))
    parts.append("<h3>Per fold</h3>" + plots.note(
        "Folds are grouped by patient and stratified on the target: prevalence should be close in every fold."))
    parts.append(plots.table_html(target_rates(cohort, "fold", cfg.target)))
    return "\n".join(parts)


def _metadata_html(cohort: pd.DataFrame, cfg: EDAConfig, classes: pd.Series) -> str:
    summary = metadata_summary(cohort)
    parts = [plots.table_html(summary, digits=1)]
    missing = summary.set_index("field")["missing_pct"]
    missing = missing[missing > 0].sort_values(ascending=False)
    if len(missing):
        parts.append(_fig(plots.barh_plot(missing.to_dict(), "Missing values per field", "% of images missing")))
    label_cols = [c for c in cohort.columns if c not in DICOM_COLUMNS + ["fold", cfg.target]]
    categorical = [c for c in ["sex", "site", "modality"] + label_cols
                   if c in cohort and not pd.api.types.is_numeric_dtype(cohort[c])]
    panels = (["age"] if "age" in cohort else []) + categorical
    if panels and len(cohort):
        nrows = -(-len(panels) // 2)
        fig, axes = plots.figure(11, 3.2 * nrows, ncols=2, nrows=nrows)
        for ax in axes[len(panels):]:
            ax.axis("off")
        for ax, col in zip(axes, panels):
            if col == "age":
                ages = pd.to_numeric(cohort["age"], errors="coerce")
                edges = np.histogram_bin_edges(ages.dropna(), bins=20) if ages.notna().any() else 20
                for i, cls in enumerate(sorted(classes.unique())):
                    in_class = (classes == cls).to_numpy()
                    ax.hist(ages[in_class].dropna(), bins=edges, histtype="step", lw=1.5,
                            color=plots.PALETTE[i % len(plots.PALETTE)], label=f"{cls} (n={in_class.sum()})")
                ax.legend(fontsize=7)
                ax.set(title=f"age ({cohort['age'].isna().sum()} missing)", xlabel="years", ylabel="images")
                continue
            counts = cohort[col].astype(object).where(cohort[col].notna(), MISSING).value_counts()
            shown = counts.head(cfg.top_values)
            ax.barh(np.arange(len(shown))[::-1], shown.to_numpy(), color=plots.PALETTE[0])
            ax.set_yticks(np.arange(len(shown))[::-1], [str(v) for v in shown.index], fontsize=8)
            more = f", {len(counts) - len(shown)} more values" if len(counts) > len(shown) else ""
            ax.set(title=f"{col}{more}", xlabel="images")
        parts.append(_fig(fig))
    return "\n".join(parts)


def _rates_html(cohort: pd.DataFrame, cfg: EDAConfig) -> str:
    groupings = {"sex": "sex", "age bin": age_bins(cohort["age"], years=cfg.age_bin_years), "site": "site"}
    tables = {name: target_rates(cohort, by, cfg.target) for name, by in groupings.items()
              if not isinstance(by, str) or by in cohort}
    parts = [plots.note(
        "Rate = fraction of labelled images with the target, with a 95% Wilson interval; a wide interval "
        "means too few images to trust the difference.")]
    binary = all("rate" in t for t in tables.values())
    overall = cohort_overview(cohort, cfg.target)["prevalence"]
    if binary and overall is not None:
        fig, axes = plots.figure(5 * len(tables), 3.6, ncols=len(tables))
        for ax, (name, table) in zip(axes, tables.items()):
            table = table[table["labelled"] > 0]
            x = np.arange(len(table))
            err = np.vstack([table["rate"] - table["rate_low"], table["rate_high"] - table["rate"]])
            ax.bar(x, table["rate"], yerr=err, capsize=3, color=plots.PALETTE[0])
            ax.axhline(overall, ls="--", color="grey", lw=1, label=f"overall {overall:.3f}")
            ticks = [f"{v} (n={n})" for v, n in zip(table.iloc[:, 0], table["labelled"])]
            ax.set_xticks(x, ticks, rotation=45, ha="right", fontsize=8)
            ax.set(title=f"{cfg.target} rate by {name}", ylabel="rate")
            ax.legend(fontsize=7)
        parts.append(_fig(fig))
    for name, table in tables.items():
        parts.append(f"<h3>by {html.escape(name)}</h3>" + plots.table_html(table, digits=3))
    return "\n".join(parts)


def _images_html(data_dir: Path, cohort: pd.DataFrame, cfg: EDAConfig, classes: pd.Series, scan: ImageScan) -> str:
    parts = ["<h3>Formats</h3>", plots.table_html(image_formats(cohort))]
    if scan.failures:
        shown = "; ".join(f"{p} ({e})" for p, e in scan.failures[:5])
        parts.append(plots.note(f"{len(scan.failures)} cached image file(s) could not be read and are left out "
                                f"below: {shown}. Re-run `melanet ingest` to rebuild the cache."))
    if scan.means:
        parts.append("<h3>Mean image per class</h3>")
        parts.append(thumbnail_strip([(scan.means[c], f"{c}\nn={scan.counts[c]}") for c in sorted(scan.means)],
                                     max_side=2 * cfg.thumbnail_px))
    if cfg.thumbnails_per_class:
        parts.append("<h3>Sample thumbnails per class</h3>"
                     + plots.note(f"Up to {cfg.thumbnails_per_class} random images per class (seed {cfg.seed})."))
        rng = np.random.default_rng(cfg.seed)
        for cls in sorted(classes.unique()):
            rows = np.flatnonzero((classes == cls).to_numpy() & scan.valid)
            rows = np.sort(rng.choice(rows, min(len(rows), cfg.thumbnails_per_class), replace=False))
            images = load_images(data_dir, cohort["image_path"].iloc[rows].astype(str).tolist())
            captions = [f"{r.image_id}\n{r.patient_id}" for r in cohort.iloc[rows].itertuples()]
            parts.append(f"<h4>{html.escape(cls)} ({int((classes == cls).sum())} images)</h4>"
                         + thumbnail_strip(list(zip(images, captions)), cfg.thumbnail_px))
    return "\n".join(parts)


def _duplicates_html(data_dir: Path, cohort: pd.DataFrame, cfg: EDAConfig, dups: pd.DataFrame) -> str:
    rule = (f"same file sha256, or perceptual hashes at most {cfg.max_hash_distance} of {HASH_BITS} bits apart "
            f"(EDAConfig.max_hash_distance)")
    if dups.empty:
        return plots.note(f"No duplicate images found ({rule}).")
    groups = dups.groupby("group", sort=True).agg(
        kind=("kind", "first"), images=("image_id", "size"), cross_fold=("cross_fold", "first"),
        cross_patient=("cross_patient", "first"), labels_disagree=("labels_disagree", "first"),
        hash_distance=("hash_distance", "first"),
        folds=("fold", lambda f: ",".join(map(str, sorted(set(f))))),
        patients=("patient_id", lambda p: ",".join(sorted(set(map(str, p))))),
    ).reset_index()
    leaking = int(groups["cross_fold"].sum())
    parts = [plots.note(
        f"{len(groups)} group(s) of duplicate images ({rule}); {leaking} span more than one fold (the test set "
        f"counts as fold -1): training on one copy and validating on another inflates the CV score. "
        f"Every member is listed in {DUPLICATES_FILE}; pass it to train-fusion / train-gbdt --exclude, or fix "
        f"the labels table."), plots.table_html(groups, digits=0)]
    rows = cohort.assign(label=class_labels(cohort, cfg.target)).set_index("image_id")
    for number, members in list(dups.groupby("group", sort=True))[:cfg.duplicate_groups_shown]:
        head = members.iloc[0]
        flags = [f for f in ("cross_fold", "cross_patient", "labels_disagree") if head[f]]
        member_rows = rows.loc[members["image_id"]]
        images = load_images(data_dir, member_rows["image_path"].astype(str).tolist())
        captions = [f"{image_id}\n{r.patient_id} · fold {r.fold}\n{r.label}" for image_id, r in member_rows.iterrows()]
        parts.append(f"<h4>group {number}: {head['kind']}, {len(members)} images"
                     f"{' · ' + ', '.join(flags) if flags else ''}</h4>"
                     + thumbnail_strip(list(zip(images, captions)), cfg.thumbnail_px))
    return "\n".join(parts)


def render(data_dir: str | Path, cohort: pd.DataFrame, cfg: EDAConfig, scan: ImageScan, dups: pd.DataFrame) -> str:
    """The EDA page (self-contained HTML; figures and thumbnails embedded as PNG)."""
    data_dir = Path(data_dir)
    classes = class_labels(cohort, cfg.target)
    sections = [
        ("overview", "Cohort overview", _overview_html(cohort, cfg)),
        ("metadata", "Metadata", _metadata_html(cohort, cfg, classes)),
        ("rates", "Target rate by sex, age and site", _rates_html(cohort, cfg)),
        ("images", "Images", _images_html(data_dir, cohort, cfg, classes, scan)),
        ("lesions", "Lesion descriptors", eda_lesions.section_html(data_dir, cohort, classes, cfg.target,
                                                                   cfg.mask_thumbnails, cfg.thumbnail_px, cfg.seed)),
        ("duplicates", "Duplicates", _duplicates_html(data_dir, cohort, cfg, dups)),
    ]
    return plots.html_page(f"melanet EDA: {data_dir.resolve().name}", sections)


def run(data_dir: str | Path, cfg: EDAConfig | None = None, cohort: pd.DataFrame | None = None,
        out_dir: str | Path | None = None) -> Path:
    """Write ``eda.html`` and ``duplicates.csv`` into ``out_dir`` (default DATA_DIR); return the HTML path.

    ``cohort`` (default: DATA_DIR's ``cohort.parquet``) lets ingest write the page of a
    cohort it has not swapped in yet; images are read from DATA_DIR either way.
    """
    cfg = cfg or EDAConfig()
    data_dir = Path(data_dir)
    out_dir = Path(out_dir) if out_dir is not None else data_dir
    cohort = (read_cohort(data_dir) if cohort is None else cohort).reset_index(drop=True)
    classes = class_labels(cohort, cfg.target)
    scan = scan_images(data_dir, cohort, classes)
    dups = find_duplicates(cohort, scan.hashes, cfg.max_hash_distance, valid=scan.valid, target=cfg.target)
    write_csv(out_dir / DUPLICATES_FILE, dups)
    return write_text(out_dir / EDA_FILE, render(data_dir, cohort, cfg, scan, dups))
