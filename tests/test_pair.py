"""synthct pair and multi-atlas synthesis: registration quality on phantoms, subject exclusion,
the output layout training reads, reproducibility, and one-line errors."""

import csv

import numpy as np
import pytest

from synthct.cli import main
from synthct.config import DataConfig
from synthct.data.mask import body_mask
from synthct.data.layouts import collect_sources
from synthct.data.pairs import pair_sources
from synthct.data.phantom import make_phantom
from synthct.io.image import read_image, write_image
from synthct.io.volume import Volume
from synthct.registration.atlas import atlas_synthesis
from synthct.registration.register import register_ct

# Small grids with the default field of view (192 x 192 x 160 mm): the head keeps its size in mm.
SIZE_3D, SPACING_3D = (48, 48, 16), (4.0, 4.0, 10.0)
SIZE_2D, SPACING_2D = (64, 64, 16), (3.0, 3.0, 10.0)
SLICE_2D = 6  # mid-brain: skull ring, brain and ventricles, a large section in every case
BONE_HU = 250.0
PHANTOM_PAIRS = ((0, 1), (2, 3), (4, 5))  # (the MR's case, the CT's case)


def phantom_3d(case: int) -> tuple[Volume, Volume]:
    mr, ct, _ = make_phantom(case, SIZE_3D, spacing=SPACING_3D)
    return Volume(mr, spacing=SPACING_3D), Volume(ct, spacing=SPACING_3D)


def phantom_2d(case: int, level: int = SLICE_2D) -> tuple[Volume, Volume]:
    mr, ct, _ = make_phantom(case, SIZE_2D, spacing=SPACING_2D)
    spacing = (SPACING_2D[0], SPACING_2D[1], 1.0)
    return (Volume(mr[level:level + 1], spacing=spacing, is_2d=True),
            Volume(ct[level:level + 1], spacing=spacing, is_2d=True))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def bone_dice_gain(make, mr_case: int, ct_case: int, seed: int = 0, threads: int = 1) -> float:
    """How much registering ``ct_case``'s CT onto ``mr_case``'s MR raises the Dice of its bone
    with the MR case's true bone (from its own CT), over the CT merely resampled (same grid)."""
    mr, true_ct = make(mr_case)
    _, ct = make(ct_case)
    registered = register_ct(mr, ct, body_mask(mr.array, "mr"), body_mask(ct.array, "ct"), -1000.0,
                             seed=seed, threads=threads)
    true_bone = true_ct.array >= BONE_HU
    return dice(registered.array >= BONE_HU, true_bone) - dice(ct.array >= BONE_HU, true_bone)


# Bone Dice gain over PHANTOM_PAIRS, measured for registration seeds 0-4, each with 1 and 2
# threads (the same gains on both): mean over the pairs 0.169 to 0.250 in 3D and 0.210 to 0.330
# in 2D; smallest single pair 0.105 (3D) and 0.090 (2D). Seed 0 on 1 thread, as here: 0.169 and
# 0.210. The margins sit below the smallest measured values.
MARGIN_3D = 0.14
MARGIN_2D = 0.17
MARGIN_ONE_PAIR = 0.05


@pytest.mark.parametrize("make,margin", [(phantom_3d, MARGIN_3D), (phantom_2d, MARGIN_2D)], ids=["3d", "2d"])
def test_registration_puts_the_ct_bone_on_the_mr_bone(make, margin):
    gains = [bone_dice_gain(make, mr_case, ct_case) for mr_case, ct_case in PHANTOM_PAIRS]
    assert np.mean(gains) > margin, gains
    assert min(gains) > MARGIN_ONE_PAIR, gains


def test_registration_is_reproducible_and_nearly_independent_of_threads():
    mr, _ = phantom_2d(0)
    _, ct = phantom_2d(1)
    masks = body_mask(mr.array, "mr"), body_mask(ct.array, "ct")
    one = register_ct(mr, ct, *masks, -1000.0, seed=3, threads=1)
    again = register_ct(mr, ct, *masks, -1000.0, seed=3, threads=1)
    assert np.array_equal(one.array, again.array) and one.mutual_information == again.mutual_information
    # Threads sum the metric's histograms in another order: the same fit, up to rounding.
    two = register_ct(mr, ct, *masks, -1000.0, seed=3, threads=2)
    assert dice(one.array >= BONE_HU, two.array >= BONE_HU) > 0.95


def test_atlas_synthesis_fills_air_outside_the_ct_field_of_view(tmp_path):
    mr, _ = phantom_3d(0)
    _, ct = phantom_3d(1)
    # The CT cut to its central 40 x 40 voxels: the MR's corners lie outside its field of view.
    crop = Volume(ct.array[:, 4:44, 4:44], spacing=SPACING_3D, origin=(4 * SPACING_3D[0], 4 * SPACING_3D[1], 0.0))
    path = write_image(crop, tmp_path / "ct.nii.gz")
    synthesis = atlas_synthesis(mr, [path], k=1, candidates=1)
    assert synthesis.array.shape == mr.shape and synthesis.cts == [str(path)]
    assert np.all(synthesis.array[:, :2, :2] == -1000.0)
    assert synthesis.body_dice > 0.9


