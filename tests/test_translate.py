"""Translation: exact geometry and HU, 2.5D stacking, tiling, cycle QA, and the translate CLI's
batch robustness and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from pydicom.data import get_testdata_file

from synthct.cli import main
from synthct.data.intensity import CTWindow, MRPercentile
from synthct.data.phantom import make_phantom
from synthct.models.saved import generator_architecture, save_generator
from synthct.errors import SynthctError
from synthct.io.image import read_image, write_image
from synthct.io.volume import Volume
from synthct.models.generators import build_generator
from synthct.translate.tiling import raised_cosine_ramp
from synthct.translate.translator import TorchRunner, Translator

OBLIQUE = tuple(sitk.VersorRigid3DTransform((0.1, -0.2, 0.3, 0.927)).GetMatrix())
MAPPINGS = {"ct": CTWindow().to_dict(), "mr": MRPercentile(lo=0.0, hi=1000.0).to_dict()}


def make_run(folder: Path, directions=("mr2ct", "ct2mr"), slices: int = 1, size: int = 32, extra: dict | None = None) -> Path:
    """A run folder with tiny randomly initialised generators (meaningless output, real pipeline)."""
    torch.manual_seed(0)
    for direction in directions:
        source, target = direction.split("2")
        g = build_generator("resnet", slices, slices, ngf=4, n_blocks=1)
        meta = {"direction": direction, "source": source, "target": target, "model": "cyclegan",
                "architecture": generator_architecture(g, "resnet", slices, 4, 1), "slices": slices,
                "size": size, "axis": 0, "resize": "fit", "intensity_mode": "hu",
                "input_mapping": MAPPINGS[source], "output_mapping": MAPPINGS[target], "step": 7, "epoch": 1}
        save_generator(g, folder / f"generator_{direction}", meta | (extra or {}))
    return folder


def stub_meta(direction="mr2ct", slices=1, size=32, resize="fit", source_mapping="ct") -> dict:
    return {"direction": direction, "slices": slices, "size": size, "axis": 0, "resize": resize,
            "architecture": {"generator": "resnet"}, "intensity_mode": "hu",
            "input_mapping": MAPPINGS[source_mapping], "output_mapping": MAPPINGS["ct"], "step": 3}


def identity(batch: np.ndarray) -> np.ndarray:
    return batch


def oblique_volume(shape=(5, 20, 24), low=-1000, high=2000) -> Volume:
    rng = np.random.default_rng(0)
    array = rng.uniform(low, high, size=shape).round().astype(np.float32)
    return Volume(array=array, spacing=(0.7, 1.3, 3.1), origin=(-12.5, 40.25, 7.0), direction=OBLIQUE,
                  format="nifti")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


# ---------------------------------------------------------------- pipeline


@pytest.mark.parametrize("resample", ["native", "fit", "auto"])
def test_oblique_anisotropic_nifti_keeps_exact_geometry_and_int16(tmp_path, run_dir, resample):
    vol = oblique_volume()
    src = write_image(vol, tmp_path / "in" / "case 1.nii.gz", dtype="int16")
    rc = main(["translate", "--model", str(run_dir), "--direction", "ct2mr", str(src), "--out",
               str(tmp_path / "out"), "--resample", resample, "--device", "cpu"])
    assert rc == 0
    smr = read_image(tmp_path / "out" / "case_1_smr.nii.gz")
    assert smr.same_geometry(vol, tol=1e-6) and smr.source_dtype == "float32"
    rc = main(["translate", "--model", str(run_dir), "--direction", "mr2ct", str(tmp_path / "out"), "--out",
               str(tmp_path / "sct"), "--resample", resample, "--device", "cpu"])
    assert rc == 0
    sct = read_image(tmp_path / "sct" / "case_1_smr_sct.nii.gz")
    assert sct.same_geometry(vol, tol=1e-6) and sct.source_dtype == "int16"
    assert -1024 <= sct.array.min() and sct.array.max() <= 3000


def test_identity_generator_returns_input_hu_inside_window():
    vol = oblique_volume(low=-1500, high=3500)
    translator = Translator.from_runner(identity, stub_meta(), batch_size=2, resample="native")
    out = translator.translate_volume(vol, mask="none")
    assert out.array.dtype == np.float32 and out.same_geometry(vol)
    inside = (vol.array >= -1024) & (vol.array <= 3000)
    assert np.abs(out.array - vol.array)[inside].max() < 0.5
    np.testing.assert_allclose(out.array[vol.array < -1024], -1024, atol=0.5)
    np.testing.assert_allclose(out.array[vol.array > 3000], 3000, atol=0.5)


def test_fit_resampling_of_identity_is_close_and_exactly_shaped():
    vol = oblique_volume(shape=(2, 48, 40))
    vol.array[:] = np.linspace(-500, 500, 40, dtype=np.float32)[None, None, :]  # smooth: survives resizing
    translator = Translator.from_runner(identity, stub_meta(size=16), resample="fit")
    assert translator.spatial_mode((48, 40), (1.3, 0.7)) == "fit"
    out = translator.translate_volume(vol)
    assert out.same_geometry(vol)
    assert np.abs(out.array - vol.array)[:, 4:-4, 4:-4].max() < 40.0


def test_auto_resampling_native_near_training_size_fit_far_from_it():
    translator = Translator.from_runner(identity, stub_meta(size=256))
    assert translator.spatial_mode((256, 256), (1.0, 1.0)) == "native"
    assert translator.spatial_mode((240, 256), (1.0, 1.0)) == "native"
    assert translator.spatial_mode((512, 512), (0.5, 0.5)) == "fit"
    assert translator.spatial_mode((256, 256), (1.0, 2.0)) == "fit"  # anisotropic pixels
    assert Translator.from_runner(identity, stub_meta(resize="crop")).spatial_mode((512, 512), (1, 1)) == "native"


def test_two_and_a_half_d_stacks_neighbours_in_order_and_keeps_centre():
    vol = Volume(array=np.arange(6, dtype=np.float32)[:, None, None].repeat(8, 1).repeat(8, 2) * 100)

    def previous_slice_in_centre(batch):  # (N, 3, H, W): channel 0 is slice i-1
        return np.repeat(batch[:, :1], 3, axis=1)

    translator = Translator.from_runner(previous_slice_in_centre, stub_meta(slices=3, size=8), batch_size=4)
    out = translator.translate_volume(vol)
    np.testing.assert_allclose(out.array[:, 0, 0], [0, 0, 100, 200, 300, 400], atol=0.5)


def test_tiled_equals_untiled_for_limited_receptive_field():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(),
                              torch.nn.Conv2d(4, 1, 3, padding=1), torch.nn.Tanh())
    runner = TorchRunner(net)
    vol = Volume(array=np.random.default_rng(1).uniform(-1000, 1500, (3, 70, 90)).astype(np.float32))
    meta = stub_meta(size=80, resize="none")
    whole = Translator.from_runner(runner, meta, tile=0).translate_volume(vol)
    tiled = Translator.from_runner(runner, meta, tile=32).translate_volume(vol)
    np.testing.assert_allclose(tiled.array, whole.array, atol=1e-3)  # HU; float32 rounding only


@pytest.mark.parametrize("tile", [1, 8, 15, -4])
def test_a_tile_too_small_to_overlap_is_a_clear_error(tile):
    with pytest.raises(SynthctError, match=f"tile size must be 0 \\(never tile\\) or at least 16 pixels, got {tile}"):
        Translator.from_runner(TorchRunner(torch.nn.Identity()), stub_meta(size=80, resize="none"), tile=tile)


def test_the_smallest_tile_still_tiles_exactly():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    vol = Volume(array=np.random.default_rng(2).uniform(-1000, 1500, (1, 40, 44)).astype(np.float32))
    meta = stub_meta(size=40, resize="none")
    whole = Translator.from_runner(TorchRunner(net), meta, tile=0).translate_volume(vol)
    tiled = Translator.from_runner(TorchRunner(net), meta, tile=16).translate_volume(vol)
    np.testing.assert_allclose(tiled.array, whole.array, atol=1e-2)


def test_blend_ramp_is_zero_at_the_tile_border_and_rises_smoothly():
    ramp = raised_cosine_ramp(16)
    assert ramp[:4].max() == 0 and ramp[-4:].min() == 1
    assert np.all(np.diff(ramp) >= 0)


def test_mask_sets_air_outside_body():
    vol = Volume(array=np.full((2, 16, 16), 40.0, np.float32))
    mask = np.zeros(vol.shape, bool)
    mask[:, 4:12, 4:12] = True
    out = Translator.from_runner(identity, stub_meta(size=16)).translate_volume(vol, mask=mask)
    assert np.all(out.array[~mask] == -1000)
    np.testing.assert_allclose(out.array[mask], 40, atol=0.5)


def test_air_outside_the_body_by_default_and_none_turns_it_off():
    array = np.full((2, 16, 16), -800.0, np.float32)  # outside the body (below -500 HU)
    array[:, 4:12, 4:12] = 40.0
    vol = Volume(array=array)
    for meta in (stub_meta(size=16), stub_meta(size=16) | {"body_masked": True}):
        masked = Translator.from_runner(identity, meta).translate_volume(vol)
        assert np.all(masked.array[array == -800] == -1000)
        np.testing.assert_allclose(masked.array[array == 40], 40, atol=0.5)
        raw = Translator.from_runner(identity, meta).translate_volume(vol, mask="none")
        np.testing.assert_allclose(raw.array[array == -800], -800, atol=0.5)


FLIPPED = {"config": {"data": {"flip": True}}}


def add_column_ramp(batch: np.ndarray) -> np.ndarray:
    """A generator that is not mirror-symmetric: it adds 0.01 per column index."""
    return batch + 0.01 * np.arange(batch.shape[-1], dtype=np.float32)


@pytest.mark.parametrize("resample", ["native", "fit"])
def test_flip_tta_averages_the_mirrored_translation_of_the_mirror_image(resample):
    # ramp + mirrored ramp is the constant 0.01 * (W - 1) in every column, so the average adds
    # its half everywhere; a left-right asymmetric input keeps its asymmetry.
    array = np.tile(np.linspace(-900, 900, 16, dtype=np.float32), (3, 16, 1))
    vol = Volume(array=array)
    plain = Translator.from_runner(add_column_ramp, stub_meta(size=16) | FLIPPED, resample=resample, tta="none")
    expected = array + 0.5 * 0.01 * 15 * (3000 + 1024) / 2  # half the constant, model range -> HU
    for tta in ("flip", "auto"):  # auto: flip, since this model was trained with flips
        translator = Translator.from_runner(add_column_ramp, stub_meta(size=16) | FLIPPED, resample=resample, tta=tta)
        np.testing.assert_allclose(translator.translate_volume(vol, mask="none").array, expected, atol=0.5)
    ramp_hu = np.arange(16) * 0.01 * (3000 + 1024) / 2
    np.testing.assert_allclose(plain.translate_volume(vol, mask="none").array, array + ramp_hu, atol=0.5)
    unflipped = Translator.from_runner(add_column_ramp, stub_meta(size=16), resample=resample)  # auto: none
    np.testing.assert_allclose(unflipped.translate_volume(vol, mask="none").array, array + ramp_hu, atol=0.5)


def test_flip_tta_also_averages_the_cycle_qa_reconstruction():
    vol = Volume(array=np.zeros((2, 12, 12), np.float32))
    translator = Translator.from_runner(identity, stub_meta(size=12) | FLIPPED, backward=add_column_ramp,
                                        tta="flip")
    result = translator.translate_volume(vol, qa=True)
    np.testing.assert_allclose(result.cycle_error.array, 0.5 * 0.01 * 11 * (3000 + 1024) / 2, rtol=1e-4)
    assert result.summary.to_dict()["tta"] == "flip"


@pytest.mark.parametrize("meta, problem", [({"config": {"data": {"flip": False}}}, "trained without flips"),
                                           ({}, "does not record")])
def test_flip_tta_needs_a_model_trained_with_flips(meta, problem):
    with pytest.raises(SynthctError, match=problem):
        Translator.from_runner(identity, stub_meta() | meta, tta="flip")


def test_an_unknown_tta_is_a_clear_error():
    with pytest.raises(SynthctError, match="unknown test-time augmentation"):
        Translator.from_runner(identity, stub_meta() | FLIPPED, tta="rotate")


def test_translate_cli_flip_tta(tmp_path, run_dir, capsys):
    vol = oblique_volume(shape=(3, 16, 20))
    src = write_image(vol, tmp_path / "ct.nii.gz", dtype="int16")
    flipped_run = make_run(tmp_path / "run", extra=FLIPPED)
    outputs = {}
    for tta in ("none", "flip"):
        rc = main(["translate", "--model", str(flipped_run), "--direction", "ct2mr", str(src), "--out",
                   str(tmp_path / tta), "--tta", tta, "--device", "cpu", "--qa"])
        assert rc == 0
        outputs[tta] = read_image(tmp_path / tta / "ct_smr.nii.gz")
        assert outputs[tta].same_geometry(vol, tol=1e-6)
    assert not np.allclose(outputs["none"].array, outputs["flip"].array)
    capsys.readouterr()
    # A model that does not record its training flips: one line naming the problem, exit 2.
    rc = main(["translate", "--model", str(run_dir), "--direction", "ct2mr", str(src), "--out",
               str(tmp_path / "refused"), "--tta", "flip", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "--tta flip needs a model trained with mirrored slices" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "refused").exists()


def test_cycle_qa_reports_errors_in_source_units_and_flags_bad_slices():
    array = np.zeros((16, 12, 12), np.float32)
    array[5] = 500.0
    vol = Volume(array=array)

    def corrupt_bright_slices(batch):  # F(G(x)) = x + 0.1 where the slice is bright
        return batch + 0.1 * (batch.mean(axis=(1, 2, 3), keepdims=True) > -0.45)

    translator = Translator.from_runner(identity, stub_meta(size=12), backward=corrupt_bright_slices)
    result = translator.translate_volume(vol, qa=True)
    expected = 0.1 * (3000 + 1024) / 2  # model range -> HU
    np.testing.assert_allclose(result.cycle_error.array[5], expected, rtol=1e-4)
    assert result.cycle_error.array[np.arange(16) != 5].max() < 1e-3
    summary = result.summary.to_dict()
    assert summary["units"] == "HU" and summary["flagged_slices"] == [5]
    assert len(summary["per_slice_mean_error"]) == 16 and summary["step"] == 3
    fixed = translator.translate_volume(vol, qa=True, qa_threshold=expected + 1)
    assert fixed.summary.flagged_slices == []


def test_mr_input_is_fitted_per_volume():
    translator = Translator.from_runner(identity, stub_meta(source_mapping="mr"))
    mr = make_phantom(0, size=(16, 16, 8))[0]
    a = translator.source_mapping(Volume(array=mr))
    b = translator.source_mapping(Volume(array=mr * 3))
    assert a.fitted and b.fitted and b.hi == pytest.approx(3 * a.hi, rel=1e-5)


def test_an_mr_volume_masked_automatically_finds_its_body_once(monkeypatch):
    # The MR's body mask both fits its grey-level mapping and masks the output: one search.
    import synthct.data.mask as mask_module

    calls = []
    find = mask_module.body_mask
    monkeypatch.setattr(mask_module, "body_mask", lambda *a, **k: calls.append(a[1]) or find(*a, **k))
    mr = Volume(array=make_phantom(0, size=(16, 16, 8))[0])
    translator = Translator.from_runner(identity, stub_meta(source_mapping="mr"))
    masked = translator.translate_volume(mr, mask="auto")
    assert calls == ["mr"]
    unmasked = translator.translate_volume(mr, mask="none")
    assert calls == ["mr", "mr"]  # the mapping still needs it
    body = find(mr.array, "mr")
    np.testing.assert_array_equal(masked.array[body], unmasked.array[body])
    assert (masked.array[~body] == translator.air_value()).all()


def test_direction_mismatch_is_refused(run_dir):
    with pytest.raises(SynthctError, match="translates"):
        Translator(run_dir / "generator_ct2mr.safetensors", "mr2ct", device="cpu")


# ---------------------------------------------------------------- CLI


def test_ct_small_and_phantom_translate_both_directions_with_qa(tmp_path, run_dir):
    mr, ct, _ = make_phantom(3, size=(24, 24, 8))
    geometry = {"spacing": (1.5, 1.5, 2.5), "origin": (1.0, 2.0, 3.0)}
    mr_path = write_image(Volume(mr, **geometry), tmp_path / "mr.nii.gz")
    ct_path = write_image(Volume(ct, **geometry), tmp_path / "ct.nii.gz", dtype="int16")
    ct_small = get_testdata_file("CT_small.dcm")
    for direction, inputs in (("mr2ct", [mr_path, ct_small]), ("ct2mr", [ct_path, ct_small])):
        out = tmp_path / direction
        rc = main(["translate", "--model", str(run_dir), "--direction", direction, *map(str, inputs),
                   "--out", str(out), "--qa", "--device", "cpu", "--mask", "auto"])
        assert rc == 0
        tag = "sct" if direction == "mr2ct" else "smr"
        stem = "mr" if direction == "mr2ct" else "ct"
        for name in (stem, "CT_small"):
            result = read_image(out / f"{name}_{tag}.nii.gz")
            assert result.array.shape == read_image(out / f"{name}_cycle_error.nii.gz").array.shape
            qa = json.loads((out / f"{name}_qa.json").read_text())
            assert qa["direction"] == direction and qa["step"] == 7 and qa["mean_error_in_body"] >= 0
        assert read_image(out / f"CT_small_{tag}.nii.gz").array.shape == (1, 128, 128)


def test_missing_model_and_wrong_direction_give_one_line_errors(tmp_path, capsys):
    vol = write_image(oblique_volume(), tmp_path / "a.nii.gz", dtype="int16")
    assert main(["translate", "--model", str(tmp_path / "nope"), "--direction", "mr2ct", str(vol),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model not found" in err[0]
    one_way = make_run(tmp_path / "run", directions=("ct2mr",))
    assert main(["translate", "--model", str(one_way), "--direction", "mr2ct", str(vol),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ct2mr" in err[0]


def test_corrupt_input_among_good_ones_fails_at_the_end_others_written(tmp_path, run_dir, capsys):
    inputs = tmp_path / "in"
    for name in ("a", "c"):
        write_image(oblique_volume(), inputs / f"{name}.nii.gz", dtype="int16")
    (inputs / "b.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    rc = main(["translate", "--model", str(run_dir), "--direction", "ct2mr", str(inputs), "--out",
               str(tmp_path / "out"), "--device", "cpu"])
    assert rc == 2
    assert (tmp_path / "out" / "a_smr.nii.gz").is_file() and (tmp_path / "out" / "c_smr.nii.gz").is_file()
    assert not (tmp_path / "out" / "b_smr.nii.gz").exists()
    err = capsys.readouterr().err
    assert "b.nii.gz" in err and "1 input failed" in err


def test_existing_output_needs_overwrite(tmp_path, run_dir, capsys):
    src = write_image(oblique_volume(), tmp_path / "a.nii.gz", dtype="int16")
    args = ["translate", "--model", str(run_dir), "--direction", "ct2mr", str(src), "--out", str(tmp_path / "o"),
            "--device", "cpu"]
    assert main(args) == 0
    before = (tmp_path / "o" / "a_smr.nii.gz").read_bytes()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "o" / "a_smr.nii.gz").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0


def test_output_never_replaces_an_input_even_with_overwrite(tmp_path, run_dir, capsys):
    src = write_image(oblique_volume(), tmp_path / "a.nii.gz", dtype="int16")
    victim = write_image(oblique_volume(), tmp_path / "a_smr.nii.gz", dtype="int16")
    before = victim.read_bytes()
    rc = main(["translate", "--model", str(run_dir), "--direction", "ct2mr", str(src), str(victim),
               "--out", str(tmp_path), "--device", "cpu", "--overwrite"])
    assert rc == 2 and victim.read_bytes() == before
    assert "would replace an input" in capsys.readouterr().err


def test_two_inputs_of_the_same_name_get_their_own_translations_and_qa(tmp_path, run_dir):
    first = write_image(oblique_volume(), tmp_path / "one" / "scan.nii.gz", dtype="int16")
    second = write_image(oblique_volume(low=-500), tmp_path / "two" / "scan.nii.gz", dtype="int16")
    out = tmp_path / "out"
    rc = main(["translate", "--model", str(run_dir), "--direction", "ct2mr", str(first), str(second),
               "--out", str(out), "--device", "cpu", "--qa"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "scan_2_cycle_error.nii.gz", "scan_2_qa.json", "scan_cycle_error.nii.gz", "scan_qa.json",
        "scan_smr.nii.gz", "scan_smr_2.nii.gz"]
    assert json.loads((out / "scan_2_qa.json").read_text())["input"].endswith("two/scan.nii.gz")


def test_the_readme_tour_translate_then_evaluate_pairs_each_case(tmp_path, run_dir, capsys):
    for i, case in enumerate(("p1", "p2")):
        mr, ct, _ = make_phantom(i, size=(24, 24, 8))
        write_image(Volume(mr), tmp_path / "mr" / f"{case}.nii.gz")
        write_image(Volume(ct), tmp_path / "ct" / f"{case}.nii.gz", dtype="int16")
    assert main(["translate", "--model", str(run_dir), "--direction", "mr2ct", str(tmp_path / "mr"),
                 "--out", str(tmp_path / "sct"), "--device", "cpu"]) == 0
    assert main(["evaluate", "--pred", str(tmp_path / "sct"), "--ref", str(tmp_path / "ct"),
                 "--out", str(tmp_path / "eval")]) == 0
    rows = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["p1", "p2"]
    assert "no prediction" not in capsys.readouterr().err


@pytest.mark.parametrize("fmt, suffix", [("tiff", ".tif"), ("mhd", ".mhd")])
def test_translate_writes_tiff_and_metaimage_headers_on_request(tmp_path, run_dir, fmt, suffix):
    src = write_image(oblique_volume(shape=(1, 20, 24)), tmp_path / "a.nii.gz", dtype="int16")
    rc = main(["translate", "--model", str(run_dir), "--direction", "ct2mr", str(src), "--out",
               str(tmp_path / "o"), "--device", "cpu", "--format", fmt])
    assert rc == 0
    assert read_image(tmp_path / "o" / f"a_smr{suffix}").shape == (1, 20, 24)


def test_dicom_series_folder_name_is_sanitised(tmp_path, run_dir):
    from synthct.io.dicom_out import write_ct_series

    series = write_ct_series(oblique_volume(shape=(3, 16, 16)), tmp_path / "..evil name;$(x)")
    rc = main(["translate", "--model", str(run_dir), "--direction", "ct2mr", str(series), "--out",
               str(tmp_path / "out"), "--device", "cpu"])
    assert rc == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["evil_name_x_smr.nii.gz"]


def test_eight_bit_png_in_png_out(tmp_path):
    torch.manual_seed(0)
    g = build_generator("resnet", 1, 1, ngf=4, n_blocks=1)
    meta = {"direction": "mr2ct", "source": "mr", "target": "ct", "model": "cyclegan",
            "architecture": generator_architecture(g, "resnet", 1, 4, 1), "slices": 1, "size": 32, "axis": 0,
            "resize": "fit", "intensity_mode": "8bit", "input_mapping": {"kind": "eight_bit"},
            "output_mapping": {"kind": "eight_bit"}, "step": 1, "epoch": 1}
    save_generator(g, tmp_path / "run" / "generator_mr2ct", meta)
    picture = np.random.default_rng(0).integers(0, 256, (1, 32, 32)).astype(np.float32)
    src = write_image(Volume(array=picture, is_2d=True, format="png"), tmp_path / "slice.png")
    assert main(["translate", "--model", str(tmp_path / "run"), "--direction", "mr2ct", str(src),
                 "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    out = read_image(tmp_path / "out" / "slice_sct.png")
    assert out.is_2d and out.array.shape == (1, 32, 32) and out.source_dtype == "uint8"
