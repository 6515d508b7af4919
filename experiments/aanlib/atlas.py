"""The registration-only baseline: `synthct pair` (multi-atlas, no network) on the prepared fold.

Every scored MR gets a synthetic CT fused from the fold's training CTs registered onto it, exactly as
``synthct pair --mr WORK/scored_mr --ct WORK/train_pairs/ct --subjects CSV`` with its defaults: on the
validation fold the CTs of patients 20, 280, 320 and 370 only, on the test split the 108 training
CTs. The subjects CSV (file, patient) keeps every MR away from its own patient's CTs even where a
work folder was filled by hand. The fused CTs are then scored like every other row.

``pseudo_pairs`` makes training pairs the same way for the recipe that has no pairs: every training
MR of the fold gets a CT fused from the *other* training patients' CTs (``--subjects``), written to
WORK/pseudo_pairs/{mr,ct} for a paired model (``train --pseudo-pairs``). It reads the training
patients' slices only, never a scored patient's CT.
"""

from __future__ import annotations

import argparse
import csv
import io
import resource
import time
from pathlib import Path

import numpy as np

from synthct.errors import SynthctError
from synthct.io.atomic import atomic_write_text

from experiments.aanlib.common import load_scored_set, protocol, read_8bit, read_manifest, score

NAME = "multi_atlas"
PSEUDO_PAIRS = "pseudo_pairs"


def _fold_slices(work: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(training, scored) slices of the prepared fold, file name -> patient; no patient on both sides."""
    manifest = read_manifest(work)
    train = {f"{e['id']}.png": e["case"] for e in manifest["train"]}
    scored = {f"{e['id']}.png": e["case"] for e in manifest["scored"]}
    if leaked := sorted(set(train.values()) & set(scored.values())):
        raise SynthctError(f"patient {', '.join(leaked)} is both trained on and scored", work / "prepare.json")
    return train, scored


def _check_holds_exactly(folder: Path, names: set[str], what: str) -> None:
    found = {p.name for p in folder.glob("*.png")}
    if found != names:
        stray = sorted(found - names) or sorted(names - found)
        raise SynthctError(f"the folder does not hold exactly the fold's {what} ({stray[0]}); run prepare "
                           "--overwrite", folder)


def atlas_inputs(work: Path) -> tuple[Path, Path, dict[str, str]]:
    """(MR folder, CT folder, file name -> patient) of the prepared fold, after checking that the CT
    folder holds the fold's training CTs and nothing else (no scored patient's CT)."""
    work = Path(work)
    train, scored = _fold_slices(work)
    mr_folder, ct_folder = work / "scored_mr", work / "train_pairs" / "ct"
    _check_holds_exactly(ct_folder, set(train), "training CTs")
    return mr_folder, ct_folder, train | scored


def pair_arguments(mr: Path, ct: Path, out: Path, subjects: Path, workers: int, seed: int,
                   overwrite: bool) -> argparse.Namespace:
    """`synthct pair`'s own parser, so that every other option keeps the command's default."""
    from synthct.commands import pair

    parser = argparse.ArgumentParser(prog="synthct pair")
    pair.add_arguments(parser)
    argv = ["--mr", str(mr), "--ct", str(ct), "--out", str(out), "--subjects", str(subjects),
            "--workers", str(workers), "--seed", str(seed)] + (["--overwrite"] if overwrite else [])
    return parser.parse_args(argv)


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _write_subjects(path: Path, subjects: dict[str, str]) -> Path:
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["file", "subject"])
    writer.writerows(sorted(subjects.items()))
    atomic_write_text(path, table.getvalue())
    return path


def _timed_pair(mr: Path, ct: Path, out: Path, subjects: dict[str, str], workers: int, seed: int,
                overwrite: bool) -> dict:
    """Run `synthct pair` with ``subjects`` written to OUT/subjects.csv; its wall and CPU seconds."""
    from synthct.commands import pair

    subjects_csv = _write_subjects(Path(out) / "subjects.csv", subjects)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    pair.run(pair_arguments(mr, ct, out, subjects_csv, workers, seed, overwrite))
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    return {"wall": round(wall, 1), "cpu": round(cpu, 1), "workers": workers}


def atlas(work: Path, workers: int = 2, seed: int = 0, overwrite: bool = False) -> dict:
    """Run `synthct pair` on the fold into WORK/runs/multi_atlas and score its fused CTs."""
    work = Path(work)
    mr_folder, ct_folder, subjects = atlas_inputs(work)
    out = work / "runs" / NAME
    scored = load_scored_set(work)
    seconds = _timed_pair(mr_folder, ct_folder, out, subjects, workers, seed, overwrite)
    predictions = {item.id: read_8bit(out / "ct" / f"{item.id}.png") for item in scored}
    result = score(predictions, scored, NAME, f"synthct pair (multi-atlas registration, no network) with its "
                   f"defaults, {len(subjects) - len(scored)} training CTs of patients "
                   f"{', '.join(read_manifest(work)['train_cases'])}")
    result["protocol"] = protocol(work, scored)
    result["pairs"] = str(out)
    result["seconds"] = seconds
    return result


def pseudo_pair_inputs(work: Path) -> tuple[Path, Path, dict[str, str]]:
    """(MR folder, CT folder, file name -> patient) for the pseudo-pairs: the fold's training MRs and
    CTs (true pairs share a file name, so one row names an MR's and its CT's patient), after checking
    that both folders hold the fold's training slices and nothing else."""
    work = Path(work)
    train, _ = _fold_slices(work)
    if len(set(train.values())) < 2:
        raise SynthctError("pseudo-pairs need at least two training patients (an MR never meets its own CT)", work)
    folders = work / "train_pairs" / "mr", work / "train_pairs" / "ct"
    for folder in folders:
        _check_holds_exactly(folder, set(train), "training slices")
    return *folders, train


