"""``melanet demo``: the whole pipeline on a synthetic DICOM cohort, ending with one table.

    synth -> ingest -> train-fusion (image-only and fusion, CPU config) -> train-gbdt
          -> train-gbdt --with-oof (image scores + patient context) -> blend (auto, all four) -> report

Each stage writes to ``OUT_DIR`` and is skipped on a re-run when its outputs are
complete (fusion folds resume). The final table shows AUC and pAUC80 of every
model's OOF predictions next to the observable ceiling (the AUC of the image,
metadata and duckling terms of ``truth.csv``: what a model can see) and the
AUC of the true probabilities, which also hold the generator's unseen noise.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from pydantic import Field
from rich.table import Table

from melanet import metrics as M
from melanet.blend import BlendMethod
from melanet.config import StageConfig, load_config
from melanet.console import console
from melanet.io import read_json, write_csv


#: The runs the demo blends: every model, so that auto can pick (or pass through) whichever holds up.
BLEND_INPUTS = ("image_only", "fusion", "gbdt", "gbdt_img")


class DemoConfig(StageConfig):
    """Settings of ``melanet demo``."""

    out_dir: Path = Path("melanet-demo")
    patients: int | None = Field(None, description="Synthetic patients; None = the synth default.")
    seed: int = 0
    image_size: int = Field(96, description="Side of the synthetic DICOM images and of the cache, pixels.")
    fusion_config: str = "fusion-cpu-small"
    image_config: str = Field("image-cpu-small", description="train-fusion config of the image-only CNN run (always "
                                                             "trained with model.use_meta=false).")
    gbdt_config: str = "gbdt"
    blend_method: BlendMethod = Field("auto", description="Blend method over every model run (auto: chosen by nested CV, "
                                                  "never below its best input).")
    fusion_set: list[str] = Field(default_factory=list, description="--set overrides for both CNN runs.")
    workers: int = 0


def _done(run_dir: Path) -> bool:
    """A complete run from an earlier demo (an interrupted one is resumed or, if its inputs changed, replaced)."""
    from melanet.errors import MelanetError
    from melanet.runs import check_run

    try:
        check_run(run_dir)
    except MelanetError:
        return False
    return True


def cnn_runs(cfg: DemoConfig) -> dict[str, tuple[str, list[str]]]:
    """Run name -> (train-fusion config, --set overrides) of the demo's two CNN runs (bench_accuracy trains the same)."""
    return {"image_only": (cfg.image_config, [*cfg.fusion_set, "model.use_meta=false"]),
            "fusion": (cfg.fusion_config, list(cfg.fusion_set))}


def _stage(name: str, skip: bool) -> float:
    console.rule(f"[bold]{name}[/]" + (" (finished earlier: reused)" if skip else ""))
    return time.perf_counter()


def run(cfg: DemoConfig) -> pd.DataFrame:
    """Run the pipeline; return (and print, and write ``OUT_DIR/summary.csv``) the comparison table."""
    from melanet import blend, ingest, report, synth
    from melanet.train import fusion, gbdt

    start = time.perf_counter()
    out = Path(cfg.out_dir)
    src, data, runs = out / "synth", out / "data", out / "runs"

    synth_cfg = synth.SynthConfig(out_dir=src, seed=cfg.seed, image_size=cfg.image_size,
                                  **({"patients": cfg.patients} if cfg.patients else {}))
    done = (src / "synth.json").is_file() and read_json(src / "synth.json").get("config", {}).get("patients") == \
        synth_cfg.patients
    _stage("1/6 synth: synthetic DICOM cohort", done)
    if not done:
        synth.run(synth_cfg)

    _stage("2/6 ingest", False)  # a re-run is cheap: unchanged files come from the cache
    ingest.run(ingest.IngestConfig(dicom_dir=src / "dicom", out_dir=data, labels=src / "labels.csv",
                                   image_size=cfg.image_size, workers=cfg.workers))

    for i, (name, (config, sets)) in enumerate(cnn_runs(cfg).items()):
        run_dir = runs / name
        _stage(f"3/6 train-fusion ({name.replace('_', '-')}, {config})", _done(run_dir))
        if not _done(run_dir):
            fcfg = load_config(fusion.FusionConfig, config, sets,
                               extra={"data_dir": str(data), "out_dir": str(run_dir), "overwrite": True})
            fusion.run(fcfg, folds=None, resume=True)

    gbdt_runs = {"gbdt": {}, "gbdt_img": {"with_oof": [str(runs / "fusion")]}}
    for name, extra in gbdt_runs.items():
        run_dir = runs / name
        _stage(f"4/6 train-gbdt ({'metadata' if name == 'gbdt' else 'metadata + fusion OOF, patient context'})",
               _done(run_dir))
        if not _done(run_dir):
            gbdt.run(load_config(gbdt.GBDTConfig, cfg.gbdt_config, None,
                                 extra={"data_dir": str(data), "out_dir": str(run_dir), "overwrite": True,
                                        **extra}), resume=True)

    blend_dir = runs / "blend"
    _stage(f"5/6 blend ({cfg.blend_method}: {', '.join(BLEND_INPUTS)})", _done(blend_dir))
    if not _done(blend_dir):
        blend.run(blend.BlendConfig(runs=[str(runs / name) for name in BLEND_INPUTS], out_dir=blend_dir,
                                    method=cfg.blend_method, overwrite=True))

    _stage("6/6 report", False)
    for name in ("image_only", "fusion", "gbdt", "gbdt_img", "blend"):
        if not (runs / name / "report.html").is_file():
            report.run(runs / name)

    table = summary_table(src, runs)
    write_csv(out / "summary.csv", table)
    pairs = paired_comparisons(runs)
    write_csv(out / "comparisons.csv", pairs)
    _print_table(table, time.perf_counter() - start, out)
    _print_pairs(pairs)
    return table


