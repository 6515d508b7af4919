"""What every subcommand shares: folders, the split file, 8-bit slices, the scored set and its scores.

Protocol: the synthetic CT is rounded and clipped to 0..255 (as if saved as an 8-bit PNG like the
reference CTs) and scored against the real CT of the same slice on the 0..255 scale, over the whole
slice and inside the head mask of the scored MR slice; metrics per slice, then the mean over slices.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthct.errors import SynthctError
from synthct.eval.metrics import EIGHT_BIT_METRICS, eight_bit_metrics, head_mask_8bit
from synthct.io.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = Path("/work/shared/data/harvard_aanlib_ct_mri_pairs")
# Everything made from the data (copied slices, runs, scores, plots) goes under the ignored runs/:
# the images carry no licence, so nothing derived from them may sit beside committed code.
RUNS = REPO / "runs" / "aanlib"
SPLIT_COLUMNS = ("id", "case", "slice", "split")
MANIFEST = "prepare.json"
PROTOCOL = ("MR->CT on {scored}, 0..255 scale; metrics per slice, then the mean over the slices; head = "
            "head_mask_8bit of the scored MR (MR > 10, closing x3, holes filled, largest component, dilated "
            "by 5 px); synthetic CT rounded and clipped to 0..255")


@dataclass(frozen=True)
class SliceRow:
    id: str
    case: str
    slice: int
    split: str


@dataclass
class ScoredSlice:
    id: str
    case: str
    mr_path: Path
    mr: np.ndarray
    ct: np.ndarray
    head: np.ndarray


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
            rows = [SliceRow(r["id"].strip(), r["case"].strip(), int(r["slice"]), r["split"].strip()) for r in reader]
        except ValueError as exc:
            raise SynthctError(f"bad slice number ({exc})", path) from None
    for row in rows:
        for folder in ("CT", "MRI"):
            if not (Path(data_root) / folder / f"{row.id}.png").is_file():
                raise SynthctError(f"{folder}/{row.id}.png listed in splits.csv is missing", data_root)
    return rows


def read_8bit(path: Path) -> np.ndarray:
    """A 2D 8-bit picture as a float64 (y, x) array."""
    from synthct.io.image import read_image

    vol = read_image(path)
    if not vol.is_2d:
        raise SynthctError(f"expected a 2D picture, got shape {vol.shape}", path)
    return vol.array[0].astype(np.float64)


def read_manifest(work: Path) -> dict:
    path = Path(work) / MANIFEST
    if not path.is_file():
        raise SynthctError(f"not prepared (no {MANIFEST}); run the prepare subcommand first", work)
    return json.loads(path.read_text(encoding="utf-8"))


def load_scored_set(work: Path) -> list[ScoredSlice]:
    """The prepared slices to score (the test split, or the validation fold's held-out cases)."""
    work = Path(work)
    slices = []
    for entry in read_manifest(work)["scored"]:
        mr_path = work / "scored_mr" / f"{entry['id']}.png"
        mr, ct = read_8bit(mr_path), read_8bit(work / "scored_ct" / f"{entry['id']}.png")
        if mr.shape != ct.shape:
            raise SynthctError(f"MR is {mr.shape} but its CT is {ct.shape}", mr_path)
        slices.append(ScoredSlice(entry["id"], entry["case"], mr_path, mr, ct, head_mask_8bit(mr)))
    return slices


def protocol(work: Path, scored: list[ScoredSlice]) -> str:
    cases = " and ".join(sorted({item.case for item in scored}, key=int))
    kind = ("the validation fold's training cases" if read_manifest(work)["fold"] == "validation"
            else "the AANLIB test split")
    return PROTOCOL.format(scored=f"{kind} {cases} ({len(scored)} slices)")


def _means(per_slice: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([row[k] for row in per_slice])) for k in EIGHT_BIT_METRICS}


def score(predictions: dict[str, np.ndarray], scored: list[ScoredSlice], name: str, description: str) -> dict:
    """Per-slice 8-bit metrics of ``predictions`` (id -> synthetic CT), their means over all slices
    and per case."""
    per_slice = []
    for item in scored:
        pred = np.clip(np.rint(predictions[item.id]), 0, 255)
        per_slice.append({"id": item.id, "case": item.case} | eight_bit_metrics(pred, item.ct, item.head))
    cases = sorted({item.case for item in scored}, key=int)
    return {"name": name, "description": description, "n_slices": len(per_slice), "means": _means(per_slice),
            "case_means": {c: _means([row for row in per_slice if row["case"] == c]) for c in cases},
            "per_slice": per_slice}


def refuse_existing(path: Path, overwrite: bool) -> None:
    if Path(path).exists() and not overwrite:
        raise SynthctError("exists; use --overwrite to replace it", path)


def write_json(path: Path, data: dict, overwrite: bool) -> None:
    refuse_existing(path, overwrite)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def summary(result: dict) -> str:
    m = result["means"]
    return (f"{result['name']:<24} head MAE {m['head_mae']:6.2f}  head PSNR {m['head_psnr']:5.2f}  "
            f"head SSIM {m['head_ssim']:.3f}  MAE {m['mae']:6.2f}  PSNR {m['psnr']:5.2f}  SSIM {m['ssim']:.3f}")
