"""`synthct train` restarts: starts judged by the training health check and set aside within one
step budget, on by default for an unpaired CycleGAN. Tiny phantom runs in fp32 on one thread; the
judgement is injected where the outcome matters, so no test hopes for a training outcome."""

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


def _judged(monkeypatch, condemned: list[list[str]]) -> list[list[str]]:
    """Inject the condemning failures of each judged start (``condemned[i]`` for the i-th); returns
    the failures the real health check found at each judged start."""
    found = []
    judge_start = restarts.judge_start

    def judge(run_dir):
        judged = judge_start(run_dir)
        found.append(judged["health"])
        return judged | {"failures": condemned[len(found) - 1]}

    monkeypatch.setattr(restarts, "judge_start", judge)
    return found


def _steps(run_dir) -> list[int]:
    with open(run_dir / "log.csv", newline="") as fh:
        return [int(row["step"]) for row in csv.DictReader(fh)]


def _train_config(run_dir) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["train"]


def _starts(run_dir) -> list[dict]:
    return json.loads((run_dir / "restarts.json").read_text(encoding="utf-8"))["starts"]


def test_condemned_starts_are_set_aside_and_their_steps_count_toward_the_budget(phantoms, tmp_path, monkeypatch,
                                                                                capsys):
    found = _judged(monkeypatch, [["mr_order"], ["hidden_code"]])
    run = tmp_path / "run"
    assert _train(phantoms, run, "--steps", "10", "--restarts", "2", "--restart-check-steps", "4") == 0
    assert len(found) == 2
    for seed in (5, 6):
        aside = run / "restarts" / f"seed_{seed}"
        assert _steps(aside) == [1, 2, 3, 4] and _train_config(aside)["seed"] == seed
        assert (aside / "generator_mr2ct.safetensors").is_file()
    # The last start is kept unjudged and trains what the two set aside left: 10 - 2 * 4 steps.
    assert _train_config(run)["seed"] == 7 and _steps(run) == [1, 2]
    verdicts = json.loads((run / "restarts.json").read_text(encoding="utf-8"))
    assert verdicts["check_steps"] == 4 and verdicts["condemning"] == list(restarts.CONDEMNING)
    assert [(s["seed"], s["verdict"].split(" (")[0]) for s in verdicts["starts"]] == [
        (5, "set aside"), (6, "set aside"), (7, "kept")]
    assert [s.get("failures") for s in verdicts["starts"]] == [["mr_order"], ["hidden_code"], None]
    err = capsys.readouterr().err
    assert "restart verdict: seed 5: keeps the MR's contrast order; set aside (mr_order)" in err and "6 steps left" in err
    assert "seed 6: cycle closes through a hidden code; set aside (hidden_code)" in err


def test_a_learning_start_is_resumed_exactly_to_the_rest_of_the_budget(phantoms, tmp_path, monkeypatch):
    _judged(monkeypatch, [["mr_order"], []])
    run = tmp_path / "run"
    assert _train(phantoms, run, "--steps", "10", "--restarts", "3", "--restart-check-steps", "4") == 0
    assert sorted(p.name for p in (run / "restarts").iterdir()) == ["seed_5"]
    config = _train_config(run)
    assert (config["seed"], config["steps"], config["stop_at_step"]) == (6, 6, None)
    assert _steps(run) == list(range(1, 7))
    assert [s["verdict"].split(" (")[0] for s in _starts(run)] == ["set aside", "kept"]
    # Judged and resumed, the kept start ends where the same seed trained straight through does.
    plain = tmp_path / "plain"
    assert _train(phantoms, plain, "--steps", "6", "--seed", "6", "--restarts", "0") == 0
    sha = [json.loads((folder / "generator_mr2ct.json").read_text())["sha256"] for folder in (run, plain)]
    assert sha[0] == sha[1]


def test_a_budget_too_short_to_judge_another_start_keeps_the_next_one(phantoms, tmp_path, monkeypatch):
    found = _judged(monkeypatch, [["mr_order"]])
    run = tmp_path / "run"
    assert _train(phantoms, run, "--steps", "6", "--restarts", "3", "--restart-check-steps", "4") == 0
    assert len(found) == 1 and _train_config(run)["seed"] == 6 and _steps(run) == [1, 2]


def test_the_judge_reads_the_health_check_at_the_end_of_the_start(phantoms, tmp_path):
    run = tmp_path / "run"
    assert _train(phantoms, run, "--steps", "6", "--restarts", "1", "--restart-check-steps", "4") == 0
    judged = run / "restarts" / "seed_5" if (run / "restarts").exists() else run
    check = json.loads((judged / "health.json").read_text(encoding="utf-8"))["checks"][0]
    start = _starts(run)[0]
    condemning = [name for name in check["failures"] if name in ("mr_order", "hidden_code")]
    assert check["step"] == 4 and start["health"] == check["failures"] and start["failures"] == condemning
    assert (judged != run) == bool(condemning)


def test_only_the_mrs_order_and_a_hidden_code_condemn_a_start(tmp_path):
    # Dark and discriminators at chance only warn: on the brain preset's validation runs both were
    # seen at the first checks of runs that reached the CT's contrast (docs/RESULTS.md, "Restarts").
    for failures, condemned in ((["dark", "discriminators_at_chance", "off_ct_values"], []),
                                (["dark", "mr_order"], ["mr_order"]), (["hidden_code"], ["hidden_code"])):
        (tmp_path / "health.json").write_text(json.dumps({"checks": [{"step": 4, "failures": failures}]}))
        assert restarts.judge_start(tmp_path) == {"health": failures, "failures": condemned}


