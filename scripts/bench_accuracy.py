"""Signal audit: what each default recipe learns on a matrix of synthetic cohorts.

For every cohort (``melanet synth`` settings, COHORTS) the script synthesises,
ingests, then trains with the DEFAULT recipes, exactly as the CLI does:

    image_only  train-fusion --config image-cpu-small          (fusion-cpu-small, image only, 10 epochs)
    fusion      train-fusion --config fusion-cpu-small
    gbdt        train-gbdt   --config gbdt                       (metadata + patient context)
    gbdt_img    train-gbdt   --config gbdt --with-oof <fusion>   (+ the fusion CNN's OOF scores)
    blend       blend <image_only> <fusion> <gbdt> <gbdt_img>    (the blend's default method)

and prints one table (melanet.audit): per cohort and model, OOF AUC, pAUC80,
the correlation of the OOF logit with the true image / metadata / duckling
terms, the partial correlation with the image term (the other terms held
fixed: the image signal a score holds whatever else it uses), the
observable ceiling (AUC of image + meta + duckling terms on the same rows)
and the gap to it, and the image term's own AUC. Each cohort's
first row, model "ceiling", is the observable logit itself audited like a
model: the correlations a perfect score has (a perfect score correlates
well below 1 with any one term).

    python scripts/bench_accuracy.py --quick --out /tmp/audit          # ~15 min on 2 idle cores
    python scripts/bench_accuracy.py --out /tmp/audit                  # the full matrix (hours on 2 cores)
    python scripts/bench_accuracy.py --cohorts demo,colour-300 --models image_only \\
        --set-fusion augment.hue_saturation_p=0 --out /tmp/audit-nohue # audit a recipe variant

``--quick``: the demo cohort with every model, the image-signal-only, colour-
and shape-cue cohorts at the demo's size (300 patients) with the image-only
CNN, and the 1,000-patient cohort with the image-only CNN and the metadata
GBDT. Everything is cached under ``--work``: a cohort by its synth settings,
its ingest by the same key, a run by the cohort and its fully resolved config
(so a changed config file trains anew); fusion folds resume after a kill.
``audit.csv`` and ``audit.md`` are rewritten after every model, so a stopped
run leaves its partial table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODELS = ("image_only", "fusion", "gbdt", "gbdt_img", "blend")
#: Runs each model needs first (the blend blends every model run, as `melanet demo` does: melanet.demo.BLEND_INPUTS).
NEEDS = {"gbdt_img": ("fusion",), "blend": ("image_only", "fusion", "gbdt", "gbdt_img")}
_SMALL = 300  # the synth default: the demo's cohort size

#: Cohort name -> `melanet synth` settings. "demo" is filled from DemoConfig at run time.
COHORTS: dict[str, dict] = {
    "demo": {},
    "p1000": {"patients": 1000},
    "p3000": {"patients": 3000},
    "image-signal": {"patients": 1000, "meta_signal": 0.0, "duckling_signal": 0.0},
    "colour": {"patients": 1000, "image_cues": "colour"},
    "shape": {"patients": 1000, "image_cues": "shape"},
    "grayscale": {"patients": 1000, "grayscale_fraction": 1.0},
    "image-signal-300": {"patients": _SMALL, "meta_signal": 0.0, "duckling_signal": 0.0},
    "colour-300": {"patients": _SMALL, "image_cues": "colour"},
    "shape-300": {"patients": _SMALL, "image_cues": "shape"},
}
FULL = {name: MODELS for name in ("demo", "p1000", "p3000", "image-signal", "colour", "shape", "grayscale")}
QUICK = {"demo": MODELS, "image-signal-300": ("image_only",), "colour-300": ("image_only",),
         "shape-300": ("image_only",), "p1000": ("image_only", "gbdt")}
SHOWN = ("cohort", "model", "n", "auc", "pauc80", "corr_image", "corr_meta", "corr_duckling", "pcorr_image",
         "ceiling_auc", "gap", "image_term_auc", "minutes")
#: The model name of each cohort's reference row: the observable logit audited like a model (melanet.audit.ceiling_oof).
CEILING_ROW = "ceiling"


def _key(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]


def synth_settings(name: str, overrides: list[str] = ()) -> dict:
    """The `melanet synth` settings of cohort ``name`` (demo: seed, image size and patients of `melanet demo`),
    then ``overrides`` (key=value, e.g. patients=20 for a smoke run)."""
    from melanet.config import parse_overrides
    from melanet.demo import DemoConfig

    demo = DemoConfig()
    base = {"seed": demo.seed, "image_size": demo.image_size}
    if demo.patients:
        base["patients"] = demo.patients
    return {**base, **COHORTS[name], **parse_overrides(list(overrides))}


def prepare_cohort(name: str, work: Path, overrides: list[str] = ()) -> tuple[Path, Path]:
    """Synthesise and ingest cohort ``name`` under ``work`` (reused when done); return (synth dir, data dir)."""
    from melanet import ingest, synth
    from melanet.config import load_config

    settings = synth_settings(name, overrides)
    folder = work / "cohorts" / f"{name}-{_key(settings)}"
    src, data = folder / "synth", folder / "data"
    if not (src / "synth.json").is_file() or (src / ".synth_incomplete").exists():
        synth.run(load_config(synth.SynthConfig, None, None, extra={"out_dir": str(src), **settings}))
    if not (data / "DONE.bench").is_file():
        ingest.run(load_config(ingest.IngestConfig, None, ["eda=false"], extra={
            "dicom_dir": str(src / "dicom"), "labels": str(src / "labels.csv"), "out_dir": str(data),
            "image_size": settings["image_size"]}))
        (data / "DONE.bench").write_text("ingested for bench_accuracy\n")
    return src, data


def _complete(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file() and (run_dir / "oof.parquet").is_file()


def _run_dir(work: Path, cohort_dir: Path, model: str, cfg) -> Path:
    resolved = cfg.model_dump(mode="json", exclude={"data_dir", "out_dir"})
    return work / "runs" / cohort_dir.parent.name / f"{model}-{_key(resolved)}"


def train(model: str, data: Path, work: Path, done: dict[str, Path], args: argparse.Namespace) -> Path:
    """Train ``model`` on ``data`` with the default recipe (+ the --set overrides), or reuse a finished run."""
    from melanet import blend
    from melanet.config import load_config
    from melanet.demo import DemoConfig, cnn_runs
    from melanet.train import fusion, gbdt

    placeholder = {"data_dir": str(data), "out_dir": "unset"}
    if model in ("image_only", "fusion"):
        demo = DemoConfig(fusion_config=args.fusion_config, image_config=args.image_config, fusion_set=args.set_fusion)
        config, sets = cnn_runs(demo)[model]
        cfg = load_config(fusion.FusionConfig, config, sets, extra=placeholder)
        out = _run_dir(work, data, model, cfg)
        if not _complete(out):
            fusion.run(cfg.model_copy(update={"out_dir": out}), folds=None, resume=True)
    elif model in ("gbdt", "gbdt_img"):
        extra = {**placeholder, **({"with_oof": [str(done["fusion"])]} if model == "gbdt_img" else {})}
        cfg = load_config(gbdt.GBDTConfig, args.gbdt_config, args.set_gbdt, extra=extra)
        out = _run_dir(work, data, model, cfg)
        if not _complete(out):
            shutil.rmtree(out, ignore_errors=True)  # a killed GBDT run restarts; it is minutes at most
            gbdt.run(cfg.model_copy(update={"out_dir": out}))
    else:
        cfg = blend.BlendConfig(runs=[done[m] for m in NEEDS["blend"]], out_dir="unset", report=False)
        out = _run_dir(work, data, model, cfg)
        if not _complete(out):
            shutil.rmtree(out, ignore_errors=True)
            blend.run(cfg.model_copy(update={"out_dir": out}))
    return out


def markdown(table) -> str:
    """The SHOWN columns as a Markdown table (3 decimals)."""
    cols = [c for c in SHOWN if c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table[cols].itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="The ~15-minute subset (QUICK) instead of FULL.")
    parser.add_argument("--cohorts", help=f"Comma-separated cohort names: {', '.join(COHORTS)}.")
    parser.add_argument("--models", help=f"Comma-separated subset of {', '.join(MODELS)}.")
    parser.add_argument("--out", type=Path, default=Path("bench-accuracy"), help="Folder for audit.csv, audit.md.")
    parser.add_argument("--work", type=Path, help="Cache of cohorts and runs (default: OUT/work).")
    parser.add_argument("--fusion-config", default="fusion-cpu-small", help="train-fusion config (name or file).")
    parser.add_argument("--image-config", default="image-cpu-small",
                        help="train-fusion config of the image-only run (name or file; trained with use_meta=false).")
    parser.add_argument("--gbdt-config", default="gbdt", help="train-gbdt config (name or file).")
    parser.add_argument("--set-fusion", action="append", default=[], help="Override for both CNN runs (repeatable).")
    parser.add_argument("--set-gbdt", action="append", default=[], help="Override for both GBDT runs (repeatable).")
    parser.add_argument("--set-synth", action="append", default=[],
                        help="Override every cohort's synth settings, e.g. patients=20 (repeatable).")
    args = parser.parse_args()

    from melanet.train import fusion  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

    import pandas as pd

    from melanet.audit import COLUMNS, audit_oof, ceiling_oof
    from melanet.errors import MelanetError

    plan = dict(QUICK if args.quick else FULL)
    if args.cohorts:
        names = [c.strip() for c in args.cohorts.split(",") if c.strip()]
        unknown = [c for c in names if c not in COHORTS]
        if unknown:
            sys.exit(f"unknown cohort(s) {', '.join(unknown)}; choose from {', '.join(COHORTS)}")
        plan = {c: plan.get(c, MODELS) for c in names}
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        if set(wanted) - set(MODELS):
            sys.exit(f"unknown model(s) {', '.join(set(wanted) - set(MODELS))}; choose from {', '.join(MODELS)}")
        plan = {c: tuple(m for m in MODELS if m in wanted) for c in plan}
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "work"
    print(f"bench_accuracy: {json.dumps(plan)}; overrides fusion {args.set_fusion} gbdt {args.set_gbdt}",
          flush=True)

    rows: list[dict] = []
    started = time.perf_counter()
    for cohort, models in plan.items():
        t0 = time.perf_counter()
        src, data = prepare_cohort(cohort, work, args.set_synth)
        truth = pd.read_csv(src / "truth.csv", dtype={"image_id": str})
        prep_min = (time.perf_counter() - t0) / 60
        print(f"[{cohort}] synth + ingest {prep_min:.1f} min", flush=True)
        rows.append({"cohort": cohort, "model": CEILING_ROW, **audit_oof(ceiling_oof(truth), truth), "minutes": 0.0,
                     "synth": json.dumps(synth_settings(cohort, args.set_synth), sort_keys=True)})
        done: dict[str, Path] = {}
        for model in MODELS:  # dependency order
            needed = model in models or any(model in NEEDS.get(m, ()) for m in models)
            if not needed:
                continue
            t0 = time.perf_counter()
            try:
                done[model] = train(model, data, work, done, args)
            except (MelanetError, Exception) as exc:  # one failed run leaves the rest of the matrix standing
                traceback.print_exc()
                rows.append({"cohort": cohort, "model": model, "error": f"{type(exc).__name__}: {exc}"})
                continue
            if model in models:
                oof = pd.read_parquet(done[model] / "oof.parquet")
                rows.append({"cohort": cohort, "model": model, **audit_oof(oof, truth),
                             "minutes": (time.perf_counter() - t0) / 60, "run": str(done[model]),
                             "synth": json.dumps(synth_settings(cohort, args.set_synth), sort_keys=True)})
            table = pd.DataFrame(rows)
            table.to_csv(args.out / "audit.csv", index=False)
            (args.out / "audit.md").write_text(markdown(table))
            print(f"[{cohort}] {model} {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    table = pd.DataFrame(rows)
    extra = [c for c in table.columns if c not in ("cohort", *COLUMNS)]
    table = table[["cohort", *[c for c in COLUMNS if c in table.columns], *extra]]
    table.to_csv(args.out / "audit.csv", index=False)
    (args.out / "audit.md").write_text(markdown(table))
    print(f"\nsignal audit ({(time.perf_counter() - started) / 60:.1f} min; minutes = training, cached runs ~0; "
          f"corr = Pearson of the OOF logit with the true term; gap = observable ceiling - AUC)\n")
    print(markdown(table), flush=True)
    print(f"written: {args.out / 'audit.csv'}, {args.out / 'audit.md'}")


if __name__ == "__main__":
    main()