def pseudo_pairs(work: Path, workers: int = 2, seed: int = 0, overwrite: bool = False) -> dict:
    """`synthct pair` on the fold's training MRs against the other training patients' CTs, into
    WORK/pseudo_pairs; returns its seconds, which patients each MR's CT was fused from, and the fused
    CTs' distance to the MRs' own CTs (training slices only: how good the pairs are)."""
    from synthct.eval.metrics import eight_bit_metrics, head_mask_8bit

    work = Path(work)
    mr_folder, ct_folder, subjects = pseudo_pair_inputs(work)
    out = work / PSEUDO_PAIRS
    seconds = _timed_pair(mr_folder, ct_folder, out, subjects, workers, seed, overwrite)
    with open(out / "pairs.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    own = [(row["name"], name) for row in rows for name in row["cts"].split(";")
           if subjects[name] == subjects[row["name"]]]
    if own or sorted(row["name"] for row in rows) != sorted(subjects):
        raise SynthctError(f"{own[0][0]} was paired with its own patient's CT {own[0][1]}" if own
                           else "the pairs do not cover the fold's training MRs", out / "pairs.csv")
    per_slice = []
    for row in rows:
        mr = read_8bit(mr_folder / row["name"])
        metrics = eight_bit_metrics(read_8bit(out / "ct" / row["name"]), read_8bit(ct_folder / row["name"]),
                                    head_mask_8bit(mr))
        per_slice.append({"id": Path(row["name"]).stem, "case": subjects[row["name"]],
                          "fused_from": sorted({subjects[name] for name in row["cts"].split(";")}, key=int),
                          "head_mae": metrics["head_mae"], "head_ssim": metrics["head_ssim"]})
    return {"name": PSEUDO_PAIRS, "pairs": str(out), "n_pairs": len(rows),
            "train_cases": read_manifest(work)["train_cases"], "seconds": seconds,
            "to_own_ct": {key: float(np.mean([s[key] for s in per_slice])) for key in ("head_mae", "head_ssim")},
            "per_slice": per_slice}
