"""`synthct train --restarts N`: starts judged by the training health check, set aside within one
step budget. Tiny phantom runs in fp32 on one thread; the judgement is injected where the outcome
matters, so no test hopes for a training outcome."""

import csv
import json

import pytest
import yaml

from synthct.cli import main
from synthct.engine import restarts


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from synthct.data.phantom import write_phantoms

    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(2, root, size=(32, 32, 10))
    return root


TINY = ["--config", "tiny", "--set", "train.threads=1", "--set", "train.sample_every=0",
        "--set", "train.checkpoint_every=0", "--precision", "fp32", "--device", "cpu", "--seed", "5"]


def _train(phantoms, run, *extra) -> int:
    return main(["train", "--data", str(phantoms), "--out", str(run), *TINY, *extra])


def _judged(monkeypatch, losses: list[float], failures: tuple[str, ...] = ()) -> list[str]:
    """Inject the health check's verdicts: each judged start's discriminator loss from ``losses``,
    and ``failures`` besides; returns the discriminator windows the real check judged."""
    asked = []
    judge_start = restarts.judge_start

    def judge(run_dir, threshold):
        judged = judge_start(run_dir, threshold)
        asked.append(judged["window"])
        loss = losses[len(asked) - 1]
        return judged | {"discriminator_loss": loss,
                         "failures": [*failures, *([restarts.AT_CHANCE] if loss >= threshold else [])]}

    monkeypatch.setattr(restarts, "judge_start", judge)
    return asked


def _steps(run_dir) -> list[int]:
    with open(run_dir / "log.csv", newline="") as fh:
        return [int(row["step"]) for row in csv.DictReader(fh)]


def _train_config(run_dir) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["train"]


def test_starts_at_chance_are_set_aside_and_their_steps_count_toward_the_budget(phantoms, tmp_path, monkeypatch,
                                                                                  capsys):
    asked = _judged(monkeypatch, [0.25, 0.24])
    run = tmp_path / "run"
    assert _train(phantoms, run, "--steps", "10", "--restarts", "2", "--restart-check-steps", "4") == 0
    assert asked == ["3-4", "3-4"]  # the second half of the check
    for seed in (5, 6):
        aside = run / "restarts" / f"seed_{seed}"
        assert _steps(aside) == [1, 2, 3, 4] and _train_config(aside)["seed"] == seed
        assert (aside / "generator_mr2ct.safetensors").is_file()
    # The last start is kept unjudged and trains what the two set aside left: 10 - 2 * 4 steps.
    assert _train_config(run)["seed"] == 7 and _steps(run) == [1, 2]
    verdicts = json.loads((run / "restarts.json").read_text(encoding="utf-8"))
    assert [(s["seed"], s["verdict"].split(" (")[0]) for s in verdicts["starts"]] == [
        (5, "set aside"), (6, "set aside"), (7, "kept")]
    assert [s.get("discriminator_loss") for s in verdicts["starts"]] == [0.25, 0.24, None]
    err = capsys.readouterr().err
    assert "seed 5: discriminator loss 0.250 over steps 3-4; discriminators at chance; set aside" in err
    assert "6 steps left" in err


def test_a_learning_start_is_resumed_exactly_to_the_rest_of_the_budget(phantoms, tmp_path, monkeypatch):
    _judged(monkeypatch, [0.3, 0.1])
    run = tmp_path / "run"
    assert _train(phantoms, run, "--steps", "10", "--restarts", "3", "--restart-check-steps", "4") == 0
    assert sorted(p.name for p in (run / "restarts").iterdir()) == ["seed_5"]
    config = _train_config(run)
    assert (config["seed"], config["steps"], config["stop_at_step"]) == (6, 6, None)
    assert _steps(run) == list(range(1, 7))
    starts = json.loads((run / "restarts.json").read_text(encoding="utf-8"))["starts"]
    assert [s["verdict"].split(" (")[0] for s in starts] == ["set aside", "kept"] and len(starts) == 2
    # Judged and resumed, the kept start ends where the same seed trained straight through does.
    plain = tmp_path / "plain"
    assert _train(phantoms, plain, "--steps", "6", "--seed", "6") == 0
    sha = [json.loads((folder / "generator_mr2ct.json").read_text())["sha256"] for folder in (run, plain)]
    assert sha[0] == sha[1]


def test_a_budget_too_short_to_judge_another_start_keeps_the_next_one(phantoms, tmp_path, monkeypatch):
    asked = _judged(monkeypatch, [0.25])
    run = tmp_path / "run"
    assert _train(phantoms, run, "--steps", "6", "--restarts", "3", "--restart-check-steps", "4") == 0
    assert len(asked) == 1 and _train_config(run)["seed"] == 6 and _steps(run) == [1, 2]


