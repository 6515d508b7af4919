import numpy as np
import pytest
import torch

import synthct.data.slices as slices_module
from synthct.config import DataConfig
from synthct.data.layouts import Sources
from synthct.data.slices import SliceDataset, fit_layout
from synthct.errors import SynthctError
from synthct.io.image import write_image
from synthct.io.volume import Volume


def ct_volume(z=5, y=12, x=16):
    """A body box whose slice s holds HU 100*s, so slices are identifiable after windowing."""
    array = np.full((z, y, x), -1000.0, np.float32)
    for s in range(z):
        array[s, 2:-2, 2:-2] = 100.0 * s
    return array


def mr_volume(z=5, y=12, x=16, seed=0):
    rng = np.random.default_rng(seed)
    array = np.zeros((z, y, x), np.float32)
    array[:, 2:-2, 2:-2] = rng.uniform(200, 800, (z, y - 4, x - 4))
    return array


@pytest.fixture
def data(tmp_path):
    mr, ct = [], []
    for i in range(2):
        mr.append(write_image(Volume(mr_volume(seed=i), format="nifti"), tmp_path / "mr" / f"{i}.nii.gz"))
        ct.append(write_image(Volume(ct_volume(z=5 + i), format="nifti"), tmp_path / "ct" / f"{i}.nii.gz",
                              dtype="int16"))
    return Sources(mr, ct, [None, None], ["0", "1"], "folders", False)


def config(**changes):
    base = dict(size=16, flip=False, affine=0.0, resize="none", min_body_fraction=0.1)
    base.update(changes)
    return DataConfig(**base)


def test_shapes_ranges_and_mappings(data):
    ds = SliceDataset(data, config(size=20, resize="fit", affine=10.0, flip=True))
    assert (ds.n_mr, ds.n_ct, len(ds)) == (10, 11, 11)
    assert ds.intensity_mode == "hu"
    for i in range(len(ds)):
        item = ds[i]
        for modality in ("mr", "ct"):
            x = item[modality]
            assert x.shape == (1, 20, 20) and x.dtype == torch.float32
            assert -1.0 <= x.min() and x.max() <= 1.0
    assert ds.mappings["ct"] == {"kind": "ct_window", "lo": -1024.0, "hi": 3000.0}
    mr = ds.mappings["mr"]
    assert mr["kind"] == "mr_percentile" and 200 <= mr["lo"] < mr["hi"] <= 800


def test_25d_neighbours_and_edge_replication(data):
    same_grid = Sources(data.ct, data.ct, [None, None], ["0", "1"], "folders", True)
    ds = SliceDataset(same_grid, config(slices=3), paired=True)
    window = lambda hu: 2 * (hu + 1024) / 4024 - 1  # noqa: E731
    centre_values = []
    for i in range(5):  # the first volume, slices 0..4
        ct = ds[i]["ct"]
        assert ct.shape == (3, 16, 16)
        values = [float(ct[c, 8, 8]) for c in range(3)]
        expected = [window(100.0 * s) for s in (max(i - 1, 0), i, min(i + 1, 4))]
        assert values == pytest.approx(expected, abs=1e-5)
        centre_values.append(values[1])
    assert centre_values == sorted(centre_values)


def test_unpaired_partners_change_with_epoch_and_repeat_for_a_seed(data):
    ds = SliceDataset(data, config(), seed=3)
    first = [ds.partners(i) for i in range(len(ds))]
    ds.set_epoch(1)
    second = [ds.partners(i) for i in range(len(ds))]
    assert first != second
    again = SliceDataset(data, config(), seed=3)
    again.set_epoch(1)
    assert [again.partners(i) for i in range(len(again))] == second
    assert sorted(c for _, c in second) == list(range(ds.n_ct))  # every CT slice once per epoch


def test_augmentation_is_deterministic_per_seed_epoch_index(data):
    cfg = config(affine=8.0, flip=True)
    a, b = SliceDataset(data, cfg, seed=1), SliceDataset(data, cfg, seed=1)
    a.set_epoch(2), b.set_epoch(2)
    assert torch.equal(a[3]["mr"], b[3]["mr"]) and torch.equal(a[3]["ct"], b[3]["ct"])
    b.set_epoch(3)
    assert any(not torch.equal(a[i]["mr"], b[i]["mr"]) for i in range(len(a)))


