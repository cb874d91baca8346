"""``melanet synth``: a synthetic dermoscopy cohort as real DICOM files, with known true probabilities.

Real dermoscopy data cannot be downloaded here, so melanet makes its own cohort
for the demo, the tests and the benchmarks. Written to ``OUT_DIR``:

- ``dicom/``: one DICOM file per lesion image, ISIC-like names
  (``ISIC_0123456.dcm``); a few have no extension and a few sit in a
  subfolder, so ``image_id`` (path relative to ``dicom/`` without extension)
  is not always the bare stem. Encodings are mixed per file: JPEG baseline
  YBR_FULL_422 (as ISIC's DICOMs), uncompressed RGB, RLE lossless, JPEG 2000
  lossless and, with ``grayscale_fraction``, 16-bit MONOCHROME1/2 with
  rescale and window tags.
- ``labels.csv``: ``image_id, target, diagnosis`` for the labelled images
  (``test_fraction`` of the patients are left out: the test set).
- ``truth.csv``: ``image_id, p_true, target`` for every image, then the
  diagnosis, split and the four logit terms, so the best achievable AUC is known.
- ``faults.csv`` (with ``faults``): the deliberately broken inputs.
- ``synth.json``: resolved config, counts, prevalence and, under
  ``auc_against_target``, the AUC of ``p_true``, of each term alone and of
  ``observable`` (image + meta + duckling: the observable ceiling, the best a
  model can do from the files; ``p_true`` also holds the unseen noise).

Label model: ``p_true = sigmoid(b0 + image + meta + duckling + noise)``,
``target ~ Bernoulli(p_true)``, ``b0`` bisected so that the mean of
``p_true`` equals ``prevalence``.

- image: the lesion cues drawn in the pixels (border irregularity, colour
  variegation, asymmetry, diameter). ``image_cues`` chooses which carry it:
  ``all`` (default), ``colour`` (variegation only) or ``shape`` (irregularity,
  asymmetry, radius). The others are still drawn, as decoys with the same
  distribution and no risk, and the term is rescaled to the spread the
  ``all`` term has, so only *where* the signal sits changes. A way to ask
  whether a recipe (say, colour augmentation) erases one kind of cue;
- meta: non-linear in age, plus sex and a sex x site interaction (torso
  matters for men, lower extremity for women) and head/neck x old age;
- duckling ("ugly duckling"): each patient has a signature nevus (tone,
  pattern, size, atypia level); a lesion that departs from it is riskier,
  and an atypical look shared by all of a patient's lesions counts less.
  Both are visible only against the patient's other lesions;
- noise: unobserved, so no model reaches the true-probability AUC.

Same seed, byte-identical files (no timestamps; UIDs derived from the seed).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from melanet.console import console, progress
from melanet.errors import InputDataError
from melanet.io import write_bytes, write_csv, write_json, write_text
from melanet.synth.config import (COLOR_ENCODINGS, DIAGNOSES, FAULTS, GRAY_ENCODINGS, IMAGE_CUES, PATTERNS,
                                  SITE_WEIGHTS, SITES, SynthConfig, SynthResult)
from melanet.synth.render import image_rng, render_lesion, to_gray
from melanet.synth.sampler import (OBSERVABLE_TERMS, calibrate_intercept, component_aucs, meta_logit,
                                   observable_logit, sample_cohort)
from melanet.synth.writer import (VL_PHOTOGRAPHIC_IMAGE_STORAGE, dicom_bytes, dicom_dataset, fault_files,
                                  fault_table)

__all__ = ["COLOR_ENCODINGS", "DIAGNOSES", "FAULTS", "GRAY_ENCODINGS", "IMAGE_CUES", "OBSERVABLE_TERMS",
           "PATTERNS", "SITES", "SITE_WEIGHTS", "VL_PHOTOGRAPHIC_IMAGE_STORAGE", "SynthConfig", "SynthResult",
           "calibrate_intercept", "component_aucs", "dicom_bytes", "dicom_dataset", "fault_files", "fault_table",
           "image_rng", "meta_logit", "observable_logit", "render_lesion", "run", "sample_cohort", "to_gray"]

_SUMMARY = "synth.json"
_IN_PROGRESS = ".synth_incomplete"


def _claim_out_dir(out_dir: Path) -> Path:
    """Refuse a dicom/ folder that synth did not write (its stale files would join the cohort)."""
    dicom_dir = out_dir / "dicom"
    ours = (out_dir / _SUMMARY).is_file() or (out_dir / _IN_PROGRESS).is_file()
    if dicom_dir.is_dir() and not ours and any(p.is_file() for p in dicom_dir.rglob("*")):
        raise InputDataError(f"{dicom_dir} already holds files that `melanet synth` did not write; "
                             f"give an empty or new OUT_DIR")
    write_text(out_dir / _IN_PROGRESS, "melanet synth is writing this folder\n")
    (out_dir / _SUMMARY).unlink(missing_ok=True)
    return dicom_dir


def run(cfg: SynthConfig) -> SynthResult:
    """Write the synthetic cohort to ``cfg.out_dir`` and return what was written."""
    start = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    dicom_dir = _claim_out_dir(out_dir)
    cohort = sample_cohort(cfg)
    written: set[Path] = set()
    with progress() as bar:
        task = bar.add_task("synth", total=len(cohort), status="")
        for i, row in enumerate(cohort.to_dict("records")):
            pixels = render_lesion(row, cfg.image_size, image_rng(cfg.seed, i))
            path = dicom_dir / row["file_name"]
            write_bytes(path, dicom_bytes(dicom_dataset(pixels, row, row["encoding"])))
            written.add(path)
            bar.advance(task)

    labels = cohort.loc[cohort["labelled"], ["image_id", "target", "diagnosis"]]
    faults = fault_files(cohort, cfg.image_size, cfg.seed) if cfg.faults else []
    for fault in faults:
        written.add(write_bytes(dicom_dir / fault["path"], fault["data"]))
    n_faults = 0
    if faults:
        table = fault_table(cohort, faults)
        n_faults = len(table)
        write_csv(out_dir / "faults.csv", table)
        labelled_faults = pd.DataFrame([{k: f[k] for k in ("image_id", "target", "diagnosis")}
                                        for f in faults if f["target"] is not None])
        labels = pd.concat([labels, labelled_faults], ignore_index=True)
    else:
        (out_dir / "faults.csv").unlink(missing_ok=True)
    for stale in [p for p in dicom_dir.rglob("*") if p.is_file() and p not in written]:
        stale.unlink()  # left by an earlier, larger synth run into the same folder

    cohort["split"] = np.where(cohort["labelled"], "train", "test")
    truth_cols = ["image_id", "p_true", "target", "diagnosis", "split",
                  "image_term", "meta_term", "duckling_term", "noise_term"]
    labels_path = write_csv(out_dir / "labels.csv", labels)
    truth_path = write_csv(out_dir / "truth.csv", cohort[truth_cols])
    auc = component_aucs(cohort)
    n_labelled = int(cohort["labelled"].sum())
    summary = {
        "config": cfg.model_dump(mode="json", exclude={"out_dir"}),
        "patients": cfg.patients,
        "images": len(cohort),
        "labelled_images": n_labelled,
        "test_images": len(cohort) - n_labelled,
        "fault_files": n_faults,
        "prevalence": float(cohort["target"].mean()),
        "mean_p_true": float(cohort["p_true"].mean()),
        "auc_against_target": auc,
        "encodings": {k: int(v) for k, v in cohort["encoding"].value_counts().sort_index().items()},
        "diagnoses": {k: int(v) for k, v in cohort["diagnosis"].value_counts().sort_index().items()},
    }
    write_json(out_dir / _SUMMARY, summary)
    (out_dir / _IN_PROGRESS).unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    fault_note = f", {n_faults} faulty files" if n_faults else ""
    console.print(
        f"synth: {len(cohort)} images from {cfg.patients} patients ({n_labelled} labelled, "
        f"{len(cohort) - n_labelled} test{fault_note}), "
        f"prevalence {summary['prevalence']:.3f}, true-probability AUC {auc.get('p_true', float('nan')):.3f}, "
        f"observable ceiling AUC {auc.get('observable', float('nan')):.3f}, "
        f"{seconds:.1f} s -> {out_dir}", soft_wrap=True)
    return SynthResult(out_dir=out_dir, dicom_dir=dicom_dir, labels_path=labels_path, truth_path=truth_path,
                       n_patients=cfg.patients, n_images=len(cohort), n_labelled=n_labelled,
                       n_faults=n_faults, prevalence=summary["prevalence"], auc=auc,
                       seconds=seconds)