def test_a_second_run_into_a_folder_with_set_aside_starts_needs_overwrite(phantoms, tmp_path, monkeypatch, capsys):
    _judged(monkeypatch, [["mr_order"], ["mr_order"]])
    run = tmp_path / "run"
    command = ["--steps", "6", "--restarts", "1", "--restart-check-steps", "4"]
    assert _train(phantoms, run, *command) == 0
    capsys.readouterr()
    assert _train(phantoms, run, *command) == 2
    assert "already holds a run with restarts; use --overwrite" in capsys.readouterr().err
    assert _train(phantoms, run, *command, "--overwrite") == 0
    assert sorted(p.name for p in (run / "restarts").iterdir()) == ["seed_5"]
    assert len(_starts(run)) == 2


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "1", "--restarts", "1"], "--restarts counts the budget in steps: give --steps N"),
    (["--steps", "8", "--restarts", "1", "--restart-check-steps", "1"], "--restart-check-steps must be at least 2"),
    (["--steps", "8", "--restarts", "-1"], "--restarts must be at least 1 (0 turns them off)"),
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


def test_an_unpaired_cyclegan_with_a_step_budget_restarts_by_default(phantoms, tmp_path, monkeypatch, capsys):
    found = _judged(monkeypatch, [["mr_order"]] * restarts.DEFAULT_RESTARTS)
    run = tmp_path / "run"
    assert _train(phantoms, run, "--steps", "20", "--restart-check-steps", "4") == 0
    assert len(found) == restarts.DEFAULT_RESTARTS
    assert sorted(p.name for p in (run / "restarts").iterdir()) == [f"seed_{5 + i}" for i in range(len(found))]
    starts = _starts(run)
    assert starts[-1]["verdict"] == "kept (last start, not judged)" and len(starts) == len(found) + 1
    assert _steps(run) == list(range(1, 20 - 4 * len(found) + 1))
    assert "training without restarts" not in capsys.readouterr().err


@pytest.mark.parametrize("extra, why", [
    (["--minutes", "5", "--steps", "8"], "a time budget (--minutes) cannot be shared between starts"),
    (["--epochs", "1"], "the budget is in epochs"),
    (["--steps", "3"], "3 steps are too few to judge a start at step 4"),
    (["--steps", "8", "--set", "train.stop_at_step=5"], "train.stop_at_step is set"),
])
def test_where_restarts_cannot_apply_the_run_says_so_once_and_trains_without(phantoms, tmp_path, capsys, extra,
                                                                             why):
    run = tmp_path / "run"
    assert _train(phantoms, run, "--restart-check-steps", "4", *extra) == 0
    err = capsys.readouterr().err
    assert err.count("synthct: training without restarts") == 1 and why in err
    assert not (run / "restarts").exists() and not (run / "restarts.json").exists()


@pytest.mark.parametrize("extra", [["--restarts", "0"], ["--model", "pix2pix"]])
def test_restarts_off_or_not_for_this_model_train_one_start_without_a_word(phantoms, tmp_path, capsys, extra):
    run = tmp_path / "run"
    assert _train(phantoms, run, "--steps", "6", "--restart-check-steps", "4", *extra) == 0
    assert _steps(run) == list(range(1, 7)) and not (run / "restarts.json").exists()
    assert "without restarts" not in (err := capsys.readouterr().err) and "restart verdict" not in err


def test_restarts_are_off_under_torchrun(monkeypatch):
    from synthct.engine import load_run_config

    cfg = load_run_config("tiny")
    cfg.train.steps = 1000
    assert restarts.default_restarts(cfg) == (restarts.DEFAULT_RESTARTS, None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    count, why = restarts.default_restarts(cfg)
    assert count == 0 and "not under torchrun" in why


def test_the_report_says_which_starts_were_set_aside(phantoms, tmp_path, monkeypatch):
    import numpy as np

    from synthct.errors import SynthctError
    from synthct.eval.report import ReportCase, write_report

    _judged(monkeypatch, [["mr_order"], []])
    run = tmp_path / "run"
    assert _train(phantoms, run, "--steps", "10", "--restarts", "2", "--restart-check-steps", "4") == 0
    ct = np.zeros((2, 8, 8), np.float32)
    case, summary = ReportCase("case", ct, ct), {"mode": "hu", "metrics": {}}

    def report(name: str) -> str:
        return write_report(tmp_path / name / "index.html", [case], summary, [], run_dir=run).read_text()

    section = report("restarted").split('<div id="restarts">')[1].split("</div>")[0]
    assert "1 start(s) set aside by the health check at step 4" in section
    assert "<td>5</td><td>set aside (mr_order) in restarts/seed_5, 6 steps left" in section
    assert "<td>6</td><td>kept (healthy), trained to 6 steps" in section
    (run / "restarts.json").write_text('{"starts": [{"seed": 5}]}')
    with pytest.raises(SynthctError, match="not a restarts record written by synthct train"):
        report("damaged")
    (run / "restarts.json").unlink()
    assert 'id="restarts"' not in report("plain")
