"""The real-scan experiment (experiments/aanlib) on a tiny fake data folder with the real layout
(CT/<id>.png, MRI/<id>.png, splits.csv) and the real patient ids; never the real data."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from synthct.errors import SynthctError
from synthct.eval.metrics import eight_bit_metrics, head_mask_8bit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/ runs from the repository root

from experiments.aanlib import ledger  # noqa: E402
from experiments.aanlib.__main__ import main  # noqa: E402
from experiments.aanlib.common import REPO  # noqa: E402
from experiments.aanlib.baselines import baselines, histogram_matched, training_ct_head_pixels  # noqa: E402
from experiments.aanlib.common import load_scored_set, protocol, read_splits  # noqa: E402
from experiments.aanlib.curve import curve, elapsed_by_step, find_snapshots, plot_curve  # noqa: E402
from experiments.aanlib.evaluate import evaluate, translate_scored  # noqa: E402
from experiments.aanlib.prepare import prepare  # noqa: E402
from experiments.aanlib.table import markdown_table, reference_lines  # noqa: E402

SIZE = 32
# The shell drivers run tiny trainings in a subprocess: the guard only stops a hang, so it leaves
# room for a machine whose cores are busy with other work.
HANG_GUARD_S = 3600
CASES = {"20": "train", "200": "train", "280": "train", "320": "train", "330": "train", "370": "train",
         "160": "test", "410": "test"}
SLICES_PER_CASE = 2


def _ids(*cases: str) -> list[str]:
    return sorted(f"{case}{s:02d}" for case in cases for s in range(3, 3 + SLICES_PER_CASE))


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


def _head(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An MR / CT pair: a disc of head with random texture on black."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    head = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < rng.integers(9, 13) ** 2
    mr = np.where(head, rng.integers(40, 200, (SIZE, SIZE)), 0)
    ct = np.where(head, rng.integers(60, 256, (SIZE, SIZE)), rng.integers(0, 5, (SIZE, SIZE)))
    return mr, ct


def _data_folder(root: Path, cases: dict[str, str]) -> Path:
    rng = np.random.default_rng(7)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "splits.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "case", "slice", "split"])
        for case, split in cases.items():
            for s in range(3, 3 + SLICES_PER_CASE):
                mr, ct = _head(rng)
                _write_png(root / "MRI" / f"{case}{s:02d}.png", mr)
                _write_png(root / "CT" / f"{case}{s:02d}.png", ct)
                writer.writerow([f"{case}{s:02d}", case, s, split])
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return _data_folder(tmp_path_factory.mktemp("aanlib"), CASES)


@pytest.fixture(scope="module")
def work(data_root, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("work")
    prepare(data_root, work, "test", seed=3)
    return work


@pytest.fixture(scope="module")
def validation(data_root, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("validation")
    prepare(data_root, work, "validation")
    return work


def _bytes_by_name(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def _read(data_root: Path, folder: str, ids: list[str]) -> list[bytes]:
    return sorted((data_root / folder / f"{i}.png").read_bytes() for i in ids)


def test_the_test_fold_trains_unpaired_on_every_training_case_and_scores_the_test_split(data_root, work):
    train_ids = _ids(*(c for c, split in CASES.items() if split == "train"))
    mr, ct = _bytes_by_name(work / "train_mr"), _bytes_by_name(work / "train_ct")
    assert not set(mr) & {f"{i}.png" for i in train_ids} and not set(ct) & {f"{i}.png" for i in train_ids}
    # Same slices, other order: every training picture is there exactly once ...
    assert sorted(mr.values()) == _read(data_root, "MRI", train_ids)
    assert sorted(ct.values()) == _read(data_root, "CT", train_ids)
    # ... and the i-th MR and i-th CT in sorted order are not the pairs of the data set.
    pair_of = {(data_root / "MRI" / f"{i}.png").read_bytes(): (data_root / "CT" / f"{i}.png").read_bytes()
               for i in train_ids}
    assert sum(pair_of[m] == c for m, c in zip(mr.values(), ct.values())) < len(train_ids) // 2
    for name, data in _bytes_by_name(work / "train_pairs" / "mr").items():
        assert pair_of[data] == (work / "train_pairs" / "ct" / name).read_bytes()
    assert sorted(p.stem for p in (work / "scored_mr").glob("*.png")) == _ids("160", "410")
    manifest = json.loads((work / "prepare.json").read_text())
    assert manifest["fold"] == "test" and manifest["scored_cases"] == ["160", "410"]
    assert manifest["train_cases"] == ["20", "200", "280", "320", "330", "370"]
    assert "the AANLIB test split 160 and 410 (4 slices)" in protocol(work, load_scored_set(work))


def test_the_validation_fold_holds_out_200_and_330_and_never_copies_the_test_split(data_root, validation):
    assert sorted(p.stem for p in (validation / "scored_mr").glob("*.png")) == _ids("200", "330")
    trained = _ids("20", "280", "320", "370")
    assert sorted(p.stem for p in (validation / "train_pairs" / "ct").glob("*.png")) == trained
    assert sorted(_bytes_by_name(validation / "train_ct").values()) == _read(data_root, "CT", trained)
    copied = {data for folder in validation.rglob("*") if folder.is_dir() for data in _bytes_by_name(folder).values()}
    assert not copied & set(_read(data_root, "MRI", _ids("160", "410")) + _read(data_root, "CT", _ids("160", "410")))
    manifest = json.loads((validation / "prepare.json").read_text())
    assert (manifest["fold"], manifest["scored_cases"]) == ("validation", ["200", "330"])
    assert "the validation fold's training cases 200 and 330" in protocol(validation, load_scored_set(validation))


def test_preparation_errors_are_one_line(data_root, work, tmp_path, capsys):
    with pytest.raises(SynthctError, match="already prepared"):
        prepare(data_root, work)
    # A data folder without training case 370 cannot make the validation fold.
    partial = _data_folder(tmp_path / "partial", {c: s for c, s in CASES.items() if c != "370"})
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "splits.csv").write_text("id,case,split\n2004,20,train\n")
    for data, fold, problem in ((partial, "validation", "needs training case 370"),
                                (tmp_path / "splits", "test", "missing column slice")):
        assert main(["prepare", "--data", str(data), "--work", str(tmp_path / "w"), "--fold", fold]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and problem in err and "splits.csv" in err
        assert not (tmp_path / "w").exists()
    with pytest.raises(SynthctError, match="2004.png listed in splits.csv is missing"):
        (tmp_path / "splits" / "splits.csv").write_text("id,case,slice,split\n2004,20,4,train\n")
        read_splits(tmp_path / "splits")


def test_baselines_follow_the_protocol(work):
    found = baselines(work)["baselines"]
    scored = load_scored_set(work)
    assert found["mr_as_ct"]["n_slices"] == len(scored) == 2 * SLICES_PER_CASE
    per_slice = [eight_bit_metrics(t.mr, t.ct, head_mask_8bit(t.mr)) for t in scored]
    assert found["mr_as_ct"]["means"]["head_mae"] == pytest.approx(np.mean([m["head_mae"] for m in per_slice]))
    # Per-slice means, not pooled pixels: the slices have different head sizes.
    pooled = np.mean(np.concatenate([np.abs(t.mr - t.ct)[t.head] for t in scored]))
    assert found["mr_as_ct"]["means"]["head_mae"] != pytest.approx(pooled, abs=1e-9)
    assert found["constant_110"]["means"]["head_mae"] == pytest.approx(
        np.mean([np.abs(110 - t.ct[t.head]).mean() for t in scored]))
    oracle = found["constant_best_oracle"]["means"]["head_mae"]
    for grey in (0, 60, 110, 157, 200, 255):
        assert oracle <= np.mean([np.abs(grey - t.ct[t.head]).mean() for t in scored]) + 1e-9
    assert set(found["mr_as_ct"]["case_means"]) == {"160", "410"}


def test_the_atlas_baseline_registers_only_the_folds_training_cts_and_scores_like_the_other_rows(
        data_root, tmp_path, capsys):
    from experiments.aanlib.atlas import atlas_inputs

    work = tmp_path / "validation"
    prepare(data_root, work, "validation")
    _, ct_folder, subjects = atlas_inputs(work)
    assert sorted(p.stem for p in ct_folder.glob("*.png")) == _ids("20", "280", "320", "370")
    assert main(["atlas", "--fold", "validation", "--work", str(work), "--workers", "1"]) == 0
    assert "multi_atlas" in capsys.readouterr().out
    with open(work / "runs" / "multi_atlas" / "pairs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(Path(r["mr"]).stem for r in rows) == _ids("200", "330")
    used = {subjects[name] for r in rows for name in r["cts"].split(";")}
    assert used and used <= {"20", "280", "320", "370"}
    # Scored by the shared protocol: the fused CTs written by synthct pair against the scored CTs.
    result = json.loads((work / "results" / "multi_atlas.json").read_text(encoding="utf-8"))
    per_slice = [eight_bit_metrics(np.array(sitk.GetArrayFromImage(sitk.ReadImage(
        str(work / "runs" / "multi_atlas" / "ct" / f"{t.id}.png"))), dtype=np.float64), t.ct, t.head)
        for t in load_scored_set(work)]
    assert result["means"]["head_mae"] == pytest.approx(np.mean([m["head_mae"] for m in per_slice]))
    assert "validation fold" in result["protocol"] and result["n_slices"] == 2 * SLICES_PER_CASE
    assert main(["atlas", "--fold", "validation", "--work", str(work)]) == 2  # the result exists
    # A scored patient's CT in the CT folder stops the run before any registration.
    (ct_folder / "20003.png").write_bytes((work / "scored_ct" / "20003.png").read_bytes())
    assert main(["atlas", "--fold", "validation", "--work", str(work), "--overwrite"]) == 2
    assert "20003.png" in capsys.readouterr().err


def test_pseudo_pairs_join_no_mr_with_its_own_patients_ct_and_never_read_a_scored_ct(data_root, tmp_path, capsys):
    import shutil

    from experiments.aanlib.train import training_config

    work = tmp_path / "validation"
    prepare(data_root, work, "validation")
    for folder in ("scored_ct", "scored_mr"):  # what is not there cannot be read
        shutil.rmtree(work / folder)
    assert main(["train", "--fold", "validation", "--work", str(work), "--model", "regression", "--pseudo-pairs",
                 "--steps", "1", *TINY]) == 2  # no pseudo-pairs yet
    assert "pseudo-pairs command" in capsys.readouterr().err
    assert main(["pseudo-pairs", "--fold", "validation", "--work", str(work), "--workers", "1"]) == 0
    pairs = work / "pseudo_pairs"
    patient = {f"{i}.png": case for case in ("20", "280", "320", "370") for i in _ids(case)}
    with open(pairs / "pairs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["name"] for r in rows) == sorted(patient)  # every training MR, no scored one
    for row in rows:
        fused_from = {patient[name] for name in row["cts"].split(";")}
        assert fused_from and patient[row["name"]] not in fused_from
    assert sorted(p.name for p in (pairs / "ct").glob("*.png")) == sorted(patient)
    assert _bytes_by_name(pairs / "mr") == _bytes_by_name(work / "train_pairs" / "mr")
    result = json.loads((work / "results" / "pseudo_pairs.json").read_text(encoding="utf-8"))
    assert result["n_pairs"] == len(patient)
    assert all(s["case"] not in s["fused_from"] for s in result["per_slice"])
    # The paired recipe reads them, and trains on them.
    cfg = training_config(work, "regression", [], pseudo_pairs=True)
    assert (cfg.data.mr, cfg.data.ct, cfg.data.paired) == (str(pairs / "mr"), str(pairs / "ct"), True)
    tiny = [item for pair in zip(TINY[::2], TINY[1::2]) if not pair[1].startswith(("model.ndf", "model.pool_size"))
            for item in pair] + ["--set", "model.unet_downs=5"]  # no discriminator; a U-Net for 32 px
    assert main(["train", "--fold", "validation", "--work", str(work), "--model", "regression", "--pseudo-pairs",
                 "--seed", "0", "--steps", "1", *tiny]) == 0
    saved = yaml.safe_load((work / "runs" / "regression_pseudo-pairs_seed0" / "config.yaml").read_text("utf-8"))
    assert saved["data"]["mr"] == str(pairs / "mr") and saved["model"]["name"] == "regression"
    assert main(["train", "--fold", "validation", "--work", str(work), "--model", "cyclegan", "--pseudo-pairs",
                 "--steps", "1", *TINY]) == 2  # the unpaired model has no use for pairs
    # A CT of a patient outside the fold's training patients stops the pairing before any registration.
    (work / "train_pairs" / "ct" / "33003.png").write_bytes((work / "train_pairs" / "ct" / "2003.png").read_bytes())
    assert main(["pseudo-pairs", "--fold", "validation", "--work", str(work), "--overwrite"]) == 2
    assert "33003.png" in capsys.readouterr().err


def test_histogram_matching_maps_the_head_onto_the_training_ct_grey_levels(work):
    scored = load_scored_set(work)
    ct_pixels = training_ct_head_pixels(work)
    for inverted, sign in ((False, 1), (True, -1)):
        matched = histogram_matched(scored, ct_pixels, inverted)
        for t in scored:
            inside = matched[t.id][t.head]
            assert np.all(matched[t.id][~t.head] == 0)
            assert ct_pixels.min() <= inside.min() and inside.max() <= ct_pixels.max()
            # Monotone: brighter MR stays brighter (or, inverted, comes out darker).
            order = np.argsort(t.mr[t.head], kind="stable")
            assert np.all(sign * np.diff(inside[order]) >= 0)


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
    assert [(s, p.name) for s, p in find_snapshots(run)] == [
        (50, "generator_mr2ct_step50.safetensors"), (200, "generator_mr2ct_step200.safetensors"),
        (300, "generator_mr2ct.safetensors")]
    (run / "log.csv").write_text("step,epoch,elapsed_s,lr\n1,0,1.5,0.1\n50,0,60.0,0.1\n")
    assert elapsed_by_step(run / "log.csv") == {1: 1.5, 50: 60.0}
    with pytest.raises(SynthctError, match="no MR->CT generator"):
        find_snapshots(tmp_path)


def test_table_holds_our_rows_baselines_and_the_published_numbers(work):
    ours = {"head_mae": 70.04, "head_psnr": 9.0, "head_ssim": 0.3, "mae": 30.0, "psnr": 12.0, "ssim": 0.6}
    table = markdown_table([("synthct CycleGAN", "unpaired", ours)], baselines(work))
    lines = table.splitlines()
    assert lines[2].startswith("| synthct CycleGAN | unpaired | 70.0 | 9.0 | 0.30 |")
    assert "| reference CycleGAN (published) | unpaired | 82.6 | 7.3 | 0.15 | 42.1 | 10.5 | 0.51 |" in lines
    assert any(line.startswith("| MR as CT (published) | none | 84.1 | – |") for line in lines)
    assert any(line.startswith("| MR as CT | none |") for line in lines)
    assert len({line.count("|") for line in lines}) == 1


def _result(head_mae: float) -> dict:
    return {"n_slices": 38, "inference": {"tta": "flip", "mask": "auto"},
            "means": {"head_mae": head_mae, "head_psnr": 9.0, "head_ssim": 0.3, "mae": 30.0, "psnr": 12.0, "ssim": 0.6}}


def test_the_ledger_appends_one_row_per_scoring_and_keys_the_recipe_not_the_paths(tmp_path):
    book = tmp_path / "ledger.csv"
    config = {"data": {"mr": "/a/train_mr", "ct": "/a/train_ct", "size": 256}, "train": {"seed": 1}}
    meta = {"step": 900, "sha256": "ab" * 32, "config": config}
    (tmp_path / "run_x" / "snapshots").mkdir(parents=True)
    ledger.record(book, tmp_path / "run_x", meta, _result(60.123))
    moved = {"data": {"mr": "/b/train_mr", "ct": "/b/train_ct", "size": 256}, "train": {"seed": 1}}
    ledger.record(book, tmp_path / "run_x" / "snapshots" / "generator_mr2ct_step0000900.safetensors",
                  meta | {"config": moved}, _result(61.0))
    rows = list(csv.DictReader(open(book, newline="")))
    assert [(r["run"], r["step"], r["tta"], r["mask"], r["slices"], r["head_mae"]) for r in rows] == [
        ("run_x", "900", "flip", "auto", "38", "60.12"), ("run_x", "900", "flip", "auto", "38", "61.00")]
    # The same recipe in another work folder keeps its sha256; another seed does not.
    assert rows[0]["config_sha256"] == rows[1]["config_sha256"] == ledger.config_sha256(config)
    assert ledger.config_sha256(config | {"train": {"seed": 2}}) != rows[0]["config_sha256"]
    assert rows[0]["date_utc"].endswith("Z") and rows[0]["weights_sha256"] == "ab" * 32
    assert book.read_text().splitlines()[0] == ",".join(ledger.COLUMNS)
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SynthctError, match="not a ledger of test-split scorings"):
        ledger.record(tmp_path / "other.csv", tmp_path / "run_x", meta, _result(60.0))
    with pytest.raises(SynthctError, match="not a ledger of test-split scorings"):
        ledger.last_scoring(tmp_path / "other.csv", "run_x", "flip", "auto")


def test_a_run_is_read_back_from_the_ledger_without_its_folder(tmp_path):
    from experiments.aanlib.seeds import ledger_seed_run

    book, run = tmp_path / "ledger.csv", tmp_path / "run_x"
    run.mkdir()
    meta = {"step": 3000, "sha256": "ab" * 32, "config": {}}
    plain = _result(70.0) | {"inference": {"tta": "none", "mask": "none"}}
    ledger.record(book, run, meta, plain | {"means": plain["means"] | {"head_ssim": 0.25}})
    ledger.record(book, run, meta, _result(61.5))
    run.rmdir()
    found = ledger_seed_run(book, run, "flip", "auto")
    assert (found.name, found.head_mae, found.head_ssim, found.reached, found.verdict) == ("run_x", 61.5, 0.25, True,
                                                                                           None)
    with pytest.raises(SynthctError, match="no plain scoring of run_y"):
        ledger_seed_run(book, tmp_path / "run_y", "flip", "auto")
    (tmp_path / "run_y").mkdir()
    ledger.record(book, tmp_path / "run_y", meta, plain)
    with pytest.raises(SynthctError, match="no scoring with --tta flip --mask auto of run_y"):
        ledger_seed_run(book, tmp_path / "run_y", "flip", "auto")


def _record_after(barrier, book: Path, run: Path, rows: int) -> None:
    barrier.wait()
    for i in range(rows):
        ledger.record(book, run, {"step": i, "sha256": "ab" * 32, "config": {}}, _result(60.0 + i))


def test_scorings_that_finish_at_once_each_keep_their_row(tmp_path):
    # The final stage's lanes score side by side; each scoring reads the ledger and renames a new
    # one over it, so writers must take turns or rows are lost (seen with two lanes).
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    writers, rows = 4, 10
    barrier = context.Barrier(writers)
    book = tmp_path / "ledger.csv"
    for w in range(writers):
        (tmp_path / f"run_{w}").mkdir()
    procs = [context.Process(target=_record_after, args=(barrier, book, tmp_path / f"run_{w}", rows))
             for w in range(writers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(HANG_GUARD_S)
    assert [proc.exitcode for proc in procs] == [0] * writers
    found = sorted((r["run"], int(r["step"])) for r in _ledger_rows(book))
    assert found == sorted((f"run_{w}", i) for w in range(writers) for i in range(rows))


def _seed_run(work: Path, name: str, plain_ssim: float, head_mae: float, checks: list[list[str]] | None) -> None:
    """A scored run; ``checks``: the failures of each health check, one every 250 steps (none:
    healthy), or None for a run without a health record."""
    plain = {"inference": {"tta": "none", "mask": "none"},
             "means": {"head_mae": head_mae + 2, "head_ssim": plain_ssim}}
    (work / "results").mkdir(parents=True, exist_ok=True)
    (work / "results" / f"{name}.json").write_text(json.dumps(plain))
    scored = {"inference": {"tta": "flip", "mask": "auto"}, "means": {"head_mae": head_mae, "head_ssim": 0.0}}
    (work / "results" / f"{name}_tta-flip_mask-auto.json").write_text(json.dumps(scored))
    (work / "runs" / name).mkdir(parents=True)
    if checks is not None:
        record = [{"step": 250 * (i + 1), "verdict": "failed" if failures else "healthy", "failures": failures}
                  for i, failures in enumerate(checks)]
        (work / "runs" / name / "health.json").write_text(json.dumps({"checks": record}))


def test_seeds_counts_outcomes_and_judges_each_last_health_verdict_and_restart_verdict(tmp_path, capsys):
    from synthct.engine.restarts import DEFAULT_CHECK_STEPS

    assert DEFAULT_CHECK_STEPS == 500  # the fixture's second check
    work = tmp_path / "fold"
    at_chance = "discriminators_at_chance"
    # reached; last verdict healthy, the restart check at 500 warns only: both agree
    _seed_run(work, "a_seed0", 0.25, 55.0, [["mr_order"], [at_chance], []])
    # not reached; healthy at the end (a miss), the MR's order at 500 (the restart check agrees)
    _seed_run(work, "a_seed1", 0.13, 75.0, [[], ["mr_order", "dark"], []])
    # reached; failed at the end (a false alarm), a hidden code at 500 (a false alarm too)
    _seed_run(work, "a_seed2", 0.21, 60.0, [[], ["hidden_code"], ["dark"]])
    # not reached, no check at 500: the restart check does not judge it (its last verdict does)
    _seed_run(work, "a_seed3", 0.10, 80.0, [["mr_order"]])
    _seed_run(work, "b_seed0", 0.08, 90.0, None)  # no health check: not judged
    assert main(["seeds", "--work", str(work), "--recipe", "a=a_seed0,a_seed1,a_seed2,a_seed3",
                 "--recipe", "b=b_seed0", "--tta", "flip", "--mask", "auto"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "| a | 4 | 67.5 (55.0-80.0) | 2 of 4 |" in lines and "| b | 1 | 90.0 | 0 of 1 |" in lines
    assert "| a_seed0 | 0.250 | CT contrast | healthy | agrees | kept | agrees |" in lines
    assert "| a_seed1 | 0.130 | not reached | healthy | miss | set aside (mr_order) | agrees |" in lines
    assert "| a_seed2 | 0.210 | CT contrast | failed | false alarm | set aside (hidden_code) | false alarm |" in lines
    assert "| a_seed3 | 0.100 | not reached | failed | agrees | - | - |" in lines
    assert "| b_seed0 | 0.080 | not reached | - | - | - | - |" in lines
    assert lines[-1] == ("| 4 judged | | 2 not reached | | 2 agree, 1 missed, 1 false alarms | 3 judged | "
                         "2 agree, 0 missed, 1 false alarms |")
    # The outcome is read from plain scorings only, and every run must have been scored.
    assert main(["seeds", "--work", str(work), "--recipe", "a=a_seed0_tta-flip_mask-auto"]) == 2
    assert main(["seeds", "--work", str(work), "--recipe", "a=a_seed9"]) == 2
    assert "a_seed9.json: result not found" in capsys.readouterr().err


def test_seeds_judges_each_lever_against_the_preset_by_the_promotion_rule(tmp_path, capsys):
    work = tmp_path / "fold"
    for seed, (ssim, mae) in enumerate([(0.22, 60.0), (0.10, 80.0), (0.12, 78.0)]):
        _seed_run(work, f"preset_seed{seed}", ssim, mae, None)
    # Better median by 3, lower on seeds 1 and 2, contrast on as many seeds: promoted.
    for seed, (ssim, mae) in enumerate([(0.23, 61.0), (0.11, 75.0), (0.13, 76.0)]):
        _seed_run(work, f"good_seed{seed}", ssim, mae, None)
    # Better median by 3 but the contrast on fewer seeds: not promoted.
    for seed, (ssim, mae) in enumerate([(0.15, 59.0), (0.11, 75.0), (0.13, 77.0)]):
        _seed_run(work, f"dark_seed{seed}", ssim, mae, None)
    # Lower on one seed only, though by far: not promoted.
    for seed, (ssim, mae) in enumerate([(0.30, 40.0), (0.11, 81.0), (0.13, 79.0)]):
        _seed_run(work, f"lucky_seed{seed}", ssim, mae, None)
    recipes = [f"--recipe={name}=" + ",".join(f"{name}_seed{s}" for s in range(3))
               for name in ("preset", "good", "dark", "lucky")]
    assert main(["seeds", "--work", str(work), *recipes, "--against", "preset", "--tta", "flip", "--mask", "auto"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "| good | +3.0 | 2 of 3 | 1 (preset 1) | yes |" in lines
    assert "| dark | +3.0 | 3 of 3 | 0 (preset 1) | no |" in lines
    assert "| lucky | -1.0 | 1 of 3 | 1 (preset 1) | no |" in lines
    assert main(["seeds", "--work", str(work), recipes[1], "--against", "preset"]) == 2
    assert main(["seeds", "--work", str(work), recipes[0], "--recipe=short=good_seed0", "--against", "preset"]) == 2
    assert "preset's seeds: 1 runs against 3" in capsys.readouterr().err


def test_flops_counts_a_training_step_and_scales_with_the_slice_area(capsys):
    from experiments.aanlib.train import step_gflop

    tiny = ["model.ngf=4", "model.ndf=4", "model.blocks=1", "train.device=cpu"]
    small, large = (step_gflop("cyclegan", tiny + [f"data.size={n}"]) for n in (32, 64))
    assert 3.5 < large / small < 4.5  # convolutions: FLOPs follow the pixel count
    assert step_gflop("cyclegan", tiny + ["data.size=32"], with_pairs=True) > small  # plus G on the pair
    assert main(["flops", "--model", "pix2pix", "--with-pairs"]) == 2
    assert "for the semi-supervised cyclegan, not pix2pix" in capsys.readouterr().err


def test_the_committed_ledger_has_the_ledger_columns():
    with open(ledger.LEDGER, newline="") as fh:
        assert tuple(next(csv.reader(fh))) == ledger.COLUMNS


TINY = ["--set", "data.size=32", "--set", "model.ngf=4", "--set", "model.ndf=4", "--set", "model.blocks=1",
        "--set", "model.pool_size=2", "--set", "train.precision=fp32", "--set", "train.sample_every=0",
        "--set", "train.checkpoint_every=0", "--set", "train.threads=1", "--set", "train.device=cpu"]


def _ledger_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path, newline=""))) if path.is_file() else []


def test_the_queue_resumes_a_stopped_run_and_scores_each_finished_run_once(work, tmp_path):
    import shutil
    import subprocess

    copy, book = tmp_path / "work", tmp_path / "ledger.csv"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("runs", "results"))
    extra = [a for a in TINY if "checkpoint_every" not in a and a != "--set"]
    env = os.environ | {"FOLD": "test", "WORK": str(copy), "STEPS": "4", "PY": sys.executable, "LEDGER": str(book),
                        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}

    def queue(*extra_sets: str) -> subprocess.CompletedProcess:
        sets = " ".join(f"--set {item}" for item in extra + list(extra_sets))
        return subprocess.run(["bash", str(REPO / "experiments" / "aanlib" / "queue.sh"), "cyclegan:0"],
                              env=env | {"EXTRA": sets}, cwd=REPO, capture_output=True, text=True,
                              timeout=HANG_GUARD_S)

    stopped = queue("train.stop_at_step=2")  # a run stopped half way, as a session's end would
    assert stopped.returncode == 1 and "stopped at step 2, not scored" in stopped.stderr
    assert not (copy / "results").exists() and not book.exists()
    finished = queue()
    assert finished.returncode == 0 and "resuming at step 2" in finished.stdout
    rows = _ledger_rows(book)
    assert [(r["run"], r["step"]) for r in rows] == [("cyclegan_seed0", "4")]
    assert [int(r["step"]) for r in csv.DictReader(open(copy / "runs" / "cyclegan_seed0" / "log.csv"))] == [1, 2, 3, 4]
    again = queue()
    assert again.returncode == 0 and "scored already" in again.stdout and len(_ledger_rows(book)) == 1
    # A named variant, scored plainly and with translate's defaults.
    env |= {"NAME": "variant", "DEFAULTS": "1"}
    named = queue()
    assert named.returncode == 0, named.stderr
    assert [(r["run"], r["tta"], r["mask"]) for r in _ledger_rows(book)[1:]] == [
        ("variant_seed0", "none", "none"), ("variant_seed0", "flip", "auto")]
    assert {p.name for p in (copy / "results").iterdir()} >= {"variant_seed0.json", "variant_seed0_tta-flip_mask-auto.json"}
    # A LEDGER that is not a ledger stops the queue before it trains, not after.
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    env |= {"NAME": "other", "LEDGER": str(tmp_path / "notes.csv")}
    refused = queue()
    assert refused.returncode == 2 and "not a ledger of test-split scorings" in refused.stderr
    assert not (copy / "runs" / "other_seed0").exists()


@pytest.mark.slow
def test_train_evaluate_curve_end_to_end(work, validation, tmp_path, monkeypatch):
    run, book = tmp_path / "run", tmp_path / "ledger.csv"
    # The preset keeps snapshots (step 0 and every 5 minutes): the curve has the start and the end.
    assert main(["train", "--work", str(work), "--run", str(run), "--steps", "3", *TINY]) == 0
    result = evaluate(work, run, "tiny", device="cpu", ledger_path=book)
    assert result["generator"]["step"] == 3 and 0 <= result["means"]["head_mae"] <= 255
    assert [row["id"] for row in result["per_slice"]] == _ids("160", "410")
    assert [(r["run"], r["step"], r["head_mae"]) for r in _ledger_rows(book)] == [
        ("run", "3", f"{result['means']['head_mae']:.2f}")]
    # Scoring the validation fold records nothing.
    assert evaluate(validation, run, "tiny", device="cpu", ledger_path=book)["n_slices"] == 2 * SLICES_PER_CASE
    assert len(_ledger_rows(book)) == 1
    # A generator replaced while it is scored is an error, not a score under the new weights' checksum.
    sidecar = run / "generator_mr2ct.json"
    original = sidecar.read_text(encoding="utf-8")

    def replaced_meanwhile(*args, **kwargs):
        predictions = translate_scored(*args, **kwargs)
        sidecar.write_text(original.replace(result["generator"]["sha256"], "0" * 64), encoding="utf-8")
        return predictions

    with monkeypatch.context() as patch:
        patch.setattr("experiments.aanlib.evaluate.translate_scored", replaced_meanwhile)
        with pytest.raises(SynthctError, match="replaced while it was being scored"):
            evaluate(work, run, "tiny", device="cpu", ledger_path=book)
    sidecar.write_text(original, encoding="utf-8")
    assert len(_ledger_rows(book)) == 1
    found = curve(work, run, device="cpu", ledger_path=book)
    assert [(p["step"], p["minutes"]) for p in found["points"]][0] == (0, 0.0)
    assert [p["step"] for p in found["points"]] == [0, 3] and found["points"][-1]["means"] == result["means"]
    assert [r["step"] for r in _ledger_rows(book)] == ["3", "0", "3"]
    plot_curve(found, reference_lines(work), tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Scored as `synthct translate --tta flip --mask auto` translates; the ledger names the options.
    command = ["evaluate", "--work", str(work), "--run", str(run), "--device", "cpu", "--tta", "flip", "--mask", "auto",
               "--ledger", str(book), "--out", str(tmp_path / "scored.json")]
    assert main(command) == 0 and main(command) == 2
    scored = json.loads((tmp_path / "scored.json").read_text(encoding="utf-8"))
    assert scored["inference"] == {"tta": "flip", "mask": "auto"}
    assert scored["means"]["head_mae"] != pytest.approx(result["means"]["head_mae"])
    assert [(r["tta"], r["mask"]) for r in _ledger_rows(book)][-1] == ("flip", "auto") and len(_ledger_rows(book)) == 4


@pytest.mark.slow
def test_train_with_restarts_goes_through_the_package(work, tmp_path):
    # The first start is judged after 2 of its 4 steps; whatever the check finds, the kept start
    # trains what the starts set aside left.
    run = tmp_path / "run"
    assert main(["train", "--work", str(work), "--run", str(run), "--steps", "4", "--restarts", "2",
                 "--restart-check-steps", "2", *TINY]) == 0
    verdicts = json.loads((run / "restarts.json").read_text(encoding="utf-8"))
    set_aside = [s for s in verdicts["starts"] if s["verdict"].startswith("set aside")]
    assert verdicts["check_steps"] == 2 and verdicts["starts"][-1]["verdict"].startswith("kept")
    assert json.loads((run / "generator_mr2ct.json").read_text(encoding="utf-8"))["step"] == 4 - 2 * len(set_aside)
    assert main(["train", "--work", str(work), "--run", str(tmp_path / "r2"), "--minutes", "1", "--restarts", "1",
                 *TINY]) == 2


def test_semi_supervised_cyclegan_pairs_one_patient_and_leaves_the_others_unpaired(work, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--work", str(work), "--run", str(run), "--steps", "2", "--paired-patients", "20",
                 "--seed", "1", *TINY]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert saved["data"]["pair_cases"] == [f"{i}.png" for i in _ids("20")] and saved["train"]["seed"] == 1
    unpaired = {p.read_bytes() for p in Path(saved["data"]["mr"]).glob("*.png")}
    others = _ids(*(case for case, split in CASES.items() if split == "train" and case != "20"))
    assert unpaired == set(_read(work, "train_pairs/mr", others)) and len(unpaired) == len(others)
    assert main(["train", "--work", str(work), "--paired-patients", "160", "--steps", "1", *TINY]) == 2


@pytest.mark.parametrize("model", ["reggan", "regression"])
def test_paired_models_train_on_the_true_pairs(work, tmp_path, model):
    from experiments.aanlib.train import training_config
    from synthct.engine.setup import check_config

    cfg = training_config(work, model, [])
    check_config(cfg)  # the pix2pix recipe's options all apply to the model
    assert (cfg.model.name, cfg.data.paired, Path(cfg.data.mr).parent.name) == (model, True, "train_pairs")


def test_the_lanes_run_every_job_once_in_order_and_a_failed_job_stops_only_its_lane(tmp_path):
    import subprocess

    script = """
