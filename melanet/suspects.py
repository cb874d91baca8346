"""``melanet suspects RUN_DIR``: labelled images whose out-of-fold prediction most confidently contradicts the label.

The mislabelled-sample clean-up competition teams do by hand: sort the OOF
table by how far the prediction sits from the label, look at the pictures,
and retrain without the ones that are wrong (``train-fusion`` / ``train-gbdt
--exclude suspects.csv``, which still predict them out of fold, so the scores
stay comparable).

Suspicion (0-1) is ``|label - p|`` for a binary score (``pred``, or
``pred_<positive_class>`` for a multiclass run scored on one class) and
``1 - p(labelled class)`` for a multiclass run without a positive class. A
rank blend's score is a rank in 0-1, not a probability: its suspicion orders
rows within a class well, across classes only roughly.

Writes ``suspects.csv`` (``rank, image_id, patient_id, fold, target, pred,
suspicion``; usable as it is for ``--exclude``) and ``suspects.html`` beside it
with a thumbnail per row when the run's data folder is found (a blend run
follows its first input run).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from melanet import plots
from melanet.cohort import read_cohort
from melanet.eda import load_images, thumbnail_strip
from melanet.errors import ArtifactError, ConfigError
from melanet.io import write_csv, write_text
from melanet.runs import ID_COLUMNS, TargetSpec, find_data_dir, read_run, spec_from_metrics

SUSPECTS_FILE = "suspects.csv"


def suspicion_scores(oof: pd.DataFrame, spec: TargetSpec) -> pd.DataFrame:
    """Every OOF row with ``pred`` and ``suspicion``, most suspicious first (ties by ``image_id``).

    ``pred`` is the scored class's probability (binary, or multiclass with a
    positive class) or the probability of the labelled class (multiclass
    without one); multiclass runs also get ``predicted``, the most likely class.
    Rows without a prediction come last with a missing suspicion.
    """
    missing = [c for c in spec.pred_columns if c not in oof.columns]
    if missing:
        raise ArtifactError(f"OOF table lacks prediction column(s) {missing} named by metrics.json; "
                            f"re-run the stage that wrote the run")
    out = oof[ID_COLUMNS].copy()
    y = spec.binary_labels(oof["target"])
    if y is not None:
        out["pred"] = oof[spec.score_column].to_numpy(dtype=float)
        out["suspicion"] = np.abs(y - out["pred"])
    else:
        probs = oof[spec.pred_columns].to_numpy(dtype=float)
        out["pred"] = probs[np.arange(len(oof)), spec.encode(oof["target"])]
        out["suspicion"] = 1.0 - out["pred"]
    if not spec.is_binary:
        probs = oof[spec.pred_columns].to_numpy(dtype=float)
        out["predicted"] = np.asarray(spec.classes, dtype=object)[np.nan_to_num(probs, nan=-1.0).argmax(axis=1)]
    out = out.sort_values(["suspicion", "image_id"], ascending=[False, True], kind="stable", na_position="last")
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out.reset_index(drop=True)


def render(run_dir: Path, table: pd.DataFrame, spec: TargetSpec, data_dir: Path | None, thumbnail_px: int = 96) -> str:
    """The suspects page: how to read it, the table, and a thumbnail per suspect."""
    score = spec.score_column or "probability of the labelled class"
    intro = plots.note(
        f"The {len(table)} labelled images whose out-of-fold prediction ({score}) is farthest from their label "
        f"({spec.column}). Look at each picture: if the label is wrong, fix it or pass the CSV (edited to keep "
        f"the rows you agree with) to train-fusion / train-gbdt --exclude.")
    sections = [("table", "Suspects", intro + plots.table_html(table, digits=3))]
    if data_dir is None:
        sections.append(("thumbnails", "Thumbnails", plots.note(
            f"No thumbnails: the data folder of {run_dir} was not found (data_dir in its config.yaml, or in its "
            f"first input run's for a blend). Run from the folder the run was trained in, or restore the folder.")))
    else:
        cohort = read_cohort(data_dir).set_index("image_id")
        paths = [str(cohort["image_path"].get(i, "")) for i in table["image_id"]]
        images = load_images(data_dir, paths)
        captions = [f"#{r.rank} {r.image_id}\n{spec.column}={r.target} · pred {r.pred:.3f}" for r in table.itertuples()]
        sections.append(("thumbnails", "Thumbnails",
                         plots.note(f"Images from {data_dir}.") + thumbnail_strip(list(zip(images, captions)),
                                                                                  thumbnail_px)))
    return plots.html_page(f"melanet suspect labels: {Path(run_dir).resolve().name}", sections)


def run(run_dir: str | Path, top: int = 50, out: str | Path | None = None) -> Path:
    """Write the ``top`` most suspicious labelled rows to ``out`` (default RUN_DIR/suspects.csv).

    ``suspects.html`` (same name, ``.html``) is written beside it. Returns the CSV path.
    """
    if top < 1:
        raise ConfigError(f"--top {top}: give a number of rows of at least 1")
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / SUSPECTS_FILE
    if out.is_dir():
        out = out / SUSPECTS_FILE
    if out.suffix.lower() in (".html", ".htm"):
        raise ConfigError(f"--out {out}: give the CSV to write (e.g. {out.with_suffix('.csv')}); the HTML page is "
                          f"written beside it with the same name")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--out {out}: {parent} is a file, so {out} cannot be written; give another path")
    oof, _, metrics = read_run(run_dir, reader="suspects")
    spec = spec_from_metrics(metrics)
    table = suspicion_scores(oof, spec).head(top)
    write_csv(out, table)
    write_text(out.with_suffix(".html"), render(run_dir, table, spec, find_data_dir(run_dir)))
    return out
