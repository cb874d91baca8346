"""Benchmark: reduced-resolution decoding (what ingest does when the cache is smaller) against a full decode.

    python scripts/bench_decode.py [--image-size 1024] [--cache-size 256] [--patients 6] [--repeats 3]

Writes a small ``melanet synth`` cohort of ``--image-size`` px DICOMs (JPEG
YCbCr, RLE, JPEG 2000, explicit VR), then for each transfer syntax times, over
the same files (bytes already in memory, one core):

  full      read_dicom(path) then the area resize to the cache size
  reduced   read_dicom(path, min_side=cache size) then the same resize: 8-bit
            baseline JPEG at 1/2, 1/4 or 1/8 scale, 8-bit JPEG 2000 at a coarser
            resolution level (melanet.dicom.pixels.decode); others as full

and prints the ratio full / reduced and the mean absolute difference of the two
cached pictures in grey levels (0-255). Timings are CPU seconds, the best of
``--repeats``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=1024, help="side of the synthetic DICOM images")
    ap.add_argument("--cache-size", type=int, default=256, help="side of the cached images")
    ap.add_argument("--patients", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    import cv2
    import pydicom

    from melanet import synth
    from melanet.dicom.readers import read_dicom
    from melanet.images import resize_square
    from melanet.ingest import list_files

    cv2.setNumThreads(1)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="melanet-bench-decode-"))
    if not (work / "synth" / "synth.json").is_file():
        synth.run(synth.SynthConfig(out_dir=work / "synth", patients=args.patients, image_size=args.image_size))
    groups: dict[str, list[tuple[Path, bytes]]] = defaultdict(list)
    for f in list_files(work / "synth" / "dicom"):
        syntax = pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID.name
        groups[syntax].append((f, f.read_bytes()))

    def cached(files, min_side):
        return [resize_square(read_dicom(f, min_side=min_side, data=data).pixels, args.cache_size)
                for f, data in files]

    def best_cpu(files, min_side) -> float:
        times = []
        for _ in range(args.repeats):
            t0 = time.process_time()
            cached(files, min_side)
            times.append(time.process_time() - t0)
        return min(times) / len(files) * 1e3

    print(f"{sum(map(len, groups.values()))} synthetic DICOM files ({args.image_size} px) -> cache {args.cache_size} px; "
          f"CPU ms per file, best of {args.repeats}")
    print(f"{'transfer syntax':42s} {'files':>5s} {'full':>8s} {'reduced':>8s} {'ratio':>7s} {'mean |diff|':>12s}")
    for syntax, files in sorted(groups.items()):
        full, reduced = best_cpu(files, None), best_cpu(files, args.cache_size)
        diff = np.mean([np.abs(a.astype(np.int16) - b).mean()
                        for a, b in zip(cached(files, None), cached(files, args.cache_size))])
        print(f"{syntax[:42]:42s} {len(files):5d} {full:8.2f} {reduced:8.2f} {full / reduced:6.2f}x {diff:12.2f}")


if __name__ == "__main__":
    main()