source experiments/aanlib/lanes.sh
jobs=("0|a|--x 1" "0|b|" "1|a|--x 1" "1|b|" "2|a|--x 1")
job() { echo "$1 $2 $3" >> "$W/ran"; echo "job $1 $2"; [ "$1|$2" != "0|b" ]; }
run_lanes trial job
"""
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("JOBS", "DEVICE", "SEEDS", "PY")} | {
        "WORK": str(tmp_path), "TMPDIR": str(tmp_path / "tmp")}
    done = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    # Two lanes by default. Whichever lane takes the failing job stops there; the other runs the
    # rest, so every job runs once, and each lane runs its jobs in the list's order.
    assert sorted((tmp_path / "ran").read_text().splitlines()) == ["0 a --x 1", "0 b ", "1 a --x 1", "1 b ",
                                                                    "2 a --x 1"]
    lanes = [(tmp_path / f"trial-lane{lane}.log").read_text().splitlines() for lane in (0, 1)]
    order = ["job 0 a", "job 0 b", "job 1 a", "job 1 b", "job 2 a"]
    for lane in lanes:
        assert lane == sorted(lane, key=order.index)
    stopped = [lane for lane in lanes if "job 0 b" in lane]
    assert len(stopped) == 1 and stopped[0][-1] == "job 0 b"
    assert not list((tmp_path / "tmp").iterdir())  # the lanes' bookkeeping is gone


def test_the_final_stage_trains_each_seed_scores_the_test_split_once_per_scoring_and_reports_the_median(
        work, tmp_path):
    import shutil
    import subprocess

    copy, book = tmp_path / "work", tmp_path / "ledger.csv"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("runs", "results"))
    recipe = " ".join(f"--set {item}" for item in TINY if item != "--set" and "train.device" not in item)
    env = os.environ | {"WORK": str(copy), "STEPS": "2", "SEEDS": "0 1", "PY": sys.executable, "LEDGER": str(book),
                        "RECIPE": recipe, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}

    def final() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(REPO / "experiments" / "aanlib" / "final.sh")], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=HANG_GUARD_S)

    done = final()
    assert done.returncode == 0, done.stderr
    scorings = [(r["run"], r["step"], r["tta"], r["mask"]) for r in _ledger_rows(book)]
    assert sorted(scorings) == sorted((f"final_seed{seed}", "2", tta, mask) for seed in (0, 1)
                                      for tta, mask in (("none", "none"), ("flip", "auto")))
    assert "| final | 2 |" in done.stdout and (copy / "results" / "final.md").read_text() == done.stdout
    again = final()  # nothing is trained or scored twice
    assert again.returncode == 0 and len(_ledger_rows(book)) == 4
    assert sum(log.read_text().count("scored already") for log in copy.glob("final-lane*.log")) == 2
    # A fresh clone holds the ledger but not the runs: still nothing is trained or scored twice, and
    # the median is the same, read from the ledger.
    shutil.rmtree(copy / "runs")
    shutil.rmtree(copy / "results")
    fresh = final()
    assert fresh.returncode == 0, fresh.stderr
    assert len(_ledger_rows(book)) == 4 and not (copy / "runs").exists()
    recipe_row = next(line for line in done.stdout.splitlines() if line.startswith("| final |"))
    assert recipe_row in fresh.stdout.splitlines()
