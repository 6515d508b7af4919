import numpy as np
import pytest
from scipy import ndimage

from synthct.cli import main
from synthct.data import phantom as ph
from synthct.io.image import read_image

SIZE = (128, 128, 64)  # the default: layer thicknesses are in mm, so small grids lose tissues
IN_PLANE = np.ones((1, 3, 3), bool)


@pytest.fixture(scope="module")
def case():
    return ph.make_phantom(11, size=SIZE), ph.phantom_labels(11, SIZE)


def test_deterministic_per_seed_and_different_across_seeds():
    a = ph.make_phantom(2, size=(32, 32, 12))
    b = ph.make_phantom(2, size=(32, 32, 12))
    c = ph.make_phantom(3, size=(32, 32, 12))
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[1], c[1]) and not np.array_equal(a[2], c[2])


def test_shapes_and_coregistration(case):
    (mr, ct, mask), labels = case
    assert mr.shape == ct.shape == mask.shape == labels.shape == (SIZE[2], SIZE[1], SIZE[0])
    assert np.array_equal(mask > 0, labels > ph.AIR)
    assert mr.min() >= 0  # Rician magnitude


@pytest.mark.parametrize("tissue,lo,hi", [
    (ph.AIR, -1024, -990), (ph.FAT, -115, -75), (ph.WHITE, 18, 36), (ph.GREY, 28, 50), (ph.CSF, -2, 16),
    (ph.CORTICAL, 700, 1500), (ph.MARROW, 300, 500), (ph.MUSCLE, 30, 65), (ph.SINUS, -1024, -950),
])
def test_tissue_hu_ranges(case, tissue, lo, hi):
    (mr, ct, mask), labels = case
    core = ndimage.binary_erosion(labels == tissue, structure=IN_PLANE)  # away from partial-volume edges
    assert core.sum() > 100
    assert lo <= np.median(ct[core]) <= hi


def test_sinuses_are_air_inside_the_head():
    labels = ph.phantom_labels(0)
    sinus = labels == ph.SINUS
    assert sinus.sum() > 100
    assert not np.isin(labels[ndimage.binary_dilation(sinus)], (ph.AIR, ph.SKIN, ph.FAT)).any()


def test_mr_contrasts(case):
    (mr, _, _), labels = case
    t1 = {t: np.median(mr[ndimage.binary_erosion(labels == t, structure=IN_PLANE)]) for t in (ph.WHITE, ph.GREY, ph.CSF)}
    assert t1[ph.WHITE] > t1[ph.GREY] > t1[ph.CSF]
    mr2, _, _ = ph.make_phantom(11, size=SIZE, contrast="t2")
    t2 = {t: np.median(mr2[ndimage.binary_erosion(labels == t, structure=IN_PLANE)]) for t in (ph.WHITE, ph.CSF)}
    assert t2[ph.CSF] > t2[ph.WHITE]


def test_cli_writes_synthrad_layout_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "phantoms"
    args = ["phantom", "--n", "2", "--out", str(out), "--size", "32,32,12", "--seed", "4"]
    assert main(args) == 0
    assert "SYNTHETIC" in (out / "README.txt").read_text()
    mr = read_image(out / "phantom_001" / "mr.nii.gz")
    ct = read_image(out / "phantom_001" / "ct.nii.gz")
    mask = read_image(out / "phantom_001" / "mask.nii.gz")
    assert ct.source_dtype == "int16" and mask.source_dtype == "uint8"
    assert mr.same_geometry(ct) and mask.same_geometry(ct)
    assert ct.spacing == pytest.approx((1.5, 1.5, 2.5))
    _, expected_ct, _ = ph.make_phantom(5, size=(32, 32, 12))
    assert np.abs(ct.array - expected_ct).max() <= 0.5
    capsys.readouterr()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_cli_keeps_a_readme_of_the_users_in_the_target_folder(tmp_path, capsys):
    out = tmp_path / "phantoms"
    out.mkdir()
    (out / "README.txt").write_text("my notes")
    assert main(["phantom", "--n", "1", "--out", str(out), "--size", "16,16,8"]) == 2
    assert "README.txt: already exists" in capsys.readouterr().err
    assert (out / "README.txt").read_text() == "my notes" and not (out / "phantom_000").exists()


def test_cli_rejects_bad_size(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "x"), "--size", "32,32"]) == 2
    assert "--size" in capsys.readouterr().err
