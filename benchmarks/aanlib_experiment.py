"""The real-scan experiment of issue 7: Harvard AANLIB CT / MR slice pairs.

Protocol (fixed by the issue):

* train on the ``train`` split of ``splits.csv`` (6 patients, 108 slice pairs) *unpaired*: the
  MR and CT slices go into two folders, each shuffled and renamed on its own
  (``mr_000.png``, ``ct_000.png``, ...), so neither names nor sorted order can leak the pairing.
  pix2pix, the paired upper bound, gets the true pairs (``train_pairs/mr`` and ``train_pairs/ct``
  with identical names, read with ``data.paired=true``);
* translate the ``test`` split (patients 160 and 410, 38 slices) MR -> CT;
* score the synthetic CT against the real CT of the same slice on the 0..255 scale with
  :func:`synthct.eval.metrics.eight_bit_metrics`: MAE, PSNR, SSIM over the whole slice and
  inside the head mask :func:`synthct.eval.metrics.head_mask_8bit` of the *test MR* slice;
* metrics are computed per slice and then averaged over the 38 test slices.

``prepare --holdout 20,200`` makes a validation fold instead: those training cases are scored, the
others trained on, and the test patients left out, so that settings can be compared without
looking at the test split.

The synthetic CT is rounded and clipped to 0..255 before scoring, as if saved as an 8-bit PNG
like the reference CTs.

The data carry no licence: everything this script writes from them (copied slices, runs,
per-slice results, plots) goes under ``--work`` (default ``experiments/aanlib``, git-ignored).

``train --restarts N`` judges each CycleGAN start on its discriminators' loss over its first
``--check-steps`` steps (training losses only) and starts the next seed when they sit at chance,
all within the one budget.

Subcommands: ``prepare``, ``baselines``, ``train``, ``evaluate``, ``curve``, ``average``,
``windowing``, ``discriminators``, ``structure``, ``table``; run
``python benchmarks/aanlib_experiment.py COMMAND --help``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthct.errors import SynthctError
from synthct.eval.metrics import EIGHT_BIT_METRICS, eight_bit_metrics, head_mask_8bit
from synthct.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("/work/shared/data/harvard_aanlib_ct_mri_pairs")
DEFAULT_WORK = REPO / "experiments" / "aanlib"
SPLIT_COLUMNS = ("id", "case", "slice", "split")
PREPARED_FOLDERS = ("train_mr", "train_ct", "train_pairs", "test_mr", "test_ct")
MANIFEST = "prepare.json"
CONSTANT_GREY = 110.0  # the constant baseline inside the head
SNAPSHOT_PATTERN = re.compile(r"generator_mr2ct_step(\d+)\.safetensors")
PRESETS = {"cyclegan": REPO / "configs" / "aanlib_cyclegan.yaml",
           "pix2pix": REPO / "configs" / "aanlib_pix2pix.yaml"}
PROTOCOL = ("MR->CT on {scored}, 0..255 scale; "
            "metrics per slice, then the mean over the slices; head = head_mask_8bit of the scored MR "
            "(MR > 10, closing x3, holes filled, largest component, dilated by 5 px); synthetic CT "
            "rounded and clipped to 0..255")

# Published numbers of the reference implementation on this split (issue 7); "head_" = in the head mask.
REFERENCE_ROWS = (
    ("reference CycleGAN (published)", "unpaired",
     {"head_mae": 82.6, "head_psnr": 7.3, "head_ssim": 0.15, "mae": 42.1, "psnr": 10.5, "ssim": 0.51}),
    ("reference pix2pix (published, upper bound)", "paired",
     {"head_mae": 55.9, "head_psnr": 9.5, "head_ssim": 0.31, "mae": 27.8, "psnr": 12.5, "ssim": 0.63}),
    ("MR as CT (published)", "none", {"head_mae": 84.1}),
    (f"constant {CONSTANT_GREY:g} in the head (published)", "none", {"head_mae": 75.2}),
)
TABLE_COLUMNS = (("head_mae", "head MAE", 1), ("head_psnr", "head PSNR (dB)", 1), ("head_ssim", "head SSIM", 2),
                 ("mae", "MAE", 1), ("psnr", "PSNR (dB)", 1), ("ssim", "SSIM", 2))


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SliceRow:
    id: str
    case: str
    slice: int
    split: str


def read_splits(data_root: Path) -> list[SliceRow]:
    """The rows of ``splits.csv``; every id must have both ``CT/<id>.png`` and ``MRI/<id>.png``."""
    path = Path(data_root) / "splits.csv"
    if not path.is_file():
        raise SynthctError("splits.csv not found (is this the AANLIB data folder?)", path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in SPLIT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise SynthctError(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                               f"(expected {', '.join(SPLIT_COLUMNS)})", path)
        try:
            rows = [SliceRow(r["id"].strip(), r["case"].strip(), int(r["slice"]), r["split"].strip())
                    for r in reader]
        except ValueError as exc:
            raise SynthctError(f"bad slice number ({exc})", path) from None
    for row in rows:
        for folder in ("CT", "MRI"):
            if not (Path(data_root) / folder / f"{row.id}.png").is_file():
                raise SynthctError(f"{folder}/{row.id}.png listed in splits.csv is missing", data_root)
    for split in ("train", "test"):
        if not any(r.split == split for r in rows):
            raise SynthctError(f"no '{split}' rows", path)
    return rows


def read_8bit(path: Path) -> np.ndarray:
    """A 2D 8-bit picture as a float64 (y, x) array."""
    from synthct.io.image import read_image

    vol = read_image(path)
    if not vol.is_2d:
        raise SynthctError(f"expected a 2D picture, got shape {vol.shape}", path)
    return vol.array[0].astype(np.float64)


def _copy(source: Path, target: Path) -> None:
    atomic_write_bytes(target, source.read_bytes())


def prepare(data_root: Path, work: Path, seed: int = 0, overwrite: bool = False,
            holdout: tuple[str, ...] = ()) -> dict:
    """Copy the slices into the experiment's folders (see the module docstring); returns the manifest.

    ``holdout`` names training cases to score instead of the test split: a validation fold for
    choosing settings without looking at the test patients, who are then left out entirely.
    Copies, not links: the work folder then also runs where the data folder is not mounted.
    """
    data_root, work = Path(data_root), Path(work)
    rows = read_splits(data_root)
    if holdout:
        train_cases = {r.case for r in rows if r.split == "train"}
        unknown = sorted(set(holdout) - train_cases)
        if unknown:
            raise SynthctError(f"held-out case{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                               f"not in the train split", data_root / "splits.csv")
        if train_cases <= set(holdout):
            raise SynthctError("holding out every training case leaves nothing to train on", data_root / "splits.csv")
        rows = [SliceRow(r.id, r.case, r.slice, "test" if r.case in holdout else "train")
                for r in rows if r.split == "train"]
    existing = [work / name for name in PREPARED_FOLDERS + (MANIFEST,) if (work / name).exists()]
    if existing and not overwrite:
        raise SynthctError("already prepared; use --overwrite to prepare again", existing[0])
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    train = [r for r in rows if r.split == "train"]
    test = [r for r in rows if r.split == "test"]
    rng = random.Random(seed)
    for modality, source_folder, prefix in (("mr", "MRI", "mr"), ("ct", "CT", "ct")):
        order = [r.id for r in train]
        rng.shuffle(order)  # one draw per modality: MR and CT orders are independent
        for index, slice_id in enumerate(order):
            _copy(data_root / source_folder / f"{slice_id}.png", work / f"train_{modality}" / f"{prefix}_{index:03d}.png")
    for r in train:
        _copy(data_root / "MRI" / f"{r.id}.png", work / "train_pairs" / "mr" / f"{r.id}.png")
        _copy(data_root / "CT" / f"{r.id}.png", work / "train_pairs" / "ct" / f"{r.id}.png")
    for r in test:
        _copy(data_root / "MRI" / f"{r.id}.png", work / "test_mr" / f"{r.id}.png")
        _copy(data_root / "CT" / f"{r.id}.png", work / "test_ct" / f"{r.id}.png")
    manifest = {
        "data_root": str(data_root), "seed": seed, "holdout": sorted(holdout, key=int),
        "train_cases": sorted({r.case for r in train}, key=int), "train_slices": len(train),
        "test_cases": sorted({r.case for r in test}, key=int),
        "test": [{"id": r.id, "case": r.case, "slice": r.slice} for r in test],
    }
    atomic_write_text(work / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(work: Path) -> dict:
    path = Path(work) / MANIFEST
    if not path.is_file():
        raise SynthctError(f"not prepared (no {MANIFEST}); run the prepare subcommand first", work)
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass
class TestSlice:
    id: str
    case: str
    mr_path: Path
    mr: np.ndarray
    ct: np.ndarray
    head: np.ndarray
    validation: bool = False  # a held-out training case (prepare --holdout), not the test split


def load_test_set(work: Path) -> list[TestSlice]:
    work = Path(work)
    manifest = read_manifest(work)
    slices = []
    for entry in manifest["test"]:
        mr_path = work / "test_mr" / f"{entry['id']}.png"
        mr = read_8bit(mr_path)
        ct = read_8bit(work / "test_ct" / f"{entry['id']}.png")
        if mr.shape != ct.shape:
            raise SynthctError(f"MR is {mr.shape} but its CT is {ct.shape}", mr_path)
        slices.append(TestSlice(entry["id"], entry["case"], mr_path, mr, ct, head_mask_8bit(mr),
                                bool(manifest.get("holdout"))))
    return slices


def protocol(test: list[TestSlice]) -> str:
    cases = " and ".join(sorted({item.case for item in test}, key=int))
    kind = "held-out training cases (validation)" if any(item.validation for item in test) else "the AANLIB test split"
    return PROTOCOL.format(scored=f"{kind} {cases} ({len(test)} slices)")


# --------------------------------------------------------------------------- scoring


def _means(per_slice: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([row[k] for row in per_slice])) for k in EIGHT_BIT_METRICS}


def score(predictions: dict[str, np.ndarray], test: list[TestSlice], name: str, description: str = "") -> dict:
    """Per-slice 8-bit metrics of ``predictions`` (id -> synthetic CT), their means over all
    slices and per case; predictions are rounded and clipped to 0..255 first."""
    per_slice = []
    for item in test:
        pred = np.clip(np.rint(predictions[item.id]), 0, 255)
        per_slice.append({"id": item.id, "case": item.case} | eight_bit_metrics(pred, item.ct, item.head))
    cases = sorted({item.case for item in test}, key=int)
    return {
        "name": name, "description": description, "protocol": protocol(test), "n_slices": len(per_slice),
        "means": _means(per_slice),
        "case_means": {c: _means([row for row in per_slice if row["case"] == c]) for c in cases},
        "per_slice": per_slice,
    }


# --------------------------------------------------------------------------- diagnostics


def ct_levels(data_root: Path) -> dict[str, dict]:
    """Each patient's median CT grey inside the head (mask from the MR), the median over its slices.

    Brain, most of a head, has about the same HU in everyone, so differences between patients
    show how differently their 8-bit CT pictures were windowed.
    """
    data_root = Path(data_root)
    by_case: dict[str, tuple[str, list[float]]] = {}
    for row in read_splits(data_root):
        mr = read_8bit(data_root / "MRI" / f"{row.id}.png")
        ct = read_8bit(data_root / "CT" / f"{row.id}.png")
        by_case.setdefault(row.case, (row.split, []))[1].append(float(np.median(ct[head_mask_8bit(mr)])))
    return {case: {"split": split, "slices": len(levels), "head_median": float(np.median(levels))}
            for case, (split, levels) in sorted(by_case.items(), key=lambda item: int(item[0]))}


def offset_removed(predictions: dict[str, np.ndarray], test: list[TestSlice]) -> dict:
    """Per patient: the median in-head error and the head MAE once that one offset is taken off all
    of the patient's slices. An oracle diagnostic (it reads the scored CTs): how much of the error
    is one patient-wide brightness shift rather than anatomy."""
    cases = {}
    for case in sorted({item.case for item in test}, key=int):
        items = [item for item in test if item.case == case]
        pred = {item.id: np.clip(np.rint(predictions[item.id]), 0, 255) for item in items}
        offset = float(np.median(np.concatenate([(pred[item.id] - item.ct)[item.head] for item in items])))

        def head_mae(shift: float) -> float:
            return float(np.mean([np.abs(np.clip(pred[i.id] - shift, 0, 255) - i.ct)[i.head].mean() for i in items]))

        cases[case] = {"slices": len(items), "median_error": offset, "head_mae": head_mae(0.0),
                       "head_mae_offset_removed": head_mae(offset)}
    total = sum(c["slices"] for c in cases.values())
    means = {key: sum(c[key] * c["slices"] for c in cases.values()) / total
             for key in ("head_mae", "head_mae_offset_removed")}
    return {"cases": cases, "means": means}


# --------------------------------------------------------------------------- structure

# Bone in these CT pictures: the skull is saturated (255) and brain lies near 100, so 200 splits
# them whatever each patient's window; the pairs' head outlines differ by a few pixels.
BONE_GREY = 200.0
BONE_TOLERANCE_PX = 3.0
STRUCTURE_KEYS = ("bone_dice", "bone_invented", "bone_missed", "edge_ratio", "head_mae")


def structure_scores(predictions: dict[str, np.ndarray], test: list[TestSlice], name: str, description: str = "",
                     cycle_errors: dict[str, float] | None = None) -> dict:
    """Per slice and averaged: whether the synthetic CT's bone lies where the real CT's does
    (Dice; invented and missed bone beyond BONE_TOLERANCE_PX), how sharp its edges are (the 95th
    percentile of the gradient magnitude in the head, over the real CT's), and, given the
    cycle-QA error of each slice, how well that error ranks the slices by head MAE (Spearman)."""
    from scipy.stats import spearmanr

    from synthct.eval.metrics import bone_agreement, edge_strength

    per_slice = []
    for item in test:
        pred = np.clip(np.rint(predictions[item.id]), 0, 255)
        row = {"id": item.id, "case": item.case}
        row |= bone_agreement(pred, item.ct, item.head, BONE_GREY, BONE_TOLERANCE_PX)
        row["edge_ratio"] = edge_strength(pred, item.head) / edge_strength(item.ct, item.head)
        row["head_mae"] = float(np.abs(pred - item.ct)[item.head].mean())
        if cycle_errors is not None:
            row["cycle_error"] = float(cycle_errors[item.id])
        per_slice.append(row)
    keys = STRUCTURE_KEYS + (("cycle_error",) if cycle_errors is not None else ())
    # Bone fractions are NaN on slices without bone in that image: averaged over the others.
    means = {k: _mean_of_defined([row[k] for row in per_slice]) for k in keys}
    if cycle_errors is not None:
        rho = spearmanr([r["cycle_error"] for r in per_slice], [r["head_mae"] for r in per_slice]).statistic
        means["cycle_error_vs_head_mae_spearman"] = float(rho)
    return {"name": name, "description": description, "bone_grey": BONE_GREY,
            "bone_tolerance_px": BONE_TOLERANCE_PX, "n_slices": len(per_slice), "means": means,
            "per_slice": per_slice}


def _mean_of_defined(values: list[float]) -> float:
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def resampled_through(ct: np.ndarray, size: int) -> np.ndarray:
    """A picture taken down to ``size`` pixels (anti-aliased) and back up (bilinear): the
    detail a pipeline working at ``size`` could keep at best."""
    from skimage.transform import resize

    small = resize(ct, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    return resize(small, ct.shape, order=1, anti_aliasing=False, preserve_range=True)


def translate_with_qa(generator_ref: Path, test: list[TestSlice], device: str = "auto", tta: str = "none",
                      mask: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """As :func:`translate_test_set`, plus each slice's cycle-QA error |F(G(mr)) - mr| in its body
    (grey levels), as ``synthct translate --qa`` reports it."""
    from synthct.io.image import read_image
    from synthct.translate.translator import Translator

    translator = Translator(generator_ref, "mr2ct", device=device, tta=tta)
    predictions, errors = {}, {}
    for item in test:
        found = translator.translate_volume(read_image(item.mr_path), mask=mask, qa=True)
        predictions[item.id] = found.synthetic.array[0]
        errors[item.id] = found.summary.mean_error_in_body
    return predictions, errors


def structure(work: Path, runs: list[Path], device: str = "auto", tta: str = "none", mask: str | None = None) -> dict:
    """:func:`structure_scores` of each run, of the real CT through 128 pixels (the reference's
    working size) and of the MR used as CT."""
    test = load_test_set(work)
    rows = [structure_scores({t.id: resampled_through(t.ct, 128) for t in test}, test, "ct_through_128",
                             "the real CT resized to 128 x 128 and back (the reference's working size)"),
            structure_scores({t.id: t.mr for t in test}, test, "mr_as_ct", "the test MR itself used as CT")]
    for run_dir in runs:
        predictions, errors = translate_with_qa(run_dir, test, device, tta, mask)
        name = (run_dir.stem if run_dir.is_file() else run_dir.name) + inference_suffix(tta, mask)
        rows.append(structure_scores(predictions, test, name, f"synthct generator {run_dir}", errors))
    return {"protocol": protocol(test), "inference": {"tta": tta, "mask": mask or "the model's default"},
            "rows": rows}


# --------------------------------------------------------------------------- baselines


def training_ct_head_pixels(work: Path) -> np.ndarray:
    """In-head pixels of all training CTs, pooled. The head of a CT is found on the CT itself
    (:func:`head_mask_8bit`; the head-holder arc is a separate, smaller component), never
    through its MR: the baselines respect the unpaired protocol too."""
    values = []
    for path in sorted((Path(work) / "train_ct").glob("*.png")):
        ct = read_8bit(path)
        values.append(ct[head_mask_8bit(ct)])
    if not values:
        raise SynthctError("no training CT slices; run prepare", Path(work) / "train_ct")
    return np.concatenate(values)


def best_constant(test: list[TestSlice]) -> int:
    """The grey level c (0..255) inside the head that minimises the mean over slices of the
    in-head MAE. An oracle: it looks at the test CTs; for reference only."""
    levels = np.arange(256, dtype=np.float64)
    mean_mae = np.zeros(256)
    for item in test:
        counts = np.bincount(np.clip(np.rint(item.ct[item.head]), 0, 255).astype(np.int64), minlength=256)
        mean_mae += np.abs(levels[:, None] - levels[None, :]) @ counts / counts.sum()
    return int(np.argmin(mean_mae))


def constant_in_head(test: list[TestSlice], grey: float) -> dict[str, np.ndarray]:
    """``grey`` inside the head mask, 0 (air) outside."""
    return {item.id: np.where(item.head, grey, 0.0) for item in test}


def histogram_matched(test: list[TestSlice], ct_head_pixels: np.ndarray, inverted: bool = False) -> dict[str, np.ndarray]:
    """Each test MR slice's in-head pixels mapped monotonically so that their histogram matches
    the pooled in-head histogram of the training CTs (skimage ``match_histograms``); 0 outside.
    Restricting both sides to the head keeps the background (most of a slice) from dominating
    either histogram. ``inverted``: the MR's grey levels are reversed first (255 - MR), so the
    map is monotone decreasing: T2-bright fluid comes out dark, dark bone bright."""
    from skimage.exposure import match_histograms

    predictions = {}
    for item in test:
        pred = np.zeros_like(item.mr)
        inside = item.mr[item.head]
        pred[item.head] = match_histograms(255 - inside if inverted else inside, ct_head_pixels)
        predictions[item.id] = pred
    return predictions


def baselines(work: Path) -> dict:
    """Scores of the translation-free baselines on the test split."""
    test = load_test_set(work)
    ct_pixels = training_ct_head_pixels(work)
    train_median = float(np.median(ct_pixels))
    oracle = best_constant(test)
    runs = [
        ("mr_as_ct", "the test MR itself used as the synthetic CT", {t.id: t.mr for t in test}),
        ("histogram_matched", "test MR, in-head histogram matched to the pooled in-head histogram of the "
                              "training CTs (per slice; 0 outside the head)", histogram_matched(test, ct_pixels)),
        ("inverted_histogram_matched", "test MR with its grey levels reversed (255 - MR), then in-head "
                                       "histogram matched like histogram_matched",
         histogram_matched(test, ct_pixels, inverted=True)),
        ("constant_110", f"constant {CONSTANT_GREY:g} inside the head, 0 outside",
         constant_in_head(test, CONSTANT_GREY)),
        ("constant_train_median", f"median in-head grey of the training CTs ({train_median:g}) inside the "
                                  "head, 0 outside", constant_in_head(test, train_median)),
        ("constant_best_oracle", f"best constant inside the head ({oracle}, chosen on the test CTs: an "
                                 "oracle), 0 outside", constant_in_head(test, oracle)),
    ]
    return {"protocol": protocol(test), "train_ct_head_median": train_median, "best_constant": oracle,
            "baselines": {name: score(preds, test, name, text) for name, text, preds in runs}}


# --------------------------------------------------------------------------- synthct runs


def translate_test_set(generator_ref: Path, test: list[TestSlice], device: str = "auto", tta: str = "none",
                       mask: str | None = None) -> dict[str, np.ndarray]:
    """MR -> CT with a synthct generator (run folder or ``.safetensors``) slice by slice, as
    ``synthct translate --tta TTA --mask MASK`` would (None: the model's default mask)."""
    from synthct.io.image import read_image
    from synthct.translate.translator import Translator

    translator = Translator(generator_ref, "mr2ct", device=device, tta=tta)
    return {item.id: translator.translate_volume(read_image(item.mr_path), mask=mask).array[0] for item in test}


def inference_suffix(tta: str, mask: str | None) -> str:
    """``_tta-flip`` / ``_mask-auto`` for result names scored with translate's options."""
    return (f"_tta-{tta}" if tta != "none" else "") + (f"_mask-{mask}" if mask else "")


def evaluate(work: Path, generator_ref: Path, name: str, device: str = "auto",
             test: list[TestSlice] | None = None, tta: str = "none", mask: str | None = None) -> dict:
    test = test if test is not None else load_test_set(work)
    # The sidecar is read before the weights are loaded (and checked against its checksum), so
    # the step and checksum recorded are those of the weights scored even if a still-running
    # training exports new ones meanwhile.
    sidecar = Path(generator_ref) / "generator_mr2ct.json" if Path(generator_ref).is_dir() \
        else Path(generator_ref).with_suffix(".json")
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    result = score(translate_test_set(generator_ref, test, device, tta, mask), test, name,
                   f"synthct generator {generator_ref}" + (f", --tta {tta}" if tta != "none" else "")
                   + (f", --mask {mask}" if mask else ""))
    if json.loads(sidecar.read_text(encoding="utf-8")).get("sha256") != meta.get("sha256"):
        raise SynthctError("the generator was replaced while it was being scored (is its training still running?)",
                           sidecar)
    result["generator"] = {"path": str(generator_ref), "step": meta.get("step"), "epoch": meta.get("epoch"),
                           "sha256": meta.get("sha256"), "model": meta.get("model")}
    result["inference"] = {"tta": tta, "mask": mask or "the model's default"}
    return result


def find_snapshots(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, weights) of ``RUN_DIR/snapshots/generator_mr2ct_step{N}.safetensors`` by step;
    the run's final generator joins when no snapshot has its step."""
    run_dir = Path(run_dir)
    found = {}
    snapshots = run_dir / "snapshots"
    if snapshots.is_dir():
        for path in snapshots.iterdir():
            match = SNAPSHOT_PATTERN.fullmatch(path.name)
            if match and path.with_suffix(".json").is_file():
                found[int(match.group(1))] = path
    final = run_dir / "generator_mr2ct.safetensors"
    if final.is_file() and final.with_suffix(".json").is_file():
        step = json.loads(final.with_suffix(".json").read_text(encoding="utf-8")).get("step")
        if isinstance(step, int) and step not in found:
            found[step] = final
    if not found:
        raise SynthctError("no MR->CT generator snapshots (snapshots/generator_mr2ct_step{N}.safetensors) "
                           "or final generator in this run", run_dir)
    return sorted(found.items())


def elapsed_by_step(log_csv: Path) -> dict[int, float]:
    """Training seconds at the end of each logged step (``log.csv``: step, elapsed_s)."""
    if not Path(log_csv).is_file():
        raise SynthctError("training log not found", log_csv)
    with open(log_csv, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not {"step", "elapsed_s"} <= set(reader.fieldnames or []):
            raise SynthctError("log has no step / elapsed_s columns", log_csv)
        return {int(row["step"]): float(row["elapsed_s"]) for row in reader}


def curve(work: Path, run_dir: Path, device: str = "auto", tta: str = "none", mask: str | None = None) -> dict:
    """Test-set scores of every generator snapshot of a run against its training minutes."""
    run_dir = Path(run_dir)
    elapsed = elapsed_by_step(run_dir / "log.csv")
    test = load_test_set(work)
    points = []
    for step, weights in find_snapshots(run_dir):
        if step not in elapsed and step != 0:
            raise SynthctError(f"step {step} of {weights.name} is not in log.csv", run_dir / "log.csv")
        result = evaluate(work, weights, f"{run_dir.name} step {step}", device, test, tta, mask)
        points.append({"step": step, "minutes": elapsed.get(step, 0.0) / 60, "generator": str(weights),
                       "means": result["means"]})
    return {"run": str(run_dir), "protocol": protocol(test),
            "inference": {"tta": tta, "mask": mask or "the model's default"}, "points": points}


def cycle_code(work: Path, run_dir: Path, sigmas: tuple[float, ...], slices: int = 24, seed: int = 0) -> dict:
    """How much of each snapshot's MR cycle rides on a low-amplitude code: the in-head error
    |F(G(mr) + n) - mr| (grey levels) over the first ``slices`` training MRs, for noise
    n ~ N(0, sigma^2) in the generators' [-1, 1] units, beside the median in-head grey level of
    G(mr). Training images only; nothing of the test split is used."""
    import torch

    from synthct.data.intensity import EightBit
    from synthct.engine.checkpoint import load_generator

    paths = sorted((Path(work) / "train_mr").glob("*.png"))[:slices]
    if not paths:
        raise SynthctError("no training MR slices; run prepare", Path(work) / "train_mr")
    grey = EightBit()
    mr = np.stack([read_8bit(path) for path in paths])
    head = head_mask_8bit(mr)
    mr_input = torch.from_numpy(grey.forward(mr))[:, None]
    points = []
    for step, g_weights in find_snapshots(run_dir):
        f_weights = g_weights.with_name(g_weights.name.replace("mr2ct", "ct2mr"))
        if not f_weights.is_file():
            raise SynthctError("no CT->MR generator beside this MR->CT one", g_weights)
        G = load_generator(g_weights, "mr2ct", device="cpu")[0].eval()
        F = load_generator(f_weights, "ct2mr", device="cpu")[0].eval()
        generator = torch.Generator().manual_seed(seed)
        with torch.inference_mode():
            fake_ct = torch.cat([G(batch) for batch in mr_input.split(8)])
            errors = {}
            for sigma in sigmas:
                noisy = fake_ct + sigma * torch.randn(fake_ct.shape, generator=generator)
                rec = torch.cat([F(batch) for batch in noisy.split(8)])
                errors[str(sigma)] = float(np.abs(grey.inverse(rec[:, 0].numpy()) - mr)[head].mean())
        points.append({"step": step, "fake_ct_head_median": float(np.median(grey.inverse(fake_ct[:, 0].numpy())[head])),
                       "cycle_error_by_sigma": errors})
    return {"run": str(run_dir), "slices": [path.name for path in paths], "sigmas": list(sigmas), "points": points}


def average_snapshots(run_dir: Path, from_minutes: float, out_stem: Path) -> tuple[Path, list[int]]:
    """The uniform average of a run's MR->CT generator snapshots taken at or after
    ``from_minutes`` of training, saved as a generator at ``out_stem``; returns its weights
    path and the steps averaged."""
    import torch

    from synthct.engine.checkpoint import load_generator, save_generator

    run_dir = Path(run_dir)
    elapsed = elapsed_by_step(run_dir / "log.csv")
    chosen = [(step, path) for step, path in find_snapshots(run_dir) if elapsed.get(step, 0.0) / 60 >= from_minutes]
    if not chosen:
        raise SynthctError(f"no generator snapshot at or after minute {from_minutes:g}", run_dir)
    loaded = [load_generator(path) for _, path in chosen]
    average, meta = loaded[-1]
    states = [module.state_dict() for module, _ in loaded]
    with torch.no_grad():
        for name, tensor in average.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.stack([state[name] for state in states]).mean(0))
    steps = [step for step, _ in chosen]
    return save_generator(average, out_stem, meta | {"averaged_steps": steps}), steps


def plot_curve(curve_result: dict, reference_lines: dict[str, float], path: Path) -> None:
    """Head MAE against training minutes, with horizontal reference lines (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.6, 4.0), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    minutes = [p["minutes"] for p in curve_result["points"]]
    head_mae = [p["means"]["head_mae"] for p in curve_result["points"]]
    axes.plot(minutes, head_mae, "o-", color="black", label="synthct")
    for (label, value), style in zip(reference_lines.items(), ("--", ":", "-.", (0, (5, 1)), (0, (1, 3)))):
        axes.axhline(value, linestyle=style, linewidth=1, color="grey", label=f"{label} {value:.1f}")
    # A legend, not labels on the lines: reference values a grey level or two apart
    # (MR as CT 84.0, reference CycleGAN 82.6) would print on top of each other.
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    axes.set_xlabel("training time (minutes)")
    axes.set_ylabel("head MAE (0..255, mean over the scored slices)")
    inference = curve_result.get("inference") or {}
    options = " ".join(f"--{key} {value}" for key, value in inference.items() if value in ("flip", "auto"))
    axes.set_title(f"AANLIB, MR -> CT: {Path(curve_result['run']).name}" + (f", translated with {options}"
                                                                               if options else ""), fontsize=9)
    axes.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")


def reference_lines(work: Path) -> dict[str, float]:
    lines = {"ref. CycleGAN": REFERENCE_ROWS[0][2]["head_mae"], "ref. pix2pix": REFERENCE_ROWS[1][2]["head_mae"]}
    baseline_file = Path(work) / "results" / "baselines.json"
    if baseline_file.is_file():
        found = json.loads(baseline_file.read_text(encoding="utf-8"))["baselines"]
        lines |= {"MR as CT": found["mr_as_ct"]["means"]["head_mae"],
                  f"constant {CONSTANT_GREY:g}": found["constant_110"]["means"]["head_mae"]}
    return lines


def _training_config(work: Path, model: str, overrides: list[str]):
    from synthct.config import apply_overrides, load_config

    work = Path(work)
    read_manifest(work)
    cfg = apply_overrides(load_config(PRESETS[model]), overrides)
    if model == "pix2pix":
        cfg.data.mr, cfg.data.ct, cfg.data.paired = str(work / "train_pairs" / "mr"), str(work / "train_pairs" / "ct"), True
    else:
        cfg.data.mr, cfg.data.ct, cfg.data.paired = str(work / "train_mr"), str(work / "train_ct"), False
    cfg.data.root = None
    return cfg


def train_run(work: Path, model: str, run_dir: Path, minutes: float, overrides: list[str],
              overwrite: bool = False) -> int:
    """Train a preset on the prepared folders (CycleGAN unpaired, pix2pix on the true pairs)."""
    from synthct.engine.trainer import train

    cfg = _training_config(work, model, overrides)
    cfg.train.max_minutes = minutes
    return train(cfg, run_dir, overwrite=overwrite).exit_code


# The LSGAN discriminator loss 0.5 * ((D(real) - 1)^2 + D(fake)^2) of a discriminator that
# answers 0.5 to everything: it has learnt nothing that tells the domains apart.
LSGAN_CHANCE = 0.25


def _logged_rows(run_dir: Path, first: int, last: int, column: str) -> list[dict]:
    """The rows of a run's log.csv for steps first..last that have a value in ``column``."""
    log = Path(run_dir) / "log.csv"
    if not log.is_file():
        raise SynthctError("no training log (log.csv) in this run folder", run_dir)
    with open(log, newline="", encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if first <= int(r["step"]) <= last and r.get(column)]


def discriminator_loss_window(run_dir: Path, first: int, last: int, scale: int | None = None) -> float:
    """Mean of (D_ct + D_mr) / 2 over logged steps first..last of a run's log.csv; with ``scale``,
    of that scale's losses alone (a multi-scale discriminator logs D_ct_scale0, ...)."""
    suffix = "" if scale is None else f"_scale{scale}"
    rows = _logged_rows(run_dir, first, last, f"D_ct{suffix}")
    if not rows:
        what = "discriminator losses" if scale is None else f"discriminator losses of scale {scale}"
        raise SynthctError(f"no {what} logged for steps {first}-{last}", Path(run_dir) / "log.csv")
    return float(np.mean([(float(r[f"D_ct{suffix}"]) + float(r[f"D_mr{suffix}"])) / 2 for r in rows]))


def source_terms_window(run_dir: Path, first: int, last: int) -> tuple[float, float] | None:
    """Means of D_ct_source and D_mr_source (model.lambda_source_fake) over logged steps
    first..last; None for a run that logs no source terms."""
    rows = _logged_rows(run_dir, first, last, "D_ct_source")
    if not rows:
        return None
    return tuple(float(np.mean([float(r[name]) for r in rows])) for name in ("D_ct_source", "D_mr_source"))


def logged_scales(run_dir: Path) -> int:
    """How many discriminator scales a run's log.csv has losses for (1 for a single PatchGAN)."""
    with open(Path(run_dir) / "log.csv", newline="", encoding="utf-8") as fh:
        columns = next(csv.reader(fh), [])
    return max(1, sum(1 for c in columns if c.startswith("D_ct_scale")))


def train_with_restarts(work: Path, run_dir: Path, minutes: float, overrides: list[str], restarts: int,
                        check_steps: int, threshold: float, overwrite: bool = False) -> int:
    """CycleGAN with restarts decided on training losses alone: after ``check_steps`` steps, a
    start whose discriminators sit near chance (mean LSGAN loss over the second half of those
    steps at or above ``threshold``) is set aside (renamed ``<run>.rejected_seed<N>``) and the
    next seed starts over; a start below it continues to the end. Every attempt's training time
    counts against the one budget, so the last attempt gets what the others left."""
    from synthct.engine.trainer import train

    run_dir = Path(run_dir)
    if restarts < 0 or check_steps < 2:
        raise SynthctError(f"--restarts must be >= 0 and --check-steps >= 2, got {restarts} and {check_steps}")
    cfg = _training_config(work, "cyclegan", overrides)
    if cfg.model.gan_mode != "lsgan":
        raise SynthctError(f"restarts judge the LSGAN discriminator loss; model.gan_mode is {cfg.model.gan_mode}")
    spent_minutes, first_seed = 0.0, cfg.train.seed
    for attempt in range(restarts):
        cfg.train.seed = first_seed + attempt
        rejected = run_dir.with_name(f"{run_dir.name}.rejected_seed{cfg.train.seed}")
        if rejected.exists():
            raise SynthctError("exists; move it away before restarting this run", rejected)
        cfg.train.max_minutes, cfg.train.stop_at_step = minutes - spent_minutes, check_steps
        result = train(cfg, run_dir, overwrite=overwrite)
        if result.stopped != "step":
            return result.exit_code
        first = check_steps // 2 + 1
        window = f"steps {first}-{check_steps}"
        loss = discriminator_loss_window(run_dir, first, check_steps)
        cfg.train.stop_at_step = None
        if loss < threshold:
            print(f"seed {cfg.train.seed}: discriminator loss {loss:.3f} over {window} (< {threshold:g}); "
                  "continuing this start")
            return train(cfg, run_dir, resume=True).exit_code
        with open(run_dir / "log.csv", newline="", encoding="utf-8") as fh:
            spent_minutes += float(list(csv.DictReader(fh))[-1]["elapsed_s"]) / 60
        run_dir.rename(rejected)
        print(f"seed {cfg.train.seed}: discriminator loss {loss:.3f} over {window} (chance {LSGAN_CHANCE}, "
              f"threshold {threshold:g}); set aside as {rejected.name}, {minutes - spent_minutes:.1f} min left")
    cfg.train.seed = first_seed + restarts
    cfg.train.max_minutes = minutes - spent_minutes
    return train(cfg, run_dir, overwrite=overwrite).exit_code


# --------------------------------------------------------------------------- table


def _cell(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(ours: list[tuple[str, str, dict]], baseline_result: dict | None) -> str:
    """Docs-ready Markdown: our runs, our baselines and the reference's published numbers."""
    rows = list(ours)
    if baseline_result is not None:
        labels = {"mr_as_ct": "MR as CT", "histogram_matched": "MR histogram-matched to training CT",
                  "inverted_histogram_matched": "inverted MR histogram-matched to training CT",
                  "constant_110": f"constant {CONSTANT_GREY:g} in the head",
                  "constant_train_median": "constant = training-CT median in the head",
                  "constant_best_oracle": "best constant in the head (oracle)"}
        for key, result in baseline_result["baselines"].items():
            rows.append((labels.get(key, key), "none", result["means"]))
    rows.extend(REFERENCE_ROWS)
    header = "| method | pairing | " + " | ".join(title for _, title, _ in TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(TABLE_COLUMNS) + 2)]
    for label, pairing, means in rows:
        cells = [_cell(means.get(key), digits) for key, _, digits in TABLE_COLUMNS]
        lines.append(f"| {label} | {pairing} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line


def _write_json(path: Path, data: dict, overwrite: bool) -> None:
    if Path(path).exists() and not overwrite:
        raise SynthctError("exists; use --overwrite to replace it", path)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _summary(result: dict) -> str:
    m = result["means"]
    return (f"{result['name']:<24} head MAE {m['head_mae']:6.2f}  head PSNR {m['head_psnr']:5.2f}  "
            f"head SSIM {m['head_ssim']:.3f}  MAE {m['mae']:6.2f}  PSNR {m['psnr']:5.2f}  SSIM {m['ssim']:.3f}")


def _labelled(items: list[str]) -> list[tuple[str, Path]]:
    pairs = []
    for item in items:
        if "=" not in item:
            raise SynthctError(f"--result expects LABEL=RESULT.json, got '{item}'")
        label, path = item.split("=", 1)
        pairs.append((label, Path(path)))
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aanlib_experiment", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"experiment folder (default {DEFAULT_WORK})")
        return p

    p = command("prepare", "copy the split into unpaired training folders, paired folders and the test set")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="AANLIB folder with CT/, MRI/, splits.csv")
    p.add_argument("--seed", type=int, default=0, help="seed of the independent MR and CT shuffles")
    p.add_argument("--holdout", default="", metavar="CASES",
                   help="comma-separated training cases to score instead of the test split (a validation "
                        "fold; the test patients are left out)")
    p.add_argument("--overwrite", action="store_true")
    p = command("baselines", "score MR-as-CT, histogram matching and constant baselines")
    p.add_argument("--overwrite", action="store_true")
    p = command("train", "train a preset on the prepared folders with a wall-clock budget")
    p.add_argument("--model", choices=tuple(PRESETS), default="cyclegan")
    p.add_argument("--run", type=Path, help="run folder (default WORK/runs/<model>)")
    p.add_argument("--minutes", type=float, default=60.0,
                   help="wall-clock budget; the lr schedule follows it (default 60)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set data.size=64 (repeatable)")
    p.add_argument("--restarts", type=int, default=0,
                   help="CycleGAN: up to this many fresh starts (seed + 1, + 2, ...) when the discriminators "
                        "sit near chance after --check-steps steps; the budget covers them all (default 0)")
    p.add_argument("--check-steps", type=int, default=100, help="steps before a start is judged (default 100)")
    p.add_argument("--threshold", type=float, default=0.20,
                   help=f"mean LSGAN discriminator loss, second half of the check, below which a start "
                        f"continues (chance is {LSGAN_CHANCE}; default 0.20)")
    p.add_argument("--overwrite", action="store_true")
    p = command("evaluate", "translate the 38 test MR slices with a run's generator and score them")
    p.add_argument("--run", type=Path, required=True, help="run folder or generator .safetensors")
    p.add_argument("--out", type=Path, help="result JSON (default WORK/results/<run name>[_tta-flip][_mask-auto].json)")
    p.add_argument("--tta", choices=("none", "flip"), default="none", help="as synthct translate --tta")
    p.add_argument("--mask", choices=("auto", "none"), help="as synthct translate --mask (default: the model's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    p = command("curve", "score every generator snapshot of a run and plot head MAE against minutes")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--tta", choices=("none", "flip"), default="none", help="as synthct translate --tta")
    p.add_argument("--mask", choices=("auto", "none"), help="as synthct translate --mask (default: the model's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    p = command("average", "score the uniform weight average of a run's snapshots from a given minute on")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--from-minutes", type=float, required=True, help="average the snapshots taken at or after this")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    p = command("windowing", "each patient's in-head CT grey level; with --run, a generator's head MAE "
                             "without each test patient's brightness offset (an oracle diagnostic)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="AANLIB folder with CT/, MRI/, splits.csv")
    p.add_argument("--run", type=Path, help="run folder or generator .safetensors")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    p = command("discriminators", "each run's mean LSGAN discriminator loss over a window of early steps "
                                  "(chance is 0.25), as --restarts judges a start; each scale's and the "
                                  "source terms (model.lambda_source_fake) beside it where logged")
    p.add_argument("--run", type=Path, action="append", required=True, help="run folder (repeatable)")
    p.add_argument("--steps", default="51-100", metavar="FIRST-LAST", help="step window (default 51-100)")
    p = command("structure", "bone agreement, edge sharpness and cycle-QA error of runs' test translations, "
                             "beside the real CT through 128 px and the MR used as CT")
    p.add_argument("--run", type=Path, action="append", required=True, help="run folder (repeatable)")
    p.add_argument("--tta", choices=("none", "flip"), default="none", help="as synthct translate --tta")
    p.add_argument("--mask", choices=("auto", "none"), help="as synthct translate --mask (default: the model's)")
    p.add_argument("--out", type=Path, help="result JSON (default WORK/results/structure[_tta-flip][_mask-auto].json)")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    p = command("cycle-code", "each snapshot's in-head MR cycle error with Gaussian noise added to G(mr) "
                              "(training MRs only): a cycle closed through a low-amplitude code breaks "
                              "under noise that a visible translation shrugs off")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--sigmas", default="0,0.05,0.1,0.2", metavar="S,S,...",
                   help="noise standard deviations in [-1, 1] units (default 0,0.05,0.1,0.2)")
    p.add_argument("--slices", type=int, default=24, help="training MR slices used (default 24)")
    p.add_argument("--overwrite", action="store_true")
    p = command("table", "Markdown table of results, baselines and the reference's published numbers")
    p.add_argument("--result", action="append", default=[], metavar="LABEL=RESULT.json",
                   help="an evaluate result with its row label (repeatable)")
    p.add_argument("--pairing", action="append", default=[], metavar="LABEL=PAIRING",
                   help="pairing column of a --result row (default: unpaired)")
    p.add_argument("--out", type=Path, help="write the table here (default: print it)")
    p.add_argument("--overwrite", action="store_true")
    return parser


def run(args: argparse.Namespace) -> int:
    work = args.work
    results = work / "results"
    if args.command == "prepare":
        holdout = tuple(case.strip() for case in args.holdout.split(",") if case.strip())
        manifest = prepare(args.data, work, args.seed, args.overwrite, holdout)
        scored = "validation" if holdout else "test"
        print(f"prepared {manifest['train_slices']} training slices (cases {', '.join(manifest['train_cases'])}) "
              f"and {len(manifest['test'])} {scored} slices (cases {', '.join(manifest['test_cases'])}) in {work}")
    elif args.command == "baselines":
        found = baselines(work)
        _write_json(results / "baselines.json", found, args.overwrite)
        for result in found["baselines"].values():
            print(_summary(result))
        print(f"per-slice means over {next(iter(found['baselines'].values()))['n_slices']} test slices; "
              f"written to {results / 'baselines.json'}")
    elif args.command == "train":
        run_dir = args.run or work / "runs" / args.model
        if args.restarts:
            if args.model != "cyclegan":
                raise SynthctError(f"--restarts is for the CycleGAN; --model is {args.model}")
            return train_with_restarts(work, run_dir, args.minutes, args.overrides, args.restarts,
                                       args.check_steps, args.threshold, args.overwrite)
        return train_run(work, args.model, run_dir, args.minutes, args.overrides, args.overwrite)
    elif args.command == "discriminators":
        first, _, last = args.steps.partition("-")
        if not (first.isdigit() and last.isdigit() and 1 <= int(first) <= int(last)):
            raise SynthctError(f"--steps must be FIRST-LAST step numbers, got '{args.steps}'")
        for run_dir in args.run:
            line = f"{run_dir.name}: {discriminator_loss_window(run_dir, int(first), int(last)):.3f}"
            scales = logged_scales(run_dir)
            if scales > 1:
                line += " (scales 1, 1/2, ...: " + ", ".join(
                    f"{discriminator_loss_window(run_dir, int(first), int(last), k):.3f}" for k in range(scales)) + ")"
            source = source_terms_window(run_dir, int(first), int(last))
            if source is not None:
                line += f" (source terms D_ct / D_mr: {source[0]:.3f} / {source[1]:.3f})"
            print(line)
    elif args.command == "evaluate":
        name = (args.run.stem if args.run.is_file() else args.run.name) + inference_suffix(args.tta, args.mask)
        out = args.out or results / f"{name}.json"
        if out.exists() and not args.overwrite:
            raise SynthctError("exists; use --overwrite to replace it", out)
        result = evaluate(work, args.run, name, args.device, tta=args.tta, mask=args.mask)
        _write_json(out, result, args.overwrite)
        print(_summary(result))
        print(f"written to {out}")
    elif args.command == "curve":
        name = args.run.name + inference_suffix(args.tta, args.mask)
        points_file = results / f"curve_{name}.json"
        plot_file = results / f"curve_{name}.png"
        if points_file.exists() and not args.overwrite:
            raise SynthctError("exists; use --overwrite to replace it", points_file)
        found = curve(work, args.run, args.device, args.tta, args.mask)
        _write_json(points_file, found, args.overwrite)
        plot_curve(found, reference_lines(work), plot_file)
        for point in found["points"]:
            print(f"step {point['step']:>7}  {point['minutes']:7.1f} min  head MAE {point['means']['head_mae']:.2f}")
        print(f"written to {points_file} and {plot_file}")
    elif args.command == "average":
        name = f"average_{args.run.name}_from{args.from_minutes:g}"
        # The averaged generator (weights + sidecar) beside the score, under its own name.
        out, generator = results / f"{name}.json", results / f"{name}_generator"
        for path in (out, generator.with_suffix(".safetensors"), generator.with_suffix(".json")):
            if path.exists() and not args.overwrite:
                raise SynthctError("exists; use --overwrite to replace it", path)
        weights, steps = average_snapshots(args.run, args.from_minutes, generator)
        result = evaluate(work, weights, name, args.device)
        result["generator"]["averaged_steps"] = steps
        _write_json(out, result, args.overwrite)
        print(f"averaged the snapshots of steps {', '.join(map(str, steps))}")
        print(_summary(result))
        print(f"written to {out}")
    elif args.command == "windowing":
        out = results / (f"windowing_{args.run.stem if args.run.is_file() else args.run.name}.json" if args.run
                         else "windowing.json")
        if out.exists() and not args.overwrite:
            raise SynthctError("exists; use --overwrite to replace it", out)
        found = {"ct_levels": ct_levels(args.data)}
        for case, level in found["ct_levels"].items():
            print(f"case {case:>4} ({level['split']}, {level['slices']} slices): in-head CT median {level['head_median']:.0f}")
        if args.run:
            test = load_test_set(work)
            found["offset_removed"] = offset_removed(translate_test_set(args.run, test, args.device), test)
            for case, row in found["offset_removed"]["cases"].items():
                print(f"case {case:>4}: median error {row['median_error']:+.0f}, head MAE {row['head_mae']:.1f}, "
                      f"{row['head_mae_offset_removed']:.1f} without it")
            means = found["offset_removed"]["means"]
            print(f"all: head MAE {means['head_mae']:.1f}, {means['head_mae_offset_removed']:.1f} without "
                  f"each patient's offset (an oracle: the offsets are read off the scored CTs)")
        _write_json(out, found, args.overwrite)
        print(f"written to {out}")
    elif args.command == "structure":
        out = args.out or results / f"structure{inference_suffix(args.tta, args.mask)}.json"
        if out.exists() and not args.overwrite:
            raise SynthctError("exists; use --overwrite to replace it", out)
        found = structure(work, args.run, args.device, args.tta, args.mask)
        _write_json(out, found, args.overwrite)
        print("| row | bone Dice | invented bone | missed bone | edge strength / CT's | head MAE | cycle error | "
              "Spearman (cycle error, head MAE) |")
        print("|---|---|---|---|---|---|---|---|")
        for row in found["rows"]:
            m = row["means"]
            cycle = (f"{m['cycle_error']:.1f} | {m['cycle_error_vs_head_mae_spearman']:.2f}" if "cycle_error" in m
                     else " | ")
            print(f"| {row['name']} | {m['bone_dice']:.2f} | {m['bone_invented']:.2f} | {m['bone_missed']:.2f} | "
                  f"{m['edge_ratio']:.2f} | {m['head_mae']:.1f} | {cycle} |")
        print(f"written to {out}")
    elif args.command == "cycle-code":
        out = results / f"cycle_code_{args.run.name}.json"
        if out.exists() and not args.overwrite:
            raise SynthctError("exists; use --overwrite to replace it", out)
        try:
            sigmas = tuple(float(value) for value in args.sigmas.split(","))
        except ValueError:
            raise SynthctError(f"--sigmas must be comma-separated numbers, got '{args.sigmas}'") from None
        if args.slices < 1 or any(sigma < 0 for sigma in sigmas):
            raise SynthctError("--slices must be at least 1 and every sigma 0 or more")
        found = cycle_code(work, args.run, sigmas, args.slices)
        print("| step | G(mr) in-head median | " + " | ".join(f"cycle error, sigma {s:g}" for s in sigmas) + " |")
        print("|---|---|" + "---|" * len(sigmas))
        for point in found["points"]:
            print(f"| {point['step']} | {point['fake_ct_head_median']:.0f} | "
                  + " | ".join(f"{value:.1f}" for value in point["cycle_error_by_sigma"].values()) + " |")
        _write_json(out, found, args.overwrite)
        print(f"written to {out}")
    elif args.command == "table":
        pairing = dict(_labelled(args.pairing))
        ours = []
        for label, path in _labelled(args.result):
            if not path.is_file():
                raise SynthctError("result not found", path)
            ours.append((label, str(pairing.get(label, "unpaired")), json.loads(path.read_text(encoding="utf-8"))["means"]))
        baseline_file = results / "baselines.json"
        baseline_result = json.loads(baseline_file.read_text(encoding="utf-8")) if baseline_file.is_file() else None
        table = markdown_table(ours, baseline_result)
        if args.out:
            if args.out.exists() and not args.overwrite:
                raise SynthctError("exists; use --overwrite to replace it", args.out)
            atomic_write_text(args.out, table)
        else:
            print(table, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except SynthctError as exc:
        print(f"aanlib_experiment: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