def test_a_start_the_health_check_fails_for_another_reason_is_set_aside(phantoms, tmp_path, monkeypatch, capsys):
    _judged(monkeypatch, [0.1, 0.1], failures=("hidden_code",))
    run = tmp_path / "run"
    assert _train(phantoms, run, "--steps", "10", "--restarts", "1", "--restart-check-steps", "4") == 0
    starts = json.loads((run / "restarts.json").read_text(encoding="utf-8"))["starts"]
    assert starts[0]["failures"] == ["hidden_code"] and starts[0]["verdict"].startswith("set aside (hidden_code)")
    assert "over steps 3-4; cycle closes through a hidden code; set aside" in capsys.readouterr().err


def test_the_judge_reads_the_health_check_of_the_logged_discriminator_losses(phantoms, tmp_path):
    run = tmp_path / "run"
    # A threshold no LSGAN loss reaches: only the check's other signals can set the start aside.
    assert _train(phantoms, run, "--steps", "6", "--restarts", "1", "--restart-check-steps", "4",
                  "--restart-threshold", "1e9") == 0
    judged = run / "restarts" / "seed_5" if (run / "restarts").exists() else run
    with open(judged / "log.csv", newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if int(row["step"]) in (3, 4)]
    expected = sum((float(r["D_ct"]) + float(r["D_mr"])) / 2 for r in rows) / 2
    check = json.loads((judged / "health.json").read_text(encoding="utf-8"))["checks"][0]
    start = json.loads((run / "restarts.json").read_text(encoding="utf-8"))["starts"][0]
    assert check["step"] == 4 and start["discriminator_loss"] == pytest.approx(expected)
    condemning = [name for name in check["failures"] if name in ("mr_order", "hidden_code")]
    assert start["health"] == check["failures"] and start["failures"] == condemning
    assert (judged != run) == bool(condemning)


def test_the_threshold_rejudges_the_checks_discriminator_signal_and_a_dark_start_is_not_condemned(tmp_path):
    evidence = {"dark": {"failed": True}, restarts.AT_CHANCE: {"failed": True, "loss": 0.22, "window": "3-4"}}
    failures = ["dark", restarts.AT_CHANCE]
    (tmp_path / "health.json").write_text(json.dumps({"checks": [{"step": 4, "failures": failures,
                                                                  "evidence": evidence}]}))
    assert restarts.judge_start(tmp_path, 0.25) == {"health": failures, "failures": [], "discriminator_loss": 0.22,
                                                    "window": "3-4"}
    assert restarts.judge_start(tmp_path, 0.20)["failures"] == [restarts.AT_CHANCE]


def test_a_second_run_into_a_folder_with_set_aside_starts_needs_overwrite(phantoms, tmp_path, monkeypatch, capsys):
    _judged(monkeypatch, [0.25, 0.25])
    run = tmp_path / "run"
    command = ["--steps", "6", "--restarts", "1", "--restart-check-steps", "4"]
    assert _train(phantoms, run, *command) == 0
    capsys.readouterr()
    assert _train(phantoms, run, *command) == 2
    assert "already holds a run with restarts; use --overwrite" in capsys.readouterr().err
    assert _train(phantoms, run, *command, "--overwrite") == 0
    assert sorted(p.name for p in (run / "restarts").iterdir()) == ["seed_5"]
    assert len(json.loads((run / "restarts.json").read_text(encoding="utf-8"))["starts"]) == 2


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "1", "--restarts", "1"], "--restarts counts the budget in steps: give --steps N"),
    (["--steps", "8", "--restarts", "1", "--restart-check-steps", "1"], "--restart-check-steps must be at least 2"),
    (["--steps", "8", "--restarts", "1", "--restart-threshold", "0"], "--restart-threshold must be positive"),
    (["--steps", "8", "--restarts", "-1"], "--restarts must be at least 1"),
    (["--steps", "8", "--restarts", "1", "--set", "model.gan_mode=vanilla"], "model.gan_mode is vanilla"),
    (["--steps", "8", "--restarts", "1", "--set", "train.stop_at_step=3"], "sets train.stop_at_step itself"),
])
def test_settings_that_cannot_be_judged_are_one_line_errors(phantoms, tmp_path, capsys, extra, message):
    assert _train(phantoms, tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "run").exists()


def test_restarts_do_not_combine_with_resume(phantoms, tmp_path, capsys):
    assert _train(phantoms, tmp_path / "run", "--steps", "1") == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run"), "--restarts", "1"]) == 2
    assert "--resume continues the kept start without it" in capsys.readouterr().err