def eight_bit(array: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((array - low) / (high - low) * 255.0, 0, 255).round()


def write_slice_subjects(root, subjects=("a", "b", "c"), levels=(5, 7)):
    """8-bit PNG slices (AANLIB-like: CT windowed to grey levels), two levels of each subject's
    phantom, MR and CT of a slice under one name; and the subjects CSV."""
    rows = ["file,subject"]
    for case, subject in enumerate(subjects):
        for level in levels:
            mr, ct = phantom_2d(case, level)
            name = f"{subject}{level}.png"
            write_image(mr.with_array(eight_bit(mr.array, 100, 1000)), root / "mr" / name)
            write_image(ct.with_array(eight_bit(ct.array, -1000, 1000)), root / "ct" / name)
            rows.append(f"{name},{subject}")
    (root / "subjects.csv").write_text("\n".join(rows) + "\n")


def test_pair_command_on_slices_never_joins_one_subject_and_writes_what_training_reads(tmp_path):
    write_slice_subjects(tmp_path)
    out = tmp_path / "pairs"
    rc = main(["pair", "--mr", str(tmp_path / "mr"), "--ct", str(tmp_path / "ct"), "--out", str(out),
               "--subjects", str(tmp_path / "subjects.csv"), "--k", "2", "--candidates", "2", "--workers", "2"])
    assert rc == 0
    with open(out / "pairs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["name"] for row in rows] == sorted(p.name for p in (tmp_path / "mr").iterdir())
    for row in rows:
        used = row["cts"].split(";")
        assert len(used) == 2 and int(row["registered"]) == 2
        assert all(name[0] != row["subject"] for name in used), row  # a name's first letter is its subject
        assert float(row["body_dice"]) > 0.8 and float(row["mutual_information"]) > 0
    sources = pair_sources(out)  # what `synthct train --pairs` reads: the same names, the same grids
    assert [p.name for p in sources.mr] == [p.name for p in sources.ct] == [row["name"] for row in rows]
    # and what a paired model reads with --data PAIRS, or --mr PAIRS/mr --ct PAIRS/ct --set data.paired=true
    for cfg in (DataConfig(root=str(out)), DataConfig(mr=str(out / "mr"), ct=str(out / "ct"), paired=True)):
        folders = collect_sources(cfg)
        assert folders.paired and [p.name for p in folders.mr] == [p.name for p in folders.ct] == [
            row["name"] for row in rows]
    for name in sources.cases:
        source, written = read_image(tmp_path / "mr" / name), read_image(out / "mr" / name)
        assert np.array_equal(source.array, written.array)
        fused = read_image(out / "ct" / name)
        assert fused.source_dtype == "uint8" and fused.same_geometry(written)


def test_pair_command_on_volumes_matches_atlas_synthesis_with_one_worker(tmp_path):
    for case in (0, 1):
        mr, ct = phantom_3d(case)
        write_image(mr, tmp_path / "mr" / f"case{case}.nii.gz")
        write_image(ct, tmp_path / "ct" / f"case{case}.nii.gz", dtype="int16")
    (tmp_path / "subjects.csv").write_text("file,subject\ncase0.nii.gz,0\ncase1.nii.gz,1\n")
    out = tmp_path / "pairs"
    rc = main(["pair", "--mr", str(tmp_path / "mr"), "--ct", str(tmp_path / "ct"), "--out", str(out),
               "--subjects", str(tmp_path / "subjects.csv"), "--k", "1", "--candidates", "1", "--workers", "1"])
    assert rc == 0
    fused = read_image(out / "ct" / "case0.nii.gz")
    assert fused.source_dtype == "int16" and fused.same_geometry(read_image(tmp_path / "mr" / "case0.nii.gz"))
    direct = atlas_synthesis(read_image(tmp_path / "mr" / "case0.nii.gz"), [tmp_path / "ct" / "case1.nii.gz"])
    assert np.array_equal(fused.array, np.rint(direct.array))


def test_pair_refuses_to_overwrite_does_not_depend_on_workers_and_names_a_bad_file(tmp_path, capsys):
    write_slice_subjects(tmp_path, subjects=("a", "b"), levels=(6,))
    out = tmp_path / "pairs"
    args = ["pair", "--mr", str(tmp_path / "mr"), "--ct", str(tmp_path / "ct"), "--out", str(out),
            "--k", "1", "--candidates", "1"]
    assert main(args + ["--workers", "1"]) == 0
    one_worker = {name: read_image(out / "ct" / name).array for name in ("a6.png", "b6.png")}
    capsys.readouterr()
    assert main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--workers", "2", "--overwrite"]) == 0
    assert all(np.array_equal(read_image(out / "ct" / name).array, array) for name, array in one_worker.items())
    capsys.readouterr()
    (tmp_path / "ct" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(args + ["--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.png" in err


@pytest.mark.parametrize("csv_text,problem", [
    ("name,subject\na6.png,a\n", "needs columns file and subject"),
    ("file,subject\na6.png,a\n", "b6.png is not listed"),
    ("file,subject\na6.png,a\nb6.png,a\n", "every CT is of this MR's own subject"),
    ("file,subject\na6.png,a\na6.png,b\n", "listed under two subjects"),
])
def test_subject_file_problems_are_one_line_errors(tmp_path, capsys, csv_text, problem):
    write_slice_subjects(tmp_path, subjects=("a", "b"), levels=(6,))
    (tmp_path / "subjects.csv").write_text(csv_text)
    rc = main(["pair", "--mr", str(tmp_path / "mr"), "--ct", str(tmp_path / "ct"), "--out", str(tmp_path / "pairs"),
               "--subjects", str(tmp_path / "subjects.csv"), "--workers", "1", "--k", "1", "--candidates", "1"])
    assert rc == 2
    assert problem in capsys.readouterr().err
    assert not (tmp_path / "pairs").exists()
