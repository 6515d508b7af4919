"""The demo's data through the recipe for unpaired scans: `synthct pair` registers the CTs of the
demo's six CT cases onto each of its six (other) MR cases and fuses the best 3, then a paired model
(the demo's generator) trains on those pseudo-pairs, and the held-out phantoms are scored exactly as
`synthct demo` scores them. Also scored: the fused CTs of the held-out MRs themselves (multi-atlas
synthesis, no network). The data stay unpaired: no MR is paired with its own case's CT.

    python -m experiments.demo_pseudo_pairs [--seeds 0 1 2] [--model regression] [--steps 2000]
                                            [--precision fp32] [--workers 2] [--out DIR]

Prints one row per seed (MAE inside the body, bone Dice, SSIM, minutes of pairing and of training)
and the median over seeds in experiments.demo_recipe's table format. Outputs go to
runs/demo_pseudo_pairs/ (ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from synthct.errors import SynthctError

OUT = Path(__file__).resolve().parents[1] / "runs" / "demo_pseudo_pairs"


def _pair(mr: Path, ct: Path, out: Path, workers: int) -> None:
    from synthct.cli import main as synthct

    if synthct(["pair", "--mr", str(mr), "--ct", str(ct), "--out", str(out), "--workers", str(workers),
                "--overwrite"]) != 0:
        raise SynthctError("synthct pair failed", out)


def _scores(sct: Path, test: Path) -> dict:
    from synthct.eval.evaluate import evaluate_cases

    metrics = evaluate_cases(sct, test, mode="hu").summary()["metrics"]
    return {"mae": metrics["mae"]["mean"], "bone_dice": metrics["bone_dice"]["mean"], "ssim": metrics["ssim"]["mean"]}


def run_seed(out: Path, s, model: str, workers: int) -> list[dict]:
    """``s``: the demo's settings (its phantoms, generator, seed and step budget)."""
    from synthct.config import RunConfig, apply_overrides
    from synthct.demo import _config, _prepare_data, _translate_cases
    from synthct.engine.trainer import train

    train_mr, train_ct, test = _prepare_data(out, s)
    started = time.perf_counter()
    _pair(train_mr, train_ct, out / "pairs", workers)
    pair_minutes = (time.perf_counter() - started) / 60

    # The held-out MRs' own multi-atlas CTs (the same training CTs), scored as the demo's sCTs.
    test_mr = out / "test_mr"
    test_mr.mkdir(exist_ok=True)
    for case in sorted(p for p in test.iterdir() if p.is_dir()):
        (test_mr / f"{case.name}.nii.gz").symlink_to((case / "mr.nii.gz").resolve())
    _pair(test_mr, train_ct, out / "atlas", workers)
    atlas = out / "sct_atlas"
    for fused in sorted((out / "atlas" / "ct").iterdir()):
        case = atlas / fused.name.removesuffix(".nii.gz")
        case.mkdir(parents=True)
        (case / "sct.nii.gz").symlink_to(fused.resolve())
    rows = [{"variant": "multi-atlas CT (synthct pair), no network", "seed": s.seed, "steps": 0,
             **_scores(atlas, test), "pair_minutes": pair_minutes, "train_minutes": 0.0}]

    paired = [f"data.root={out / 'pairs'}", "data.mr=null", "data.ct=null", "data.paired=true", f"model.name={model}"]
    if model == "regression":  # no discriminator: the demo's ndf back to the default, which config checks accept
        paired.append(f"model.ndf={RunConfig().model.ndf}")
    cfg = apply_overrides(_config(train_mr, train_ct, s), paired)
    started = time.perf_counter()
    result = train(cfg, out / "run")
    train_minutes = (time.perf_counter() - started) / 60
    _translate_cases(result.generators["mr2ct"], test, out / "sct", s.precision, lambda *_: None)
    rows.append({"variant": f"{model} on pseudo-pairs, {s.steps} steps", "seed": s.seed, "steps": result.steps,
                 **_scores(out / "sct", test), "pair_minutes": pair_minutes, "train_minutes": train_minutes})
    return rows


def main(argv: list[str] | None = None) -> int:
    from synthct.demo import DemoSettings

    from experiments.demo_recipe import finish

    parser = argparse.ArgumentParser(prog="python -m experiments.demo_pseudo_pairs",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", default="regression", choices=("regression", "pix2pix"))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--workers", type=int, default=2, help="synthct pair --workers")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rows = []
    try:
        for seed in args.seeds:
            settings = dataclasses.replace(DemoSettings(), seed=seed, steps=args.steps, precision=args.precision)
            rows += run_seed(args.out / f"seed{seed}", settings, args.model, args.workers)
            for r in rows[-2:]:
                print(f"{r['variant']}, seed {seed}: MAE {r['mae']:.1f} HU, bone Dice {r['bone_dice']:.2f}, "
                      f"pairing {r['pair_minutes']:.1f} min, training {r['train_minutes']:.1f} min", flush=True)
    except SynthctError as exc:
        print(f"experiments.demo_pseudo_pairs: error: {exc}", file=sys.stderr)
        return 2
    return finish(args.out, rows)


if __name__ == "__main__":
    sys.exit(main())
