"""Restarts judged by the training health check: on by default for an unpaired CycleGAN with a step
budget (``synthct train``; ``--restarts 0`` turns them off).

A CycleGAN start can spend its whole budget in one of the failures that synthct.eval.health
recognises, and such a start rarely recovers. Each start trains ``check_steps`` steps
(``train.stop_at_step``), where the health check judges it (RUN_DIR/health.json). The failures
that condemn a start this early are :data:`CONDEMNING`:

* a start without any of them is resumed to the end;
* a start with one is set aside in ``RUN_DIR/restarts/seed_<n>/`` and the next seed starts.

At most N starts are set aside; the last start is always kept. The steps of the starts set aside
count toward ``train.steps``: the kept start trains what they left. The verdicts go to
``RUN_DIR/restarts.json``.

The defaults follow the rule in docs/RESULTS.md ("Restarts"), applied to the brain preset's full
runs on the validation fold: at step 500, the first check every run had, the MR's order condemned
each of the 5 runs that missed the CT's contrast and none of the 4 that reached it; discriminators
at chance condemned 2 of those 4, so they only warn. At the preset's failure rate (1 start in 3),
3 restarts leave a run in a failed start about once in 81.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

from synthct.config import RunConfig
from synthct.errors import SynthctError
from synthct.eval.health import FAILURE_TEXT, read_health
from synthct.io.atomic import atomic_write_text

DEFAULT_RESTARTS = 3
DEFAULT_CHECK_STEPS = 500
SET_ASIDE = "restarts"
VERDICTS = "restarts.json"
# A dark translation does not condemn a start at the check step: on the real scans every hour that
# locked into CT's contrast rendered the brain far too dark first, and left that phase between
# minutes 15 and 50 (docs/RESULTS.md). A hidden code is what kept run X dark to the end.
CONDEMNING = ("mr_order", "hidden_code")


def default_restarts(cfg: RunConfig, check_steps: int = DEFAULT_CHECK_STEPS) -> tuple[int, str | None]:
    """The restarts a new run gets when ``--restarts`` is not given, and why there are none where
    they would apply but cannot (said once to the user): an unpaired CycleGAN with a step budget long
    enough to judge a start gets :data:`DEFAULT_RESTARTS`; other models, and the CycleGAN with pairs,
    get none without a word. The reason is for ``train(note=...)``, said once the run has started, so
    that an error before it stays the only line."""
    from synthct.engine.distributed import detect_env

    if cfg.model.name != "cyclegan" or cfg.data.pairs:
        return 0, None
    if not cfg.train.steps:
        why = "the budget is in epochs; restarts count it in steps (--steps N)"
    elif cfg.train.max_minutes is not None:
        why = "a time budget (--minutes) cannot be shared between starts"
    elif cfg.train.stop_at_step is not None:
        why = "train.stop_at_step is set"
    elif detect_env().enabled:
        why = "restarts run in a single process, not under torchrun"
    elif cfg.train.steps <= check_steps:
        why = f"{cfg.train.steps} steps are too few to judge a start at step {check_steps}"
    else:
        return DEFAULT_RESTARTS, None
    return 0, f"training without restarts: {why}"


def judge_start(run_dir: Path) -> dict:
    """The health check's verdict at the end of a start (its last in health.json): {"health": the
    check's failures, "failures": those of them that condemn the start}."""
    record = read_health(run_dir)
    if not record or not record["checks"]:
        raise SynthctError("no health check (health.json) in this run folder", run_dir)
    latest = record["checks"][-1]
    return {"health": latest["failures"], "failures": [name for name in latest["failures"] if name in CONDEMNING]}


def check_restarts(cfg: RunConfig, restarts: int, check_steps: int) -> None:
    """Refuse settings under which a start cannot be judged or its budget counted."""
    from synthct.engine.distributed import detect_env

    if restarts < 1:
        raise SynthctError(f"--restarts must be at least 1 (0 turns them off), got {restarts}")
    if check_steps < 2:
        raise SynthctError(f"--restart-check-steps must be at least 2, got {check_steps}")
    if not cfg.train.steps:
        raise SynthctError("--restarts counts the budget in steps: give --steps N (train.steps)")
    if cfg.train.stop_at_step is not None:
        raise SynthctError("--restarts sets train.stop_at_step itself; leave it unset")
    if detect_env().enabled:
        raise SynthctError("--restarts runs in a single process, not under torchrun")


