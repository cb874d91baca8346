"""Scale evidence: ingest peak memory vs number of files, and train-gbdt time vs rows.

    python scripts/bench_scale.py ingest --files 1000 10000
    python scripts/bench_scale.py gbdt --rows 10000 100000 1000000
    python scripts/bench_scale.py gbdt --rows 1000000 --set backend=dask --set engine=xgboost

ingest: writes a synthetic cohort of ~N files (64 px) and runs `melanet ingest`
(2 workers) in a fresh process, printing its peak RSS (parent and largest worker)
-- it should stay flat as N grows, since pixels never accumulate.
gbdt: times train-gbdt (5 folds, LightGBM unless --set engine=...) on synthetic metadata tables of
each size; --set passes config overrides, e.g. backend=dask (a local Dask cluster; add
--set scheduler=ADDR for a running one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INGEST_CHILD = r"""
import json, resource, sys, time
from melanet import ingest
t = time.perf_counter()
res = ingest.run(ingest.IngestConfig(dicom_dir=sys.argv[1], out_dir=sys.argv[2], workers=2, image_size=64, eda=False))
print(json.dumps({"files": res.n_files, "seconds": time.perf_counter() - t,
                  "rss_parent_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def bench_ingest(sizes: list[int], work: Path) -> None:
    from melanet import synth

    print(f"{'files':>8}{'seconds':>9}{'files/s':>9}{'peak RSS parent MB':>20}{'peak RSS worker MB':>20}")
    for n in sizes:
        src = work / f"synth_{n}"
        if not (src / "synth.json").is_file():
            synth.run(synth.SynthConfig(out_dir=src, patients=max(1, round(n / 3.5)), image_size=64))
        out = subprocess.run([sys.executable, "-c", INGEST_CHILD, str(src / "dicom"), str(work / f"data_{n}")],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['files']:>8}{r['seconds']:>9.1f}{r['files'] / r['seconds']:>9.0f}"
              f"{r['rss_parent_mb']:>20.0f}{r['rss_worker_mb']:>20.0f}")


def bench_gbdt(sizes: list[int], work: Path, overrides: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_gbdt import synthetic_cohort  # the 100k-row benchmark's table maker

    from melanet.config import load_config
    from melanet.train import gbdt

    print(f"{'rows':>10}{'seconds':>10}{'us/row':>8}")
    for n in sizes:
        data = work / f"gbdt_{n}"
        data.mkdir(parents=True, exist_ok=True)
        synthetic_cohort(n).to_parquet(data / "cohort.parquet", index=False)
        cfg = load_config(gbdt.GBDTConfig, "gbdt", ["report=false", *overrides],
                          extra={"data_dir": str(data), "out_dir": str(work / f"run_{n}")})
        t = time.perf_counter()
        gbdt.run(cfg)
        sec = time.perf_counter() - t
        print(f"{n:>10}{sec:>10.1f}{sec / n * 1e6:>8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["ingest", "gbdt"])
    ap.add_argument("--files", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--rows", type=int, nargs="+", default=[10000, 100000, 1000000])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="gbdt: config override (repeatable), e.g. backend=dask")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="melanet-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    bench_ingest(args.files, work) if args.what == "ingest" else bench_gbdt(args.rows, work, args.overrides)


if __name__ == "__main__":
    main()
