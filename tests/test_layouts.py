import numpy as np
import pytest

from synthct.config import DataConfig
from synthct.data.layouts import collect_sources, detect_layout
from synthct.errors import SynthctError
from synthct.io.image import write_image
from synthct.io.volume import Volume


def vol(shape=(3, 8, 8), spacing=(1.0, 1.0, 2.0), value=0.0):
    return Volume(np.full(shape, value, np.float32), spacing=spacing, format="nifti")


def synthrad(root, cases=2, **ct_geometry):
    for i in range(cases):
        case = root / f"case_{i}"
        write_image(vol(), case / "mr.nii.gz")
        write_image(vol(**ct_geometry), case / "ct.nii.gz")
    return root


def test_detects_cyclegan_layout_and_collects_a_and_b(tmp_path):
    for name, n in (("trainA", 3), ("trainB", 2), ("testA", 1), ("testB", 1)):
        for i in range(n):
            write_image(vol(), tmp_path / name / f"{i}.nii.gz")
    assert detect_layout(tmp_path) == "cyclegan"
    sources = collect_sources(DataConfig(root=str(tmp_path)))
    assert (len(sources.mr), len(sources.ct), sources.paired, sources.layout) == (3, 2, False, "cyclegan")
    assert all(p.parent.name == "trainA" for p in sources.mr)
    test = collect_sources(DataConfig(root=str(tmp_path)), split="test")
    assert [p.parent.name for p in test.mr + test.ct] == ["testA", "testB"]


def test_detects_synthrad_layout_with_masks(tmp_path):
    synthrad(tmp_path)
    write_image(vol(), tmp_path / "case_0" / "mask.nii.gz", dtype="uint8")
    assert detect_layout(tmp_path) == "synthrad"
    sources = collect_sources(DataConfig(root=str(tmp_path)))
    assert sources.paired and sources.cases == ["case_0", "case_1"]
    assert sources.masks[0].name == "mask.nii.gz" and sources.masks[1] is None
    assert [p.name for p in sources.mr] == ["mr.nii.gz", "mr.nii.gz"]


def test_detects_the_pairs_layout_and_pairs_by_name(tmp_path):
    for name in ("b.nii.gz", "a.nii.gz"):
        write_image(vol(), tmp_path / "mr" / name)
        write_image(vol(value=-1000.0), tmp_path / "ct" / name)
    assert detect_layout(tmp_path) == "pairs"
    sources = collect_sources(DataConfig(root=str(tmp_path)))
    assert sources.paired and sources.layout == "pairs" and sources.cases == ["a.nii.gz", "b.nii.gz"]
    assert [(m.parent.name, m.name, c.parent.name, c.name) for m, c in zip(sources.mr, sources.ct)] == [
        ("mr", "a.nii.gz", "ct", "a.nii.gz"), ("mr", "b.nii.gz", "ct", "b.nii.gz")]
    write_image(vol(), tmp_path / "ct" / "c.nii.gz")
    with pytest.raises(SynthctError, match="unmatched: c.nii.gz"):
        collect_sources(DataConfig(root=str(tmp_path)))


def test_an_unpaired_layout_is_refused_as_data_pairs(tmp_path):
    from synthct.data.pairs import pair_sources

    for name in ("trainA", "trainB"):
        write_image(vol(), tmp_path / name / "0.nii.gz")
    with pytest.raises(SynthctError, match="data.pairs needs paired cases"):
        pair_sources(tmp_path)


def test_unknown_layout_names_the_folder(tmp_path):
    (tmp_path / "random").mkdir()
    with pytest.raises(SynthctError) as err:
        detect_layout(tmp_path)
    assert err.value.path == str(tmp_path)


def test_geometry_mismatch_names_the_file(tmp_path):
    synthrad(tmp_path, spacing=(1.0, 1.0, 3.0))
    with pytest.raises(SynthctError, match="geometry differs") as err:
        collect_sources(DataConfig(root=str(tmp_path)))
    assert err.value.path.endswith("mr.nii.gz")


def test_paired_folders_need_equal_counts(tmp_path):
    for i in range(2):
        write_image(vol(), tmp_path / "mr" / f"{i}.nii.gz")
    write_image(vol(), tmp_path / "ct" / "0.nii.gz")
    cfg = DataConfig(mr=str(tmp_path / "mr"), ct=str(tmp_path / "ct"), paired=True)
    with pytest.raises(SynthctError, match="2 MR and 1 CT"):
        collect_sources(cfg)
    cfg.paired = False
    assert len(collect_sources(cfg).mr) == 2


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "mr").mkdir()
    write_image(vol(), tmp_path / "ct" / "0.nii.gz")
    with pytest.raises(SynthctError, match="no images found") as err:
        collect_sources(DataConfig(mr=str(tmp_path / "mr"), ct=str(tmp_path / "ct")))
    assert err.value.path == str(tmp_path / "mr")
    with pytest.raises(SynthctError, match="no such folder"):
        collect_sources(DataConfig(mr=str(tmp_path / "nope"), ct=str(tmp_path / "ct")))
    (tmp_path / "cg" / "trainA").mkdir(parents=True)
    (tmp_path / "cg" / "trainB").mkdir()
    with pytest.raises(SynthctError, match="no images found"):
        collect_sources(DataConfig(root=str(tmp_path / "cg")))
