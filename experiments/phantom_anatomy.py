"""Anatomy-preserving variants on phantoms, all trained with the same CPU-time budget.

Variants (every one through ``synthct train``, so the commands in the table are the real ones):

* ``cyclegan``: plain CycleGAN;
* ``cyclegan_mind``: + MIND structure-consistency loss between each input and its translation;
* ``cyclegan_25d``: 2.5D, k = 3 neighbouring slices in, the centre slice kept;
* ``cut`` / ``fastcut``: contrastive unpaired translation (Park et al. 2020); FastCUT drops the
  identity NCE term and, as in the paper, weighs PatchNCE by 10;
* ``pix2pix``: the paired upper bound (the true MR/CT pairs of the MR training cases).

Data: ``synthct.data.phantom.write_phantoms``. The unpaired variants learn from the MR of cases
0..n-1 and the CT of cases n..2n-1 (different anatomy, so no pairing can leak); the held-out
cases 2n.. are translated MR -> CT and scored against their true CT in HU
(``evaluate_cases(mode="hu")``, SynthRAD2023 metrics inside the phantom body mask) plus the
slice-to-slice jitter ``adjacent_slice_difference`` of the synthetic CT over that of the true CT.

Budgets are CPU time (``train.clock: cpu``; neither steps nor epochs, so the lr schedule follows
the clock), fair on a shared machine. Everything goes under ``--work`` (default ``runs/anatomy``,
ignored by git).

    python -m experiments.phantom_anatomy --minutes 3 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from synthct.io.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO / "runs" / "anatomy"
# MIND distances of a phantom MR to its aligned CT are ~0.18 and grow by only ~0.035 for a
# 4-pixel shift, so lambda 1 would make misplaced anatomy nearly free next to the GAN and cycle
# terms (~1); 5 puts a 4-pixel shift (~0.35 for both directions) on the scale of the GAN term.
LAMBDA_STRUCT = 5.0
VARIANTS = {
    "cyclegan": ("CycleGAN", "unpaired", []),
    "cyclegan_mind": (f"CycleGAN + MIND (lambda {LAMBDA_STRUCT:g})", "unpaired",
                      ["--lambda-struct", f"{LAMBDA_STRUCT:g}", "--struct-loss", "mind"]),
    "cyclegan_25d": ("CycleGAN 2.5D (k = 3)", "unpaired", ["--slices", "3"]),
    "cut": ("CUT", "unpaired", ["--model", "cut"]),
    "fastcut": ("FastCUT", "unpaired", ["--model", "cut", "--set", "model.nce_idt=false",
                                        "--set", "model.lambda_nce=10"]),
    "pix2pix": ("pix2pix (paired)", "paired", ["--model", "pix2pix", "--set", "data.paired=true"]),
}


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.symlink(src.resolve(), dst)


def prepare(work: Path, args) -> dict[str, Path]:
    from synthct.data.phantom import write_phantoms

    n = args.train_cases
    size = (args.size, args.size, args.depth)
    cases = write_phantoms(2 * n + args.test_cases, work / "phantoms", seed=args.seed, size=size,
                           spacing=args.spacing, overwrite=True)
    folders = {"mr": work / "train_mr", "ct": work / "train_ct", "pairs": work / "train_pairs", "test": work / "test"}
    for case in cases[:n]:
        _link(case / "mr.nii.gz", folders["mr"] / f"{case.name}.nii.gz")
        for name in ("mr.nii.gz", "ct.nii.gz", "mask.nii.gz"):
            _link(case / name, folders["pairs"] / case.name / name)
    for case in cases[n:2 * n]:
        _link(case / "ct.nii.gz", folders["ct"] / f"{case.name}.nii.gz")
    for case in cases[2 * n:]:
        for name in ("mr.nii.gz", "ct.nii.gz", "mask.nii.gz"):
            _link(case / name, folders["test"] / case.name / name)
    return folders


def train_command(variant: str, folders: dict[str, Path], run_dir: Path, args) -> list[str]:
    _, pairing, extra = VARIANTS[variant]
    data = ["--data", str(folders["pairs"])] if pairing == "paired" else ["--mr", str(folders["mr"]),
                                                                          "--ct", str(folders["ct"])]
    return [sys.executable, "-m", "synthct", "train", *data, "--out", str(run_dir), "--overwrite",
            "--size", str(args.size), "--ngf", "24", "--ndf", "32", "--blocks", "6",
            "--minutes", f"{args.minutes:g}", "--seed", str(args.seed), "--device", "cpu",
            "--set", "train.epochs=null", "--set", "train.clock=cpu", "--set", f"train.threads={args.threads}",
            "--set", "train.checkpoint_every=100000", "--set", "train.sample_every=100000", *extra]


def train_variant(variant: str, folders: dict[str, Path], work: Path, args) -> dict:
    run_dir = work / "runs" / variant
    command = train_command(variant, folders, run_dir, args)
    log = work / "logs" / f"{variant}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as fh:
        done = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{variant}: training failed (exit {done.returncode}); see {log}")
    sidecar = json.loads((run_dir / "generator_mr2ct.json").read_text())
    return {"command": command, "wall_s": time.perf_counter() - started, "steps": sidecar.get("step")}


def translate_and_score(variant: str, folders: dict[str, Path], work: Path) -> dict:
    from synthct.eval.evaluate import evaluate_cases
    from synthct.eval.metrics import adjacent_slice_difference
    from synthct.io.image import read_image, write_image
    from synthct.translate.translator import Translator

    translator = Translator(work / "runs" / variant / "generator_mr2ct.safetensors", "mr2ct",
                            device="cpu", precision="fp32")
    pred_dir = work / "sct" / variant
    ratios = {}
    for case in sorted(p for p in folders["test"].iterdir() if p.is_dir()):
        sct = translator.translate_volume(read_image(case / "mr.nii.gz"), mask="auto")
        write_image(sct, pred_dir / case.name / "sct.nii.gz", dtype="int16", overwrite=True)
        ct = read_image(case / "ct.nii.gz").array
        mask = read_image(case / "mask.nii.gz").array
        sct_hu = read_image(pred_dir / case.name / "sct.nii.gz").array
        ratios[case.name] = adjacent_slice_difference(sct_hu, mask) / adjacent_slice_difference(ct, mask)
    result = evaluate_cases(pred_dir, folders["test"], mode="hu")
    per_case = {row["case"]: {k: row[k] for k in result.metric_names} | {"adjacent_ratio": ratios[row["case"]]}
                for row in result.rows}
    mean = {k: float(np.mean([c[k] for c in per_case.values()])) for k in (*result.metric_names, "adjacent_ratio")}
    return {"per_case": per_case, "mean": mean}


def table(results: dict, minutes: float) -> str:
    lines = ["| variant | pairing | MAE (HU) | ME (HU) | PSNR (dB) | SSIM | adjacent-slice ratio | steps |",
             "|---|---|---|---|---|---|---|---|"]
    for variant, r in results.items():
        label, pairing, _ = VARIANTS[variant]
        m = r["mean"]
        lines.append(f"| {label} | {pairing} | {m['mae']:.1f} | {m['me']:+.1f} | {m['psnr']:.2f} | {m['ssim']:.3f} "
                     f"| {m['adjacent_ratio']:.2f} | {r['steps']} |")
    lines.append(f"\nBudget: {minutes:g} CPU-minutes per variant; means over the held-out cases.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--minutes", type=float, default=3.0, help="CPU-minute budget per variant")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training")
    parser.add_argument("--jobs", type=int, default=1, help="trainings run at once")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--depth", type=int, default=40)
    parser.add_argument("--spacing", type=float, nargs=3, default=(2.4, 2.4, 4.0))
    parser.add_argument("--train-cases", type=int, default=6)
    parser.add_argument("--test-cases", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    work = args.work
    folders = prepare(work, args)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        trained = dict(zip(args.variants, pool.map(lambda v: train_variant(v, folders, work, args), args.variants)))
    results = {}
    for variant in args.variants:
        results[variant] = trained[variant] | translate_and_score(variant, folders, work)
        print(f"{variant}: {results[variant]['mean']}", flush=True)
    atomic_write_text(work / "results.json", json.dumps(results, indent=2, default=str))
    markdown = table(results, args.minutes)
    atomic_write_text(work / "table.md", markdown + "\n\nCommands:\n\n" + "\n".join(
        shlex.join(r["command"]) for r in results.values()) + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
