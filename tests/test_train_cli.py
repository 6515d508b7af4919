"""`synthct train` command line: config precedence, run-folder safety, clear one-line errors,
and SIGTERM leaving a resumable run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from synthct.cli import main


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from synthct.data.phantom import write_phantoms

    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(2, root, size=(32, 32, 10))
    return root


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("synthct: error: "), err
    return err[0]


TINY = ["--config", "tiny", "--set", "train.threads=1", "--device", "cpu"]


def test_precedence_preset_then_set_then_flags_and_config_saved(phantoms, tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "--data", str(phantoms), "--out", str(out), *TINY, "--steps", "2",
               "--set", "model.ngf=6", "--set", "train.lr=0.001", "--ngf", "8"])
    assert rc == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["ngf"] == 8  # direct flag beats --set
    assert saved["train"]["lr"] == 0.001  # --set beats the preset
    assert saved["model"]["blocks"] == 2 and saved["data"]["size"] == 32  # from the tiny preset
    assert saved["data"]["root"] == str(phantoms) and saved["train"]["steps"] == 2
    assert (out / "generator_mr2ct.safetensors").is_file()


def test_refuses_an_existing_run_unless_resume_or_overwrite(phantoms, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(phantoms), "--out", str(out), *TINY, "--steps", "1"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "--resume" in one_line_error(capsys)
    assert main(args + ["--overwrite"]) == 0
    assert main(["train", "--resume", str(out), "--steps", "2", "--set", "train.threads=1"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["steps"] == 2


@pytest.mark.parametrize("args, message", [
    (["--mr", "{tmp}/nope", "--ct", "{tmp}", "--out", "{tmp}/r"], "nope: not found"),
    (["--data", "{tmp}/missing", "--out", "{tmp}/r"], "missing: not found"),
    (["--mr", "{tmp}", "--out", "{tmp}/r"], "--mr and --ct go together"),
    (["--data", "{tmp}"], "--out RUN_DIR"),
    (["--resume", "{tmp}/none"], "run folder not found"),
    (["--data", "{tmp}", "--out", "{tmp}/r", "--config", "no_such_preset"], "no such config file or preset"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    rc = main(["train", *[a.format(tmp=tmp_path) for a in args]])
    assert rc == 2
    assert message in one_line_error(capsys)


def test_pix2pix_needs_paired_data(phantoms, tmp_path, capsys):
    mr, ct = tmp_path / "mr", tmp_path / "ct"
    mr.mkdir()
    ct.mkdir()
    for case in ("phantom_000", "phantom_001"):
        (mr / f"{case}.nii.gz").write_bytes((phantoms / case / "mr.nii.gz").read_bytes())
        (ct / f"{case}.nii.gz").write_bytes((phantoms / case / "ct.nii.gz").read_bytes())
    rc = main(["train", "--mr", str(mr), "--ct", str(ct), "--out", str(tmp_path / "r"), *TINY,
               "--model", "pix2pix", "--steps", "1"])
    assert rc == 2
    assert "pix2pix needs paired" in one_line_error(capsys)


def test_corrupted_checkpoint_on_resume_is_one_line(phantoms, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(phantoms), "--out", str(out), *TINY, "--steps", "1"]) == 0
    for name in ("state", "state.prev"):
        path = out / "checkpoints" / f"{name}.safetensors"
        if path.exists():
            path.write_bytes(path.read_bytes()[:100])
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--steps", "2"]) == 2
    assert "corrupted or truncated" in one_line_error(capsys)


def test_sigterm_mid_run_leaves_a_resumable_state(phantoms, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "synthct", "train", "--data", str(phantoms), "--out", str(out), *TINY,
           "--steps", "100000", "--set", "train.log_every=1", "--set", "train.checkpoint_every=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600  # a hang guard: the loop waits for three logged steps
        while not ((out / "log.csv").is_file() and len((out / "log.csv").read_text().splitlines()) > 3):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    from synthct.engine.checkpoint import load_state

    state, which = load_state(out / "checkpoints")
    done = state["step"]
    assert which == "state" and done >= 3
    assert main(["train", "--resume", str(out), "--steps", str(done + 2)]) == 0
    assert load_state(out / "checkpoints")[0]["step"] == done + 2


def test_body_masked_training_resumes_and_its_synthetic_ct_is_air_outside_the_body(phantoms, tmp_path):
    from synthct.data.mask import body_mask
    from synthct.io.image import read_image

    out = tmp_path / "run"
    assert main(["train", "--data", str(phantoms), "--out", str(out), *TINY, "--set", "model.body_masked=true",
                 "--steps", "2"]) == 0
    assert main(["train", "--resume", str(out), "--steps", "4", "--device", "cpu"]) == 0  # pooled masks resume
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["body_masked"] is True
    meta = json.loads((out / "generator_mr2ct.json").read_text())
    assert meta["step"] == 4 and meta["body_masked"] is True
    mr = phantoms / "phantom_000" / "mr.nii.gz"
    assert main(["translate", "--model", str(out), "--direction", "mr2ct", str(mr), "--out", str(tmp_path / "sct"),
                 "--device", "cpu"]) == 0
    sct = read_image(tmp_path / "sct" / "mr_sct.nii.gz").array
    body = body_mask(read_image(mr).array, "mr")
    assert (~body).any() and (sct[~body] == -1000).all() and (sct[body] > -1000).any()
    assert main(["translate", "--model", str(out), "--direction", "mr2ct", str(mr), "--out", str(tmp_path / "raw"),
                 "--device", "cpu", "--mask", "none"]) == 0
    assert (read_image(tmp_path / "raw" / "mr_sct.nii.gz").array[~body] > -1000).any()


REMOVED_AT_DEFAULTS = {"model": {"upsample": "transpose", "d_norm": "instance", "d_scales": 1,
                                 "lambda_source_fake": 0.0, "warmup_target": "restore"},
                       "train": {"coarse_size": None, "coarse_until": 0.5, "contrast_warmup": 0.0,
                                 "discriminator_warmup": 0.0}}


def test_an_older_run_listing_removed_options_at_their_defaults_resumes(phantoms, tmp_path):
    """config.yaml and sidecars of runs made while the probes existed list them at their defaults."""
    out = tmp_path / "run"
    assert main(["train", "--data", str(phantoms), "--out", str(out), *TINY, "--steps", "2"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    for section, values in REMOVED_AT_DEFAULTS.items():
        saved[section].update(values)
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    for sidecar in out.glob("generator_*.json"):
        meta = json.loads(sidecar.read_text())
        for section, values in REMOVED_AT_DEFAULTS.items():
            meta["config"][section].update(values)
        meta["architecture"]["upsample"] = "transpose"
        sidecar.write_text(json.dumps(meta))
    mr = phantoms / "phantom_000" / "mr.nii.gz"
    assert main(["translate", "--model", str(out), "--direction", "mr2ct", str(mr), "--out", str(tmp_path / "sct"),
                 "--device", "cpu"]) == 0
    assert main(["train", "--resume", str(out), "--steps", "4", "--set", "train.threads=1"]) == 0
    resumed = yaml.safe_load((out / "config.yaml").read_text())
    assert resumed["train"]["steps"] == 4 and "d_scales" not in resumed["model"]


@pytest.mark.parametrize("section, key, value", [("model", "d_scales", 3), ("model", "upsample", "resize"),
                                                 ("model", "d_norm", "none"), ("train", "contrast_warmup", 0.2),
                                                 ("train", "coarse_size", 64)])
def test_a_removed_option_set_to_something_else_is_refused_in_one_line(phantoms, tmp_path, capsys, section, key,
                                                                      value):
    message = f"{section}.{key} was removed (it did not help; see docs/RESULTS.md): delete it from the config"
    args = ["train", "--data", str(phantoms), "--out", str(tmp_path / "r"), *TINY, "--steps", "1"]
    assert main(args + ["--set", f"{section}.{key}={value}"]) == 2
    assert one_line_error(capsys).endswith(message)
    config = tmp_path / "old.yaml"
    config.write_text(yaml.safe_dump({section: {key: value}}))
    assert main([*args[:5], "--config", str(config)]) == 2
    assert one_line_error(capsys) == f"synthct: error: {config}: {message}"
    assert not (tmp_path / "r").exists()


def test_list_options_prints_every_option_with_default_and_meaning(capsys):
    import dataclasses

    from synthct.config import SECTIONS

    assert main(["train", "--list-options"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = [f"{section}.{f.name} = " for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    assert [line[:len(prefix)] for line, prefix in zip(lines, expected)] == expected and len(lines) == len(expected)
    assert any(line.startswith("train.lr = 0.0002 ") and "learning rate" in line for line in lines)
    assert any(line.startswith("model.lambda_l1 = 100.0 ") and line.endswith("(pix2pix)") for line in lines)


def test_docs_config_md_is_the_generated_reference(capsys):
    """docs/CONFIG.md is written by `synthct train --list-options --markdown > docs/CONFIG.md`."""
    from pathlib import Path

    assert main(["train", "--list-options", "--markdown"]) == 0
    committed = Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md"
    assert capsys.readouterr().out == committed.read_text(encoding="utf-8")