OBSERVABLE_CEILING = "observable ceiling (image+meta+duckling terms)"
TRUE_PROBABILITY = "true probability (incl. unseen noise)"


def summary_table(src: Path, runs: Path) -> pd.DataFrame:
    """OOF AUC / pAUC80 of each run, of the observable ceiling (the sum of the logit terms a model can see)
    and of the true probabilities (which also hold the unseen noise), on the same labelled rows."""
    from scipy.special import expit

    from melanet.synth import observable_logit

    truth = pd.read_csv(src / "truth.csv", dtype={"image_id": str})
    rows = []
    names = {"image_only": "CNN image-only", "fusion": "CNN + metadata (fusion)", "gbdt": "GBDT metadata + descriptors",
             "gbdt_img": "GBDT metadata + descriptors + fusion OOF", "blend": "blend"}
    oof_ids = None
    for key, label in names.items():
        m = read_json(runs / key / "metrics.json")["overall"]
        oof = pd.read_parquet(runs / key / "oof.parquet", columns=["image_id"])
        oof_ids = set(oof["image_id"]) if oof_ids is None else oof_ids
        rows.append({"model": label, "auc": m["auc"], "pauc80": m["pauc80"], "ap": m["ap"], "n": m["n"]})
    sub = truth[truth["image_id"].isin(oof_ids)]
    # The observable ceiling leaves out the generator's noise term, which no model sees; p_true includes it.
    # (Its sigmoid lacks the intercept: fine for AUC, pAUC and AP, which only rank.)
    ceilings = {OBSERVABLE_CEILING: expit(observable_logit(sub)), TRUE_PROBABILITY: sub["p_true"]}
    for label, score in ceilings.items():
        best = M.binary_metrics(sub["target"].astype(int), score)
        rows.append({"model": label, "auc": best["auc"], "pauc80": best["pauc80"], "ap": best["ap"],
                     "n": best["n"]})
    return pd.DataFrame(rows)


#: (better?, than) run pairs the demo tests: does metadata help the CNN, do pixels help the GBDT, does blending help.
PAIRS = (("fusion", "image_only"), ("fusion", "gbdt"), ("blend", "fusion"), ("blend", "gbdt_img"))


def paired_comparisons(runs: Path, n_boot: int = 1000) -> pd.DataFrame:
    """AUC difference of each pair in PAIRS on the same OOF rows, with a patient-grouped bootstrap 95% interval."""
    rows = []
    for a, b in PAIRS:
        left = pd.read_parquet(runs / a / "oof.parquet", columns=["image_id", "patient_id", "target", "pred"])
        right = pd.read_parquet(runs / b / "oof.parquet", columns=["image_id", "pred"])
        both = left.merge(right, on="image_id", suffixes=("_a", "_b"))
        d = M.paired_auc_difference(both["target"].astype(int), both["pred_a"], both["pred_b"],
                                    groups=both["patient_id"], n_boot=n_boot)
        rows.append({"model": a, "baseline": b, "auc_diff": d["diff"], "lo": d["lo"], "hi": d["hi"],
                     "p_not_better": d["p_not_better"]})
    return pd.DataFrame(rows)


def pair_verdict(lo: float, hi: float) -> str:
    """How a paired AUC difference reads: its 95% interval wholly above 0, wholly below 0, or across 0."""
    if lo > 0:
        return "clearly better"
    if hi < 0:
        return "clearly worse"
    return "within noise"


def _print_pairs(pairs: pd.DataFrame) -> None:
    for r in pairs.itertuples():
        verdict = pair_verdict(r.lo, r.hi)
        console.print(f"{r.model} vs {r.baseline}: AUC {r.auc_diff:+.4f} (95% CI {r.lo:+.4f} to {r.hi:+.4f}, "
                      f"patient bootstrap) - {verdict}", highlight=False)


def _print_table(table: pd.DataFrame, seconds: float, out: Path) -> None:
    t = Table(title=f"melanet demo: out-of-fold scores ({seconds / 60:.1f} min, outputs in {out})")
    for col in ("model", "AUC", "pAUC80", "AP", "n"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in table.itertuples():
        t.add_row(r.model, f"{r.auc:.4f}", f"{r.pauc80:.4f}", f"{r.ap:.4f}", str(r.n))
    console.print(t)
    parts = table.set_index("model")["auc"]
    blend_auc = parts["blend"]
    rivals = ("CNN + metadata (fusion)", "GBDT metadata + descriptors + fusion OOF", "GBDT metadata + descriptors")
    beaten = [m for m in rivals if blend_auc > parts[m]]
    console.print(f"blend AUC {blend_auc:.4f} beats {len(beaten)}/3 of fusion, GBDT+OOF, GBDT; "
                  f"gap to the observable ceiling: {parts[OBSERVABLE_CEILING] - blend_auc:+.4f}")
    console.print(f"reports: {out / 'runs' / '*' / 'report.html'}, EDA: {out / 'data' / 'eda.html'}")