def test_paired_keeps_alignment_under_augmentation(tmp_path):
    # The same 8-bit volume as MR and CT: identical mappings, so aligned items must be equal.
    paths = []
    for i in range(2):
        array = np.zeros((4, 12, 16), np.float32)
        array[:, 2:10, 2:14] = 100.0 + 20 * i
        array[:, 3:6, 3:5] = 250.0  # an asymmetric marker
        paths.append(write_image(Volume(array, format="nifti"), tmp_path / f"{i}.nii.gz", dtype="uint8"))
    sources = Sources(paths, list(paths), [None, None], ["0", "1"], "folders", True)
    cfg = config(affine=10.0, flip=True, resize="fit", size=24)
    paired = SliceDataset(sources, cfg, paired=True, seed=5)
    unpaired = SliceDataset(sources, cfg, paired=False, seed=5)
    assert paired.intensity_mode == "8bit"
    for epoch in range(2):
        paired.set_epoch(epoch)
        unpaired.set_epoch(epoch)
        for i in range(len(paired)):
            assert torch.equal(paired[i]["mr"], paired[i]["ct"])
        assert any(not torch.equal(unpaired[i]["mr"], unpaired[i]["ct"]) for i in range(len(unpaired)))


def test_cache_serves_later_epochs_without_reading_files(data, monkeypatch, tmp_path):
    ds = SliceDataset(data, config(cache="mmap"), cache_dir=tmp_path / "cache")
    before = [ds[i] for i in range(len(ds))]

    def no_reads(path):
        raise AssertionError(f"read {path} after the cache was built")

    monkeypatch.setattr(slices_module, "read_image", no_reads)
    ds.set_epoch(0)
    for i, item in enumerate(before):
        assert torch.equal(ds[i]["mr"], item["mr"])
    ds.set_epoch(1)
    for i in range(len(ds)):
        ds[i]
    assert (tmp_path / "cache" / "slices_mr.f32").stat().st_size == ds.n_mr * 16 * 16 * 4


def test_memory_and_mmap_caches_agree(data, tmp_path):
    memory = SliceDataset(data, config(resize="crop", size=8), seed=2)
    mapped = SliceDataset(data, config(resize="crop", size=8, cache="mmap"), seed=2, cache_dir=tmp_path)
    for i in range(len(memory)):
        assert torch.equal(memory[i]["ct"], mapped[i]["ct"])
        assert memory[i]["ct"].shape == (1, 8, 8)


def test_eight_bit_pictures(tmp_path):
    paths = {}
    for modality in ("mr", "ct"):
        picture = np.zeros((1, 10, 12), np.float32)
        picture[0, 2:8, 2:10] = 200.0
        paths[modality] = [write_image(Volume(picture, is_2d=True, format="png"),
                                       tmp_path / modality / f"{i}.png") for i in range(3)]
    ds = SliceDataset(Sources(paths["mr"], paths["ct"], [None] * 3, [], "folders", False), config(size=12))
    assert ds.intensity_mode == "8bit" and len(ds) == 3
    assert ds.mappings == {"mr": {"kind": "eight_bit"}, "ct": {"kind": "eight_bit"}}
    assert float(ds[0]["ct"][0, 5, 5]) == pytest.approx(200 / 127.5 - 1)


def test_bad_settings_are_one_line_errors(data):
    with pytest.raises(SynthctError, match="odd"):
        SliceDataset(data, config(slices=2))
    with pytest.raises(SynthctError, match="cache folder"):
        SliceDataset(data, config(cache="mmap"))
    with pytest.raises(SynthctError, match="body fraction"):
        SliceDataset(data, config(min_body_fraction=0.99))


def test_fit_layout_keeps_physical_aspect():
    assert fit_layout((100, 200), (1.0, 1.0), 64) == (32, 64, 16, 0)
    assert fit_layout((100, 100), (2.0, 1.0), 64) == (64, 32, 0, 16)


def test_body_masks_travel_with_their_slices_through_resize_flip_and_rotation(data):
    plain = SliceDataset(data, config(size=20, resize="fit", affine=10.0, flip=True), seed=3)
    masked = SliceDataset(data, config(size=20, resize="fit", affine=10.0, flip=True), seed=3, body_masks=True)
    assert "mr_body" not in plain[0]
    flipped_or_rotated = 0
    for i in range(len(masked)):
        item, same = masked[i], plain[i]
        for modality in ("mr", "ct"):
            assert torch.equal(item[modality], same[modality])  # masks change nothing else
            body = item[f"{modality}_body"]
            assert body.shape == item[modality].shape and set(body.unique().tolist()) <= {0.0, 1.0}
            # the body is the box brighter than air: the mask covers it up to its partial-volume
            # rim and nothing beyond, wherever resizing, flips and rotation put it
            x = item[modality]
            rim_off = -torch.nn.functional.max_pool2d(-(x > -0.9).float()[None], 3, 1, 1)[0]
            assert not ((rim_off == 1) & (body == 0)).any(), (i, modality)
            assert body.mean() > 0.25
            if modality == "ct":  # (the MR's darkest body voxels map to air's -1 too)
                assert not ((x == -1) & (body == 1)).any(), i
            flipped_or_rotated += int(not torch.equal(body, torch.flip(body, dims=(-1,))))
    assert flipped_or_rotated > 0
