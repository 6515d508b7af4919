"""SYNTHCT_PRECISION: one switch for the default precision of training and translation."""

import pytest
import torch

from synthct.cli import main
from synthct import runtime as precision_module
from synthct.runtime import resolve_precision
from synthct.errors import SynthctError

CPU = torch.device("cpu")


@pytest.fixture
def fast_bf16_cpu(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_bf16_support", lambda: "AMX-BF16")


@pytest.fixture
def avx2_only_cpu(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_bf16_support", lambda: None)


def test_the_switch_replaces_the_automatic_choice_on_any_cpu(monkeypatch, fast_bf16_cpu):
    monkeypatch.setenv("SYNTHCT_PRECISION", "fp32")
    chosen = resolve_precision("auto", CPU)
    assert chosen.name == "fp32" and chosen.reason == "SYNTHCT_PRECISION=fp32"
    monkeypatch.setenv("SYNTHCT_PRECISION", "auto")
    assert resolve_precision("auto", CPU).name == "bf16"  # the hardware decides again
    monkeypatch.delenv("SYNTHCT_PRECISION")
    assert resolve_precision("auto", CPU).name == "bf16"


def test_bf16_can_be_forced_where_the_cpu_has_no_fast_bf16(monkeypatch, avx2_only_cpu):
    monkeypatch.setenv("SYNTHCT_PRECISION", "auto")
    assert resolve_precision("auto", CPU).name == "fp32"
    monkeypatch.setenv("SYNTHCT_PRECISION", " BF16 ")
    assert resolve_precision("auto", CPU).dtype == torch.bfloat16


def test_an_explicit_precision_wins_over_the_switch(monkeypatch):
    monkeypatch.setenv("SYNTHCT_PRECISION", "bf16")
    assert resolve_precision("fp32", CPU).name == "fp32"
    with pytest.raises(SynthctError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", CPU)


def test_translation_follows_the_switch(monkeypatch):
    from synthct.translate.translator import resolve_runtime

    monkeypatch.setenv("SYNTHCT_PRECISION", "bf16")
    assert resolve_runtime("cpu", "auto") == ("cpu", "bf16")
    monkeypatch.setenv("SYNTHCT_PRECISION", "fp32")
    assert resolve_runtime("cpu", "auto") == ("cpu", "fp32")


def test_training_follows_the_switch(monkeypatch, tmp_path):
    from synthct.data.phantom import write_phantoms
    from synthct.engine import load_run_config
    from synthct.engine.trainer import train

    write_phantoms(1, tmp_path / "data", size=(32, 32, 8))
    cfg = load_run_config("tiny")
    cfg.data.root, cfg.train.steps, cfg.train.threads, cfg.train.device = str(tmp_path / "data"), 1, 1, "cpu"
    monkeypatch.setenv("SYNTHCT_PRECISION", "bf16")
    assert train(cfg, tmp_path / "run", quiet=True).precision == "bf16"


@pytest.mark.parametrize("command", [["train", "--data", "nowhere", "--out", "run", "--steps", "1"],
                                     ["demo", "--out", "demo", "--steps", "1"]])
def test_a_wrong_value_is_a_one_line_error_before_anything_is_written(monkeypatch, tmp_path, capsys, command):
    from synthct.data.phantom import write_phantoms

    write_phantoms(1, tmp_path / "nowhere", size=(32, 32, 8))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNTHCT_PRECISION", "fp64")
    assert main([*command, "--config", "tiny"] if command[0] == "train" else command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["synthct: error: SYNTHCT_PRECISION='fp64' is not a precision (use auto, fp32, bf16)"]
