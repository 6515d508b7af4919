"""The demo end to end, small: phantoms -> unpaired training -> sCT -> HU metrics -> report."""

import json

import pytest

from synthct.cli import main
from synthct.demo import DemoSettings, run_demo
from synthct.errors import SynthctError

SMALL = dict(size=48, depth=16, spacing=(4.0, 4.0, 6.0), ngf=16, ndf=16, blocks=3, train_cases=4)
STEPS = 150


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    # The outcome depends on the precision, so it is fixed (the budget is counted in steps).
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, DemoSettings(steps=STEPS, precision="fp32", **SMALL), log=lambda *_: None)


def test_demo_training_beats_the_untrained_model(demo):
    out, result = demo
    assert result.steps == STEPS
    # Both scored as translate's defaults (flip averaging, air outside the body): measured 321 HU
    # against 515 HU untrained (ratio 0.62; without flip averaging 350 against 591).
    assert result.mae_trained < 0.7 * result.mae_untrained


def test_demo_trains_on_unpaired_cases_and_writes_everything(demo):
    out, result = demo
    mr_cases = {p.name for p in (out / "train" / "mr").iterdir()}
    ct_cases = {p.name for p in (out / "train" / "ct").iterdir()}
    assert mr_cases and ct_cases and not (mr_cases & ct_cases)
    test_cases = {p.name for p in (out / "test").iterdir()}
    assert not test_cases & {n.split(".")[0] for n in mr_cases | ct_cases}
    for case in test_cases:
        assert (out / "sct" / case / "sct.nii.gz").is_file()
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["metrics"]["mae"]["mean"] == pytest.approx(result.mae_trained)
    page = result.report.read_text()
    assert all(case in page for case in test_cases)
    assert "synthetic" in page.lower()


def test_demo_refuses_to_clear_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(SynthctError, match="not empty"):
        run_demo(tmp_path, DemoSettings(steps=2, **SMALL))
    assert main(["demo", "--out", str(tmp_path), "--overwrite", "--steps", "2"]) == 2
    assert "did not create" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_out_naming_a_file_is_a_one_line_error(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    assert main(["demo", "--out", str(target), "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"synthct: error: {target}: exists and is not a folder"]
    assert target.read_text() == "keep me"


def test_demo_set_overrides_its_training_config(tmp_path, capsys):
    import yaml

    run_demo(tmp_path / "d", DemoSettings(steps=2, precision="fp32", overrides=("model.lambda_identity=0",), **SMALL),
             log=lambda *_: None)
    saved = yaml.safe_load((tmp_path / "d" / "run" / "config.yaml").read_text())
    assert saved["model"]["lambda_identity"] == 0 and saved["train"]["steps"] == 2
    capsys.readouterr()  # the training's own log lines
    assert main(["demo", "--out", str(tmp_path / "e"), "--steps", "2", "--set", "model.nope=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("synthct: error:") and "model.nope" in err[0]
    assert not (tmp_path / "e").exists()


def test_a_demo_stopped_by_a_signal_says_interrupted_and_exits_130(tmp_path, monkeypatch, capsys):
    import synthct.engine.trainer as trainer

    def stopped_by_sigterm(cfg, run_dir):  # what train returns when SIGTERM ends it at step 3
        return trainer.TrainResult(run_dir=run_dir, steps=3, total_steps=cfg.train.steps, epoch=0,
                                   stopped="signal", signal=15)

    monkeypatch.setattr(trainer, "train", stopped_by_sigterm)
    code = main(["demo", "--out", str(tmp_path / "demo"), "--steps", "5", "--size", "32"])
    assert code == 130
    err = capsys.readouterr().err
    assert "synthct: interrupted" in err and "internal error" not in err