def _clear_set_aside(run_dir: Path, overwrite: bool) -> None:
    """Starts set aside by an earlier run in this folder go with ``overwrite``, else they stop it."""
    for path in (run_dir / SET_ASIDE, run_dir / VERDICTS):
        if path.exists():
            if not overwrite:
                raise SynthctError("already holds a run with restarts; use --overwrite to start again", run_dir)
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _set_aside(run_dir: Path, seed: int) -> Path:
    target = run_dir / SET_ASIDE / f"seed_{seed}"
    target.mkdir(parents=True)
    for path in list(run_dir.iterdir()):
        if path.name not in (SET_ASIDE, VERDICTS):
            path.rename(target / path.name)
    return target


def _record(run_dir: Path, verdicts: list[dict], check_steps: int) -> None:
    atomic_write_text(run_dir / VERDICTS, json.dumps(
        {"check_steps": check_steps, "condemning": list(CONDEMNING), "starts": verdicts}, indent=2) + "\n")
    latest = verdicts[-1]
    judged = f"{', '.join(FAILURE_TEXT[name] for name in latest['failures'])}; " if latest.get("failures") else ""
    # Said where the trainer says what it does, so the verdicts sit in the run's log in order.
    print(f"synthct: restart verdict: seed {latest['seed']}: {judged}{latest['verdict']}", file=sys.stderr, flush=True)


def train_with_restarts(cfg: RunConfig, run_dir: str | Path, restarts: int = DEFAULT_RESTARTS,
                        check_steps: int = DEFAULT_CHECK_STEPS, overwrite: bool = False):
    """Train ``cfg`` into ``run_dir`` with up to ``restarts`` fresh starts (see the module docstring);
    returns the kept start's TrainResult, or that of a start stopped early (signal, time budget)."""
    from synthct.engine.trainer import train

    check_restarts(cfg, restarts, check_steps)
    run_dir, cfg = Path(run_dir), copy.deepcopy(cfg)
    _clear_set_aside(run_dir, overwrite)
    budget, first_seed, verdicts = cfg.train.steps, cfg.train.seed, []
    spent = 0  # steps of the starts set aside
    for attempt in range(restarts):
        cfg.train.seed, cfg.train.steps = first_seed + attempt, budget - spent
        if cfg.train.steps <= check_steps:
            break  # too few steps left to judge a start: the next one is the last
        cfg.train.stop_at_step = check_steps
        result = train(cfg, run_dir, overwrite=overwrite and attempt == 0)
        if result.stopped != "step":
            return result
        verdict = {"seed": cfg.train.seed, "steps": result.steps} | judge_start(run_dir)
        if not verdict["failures"]:
            verdicts.append(verdict | {"verdict": f"kept (healthy), trained to {cfg.train.steps} steps"})
            _record(run_dir, verdicts, check_steps)
            cfg.train.stop_at_step = None
            return train(cfg, run_dir, resume=True)
        folder = _set_aside(run_dir, cfg.train.seed)
        spent += result.steps
        verdicts.append(verdict | {"verdict": f"set aside ({', '.join(verdict['failures'])}) in "
                                              f"{folder.relative_to(run_dir)}, {budget - spent} steps left"})
        _record(run_dir, verdicts, check_steps)
    cfg.train.seed, cfg.train.steps, cfg.train.stop_at_step = first_seed + len(verdicts), budget - spent, None
    result = train(cfg, run_dir, overwrite=overwrite and not verdicts)
    # Recorded after the start: a folder that train refused to start in is left as it was.
    verdicts.append({"seed": cfg.train.seed, "steps": cfg.train.steps, "verdict": "kept (last start, not judged)"})
    _record(run_dir, verdicts, check_steps)
    return result
