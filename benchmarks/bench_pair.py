"""How long `synthct pair` takes to pair one MR volume with candidate CTs of other subjects
(docs/PERFORMANCE.md, "Pairing volumes"): synthetic head phantoms of a clinical size (one case's MR,
other cases' CTs, so that every registration has real anatomy to undo), paired by the real command
with its registration defaults, timed end to end (reading, outline pre-selection, affine and B-spline
registrations, fusion, writing), after nothing else: the first run is the run.

    .venv/bin/python benchmarks/bench_pair.py [--size 256 256 150] [--spacing 1.0 1.0 1.5] \\
        [--candidates 3] [--workers 2] [--repeats 1] [--work DIR]

Prints the CPU model and flags, each run's wall and CPU seconds, their median, and the pairs.csv
row of the last run (mutual information and body Dice of the fused CT).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from synthct.measure import cpu_flags, cpu_model, load_average


def make_cases(work: Path, size: tuple[int, int, int], spacing: tuple[float, float, float], candidates: int) -> None:
    """work/mr/subject0.nii.gz and work/ct/subject{1..candidates}.nii.gz, from phantom cases 0..N."""
    from synthct.data.phantom import write_phantoms

    phantoms = work / "phantoms"
    write_phantoms(candidates + 1, phantoms, seed=0, size=size, spacing=spacing)
    (work / "mr").mkdir()
    (work / "ct").mkdir()
    shutil.copy(phantoms / "phantom_000" / "mr.nii.gz", work / "mr" / "subject0.nii.gz")
    for i in range(1, candidates + 1):
        shutil.copy(phantoms / f"phantom_{i:03d}" / "ct.nii.gz", work / "ct" / f"subject{i}.nii.gz")


def pair_once(work: Path, candidates: int, workers: int) -> tuple[float, float, dict]:
    from synthct.cli import main as synthct

    out = work / "pairs"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["pair", "--mr", str(work / "mr"), "--ct", str(work / "ct"), "--out", str(out),
            "--candidates", str(candidates), "--k", str(min(3, candidates)), "--workers", str(workers)]
    cpu_before = os.times()
    started = time.perf_counter()
    if synthct(argv) != 0:
        raise SystemExit("bench_pair: synthct pair failed")
    wall = time.perf_counter() - started
    cpu_after = os.times()
    cpu = sum(getattr(cpu_after, f) - getattr(cpu_before, f)
              for f in ("user", "system", "children_user", "children_system"))
    with open(out / "pairs.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    return wall, cpu, row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=[256, 256, 150], metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.0, 1.0, 1.5], metavar=("X", "Y", "Z"))
    parser.add_argument("--candidates", type=int, default=3, help="CTs of other subjects registered onto the MR")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", type=Path, help="folder for the cases and outputs (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        if any(work.iterdir()):
            raise SystemExit(f"bench_pair: {work} is not empty")
        make_cases(work, tuple(args.size), tuple(args.spacing), args.candidates)
        load = load_average()
        runs = [pair_once(work, args.candidates, args.workers) for _ in range(args.repeats)]
    print(f"CPU: {cpu_model()}, flags {' '.join(cpu_flags()) or 'none of the wide ones'}; {os.cpu_count()} cores; "
          f"load before/after {load}/{load_average()}")
    print(f"One MR of {'x'.join(map(str, args.size))} voxels ({'x'.join(map(str, args.spacing))} mm), "
          f"{args.candidates} candidate CTs of other subjects, --workers {args.workers}:")
    for i, (wall, cpu, _) in enumerate(runs):
        print(f"  run {i + 1}: {wall:.1f} s wall, {cpu:.1f} s CPU")
    print(f"median: {statistics.median(r[0] for r in runs):.1f} s wall")
    row = runs[-1][2]
    print(f"fused CT: mutual information {float(row['mutual_information']):.3f}, body Dice "
          f"{float(row['body_dice']):.3f}, from {row['cts']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
