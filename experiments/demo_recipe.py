"""Screen training options on `synthct demo`: each variant runs the whole demo (same phantoms, same
step budget) with its `--set` options on the demo's config, and the held-out scores go in a table.

    python -m experiments.demo_recipe --seeds 0 \
        --variant "as shipped=" --variant "no identity=model.lambda_identity=0" \
        --variant "no identity, body-masked=model.lambda_identity=0;model.body_masked=true"

A variant is LABEL=OPTIONS with OPTIONS separated by ';': training config overrides, or demo
settings as ``demo.FIELD=VALUE`` (``demo.size=128;demo.spacing=1.8,1.8,4.0``). Outputs go to
runs/demo_recipe/ (ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from synthct.demo import DemoSettings, run_demo
from synthct.errors import SynthctError

OUT = Path(__file__).resolve().parents[1] / "runs" / "demo_recipe"


def parse_variant(text: str) -> tuple[str, tuple[str, ...]]:
    if "=" not in text:
        raise SynthctError(f"--variant expects LABEL=OPTIONS, got '{text}'")
    label, options = text.split("=", 1)
    return label, tuple(o for o in options.split(";") if o)


def demo_settings(options: tuple[str, ...], **given) -> DemoSettings:
    """The demo's settings with ``options`` applied: ``demo.FIELD=VALUE`` sets a DemoSettings field
    (``demo.spacing=1.8,1.8,4.0``), anything else is a training config override."""
    defaults = DemoSettings()
    fields = {f.name for f in dataclasses.fields(DemoSettings)} - {"overrides", *given}
    settings, overrides = {}, []
    for option in options:
        key, _, value = option.partition("=")
        if not key.startswith("demo."):
            overrides.append(option)
            continue
        name = key.removeprefix("demo.")
        if name not in fields:
            raise SynthctError(f"'{key}' is not a demo setting (one of {', '.join(sorted(fields))})")
        default = getattr(defaults, name)
        try:
            settings[name] = (tuple(float(v) for v in value.split(",")) if isinstance(default, tuple)
                              else type(default)(value))
        except ValueError:
            raise SynthctError(f"'{option}': expected a value like {default!r}") from None
    return DemoSettings(**given, **settings, overrides=tuple(overrides))


def screen(variants: list[tuple[str, tuple[str, ...]]], seeds: list[int], steps: int, precision: str,
           out: Path) -> list[dict]:
    runs = [(label, options, seed, demo_settings(options, steps=steps, seed=seed, precision=precision))
            for label, options in variants for seed in seeds]  # a bad option fails before any run
    rows = []
    for label, options, seed, settings in runs:
        folder = out / f"{label.replace(' ', '_').replace(',', '')}_seed{seed}"
        result = run_demo(folder, settings, overwrite=True, log=lambda *_: None)
        metrics = result.summary["metrics"]
        rows.append({"variant": label, "options": list(options), "seed": seed, "steps": result.steps,
                     "mae": metrics["mae"]["mean"], "bone_dice": metrics["bone_dice"]["mean"],
                     "ssim": metrics["ssim"]["mean"], "mae_untrained": result.mae_untrained})
        print(f"{label} seed {seed}: MAE {rows[-1]['mae']:.1f} HU, bone Dice {rows[-1]['bone_dice']:.2f}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| demo with | seeds | MAE (HU), median (range) | bone Dice | SSIM |", "|---|---|---|---|---|"]
    for label in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == label]
        mae = [r["mae"] for r in mine]
        spread = f"{np.median(mae):.1f}" + (f" ({min(mae):.1f}-{max(mae):.1f})" if len(mae) > 1 else "")
        lines.append(f"| {label} | {len(mine)} | {spread} | {np.median([r['bone_dice'] for r in mine]):.2f} | "
                     f"{np.median([r['ssim'] for r in mine]):.2f} |")
    return "\n".join(lines)


def finish(out: Path, rows: list[dict]) -> int:
    """Keep the rows in OUT/rows.json and print their table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.demo_recipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", required=True, metavar="LABEL=OPTIONS")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=DemoSettings.steps)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    try:
        rows = screen([parse_variant(v) for v in args.variant], args.seeds, args.steps, args.precision, args.out)
    except SynthctError as exc:
        print(f"experiments.demo_recipe: error: {exc}", file=sys.stderr)
        return 2
    return finish(args.out, rows)


if __name__ == "__main__":
    sys.exit(main())
