import csv
import json

import numpy as np
import pytest

from synthct.cli import main
from synthct.errors import SynthctError
from synthct.eval.evaluate import evaluate_cases
from synthct.eval.metrics import bone_agreement, hu_metrics
from synthct.io.image import write_image
from synthct.io.volume import Volume


def head_ct(seed: int, shape=(8, 24, 24)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    head = ((y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2) <= (shape[1] / 3) ** 2
    return np.where(head, rng.normal(40, 30, shape), -1000.0).astype(np.float32)


def write(array, path):
    write_image(Volume(np.asarray(array, np.float32)), path)


def synthrad_layout(root, cases, with_mask=True, pred_name="sct"):
    ref_dir, pred_dir = root / "ref", root / "pred"
    arrays = {}
    for i, case in enumerate(cases):
        ct = head_ct(i)
        pred = ct + np.float32(10 * (i + 1))
        mask = ct > -500
        write(ct, ref_dir / case / "ct.nii.gz")
        if with_mask:
            write(mask, ref_dir / case / "mask.nii.gz")
        write(pred, pred_dir / case / f"{pred_name}.mha")
        arrays[case] = (pred, ct, mask)
    return pred_dir, ref_dir, arrays


def test_case_folders_with_masks_beside_reference(tmp_path):
    pred_dir, ref_dir, arrays = synthrad_layout(tmp_path, ["a", "b"])
    result = evaluate_cases(pred_dir, ref_dir)
    assert result.mode == "hu" and result.complete
    assert [row["case"] for row in result.rows] == ["a", "b"]
    for row in result.rows:
        pred, ct, mask = arrays[row["case"]]
        expected = hu_metrics(pred, ct, mask)
        for name in ("mae", "me", "psnr", "ssim"):
            assert row[name] == pytest.approx(expected[name], rel=1e-6)
        assert row["mask"] == "file"
    assert result.rows[1]["me"] == pytest.approx(20.0, abs=1e-3)
    summary = result.summary()
    assert summary["metrics"]["me"]["mean"] == pytest.approx(15.0, abs=1e-3)
    assert summary["metrics"]["me"]["n"] == 2


def test_flat_layout_with_mask_dir_and_computed_mask(tmp_path):
    ct = head_ct(0)
    pred = ct.copy()
    pred[ct < -500] += 300.0  # errors only outside the body
    write(ct, tmp_path / "ref" / "case1.nii.gz")
    write(pred, tmp_path / "pred" / "case1.nii.gz")
    write(ct > -500, tmp_path / "mask" / "case1.nii.gz")
    with_dir = evaluate_cases(tmp_path / "pred", tmp_path / "ref", tmp_path / "mask")
    assert with_dir.rows[0]["mae"] == 0.0 and with_dir.rows[0]["mask"] == "file"
    computed = evaluate_cases(tmp_path / "pred", tmp_path / "ref")
    assert computed.rows[0]["mask"] == "computed"
    assert computed.rows[0]["mae"] == 0.0


def test_translate_outputs_named_case_sct_match_their_references(tmp_path):
    for i, case in enumerate(("p1", "p2")):
        ct = head_ct(i)
        write(ct, tmp_path / "ref" / f"{case}.nii.gz")
        write(ct + 5.0 * (i + 1), tmp_path / "pred" / f"{case}_sct.nii.gz")
    result = evaluate_cases(tmp_path / "pred", tmp_path / "ref")
    assert result.complete and not result.unmatched_predictions
    assert [(row["case"], round(row["me"], 3)) for row in result.rows] == [("p1", 5.0), ("p2", 10.0)]
    # A prediction named exactly like its reference keeps precedence over p1_sct.
    write(head_ct(0), tmp_path / "pred" / "p1.nii.gz")
    result = evaluate_cases(tmp_path / "pred", tmp_path / "ref")
    assert result.rows[0]["me"] == 0.0 and result.unmatched_predictions == ["p1_sct"]


def test_missing_prediction_reported_and_exit_nonzero(tmp_path, capsys):
    pred_dir, ref_dir, _ = synthrad_layout(tmp_path, ["a", "b"], pred_name="ct")
    (pred_dir / "b" / "ct.mha").unlink()
    write(head_ct(5), pred_dir / "stray.nii.gz")
    out = tmp_path / "out"
    code = main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out)])
    assert code != 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missing"] == ["b"]
    assert summary["unmatched_predictions"] == ["stray"]
    assert summary["n_cases"] == 1
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["case"] for r in rows] == ["a"]
    captured = capsys.readouterr()
    assert "b" in captured.err and "mae" in captured.out


def test_cli_writes_outputs_and_refuses_to_overwrite(tmp_path, capsys):
    pred_dir, ref_dir, _ = synthrad_layout(tmp_path, ["a"])
    out = tmp_path / "out"
    args = ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "hu" and set(summary["metrics"]) == {"mae", "me", "psnr", "ssim", "bone_dice",
                                                                   "bone_invented", "bone_missed"}
    assert summary["bone"] == {"threshold_hu": 250.0, "tolerance_mm": 2.0}
    assert summary["metrics"]["mae"]["mean"] == pytest.approx(10.0, abs=1e-3)
    before = (out / "metrics.csv").read_text()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "metrics.csv").read_text() == before
    assert main(args + ["--overwrite"]) == 0


