"""Copy the AANLIB slices of one fold into the experiment's folders.

* ``test`` (the final recipe): train on every ``train`` case of ``splits.csv`` (6 patients, 108
  pairs) and score the ``test`` cases (patients 160 and 410, 38 pairs).
* ``validation`` (choosing settings): train on training patients 20, 280, 320 and 370 and score
  training patients 200 and 330 (35 pairs); the test patients are not read.

The unpaired CycleGAN learns from ``train_mr`` and ``train_ct``: each modality shuffled and renamed
on its own (``mr_000.png``, ``ct_000.png``, ...), so neither names nor sorted order leak the pairing.
pix2pix, the paired upper bound, reads the true pairs from ``train_pairs/mr`` and ``train_pairs/ct``
(identical names). The scored pairs go to ``scored_mr`` and ``scored_ct``. Copies, not links: a work
folder then also runs where the data folder is not mounted.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from synthct.errors import SynthctError
from synthct.io.atomic import atomic_write_bytes, atomic_write_text

from experiments.aanlib.common import MANIFEST, SliceRow, read_splits

FOLDS = ("test", "validation")
# The validation fold of the data README: training cases only, two scored and four trained on.
VALIDATION_TRAIN = ("20", "280", "320", "370")
VALIDATION_SCORED = ("200", "330")
PREPARED = ("train_mr", "train_ct", "train_pairs", "scored_mr", "scored_ct", MANIFEST)


def fold_rows(rows: list[SliceRow], fold: str, splits_file: Path) -> tuple[list[SliceRow], list[SliceRow]]:
    """(trained on, scored) rows of ``fold``."""
    if fold == "test":
        train, scored = [r for r in rows if r.split == "train"], [r for r in rows if r.split == "test"]
    elif fold == "validation":
        training_cases = {r.case for r in rows if r.split == "train"}
        absent = [case for case in VALIDATION_TRAIN + VALIDATION_SCORED if case not in training_cases]
        if absent:
            raise SynthctError(f"the validation fold needs training case{'s' if len(absent) > 1 else ''} "
                               f"{', '.join(absent)}, not in the train split", splits_file)
        train = [r for r in rows if r.split == "train" and r.case in VALIDATION_TRAIN]
        scored = [r for r in rows if r.split == "train" and r.case in VALIDATION_SCORED]
    else:
        raise SynthctError(f"unknown fold '{fold}' (use {' or '.join(FOLDS)})")
    for name, part in (("train", train), ("scored", scored)):
        if not part:
            raise SynthctError(f"no {name} rows for the {fold} fold", splits_file)
    return train, scored


def _copy(source: Path, target: Path) -> None:
    atomic_write_bytes(target, source.read_bytes())


def prepare(data_root: Path, work: Path, fold: str = "test", seed: int = 0, overwrite: bool = False) -> dict:
    """Copy the slices of ``fold`` into ``work`` (see the module docstring); returns the manifest."""
    data_root, work = Path(data_root), Path(work)
    train, scored = fold_rows(read_splits(data_root), fold, data_root / "splits.csv")
    existing = [work / name for name in PREPARED if (work / name).exists()]
    if existing and not overwrite:
        raise SynthctError("already prepared; use --overwrite to prepare again", existing[0])
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    rng = random.Random(seed)
    for modality, source_folder in (("mr", "MRI"), ("ct", "CT")):
        order = [r.id for r in train]
        rng.shuffle(order)  # one draw per modality: the MR and CT orders are independent
        for index, slice_id in enumerate(order):
            _copy(data_root / source_folder / f"{slice_id}.png",
                  work / f"train_{modality}" / f"{modality}_{index:03d}.png")
    for rows, folders in ((train, ("train_pairs/mr", "train_pairs/ct")), (scored, ("scored_mr", "scored_ct"))):
        for r in rows:
            _copy(data_root / "MRI" / f"{r.id}.png", work / folders[0] / f"{r.id}.png")
            _copy(data_root / "CT" / f"{r.id}.png", work / folders[1] / f"{r.id}.png")
    manifest = {
        "data_root": str(data_root), "fold": fold, "seed": seed,
        "train_cases": sorted({r.case for r in train}, key=int), "train_slices": len(train),
        "train": [{"id": r.id, "case": r.case, "slice": r.slice} for r in train],
        "scored_cases": sorted({r.case for r in scored}, key=int),
        "scored": [{"id": r.id, "case": r.case, "slice": r.slice} for r in scored],
    }
    atomic_write_text(work / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest
