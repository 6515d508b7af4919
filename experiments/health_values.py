"""Where the health check's ``off_ct_values`` line comes from: the fraction of a translation's
in-body values that fall where the sample's CTs rarely have any (``synthct.eval.health.
rare_value_fraction``), drawn as a run's sample draws it (4 MR slices against 4 other CT slices).

* ``aanlib``: the true CT of the MR slices as the translation (a perfect model), on the 73 slices of
  the validation protocol's four training patients (20, 280, 320, 370; head masks from the images
  as the check finds them); reads ../shared/data/harvard_aanlib_ct_mri_pairs.
* ``phantoms``: the demo's phantoms (its grid and seed): the true CT of MR cases 0-5 against the CTs
  of cases 6-11, as is and with the soft tissue (-100 to 100 HU) raised by 210 HU, the demo's
  failure (`make demo`'s 400-step CycleGAN renders the brain above 240 HU).

    python -m experiments.health_values aanlib [--draws 2000] [--data DIR]
    python -m experiments.health_values phantoms [--draws 500]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

from synthct.errors import SynthctError

AANLIB = Path(__file__).resolve().parents[2] / "shared" / "data" / "harvard_aanlib_ct_mri_pairs"
VALIDATION_TRAINING_PATIENTS = ("20", "280", "320", "370")
SLICES = 4
RAISE_HU = 210.0


def _draws(truth: list[np.ndarray], cts: list[np.ndarray], draws: int, seed: int = 0) -> np.ndarray:
    """``rare_value_fraction`` of 4 random ``truth`` slices' values against 4 random ``cts``'."""
    from synthct.eval.health import rare_value_fraction

    rng = np.random.default_rng(seed)
    fractions = []
    for _ in range(draws):
        a = rng.choice(len(truth), SLICES, replace=False)
        b = rng.choice(len(cts), SLICES, replace=False)
        fractions.append(rare_value_fraction(np.concatenate([truth[i] for i in a]),
                                             np.concatenate([cts[i] for i in b])))
    return np.array(fractions)


def aanlib_slices(root: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per slice: the CT's values inside the MR's head mask, and inside the CT's own."""
    import torch
    from PIL import Image

    from synthct.eval.health import body_from_image

    if not (root / "splits.csv").is_file():
        raise SynthctError("no AANLIB slices here (splits.csv missing); pass --data", root)
    ids = [row["id"] for row in csv.DictReader(open(root / "splits.csv", encoding="utf-8"))
           if row["split"] == "train" and row["case"] in VALIDATION_TRAINING_PATIENTS]

    def load(kind: str) -> torch.Tensor:
        return torch.stack([torch.from_numpy(np.asarray(Image.open(root / kind / f"{i}.png").convert("L"),
                                                        np.float32) / 127.5 - 1.0) for i in ids])[:, None]

    mr, ct = load("MRI"), load("CT")
    mr_body, ct_body = body_from_image(mr) > 0.5, body_from_image(ct) > 0.5
    return ([ct[i][mr_body[i]].numpy() for i in range(len(ids))],
            [ct[i][ct_body[i]].numpy() for i in range(len(ids))])


def phantom_slices(out: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per slice of the demo's training cases: MR cases' CT values, CT cases' CT values (body)."""
    from synthct.data.intensity import CTWindow
    from synthct.demo import DemoSettings, _prepare_data
    from synthct.io.image import read_image

    s = DemoSettings()
    _prepare_data(out, s)
    window = CTWindow()

    def values(cases: range) -> list[np.ndarray]:
        kept = []
        for i in cases:
            case = out / "phantoms" / f"phantom_{i:03d}"
            ct, body = read_image(case / "ct.nii.gz").array, read_image(case / "mask.nii.gz").array > 0
            kept += [window.forward(ct[z][body[z]]) for z in range(ct.shape[0]) if body[z].mean() >= 0.02]
        return kept

    return values(range(s.train_cases)), values(range(s.train_cases, 2 * s.train_cases))


def _summary(label: str, fractions: np.ndarray) -> str:
    return (f"| {label} | {len(fractions)} | {fractions.min():.3f} | {np.median(fractions):.3f} | "
            f"{np.percentile(fractions, 99):.3f} | {fractions.max():.3f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.health_values", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", choices=("aanlib", "phantoms"))
    parser.add_argument("--draws", type=int, default=None, help="random samples (default 2000 aanlib, 500 phantoms)")
    parser.add_argument("--data-dir", type=Path, default=AANLIB, help="the AANLIB folder")
    args = parser.parse_args(argv)
    print("| translation | draws | min | median | 99 % | max |\n|---|---|---|---|---|---|")
    try:
        if args.data == "aanlib":
            truth, cts = aanlib_slices(args.data_dir)
            print(_summary("the true CT (AANLIB)", _draws(truth, cts, args.draws or 2000)))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                truth, cts = phantom_slices(Path(tmp))
            draws = args.draws or 500
            print(_summary("the true CT (phantoms)", _draws(truth, cts, draws)))
            soft = [np.where((t > -0.54) & (t < -0.44), t + RAISE_HU / 2012.0, t) for t in truth]
            print(_summary(f"soft tissue raised by {RAISE_HU:.0f} HU (phantoms)", _draws(soft, cts, draws)))
    except SynthctError as exc:
        print(f"experiments.health_values: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