def skull_case(shift_x: int = 0, blob: bool = False, x_spacing: float = 1.0):
    """A head with a bone plate (1000 HU); the synthetic one has the plate moved by ``shift_x``
    voxels along x and, with ``blob``, an extra bone blob 4-5 voxels beyond the real plate in x."""
    ct = head_ct(0, shape=(6, 32, 32))
    ct[:, 10:22, 12:15] = 1000.0
    sct = head_ct(1, shape=(6, 32, 32))
    sct[:, 10:22, 12 + shift_x:15 + shift_x] = 1000.0
    if blob:
        sct[:, 14:18, 18:20] = 900.0  # 4 and 5 voxels from the nearest real bone (x = 14)
    spacing = (x_spacing, 1.0, 2.0)  # (x, y, z) as Volume keeps it
    return Volume(sct, spacing=spacing), Volume(ct, spacing=spacing)


@pytest.mark.parametrize("x_spacing,invented", [(1.0, True), (0.3, False)])
def test_hu_evaluation_scores_bone_placement_in_millimetres(tmp_path, x_spacing, invented):
    sct, ct = skull_case(shift_x=1, blob=True, x_spacing=x_spacing)
    write_image(ct, tmp_path / "ref" / "c1" / "ct.nii.gz")
    write_image(sct, tmp_path / "pred" / "c1" / "sct.nii.gz")
    row = evaluate_cases(tmp_path / "pred", tmp_path / "ref").rows[0]
    mask = ct.array > -500
    expected = bone_agreement(sct.array, ct.array, mask, 250.0, 2.0, spacing=(2.0, 1.0, x_spacing))
    for name in ("bone_dice", "bone_invented", "bone_missed"):
        assert row[name] == pytest.approx(expected[name])
    plate, blob_voxels = 6 * 12 * 3, 6 * 4 * 2
    assert row["bone_dice"] == pytest.approx(2 * 6 * 12 * 2 / (2 * plate + blob_voxels))
    assert row["bone_missed"] == 0.0  # the real plate is 1 voxel from the synthetic one
    # The blob lies 4-5 voxels from real bone along x: 4-5 mm is invented, 1.2-1.5 mm (0.3-mm voxels) is not.
    assert row["bone_invented"] == pytest.approx(blob_voxels / (plate + blob_voxels) if invented else 0.0)


def test_cases_without_bone_leave_the_shares_undefined_not_zero(tmp_path, capsys):
    for case, sct_has_bone in (("bony", True), ("soft", False)):
        sct, ct = skull_case()
        if not sct_has_bone:
            sct = sct.with_array(np.minimum(sct.array, 100.0))
        write_image(ct, tmp_path / "ref" / case / "ct.nii.gz")
        write_image(sct, tmp_path / "pred" / case / "sct.nii.gz")
    out = tmp_path / "out"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    invented = summary["metrics"]["bone_invented"]
    assert invented == {"mean": 0.0, "std": 0.0, "n": 1, "n_undefined": 1}
    assert summary["metrics"]["bone_missed"]["mean"] == pytest.approx(0.5)  # all of it in "soft", none in "bony"
    assert "1 undefined" in capsys.readouterr().out
    rows = {r["case"]: r for r in csv.DictReader(open(out / "metrics.csv"))}
    assert rows["soft"]["bone_invented"] == "nan" and float(rows["soft"]["bone_dice"]) == 0.0


def test_bone_threshold_and_tolerance_are_options_recorded_in_the_summary(tmp_path, capsys):
    sct, ct = skull_case(shift_x=1, blob=True)  # the blob is 900 HU, 4-5 mm from real bone
    write_image(ct, tmp_path / "ref" / "c1" / "ct.nii.gz")
    write_image(sct, tmp_path / "pred" / "c1" / "sct.nii.gz")
    base = ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref")]
    for name, options, invented in (("default", [], True), ("dense", ["--bone-hu", "950"], False),
                                    ("lenient", ["--bone-tolerance-mm", "5"], False)):
        assert main(base + ["--out", str(tmp_path / name)] + options) == 0
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert (summary["metrics"]["bone_invented"]["mean"] > 0) == invented
    assert summary["bone"] == {"threshold_hu": 250.0, "tolerance_mm": 5.0}
    assert json.loads((tmp_path / "dense" / "summary.json").read_text())["bone"]["threshold_hu"] == 950.0
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "bad"), "--bone-tolerance-mm", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bone tolerance must be 0 mm or more, got -1.0" in err
    assert not (tmp_path / "bad").exists()


def test_shape_mismatch_names_the_file(tmp_path):
    write(head_ct(0), tmp_path / "ref" / "x.nii.gz")
    write(head_ct(0, shape=(8, 24, 20)), tmp_path / "pred" / "x.nii.gz")
    with pytest.raises(SynthctError) as info:
        evaluate_cases(tmp_path / "pred", tmp_path / "ref")
    assert "x.nii.gz" in str(info.value) and "shape" in str(info.value)


def test_eight_bit_pictures_auto_mode_with_head_mask(tmp_path):
    yy, xx = np.mgrid[:48, :48]
    ref = np.where((yy - 24) ** 2 + (xx - 24) ** 2 <= 15**2, 150, 0).astype(np.float32)[None]
    pred = np.clip(ref + 5, 0, 255)
    write_image(Volume(ref, is_2d=True), tmp_path / "ref" / "s1.png")
    write_image(Volume(pred, is_2d=True), tmp_path / "pred" / "s1.png")
    result = evaluate_cases(tmp_path / "pred", tmp_path / "ref")
    assert result.mode == "8bit"
    row = result.rows[0]
    assert row["head_me"] == 5.0 and row["mae"] == 5.0 and row["mask"] == "computed"
    assert set(result.summary()["metrics"]) == {"mae", "psnr", "ssim", "head_mae", "head_psnr", "head_ssim", "head_me"}


def test_no_references_is_a_user_error(tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    with pytest.raises(SynthctError, match="no reference"):
        evaluate_cases(tmp_path / "pred", tmp_path / "ref")
