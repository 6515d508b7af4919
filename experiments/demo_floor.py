"""What keeps `synthct demo` from its 60 HU: on the demo's own phantoms (its settings and seed),
three references scored exactly like the demo (MAE inside the body of the held-out cases, bone Dice):

* the true anatomy with every tissue at the middle of its HU range, blurred like the phantom: the
  error that the cases' random tissue values and the CT's noise leave to a perfect model;
* the best map from MR grey level to HU that ignores context: each grey level's median HU over the
  true pairs of the training MR cases (MR scaled by its 0.5-99.5 percentiles inside the body);
* the demo's generator trained with those true pairs (L1 only, no adversary, no cycle), for the
  demo's step budget and for four times it: what the budget allows a model that is told the answer
  (``--set`` changes that generator or its training, e.g. ``--set model.generator=unet``), scored on
  the held-out cases and on its own training cases.

    python -m experiments.demo_floor [--steps 400 1600] [--threads 1] [--set KEY=VALUE ...] [--grid 192 1.2]
                                     [--probe GENERATOR_CHANGE] [--by-tissue] [--overwrite]

``--probe`` trains a changed generator (``experiments.demo_probes``' generator probes, e.g.
stem_concat); ``--by-tissue`` splits the held-out error of the lookup and of each L1 run by the
phantoms' tissue labels: each tissue's share of the body, its mean error and its part of the MAE.

Outputs go to runs/demo_floor/ (ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from synthct.errors import SynthctError

OUT = Path(__file__).resolve().parents[1] / "runs" / "demo_floor"
LOOKUP_BINS = 64


def _scaled_mr(mr: np.ndarray, body: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(mr[body], [0.5, 99.5])
    return np.clip((mr - lo) / (hi - lo), 0.0, 1.0)


def _lookup_bin(scaled: np.ndarray) -> np.ndarray:
    return np.minimum((scaled * LOOKUP_BINS).astype(int), LOOKUP_BINS - 1)


def fit_lookup(cases: list[Path]) -> np.ndarray:
    """The median HU of each MR grey-level bin over the body voxels of ``cases`` (true pairs),
    interpolated across empty bins."""
    from synthct.io.image import read_image

    bins, hu = [], []
    for case in cases:
        mr, ct = read_image(case / "mr.nii.gz").array, read_image(case / "ct.nii.gz").array
        body = read_image(case / "mask.nii.gz").array > 0
        bins.append(_lookup_bin(_scaled_mr(mr, body))[body])
        hu.append(ct[body])
    bins, hu = np.concatenate(bins), np.concatenate(hu)
    filled = np.unique(bins)
    medians = [np.median(hu[bins == b]) for b in filled]
    return np.interp(np.arange(LOOKUP_BINS), filled, medians)  # a bin no voxel fell in: its neighbours'


def _write_reference(test: Path, out: Path, predict) -> None:
    """``predict(case) -> HU array`` inside the body, air outside, written like a synthetic CT."""
    from synthct.io.image import read_image, write_image

    for case in sorted(p for p in test.iterdir() if p.is_dir()):
        ct = read_image(case / "ct.nii.gz")
        body = read_image(case / "mask.nii.gz").array > 0
        hu = np.where(body, predict(case, body), -1000.0).astype(np.float32)
        write_image(ct.with_array(hu), out / case.name / "sct.nii.gz", dtype="int16", overwrite=True)


def _paired_training_folder(phantoms: Path, train_cases: int, out: Path) -> Path:
    folder = out / "pairs"
    for i in range(train_cases):
        case = folder / f"phantom_{i:03d}"
        case.mkdir(parents=True, exist_ok=True)
        for name in ("mr.nii.gz", "ct.nii.gz", "mask.nii.gz"):
            if not (case / name).exists():
                os.symlink((phantoms / f"phantom_{i:03d}" / name).resolve(), case / name)
    return folder


def _score(sct: Path, test: Path) -> tuple[float, float]:
    from synthct.eval.evaluate import evaluate_cases

    metrics = evaluate_cases(sct, test, mode="hu").summary()["metrics"]
    return metrics["mae"]["mean"], metrics["bone_dice"]["mean"]


def _by_tissue(sct: Path, test: Path, labels_of) -> dict[str, dict[str, float]]:
    """Each tissue label's share of the held-out body voxels, mean error (HU) and part of the MAE
    (the parts sum to the MAE over all body voxels)."""
    from synthct.data.phantom import TISSUES
    from synthct.io.image import read_image

    errors, labels = [], []
    for case in sorted(p for p in test.iterdir() if p.is_dir()):
        body = read_image(case / "mask.nii.gz").array > 0
        error = read_image(sct / case.name / "sct.nii.gz").array - read_image(case / "ct.nii.gz").array
        errors.append(error[body])
        labels.append(labels_of(case)[body])
    error, label = np.concatenate(errors), np.concatenate(labels)
    return {TISSUES[t]: {"share": float(np.mean(label == t)), "mean_error": float(error[label == t].mean()),
                         "part_of_mae": float(np.abs(error[label == t]).sum() / error.size)}
            for t in np.unique(label)}


def floors(out: Path, steps: list[int], precision: str, threads: int | None = None,
           overrides: tuple[str, ...] = (), grid: tuple[int, float] | None = None,
           probe: str | None = None) -> list[dict]:
    from synthct.config import RunConfig, apply_overrides
    from synthct.data.phantom import CT_HU_RANGES, _mix, _tissue_probabilities, phantom_labels
    from synthct.demo import DemoSettings, _prepare_data, _translate_cases
    from synthct.engine.trainer import train
    from synthct.io.image import read_image

    from experiments.demo_probes import _probe_patches

    s = DemoSettings(precision=precision)
    if grid:  # the same anatomy in mm on another in-plane grid (the slices stay 4 mm apart)
        s = dataclasses.replace(s, size=grid[0], spacing=(grid[1], grid[1], s.spacing[2]))
    _, _, test = _prepare_data(out, s)
    phantoms = out / "phantoms"
    rows = []

    middle = {t: (lo + hi) / 2 for t, (lo, hi) in CT_HU_RANGES.items()}
    case_seed = {f"phantom_{i:03d}": s.seed + i for i in range(2 * s.train_cases + s.test_cases)}

    def labels_of(case: Path) -> np.ndarray:
        return phantom_labels(case_seed[case.name], (s.size, s.size, s.depth), s.spacing)

    def anatomy(case: Path, body: np.ndarray) -> np.ndarray:
        return _mix(_tissue_probabilities(labels_of(case), s.spacing), middle)

    _write_reference(test, out / "sct_anatomy", anatomy)
    rows.append({"reference": "true anatomy, tissues at mid-range HU", "steps": 0,
                 **dict(zip(("mae", "bone_dice"), _score(out / "sct_anatomy", test)))})

    table = fit_lookup([phantoms / f"phantom_{i:03d}" for i in range(s.train_cases)])

    def lookup(case: Path, body: np.ndarray) -> np.ndarray:
        return table[_lookup_bin(_scaled_mr(read_image(case / "mr.nii.gz").array, body))]

    _write_reference(test, out / "sct_lookup", lookup)
    rows.append({"reference": "MR grey level -> median HU of the true pairs", "steps": 0,
                 **dict(zip(("mae", "bone_dice"), _score(out / "sct_lookup", test))),
                 "tissues": _by_tissue(out / "sct_lookup", test, labels_of)})

    pairs = _paired_training_folder(phantoms, s.train_cases, out)
    for n in steps:
        cfg = apply_overrides(RunConfig(), [
            f"data.root={pairs}", "data.paired=true", f"data.size={s.size}", f"data.slices={s.slices}",
            "model.name=regression", "model.generator=resnet", f"model.ngf={s.ngf}", f"model.blocks={s.blocks}",
            f"train.steps={n}", f"train.seed={s.seed}", f"train.precision={precision}", "train.sample_every=0",
            "train.checkpoint_every=0"] + ([f"train.threads={threads}"] if threads else []) + list(overrides))
        with _probe_patches(probe or "base"):
            result = train(cfg, out / f"run_l1_{n}")
            _translate_cases(result.generators["mr2ct"], test, out / f"sct_l1_{n}", precision, lambda *_: None)
            # Its own training cases: a model that fits them and fails the held-out ones lacks data,
            # one that fails both lacks steps or capacity.
            _translate_cases(result.generators["mr2ct"], pairs, out / f"sct_l1_{n}_train", precision, lambda *_: None)
        options = list(overrides) + ([f"probe {probe}"] if probe else [])
        rows.append({"reference": "the demo's generator, L1 on the true pairs", "steps": n, "options": options,
                     **dict(zip(("mae", "bone_dice"), _score(out / f"sct_l1_{n}", test))),
                     "tissues": _by_tissue(out / f"sct_l1_{n}", test, labels_of)})
        rows.append({"reference": "the same, on its own training cases", "steps": n, "options": options,
                     **dict(zip(("mae", "bone_dice"), _score(out / f"sct_l1_{n}_train", pairs)))})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.demo_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="*", default=[400, 1600])
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--threads", type=int, help="torch threads of the trainings (default: all cores)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the L1-trained generator's config, as `synthct train --set`")
    parser.add_argument("--grid", nargs=2, metavar=("PIXELS", "MM"), type=float,
                        help="phantoms on another in-plane grid, e.g. 192 1.2 (default: the demo's 96 px of 2.4 mm)")
    parser.add_argument("--probe", help="a generator change of experiments.demo_probes (e.g. stem_concat)")
    parser.add_argument("--by-tissue", action="store_true", help="split the held-out errors by tissue")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run of this script in --out")
    args = parser.parse_args(argv)
    try:
        if args.out.exists() and any(args.out.iterdir()):
            if not args.overwrite:
                raise SynthctError("output folder is not empty; pass --overwrite to replace it", args.out)
            shutil.rmtree(args.out)
        grid = (int(args.grid[0]), args.grid[1]) if args.grid else None
        from experiments.demo_probes import GENERATOR_PROBES

        if args.probe and args.probe not in GENERATOR_PROBES:
            raise SynthctError(f"--probe must be one of {', '.join(GENERATOR_PROBES)}, got {args.probe!r}")
        rows = floors(args.out, args.steps, args.precision, args.threads, tuple(args.overrides), grid, args.probe)
    except SynthctError as exc:
        print(f"experiments.demo_floor: error: {exc}", file=sys.stderr)
        return 2
    (args.out / "rows.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| reference | steps | MAE (HU) | bone Dice |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['reference']} | {r['steps'] or '-'} | {r['mae']:.1f} | {r['bone_dice']:.2f} |")
    if args.by_tissue:
        for r in (r for r in rows if "tissues" in r):
            print(f"\n{r['reference']} ({r['steps'] or '-'} steps), held out, by tissue:\n"
                  "| tissue | share of the body | mean error (HU) | part of the MAE (HU) |\n|---|---|---|---|")
            for name, t in sorted(r["tissues"].items(), key=lambda kv: -kv[1]["part_of_mae"]):
                print(f"| {name} | {t['share']:.3f} | {t['mean_error']:+.0f} | {t['part_of_mae']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
