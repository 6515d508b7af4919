"""Resident memory of one `synthct translate` over many volumes (good ones, and corrupt ones mixed in).

    .venv/bin/python benchmarks/batch_memory.py --volumes 1000 --bad-every 10 --every 50

Writes N small NIfTI volumes (default 32 x 32 x 8) and a tiny random generator into a temporary
folder, runs the translate command in this process and prints the RSS (from /proc/self/statm)
after every ``--every`` inputs, then the growth after the warm-up. Linux only.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def resident_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=500)
    parser.add_argument("--bad-every", type=int, default=0, help="make every N-th input a corrupt file (0: none)")
    parser.add_argument("--shape", type=int, nargs=3, default=(8, 32, 32), metavar=("Z", "Y", "X"))
    parser.add_argument("--every", type=int, default=50, help="print RSS after this many inputs")
    parser.add_argument("--warmup", type=int, default=20, help="inputs before the growth baseline")
    args = parser.parse_args()

    import torch

    from synthct.cli import main as cli
    from synthct.data.intensity import CTWindow, MRPercentile
    from synthct.models.saved import generator_architecture, save_generator
    from synthct.io.image import Volume, write_image
    from synthct.models.generators import build_generator

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        g = build_generator("resnet", 1, 1, ngf=4, n_blocks=1)
        save_generator(g, root / "run" / "generator_mr2ct", {
            "direction": "mr2ct", "source": "mr", "target": "ct", "model": "cyclegan",
            "architecture": generator_architecture(g, "resnet", 1, 4, 1), "slices": 1, "size": args.shape[1],
            "axis": 0, "resize": "fit", "intensity_mode": "hu",
            "input_mapping": MRPercentile(lo=0.0, hi=1000.0).to_dict(), "output_mapping": CTWindow().to_dict()})
        rng = np.random.default_rng(0)
        for i in range(args.volumes):
            path = root / "in" / f"case_{i:05d}.nii.gz"
            if args.bad_every and i % args.bad_every == args.bad_every - 1:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"\x1f\x8b corrupt " + rng.bytes(64))
                continue
            vol = Volume(array=rng.uniform(0, 1000, args.shape).astype(np.float32), spacing=(1.0, 1.0, 3.0),
                         origin=(0.0, 0.0, 0.0), direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), format="nifti")
            write_image(vol, path, dtype="int16")

        curve: list[tuple[int, float]] = []
        done = 0
        # Sample before every read, good input or bad: translate reads each one exactly once and
        # imports read_image inside run(), so patching the module reaches it.
        import synthct.io.image as image_module

        original_read = image_module.read_image

        def read_and_count(*a, **kw):
            nonlocal done
            if done % args.every == 0 or done == args.warmup:
                curve.append((done, resident_mb()))
            done += 1
            return original_read(*a, **kw)

        image_module.read_image = read_and_count
        started = time.perf_counter()
        rc = cli(["translate", "--model", str(root / "run"), "--direction", "mr2ct", str(root / "in"),
                  "--out", str(root / "out"), "--device", "cpu"])
        seconds = time.perf_counter() - started
        image_module.read_image = original_read
        curve.append((done, resident_mb()))

    print(f"\nexit {rc}, {args.volumes} inputs in {seconds:.1f} s")
    print("inputs  RSS MB")
    for count, mb in curve:
        print(f"{count:6d}  {mb:7.1f}")
    base = next(mb for count, mb in curve if count >= args.warmup)
    print(f"growth after {args.warmup} inputs: {curve[-1][1] - base:+.1f} MB")


if __name__ == "__main__":
    main()
