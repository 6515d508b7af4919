"""The registration-only baseline: `synthct pair` (multi-atlas, no network) on the prepared fold.

Every scored MR gets a synthetic CT fused from the fold's training CTs registered onto it, exactly as
``synthct pair --mr WORK/scored_mr --ct WORK/train_pairs/ct --subjects CSV`` with its defaults: on the
validation fold the CTs of patients 20, 280, 320 and 370 only, on the test split the 108 training
CTs. The subjects CSV (file, patient) keeps every MR away from its own patient's CTs even where a
work folder was filled by hand. The fused CTs are then scored like every other row.
"""

from __future__ import annotations

import argparse
import csv
import io
import resource
import time
from pathlib import Path

from synthct.errors import SynthctError
from synthct.io.atomic import atomic_write_text

from experiments.aanlib.common import load_scored_set, protocol, read_8bit, read_manifest, score

NAME = "multi_atlas"


def atlas_inputs(work: Path) -> tuple[Path, Path, dict[str, str]]:
    """(MR folder, CT folder, file name -> patient) of the prepared fold, after checking that the CT
    folder holds the fold's training CTs and nothing else (no scored patient's CT)."""
    work = Path(work)
    manifest = read_manifest(work)
    mr_folder, ct_folder = work / "scored_mr", work / "train_pairs" / "ct"
    train = {f"{e['id']}.png": e["case"] for e in manifest["train"]}
    scored = {f"{e['id']}.png": e["case"] for e in manifest["scored"]}
    if leaked := sorted(set(train.values()) & set(scored.values())):
        raise SynthctError(f"patient {', '.join(leaked)} is both trained on and scored", work / "prepare.json")
    found = {p.name for p in ct_folder.glob("*.png")}
    if found != set(train):
        stray = sorted(found - set(train)) or sorted(set(train) - found)
        raise SynthctError(f"the CT folder does not hold exactly the fold's training CTs ({stray[0]}); run prepare "
                           "--overwrite", ct_folder)
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


def atlas(work: Path, workers: int = 2, seed: int = 0, overwrite: bool = False) -> dict:
    """Run `synthct pair` on the fold into WORK/runs/multi_atlas and score its fused CTs."""
    from synthct.commands import pair

    work = Path(work)
    mr_folder, ct_folder, subjects = atlas_inputs(work)
    out = work / "runs" / NAME
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["file", "subject"])
    writer.writerows(sorted(subjects.items()))
    subjects_csv = out / "subjects.csv"
    atomic_write_text(subjects_csv, table.getvalue())
    scored = load_scored_set(work)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    pair.run(pair_arguments(mr_folder, ct_folder, out, subjects_csv, workers, seed, overwrite))
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    predictions = {item.id: read_8bit(out / "ct" / f"{item.id}.png") for item in scored}
    result = score(predictions, scored, NAME, f"synthct pair (multi-atlas registration, no network) with its "
                   f"defaults, {len(subjects) - len(scored)} training CTs of patients "
                   f"{', '.join(read_manifest(work)['train_cases'])}")
    result["protocol"] = protocol(work, scored)
    result["pairs"] = str(out)
    result["seconds"] = {"wall": round(wall, 1), "cpu": round(cpu, 1), "workers": workers}
    return result
