"""The AANLIB experiment scaffolding (benchmarks/aanlib_experiment.py) on a tiny fake data folder
with the real layout (CT/<id>.png, MRI/<id>.png, splits.csv); never the real data."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from synthct.errors import SynthctError
from synthct.eval.metrics import eight_bit_metrics, head_mask_8bit

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "aanlib_experiment.py"
SIZE = 32
CASES = {"20": "train", "200": "train", "160": "test"}
SLICES_PER_CASE = 4


def _load_script():
    spec = importlib.util.spec_from_file_location("aanlib_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["aanlib_experiment"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


exp = _load_script()


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


def _head(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An MR / CT pair: a disc of head with random texture on black."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    radius = rng.integers(9, 13)
    head = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < radius ** 2
    mr = np.where(head, rng.integers(40, 200, (SIZE, SIZE)), 0)
    ct = np.where(head, rng.integers(60, 256, (SIZE, SIZE)), rng.integers(0, 5, (SIZE, SIZE)))
    return mr, ct


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("aanlib")
    rng = np.random.default_rng(7)
    with open(root / "splits.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "case", "slice", "split"])
        for case, split in CASES.items():
            for s in range(3, 3 + SLICES_PER_CASE):
                slice_id = f"{case}{s:02d}"
                mr, ct = _head(rng)
                _write_png(root / "MRI" / f"{slice_id}.png", mr)
                _write_png(root / "CT" / f"{slice_id}.png", ct)
                writer.writerow([slice_id, case, s, split])
    return root


@pytest.fixture(scope="module")
def work(data_root, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("work")
    exp.prepare(data_root, work, seed=3)
    return work


def _bytes_by_name(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_prepare_shuffles_each_modality_and_hides_the_pairing(data_root, work):
    train_ids = [f"{c}{s:02d}" for c, split in CASES.items() if split == "train"
                 for s in range(3, 3 + SLICES_PER_CASE)]
    mr, ct = _bytes_by_name(work / "train_mr"), _bytes_by_name(work / "train_ct")
    assert len(mr) == len(ct) == len(train_ids)
    assert not set(mr) & set(f"{i}.png" for i in train_ids) and not set(ct) & set(f"{i}.png" for i in train_ids)
    # Same slices, other order: every training picture is there exactly once ...
    assert sorted(mr.values()) == sorted((data_root / "MRI" / f"{i}.png").read_bytes() for i in train_ids)
    assert sorted(ct.values()) == sorted((data_root / "CT" / f"{i}.png").read_bytes() for i in train_ids)
    # ... and the i-th MR and i-th CT in sorted order are not the pairs of the data set.
    pair_of = {(data_root / "MRI" / f"{i}.png").read_bytes(): (data_root / "CT" / f"{i}.png").read_bytes()
               for i in train_ids}
    kept = sum(pair_of[m] == c for m, c in zip(mr.values(), ct.values()))
    assert kept < len(train_ids) // 2
    # No test slice in training; the paired folders hold the true pairs under the same names.
    test_ids = [f"160{s:02d}" for s in range(3, 3 + SLICES_PER_CASE)]
    assert sorted(p.stem for p in (work / "test_mr").glob("*.png")) == sorted(test_ids)
    for name, data in _bytes_by_name(work / "train_pairs" / "mr").items():
        assert pair_of[data] == (work / "train_pairs" / "ct" / name).read_bytes()
    manifest = json.loads((work / "prepare.json").read_text())
    assert manifest["test_cases"] == ["160"] and manifest["train_cases"] == ["20", "200"]


def test_prepare_refuses_to_mix_with_an_earlier_preparation(data_root, work):
    with pytest.raises(SynthctError, match="already prepared"):
        exp.prepare(data_root, work)


def test_a_validation_fold_scores_held_out_training_cases_and_never_sees_the_test_split(data_root, tmp_path, capsys):
    fold = tmp_path / "fold"
    assert exp.main(["prepare", "--data", str(data_root), "--work", str(fold), "--holdout", "200"]) == 0
    assert "validation slices (cases 200)" in capsys.readouterr().out
    ids = {case: [f"{case}{s:02d}" for s in range(3, 3 + SLICES_PER_CASE)] for case in CASES}
    assert sorted(p.stem for p in (fold / "test_mr").glob("*.png")) == ids["200"]
    assert sorted(p.stem for p in (fold / "train_pairs" / "mr").glob("*.png")) == ids["20"]
    trained = sorted(_bytes_by_name(fold / "train_ct").values())
    assert trained == sorted((data_root / "CT" / f"{i}.png").read_bytes() for i in ids["20"])
    manifest = json.loads((fold / "prepare.json").read_text())
    assert manifest["holdout"] == ["200"] and manifest["test_cases"] == ["200"] and manifest["train_cases"] == ["20"]
    scored = exp.load_test_set(fold)
    assert all(item.validation for item in scored)
    assert "held-out training cases (validation) 200 (4 slices)" in exp.protocol(scored)
    exp.prepare(data_root, tmp_path / "test_fold")
    assert "the AANLIB test split 160 (4 slices)" in exp.protocol(exp.load_test_set(tmp_path / "test_fold"))
    for bad, problem in (("160", "held-out case 160 not in the train split"),
                         ("20,200", "leaves nothing to train on")):
        assert exp.main(["prepare", "--data", str(data_root), "--work", str(tmp_path / bad), "--holdout", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and problem in err and "splits.csv" in err
        assert not (tmp_path / bad).exists()


def test_bad_splits_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "splits.csv").write_text("id,case,split\n2004,20,train\n")
    with pytest.raises(SynthctError, match="missing column slice"):
        exp.read_splits(tmp_path)
    assert exp.main(["prepare", "--data", str(tmp_path), "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "splits.csv" in err


def test_baselines_follow_the_protocol(work):
    found = exp.baselines(work)["baselines"]
    test = exp.load_test_set(work)
    assert found["mr_as_ct"]["n_slices"] == len(test) == SLICES_PER_CASE
    per_slice = [eight_bit_metrics(t.mr, t.ct, head_mask_8bit(t.mr)) for t in test]
    assert found["mr_as_ct"]["means"]["head_mae"] == pytest.approx(np.mean([m["head_mae"] for m in per_slice]))
    # Per-slice means, not pooled pixels: the slices have different head sizes.
    pooled = np.mean(np.concatenate([np.abs(t.mr - t.ct)[t.head] for t in test]))
    assert found["mr_as_ct"]["means"]["head_mae"] != pytest.approx(pooled, abs=1e-9)
    constant = np.mean([np.abs(110 - t.ct[t.head]).mean() for t in test])
    assert found["constant_110"]["means"]["head_mae"] == pytest.approx(constant)
    oracle = found["constant_best_oracle"]["means"]["head_mae"]
    for grey in (0, 60, 110, 157, 200, 255):
        assert oracle <= np.mean([np.abs(grey - t.ct[t.head]).mean() for t in test]) + 1e-9


def test_histogram_matching_maps_the_head_onto_the_training_ct_grey_levels(work):
    test = exp.load_test_set(work)
    ct_pixels = exp.training_ct_head_pixels(work)
    matched = exp.histogram_matched(test, ct_pixels)
    for t in test:
        inside = matched[t.id][t.head]
        assert np.all(matched[t.id][~t.head] == 0)
        assert ct_pixels.min() <= inside.min() and inside.max() == pytest.approx(ct_pixels.max())
        # Monotone: brighter MR stays brighter.
        order = np.argsort(t.mr[t.head], kind="stable")
        assert np.all(np.diff(inside[order]) >= 0)
    inverted = exp.histogram_matched(test, ct_pixels, inverted=True)
    for t in test:
        inside = inverted[t.id][t.head]
        assert np.all(inverted[t.id][~t.head] == 0)
        # Monotone decreasing: brighter MR comes out darker, onto the same grey levels.
        order = np.argsort(t.mr[t.head], kind="stable")
        assert np.all(np.diff(inside[order]) <= 0)
        assert ct_pixels.min() <= inside.min() and inside.max() <= ct_pixels.max()


def test_snapshots_and_elapsed_minutes_are_found(tmp_path):
    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    for step in (200, 50):
        (run / "snapshots" / f"generator_mr2ct_step{step}.safetensors").write_bytes(b"w")
        (run / "snapshots" / f"generator_mr2ct_step{step}.json").write_text("{}")
    (run / "snapshots" / "generator_ct2mr_step50.safetensors").write_bytes(b"w")
    (run / "snapshots" / "generator_mr2ct_step75.safetensors").write_bytes(b"no sidecar")
    (run / "generator_mr2ct.safetensors").write_bytes(b"w")
    (run / "generator_mr2ct.json").write_text(json.dumps({"step": 300}))
    assert [(s, p.name) for s, p in exp.find_snapshots(run)] == [
        (50, "generator_mr2ct_step50.safetensors"), (200, "generator_mr2ct_step200.safetensors"),
        (300, "generator_mr2ct.safetensors")]
    (run / "log.csv").write_text("step,epoch,elapsed_s,lr\n1,0,1.5,0.1\n50,0,60.0,0.1\n")
    assert exp.elapsed_by_step(run / "log.csv") == {1: 1.5, 50: 60.0}
    with pytest.raises(SynthctError, match="no MR->CT generator"):
        exp.find_snapshots(tmp_path)


def test_table_holds_our_rows_baselines_and_the_published_numbers(work):
    table = exp.markdown_table([("synthct CycleGAN", "unpaired", {"head_mae": 70.04, "head_psnr": 9.0,
                                                                  "head_ssim": 0.3, "mae": 30.0, "psnr": 12.0,
                                                                  "ssim": 0.6})],
                               exp.baselines(work))
    lines = table.splitlines()
    assert lines[2].startswith("| synthct CycleGAN | unpaired | 70.0 | 9.0 | 0.30 |")
    assert any(line.startswith("| reference CycleGAN (published) | unpaired | 82.6 | 7.3 | 0.15 | 42.1 | 10.5 | 0.51")
               for line in lines)
    assert any(line.startswith("| MR as CT (published) | none | 84.1 | – |") for line in lines)
    assert any(line.startswith("| MR as CT | none |") for line in lines)
    assert len({line.count("|") for line in lines}) == 1


@pytest.mark.slow
def test_train_evaluate_curve_end_to_end(work, tmp_path, monkeypatch):
    run = tmp_path / "run"
    code = exp.train_run(work, "cyclegan", run, minutes=5.0, overrides=[
        "data.size=32", "model.ngf=4", "model.ndf=4", "model.blocks=1", "model.pool_size=2",
        "train.steps=3", "train.epochs=null", "train.precision=fp32", "train.sample_every=0",
        "train.checkpoint_every=0", "train.threads=1"])
    assert code == 0
    result = exp.evaluate(work, run, "tiny", device="cpu")
    assert result["generator"]["step"] == 3
    assert [row["id"] for row in result["per_slice"]] == [f"160{s:02d}" for s in range(3, 3 + SLICES_PER_CASE)]
    assert 0 <= result["means"]["head_mae"] <= 255
    # A generator replaced while it is scored (its training still exporting) is an error, not a
    # score recorded under the new weights' step and checksum.
    sidecar = run / "generator_mr2ct.json"
    original = sidecar.read_text(encoding="utf-8")
    scoring = exp.translate_test_set

    def replaced_meanwhile(*args, **kwargs):
        predictions = scoring(*args, **kwargs)
        sidecar.write_text(original.replace(result["generator"]["sha256"], "0" * 64), encoding="utf-8")
        return predictions

    with monkeypatch.context() as patch:
        patch.setattr(exp, "translate_test_set", replaced_meanwhile)
        with pytest.raises(SynthctError, match="replaced while it was being scored"):
            exp.evaluate(work, run, "tiny", device="cpu")
    sidecar.write_text(original, encoding="utf-8")
    points = exp.curve(work, run, device="cpu")["points"]
    # The preset snapshots the untrained generator at step 0; the final generator closes the curve.
    assert [(p["step"], p["minutes"]) for p in points][0] == (0, 0.0)
    assert [p["step"] for p in points] == [0, 3] and points[-1]["means"] == result["means"]
    plot = tmp_path / "curve.png"
    exp.plot_curve({"run": str(run), "points": points}, exp.reference_lines(work), plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Weight averaging over the end of the run: every snapshot from minute 0 is steps 0 and 3.
    from synthct.engine.checkpoint import load_generator

    weights, steps = exp.average_snapshots(run, 0.0, tmp_path / "average")
    assert steps == [0, 3]
    (first, _), (last, _), (average, meta) = (load_generator(p) for p in
                                              (points[0]["generator"], points[1]["generator"], weights))
    assert meta["averaged_steps"] == [0, 3]
    for name, value in average.state_dict().items():
        expected = (first.state_dict()[name] + last.state_dict()[name]) / 2
        assert torch.allclose(value, expected, atol=1e-7), name
    assert not torch.equal(average.state_dict()["stem.1.weight"], last.state_dict()["stem.1.weight"])
    with pytest.raises(SynthctError, match="no generator snapshot at or after minute 999"):
        exp.average_snapshots(run, 999.0, tmp_path / "none")
    # The command keeps the averaged generator and its score apart, and refuses to redo them.
    work_copy = tmp_path / "work"
    shutil.copytree(work, work_copy)
    command = ["average", "--work", str(work_copy), "--run", str(run), "--from-minutes", "0", "--device", "cpu"]
    assert exp.main(command) == 0
    results = work_copy / "results"
    score = json.loads((results / "average_run_from0.json").read_text(encoding="utf-8"))
    assert score["generator"]["averaged_steps"] == [0, 3] and 0 <= score["means"]["head_mae"] <= 255
    averaged, _ = load_generator(results / "average_run_from0_generator.safetensors")
    assert torch.allclose(averaged.state_dict()["stem.1.weight"], average.state_dict()["stem.1.weight"])
    assert exp.main(command) == 2
    # The brightness diagnostic on the same run: its head MAE before the offset is evaluate's.
    test = exp.load_test_set(work)
    windowing = exp.offset_removed(exp.translate_test_set(run, test, "cpu"), test)
    assert windowing["cases"]["160"]["head_mae"] == pytest.approx(result["case_means"]["160"]["head_mae"])
    assert windowing["means"]["head_mae_offset_removed"] <= windowing["means"]["head_mae"] + 1e-9
    # Scored as `synthct translate --tta flip --mask auto` would translate: air (0) outside the
    # MR's body, inside it the flip-averaged translation, which is not the plain one.
    from synthct.data.mask import body_mask

    plain = exp.translate_test_set(run, test, "cpu")
    masked = exp.translate_test_set(run, test, "cpu", tta="flip", mask="auto")
    for t in test:
        body = body_mask(t.mr, "8bit")
        assert np.all(masked[t.id][~body] == 0) and not np.all(plain[t.id][~body] == 0)
        assert not np.allclose(masked[t.id][body], plain[t.id][body])
    command = ["evaluate", "--work", str(work_copy), "--run", str(run), "--device", "cpu", "--tta", "flip",
               "--mask", "auto"]
    assert exp.main(command) == 0
    scored = json.loads((results / "run_tta-flip_mask-auto.json").read_text(encoding="utf-8"))
    assert scored["inference"] == {"tta": "flip", "mask": "auto"}
    assert scored["means"]["head_mae"] != pytest.approx(result["means"]["head_mae"])
    assert exp.curve(work, run, "cpu", "flip", "auto")["points"][-1]["means"] == scored["means"]
    # Structure: the run beside the two reference rows, with each slice's cycle-QA error, which
    # is what `synthct translate --qa` reports for that slice.
    assert exp.main(["structure", "--work", str(work_copy), "--run", str(run), "--device", "cpu"]) == 0
    found = json.loads((results / "structure.json").read_text(encoding="utf-8"))
    assert [row["name"] for row in found["rows"]] == ["ct_through_128", "mr_as_ct", "run"]
    ours = found["rows"][2]
    assert ours["means"]["head_mae"] == pytest.approx(result["means"]["head_mae"])
    from synthct.io.image import read_image
    from synthct.translate.translator import Translator

    qa = Translator(run, "mr2ct", device="cpu").translate_volume(read_image(test[0].mr_path), qa=True)
    assert ours["per_slice"][0]["cycle_error"] == pytest.approx(qa.summary.mean_error_in_body)
    assert -1 <= ours["means"]["cycle_error_vs_head_mae_spearman"] <= 1
    assert exp.main(["structure", "--work", str(work_copy), "--run", str(run), "--device", "cpu"]) == 2


def test_structure_of_the_real_ct_itself_is_perfect_and_of_a_blurred_one_is_not(work):
    test = exp.load_test_set(work)
    itself = exp.structure_scores({t.id: t.ct for t in test}, test, "ct")["means"]
    assert itself == {"bone_dice": 1.0, "bone_invented": 0.0, "bone_missed": 0.0, "edge_ratio": 1.0, "head_mae": 0.0}
    blurred = exp.structure_scores({t.id: exp.resampled_through(t.ct, SIZE // 4) for t in test}, test, "ct/4")
    assert blurred["means"]["edge_ratio"] < 0.9 and blurred["means"]["bone_dice"] < 1.0


def test_ct_levels_are_each_patients_median_in_head_grey(data_root, capsys, tmp_path):
    levels = exp.ct_levels(data_root)
    assert list(levels) == ["20", "160", "200"]
    for case, split in CASES.items():
        medians = []
        for s in range(3, 3 + SLICES_PER_CASE):
            mr = exp.read_8bit(data_root / "MRI" / f"{case}{s:02d}.png")
            medians.append(np.median(exp.read_8bit(data_root / "CT" / f"{case}{s:02d}.png")[head_mask_8bit(mr)]))
        assert levels[case] == {"split": split, "slices": SLICES_PER_CASE, "head_median": float(np.median(medians))}
    args = ["windowing", "--data", str(data_root), "--work", str(tmp_path)]
    assert exp.main(args) == 0
    assert json.loads((tmp_path / "results" / "windowing.json").read_text())["ct_levels"] == levels
    capsys.readouterr()
    assert exp.main(args) == 2 and "use --overwrite" in capsys.readouterr().err


def test_offset_removed_takes_one_brightness_shift_per_patient_off():
    yy, xx = np.mgrid[:24, :24]
    head = (yy - 12) ** 2 + (xx - 12) ** 2 < 81
    ct = np.where(head, 50 + (yy * 5 + xx * 3) % 150, 0).astype(np.float64)
    noise = 10.0 * ((yy + xx) % 3 - 1)  # -10, 0, +10 in thirds: no shift, 10 off on two thirds
    test = [exp.TestSlice(f"{case}{n}", case, Path("unused.png"), ct, ct, head) for case in ("1", "2") for n in range(2)]
    found = exp.offset_removed({t.id: ct + (30.0 if t.case == "1" else noise) for t in test}, test)
    # Patient 1: everything 30 too bright, nothing else wrong; patient 2: no shift, anatomy off.
    assert found["cases"]["1"] == {"slices": 2, "median_error": 30.0, "head_mae": 30.0, "head_mae_offset_removed": 0.0}
    second = found["cases"]["2"]
    assert second["median_error"] == 0.0
    assert second["head_mae"] == second["head_mae_offset_removed"] == pytest.approx(np.abs(noise[head]).mean())
    assert found["means"] == pytest.approx({"head_mae": (30.0 + second["head_mae"]) / 2,
                                            "head_mae_offset_removed": second["head_mae"] / 2})


TINY_RUN = ["data.size=32", "model.ngf=4", "model.ndf=4", "model.blocks=1", "model.pool_size=2",
            "train.epochs=null", "train.precision=fp32", "train.sample_every=0", "train.checkpoint_every=0",
            "train.threads=1", "train.log_every=1", "train.seed=5"]


def _config_seed(run: Path) -> int:
    return yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["train"]["seed"]


def test_restarts_set_aside_starts_whose_discriminators_sit_at_chance(work, tmp_path, capsys):
    # A threshold of 0 rejects every start: two are set aside, the third seed trains to the end
    # on what the rejected starts left of the budget.
    run = tmp_path / "run"
    code = exp.train_with_restarts(work, run, minutes=5.0, overrides=TINY_RUN + ["train.steps=6"],
                                   restarts=2, check_steps=4, threshold=0.0)
    assert code == 0
    for seed in (5, 6):
        rejected = tmp_path / f"run.rejected_seed{seed}"
        assert _config_seed(rejected) == seed
        assert [int(r["step"]) for r in csv.DictReader(open(rejected / "log.csv"))] == [1, 2, 3, 4]
    assert _config_seed(run) == 7
    assert [int(r["step"]) for r in csv.DictReader(open(run / "log.csv"))] == list(range(1, 7))
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["train"]
    assert 4.0 < config["max_minutes"] < 5.0 and config["stop_at_step"] is None
    assert "set aside as run.rejected_seed5" in capsys.readouterr().out


def test_a_start_with_a_learning_discriminator_continues_where_it_was_judged(work, tmp_path, capsys):
    run = tmp_path / "run"
    code = exp.train_with_restarts(work, run, minutes=5.0, overrides=TINY_RUN + ["train.steps=6"],
                                   restarts=2, check_steps=4, threshold=1.0)
    assert code == 0 and not list(tmp_path.glob("run.rejected_*"))
    assert _config_seed(run) == 5
    assert [int(r["step"]) for r in csv.DictReader(open(run / "log.csv"))] == list(range(1, 7))
    assert "continuing this start" in capsys.readouterr().out
    # The losses judged are those the log holds for the second half of the check.
    rows = [r for r in csv.DictReader(open(run / "log.csv")) if int(r["step"]) in (3, 4)]
    expected = np.mean([(float(r["D_ct"]) + float(r["D_mr"])) / 2 for r in rows])
    assert exp.discriminator_loss_window(run, 3, 4) == pytest.approx(expected)


def test_restarts_refuse_to_overwrite_a_set_aside_start(work, tmp_path):
    (tmp_path / "run.rejected_seed5").mkdir()
    with pytest.raises(SynthctError, match="move it away"):
        exp.train_with_restarts(work, tmp_path / "run", minutes=5.0, overrides=TINY_RUN + ["train.steps=6"],
                                restarts=1, check_steps=4, threshold=0.0)
    assert not (tmp_path / "run").exists()


def test_the_discriminators_command_prints_each_runs_window_and_errs_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "log.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "warm_ct", "D_ct", "D_mr"])
        writer.writerow([1, 0.5, "", ""])  # a warm-up step logs no discriminator losses
        for step, (d_ct, d_mr) in enumerate([(0.3, 0.1), (0.2, 0.2), (0.25, 0.25)], start=2):
            writer.writerow([step, "", d_ct, d_mr])
    assert exp.main(["discriminators", "--run", str(run), "--steps", "1-3"]) == 0
    assert capsys.readouterr().out.strip() == "run: 0.200"
    for args, message in ((["--run", str(tmp_path)], "no training log"),
                          (["--run", str(run), "--steps", "5-9"], "no discriminator losses logged for steps 5-9"),
                          (["--run", str(run), "--steps", "9-5"], "--steps must be FIRST-LAST")):
        assert exp.main(["discriminators", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err


def test_the_discriminators_command_prints_the_source_terms_of_a_run_that_logs_them(tmp_path, capsys):
    run = tmp_path / "src"
    run.mkdir()
    with open(run / "log.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "D_ct", "D_mr", "D_ct_source", "D_mr_source"])
        writer.writerow([1, 0.3, 0.2, 0.04, 0.06])
        writer.writerow([2, 0.2, 0.3, 0.02, 0.03])
        writer.writerow([3, 0.9, 0.9, 0.9, 0.9])  # outside the window
    assert exp.main(["discriminators", "--run", str(run), "--steps", "1-2"]) == 0
    assert capsys.readouterr().out.strip() == "src: 0.250 (source terms D_ct / D_mr: 0.030 / 0.045)"


def test_the_discriminators_command_prints_each_scale_of_a_multiscale_run(tmp_path, capsys):
    run = tmp_path / "ms"
    run.mkdir()
    with open(run / "log.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "D_ct", "D_mr", "D_ct_scale0", "D_ct_scale1", "D_mr_scale0", "D_mr_scale1"])
        writer.writerow([1, 0.2, 0.3, 0.3, 0.1, 0.24, 0.36])
        writer.writerow([2, 0.1, 0.1, 0.14, 0.06, 0.2, 0.0])
    assert exp.main(["discriminators", "--run", str(run), "--steps", "1-2"]) == 0
    assert capsys.readouterr().out.strip() == "ms: 0.175 (scales 1, 1/2, ...: 0.220, 0.130)"


def test_cycle_code_measures_the_mr_cycle_error_of_each_snapshot_under_noise(work, tmp_path, capsys):
    run = tmp_path / "run"
    assert exp.train_run(work, "cyclegan", run, minutes=5.0, overrides=[
        "data.size=32", "model.ngf=4", "model.ndf=4", "model.blocks=1", "model.pool_size=2",
        "train.steps=2", "train.epochs=null", "train.precision=fp32", "train.sample_every=0",
        "train.checkpoint_every=0", "train.threads=1"]) == 0
    found = exp.cycle_code(work, run, (0.0, 0.5), slices=3)
    train_mr = sorted((work / "train_mr").glob("*.png"))[:3]
    assert found["slices"] == [path.name for path in train_mr]  # training MRs only
    assert [point["step"] for point in found["points"]] == [0, 2]
    # Without noise, the final snapshot's number is the in-head |F(G(mr)) - mr| in grey levels.
    from synthct.engine.checkpoint import load_generator

    G, _ = load_generator(run, "mr2ct", device="cpu")
    F, _ = load_generator(run, "ct2mr", device="cpu")
    mr = np.stack([exp.read_8bit(path) for path in train_mr])
    with torch.no_grad():
        x = torch.from_numpy(mr / 127.5 - 1).float()[:, None]
        fake, rec = G(x), F(G(x))
    head = head_mask_8bit(mr)
    final = found["points"][-1]
    assert final["cycle_error_by_sigma"]["0.0"] == pytest.approx(
        float(np.abs(rec[:, 0].numpy() - x[:, 0].numpy())[head].mean() * 127.5), rel=1e-5)
    assert final["fake_ct_head_median"] == pytest.approx(float((np.median(fake[:, 0].numpy()[head]) + 1) * 127.5),
                                                         abs=0.5)
    assert final["cycle_error_by_sigma"]["0.5"] != pytest.approx(final["cycle_error_by_sigma"]["0.0"])
    # The command prints a table, keeps its result and refuses to redo it or to take bad sigmas.
    command = ["cycle-code", "--work", str(work), "--run", str(run), "--slices", "3", "--sigmas", "0,0.5"]
    assert exp.main(command) == 0
    assert "| 2 |" in capsys.readouterr().out
    assert json.loads((work / "results" / "cycle_code_run.json").read_text(encoding="utf-8"))["points"] == found["points"]
    assert exp.main(command) == 2
    assert exp.main(["cycle-code", "--work", str(work), "--run", str(run), "--sigmas", "0,a", "--overwrite"]) == 2
    assert "--sigmas must be comma-separated numbers, got '0,a'" in capsys.readouterr().err
    (work / "results" / "cycle_code_run.json").unlink()
