"""Training crash safety: SIGKILL at random moments and during checkpoint writes, a crash at every
rename of a checkpoint rotation, corrupted checkpoints and generators, and failing writes.

The SIGKILL loop runs this file as a script: a small fork server that imports torch and synthct
once, then forks each training run (`synthct train` through ``synthct.cli.main``, exactly what
``python -m synthct train`` runs) and kills it with SIGKILL, so that eight kills and resumes take
seconds instead of eight interpreter and torch start-ups each.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STATE_NAMES = ("state", "state.next", "state.prev")
TINY = ["--config", "tiny", "--set", "train.threads=1", "--device", "cpu"]
RESUMED_AT = re.compile(r"resuming at step (\d+)")


def newest_complete_step(checkpoints: Path) -> int | None:
    """The highest step whose sidecar parses and whose checksum some weights file on disk has:
    what a resume must continue from. Independent of synthct's loader on purpose."""
    digests = {}
    for name in STATE_NAMES:
        weights = checkpoints / f"{name}.safetensors"
        if weights.is_file():
            digests[hashlib.sha256(weights.read_bytes()).hexdigest()] = name
    best = None
    for name in STATE_NAMES:
        try:
            info = json.loads((checkpoints / f"{name}.json").read_text())
        except (OSError, ValueError):
            continue
        if info.get("sha256") in digests:
            best = max(best if best is not None else -1, info["state"]["step"])
    return best


# --------------------------------------------------------------------------- SIGKILL loop

KILL_MODES = ("at a random moment", "inside a checkpoint file's write", "before a checkpoint rename")


def _die_at_checkpoint_io(mode: str, nth: int, checkpoints: Path) -> None:
    """Fault injection in a training child: SIGKILL itself at its ``nth`` checkpoint write (after
    half the file is on disk, at the fsync that would make it durable) or just before its ``nth``
    checkpoint rename. Where a kill lands is certain, whatever the machine's speed."""
    folder = os.path.realpath(checkpoints)
    count = 0

    def due(path) -> bool:
        nonlocal count
        if os.path.dirname(os.path.realpath(path)) != folder:
            return False
        count += 1
        return count == nth

    if mode == "inside a checkpoint file's write":
        real_fsync = os.fsync

        def fsync(fd):
            path = os.readlink(f"/proc/self/fd/{fd}")
            if due(path):
                os.truncate(path, os.path.getsize(path) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            real_fsync(fd)

        os.fsync = fsync
    elif mode == "before a checkpoint rename":
        real_replace = os.replace

        def replace(src, dst):
            if due(dst):
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)

        os.replace = replace


def _wait_until_training(checkpoints: Path, log: Path, first: bool, deadline: float) -> None:
    """Until the first checkpoint exists, or the resume line is logged (a hang guard, not a timing)."""
    while time.monotonic() < deadline and not (
            (checkpoints / "state.json").is_file() if first else RESUMED_AT.search(log.read_text())):
        time.sleep(0.005)


def _kill_loop(data: Path, run: Path, kills: int, seed: int) -> list[dict]:
    """Train, SIGKILL, resume, SIGKILL, ... then resume to the end; one record per process.
    Round 0 and every third round are killed by the parent at a random moment; the others kill
    themselves inside a checkpoint write or before one of its renames (fault injection)."""
    import random

    import torch  # noqa: F401 - imported before forking, so every child starts training at once

    from synthct.cli import main

    rng = random.Random(seed)
    checkpoints = run / "checkpoints"
    records = []
    for round_ in range(kills + 1):
        final = round_ == kills
        expected = newest_complete_step(checkpoints) if round_ else None
        if round_ == 0:
            args = ["train", "--data", str(data), "--out", str(run), *TINY, "--steps", "100000",
                    "--set", "train.checkpoint_every=1", "--set", "train.log_every=1"]
        else:
            args = ["train", "--resume", str(run), "--set", "train.threads=1"]
            if final:
                args += ["--steps", str(expected + 3)]
        mode = "to the end" if final else KILL_MODES[0 if round_ % 3 == 0 else round_ % 3]
        # Two files per checkpoint: from the third file on, the child has completed a checkpoint
        # in this round first, so training moves on between kills.
        nth = rng.randint(3, 8)
        log = run.parent / f"round{round_}.log"
        log.write_text("")
        pid = os.fork()
        if pid == 0:
            fd = os.open(log, os.O_WRONLY)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = 1
            try:
                _die_at_checkpoint_io(mode, nth, checkpoints)
                code = main(args)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        started = time.monotonic()
        try:
            if mode == KILL_MODES[0]:
                _wait_until_training(checkpoints, log, round_ == 0, started + 300)
                time.sleep(rng.uniform(0.0, 1.0))
                os.kill(pid, signal.SIGKILL)
        except BaseException:
            os.kill(pid, signal.SIGKILL)  # never leave a training child behind
            raise
        _, status = os.waitpid(pid, 0)
        text = log.read_text()
        resumed = RESUMED_AT.search(text)
        records.append({"round": round_, "mode": mode, "expected": expected, "seconds": time.monotonic() - started,
                        "resumed_at": int(resumed.group(1)) if resumed else None,
                        "killed": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL,
                        "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                        "left_behind": sorted(set(os.listdir(checkpoints)) - {f"{n}.{e}" for n in ("state", "state.prev")
                                                                               for e in ("json", "safetensors")}),
                        "log": text[-2000:]})
    return records


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from synthct.data.phantom import write_phantoms

    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(2, root, size=(32, 32, 10))
    return root


def test_sigkill_at_random_moments_and_mid_write_always_resumes_from_the_newest_complete_checkpoint(
        phantoms, tmp_path):
    from synthct.engine.checkpoint import load_state
    from synthct.models.saved import load_generator

    run = tmp_path / "run"
    kills = 6
    proc = subprocess.run([sys.executable, __file__, str(phantoms), str(run), str(kills), "0"],
                          capture_output=True, text=True, timeout=1200)  # a hang guard
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(proc.stdout)
    assert len(records) == kills + 1
    for record in records[:-1]:
        assert record["killed"], record  # no process died of its own error before the kill
    for record in records:
        assert "Traceback" not in record["log"] and "error" not in record["log"], record
        if record["resumed_at"] is not None:  # None: killed before it got that far
            assert record["resumed_at"] == record["expected"], record
    expected = [r["expected"] for r in records[1:]]
    assert expected == sorted(expected) and expected[-1] > expected[0], records
    # Every injected kill landed inside a checkpoint write: a half-written temporary or an
    # unrotated state.next is left behind for the next resume to get past.
    injected = [r for r in records[:-1] if r["mode"] in KILL_MODES[1:]]
    assert {r["mode"] for r in injected} == set(KILL_MODES[1:]), records
    for record in injected:
        assert record["left_behind"], record
    final = records[-1]
    assert final["exit"] == 0 and final["resumed_at"] == final["expected"], final
    state, which = load_state(run / "checkpoints")
    assert which == "state" and state["step"] == final["expected"] + 3
    assert not [n for n in os.listdir(run / "checkpoints") if n.endswith(".tmp")]
    assert not list(run.glob(".*.tmp"))
    generator, meta = load_generator(run, "mr2ct")
    assert meta["step"] == final["expected"] + 3


# --------------------------------------------------------------------------- a crash at every rename


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs (a BaseException, so no handler in
    synthct turns it into an error message)."""


def _state(step: int) -> dict:
    import torch

    return {"step": step, "weights": torch.full((64, 64), float(step)), "opt": {"lr": 0.1 * step}}


@pytest.mark.parametrize("crash_at", range(1, 8))
def test_a_crash_before_any_rename_of_save_state_keeps_the_newest_complete_state(tmp_path, monkeypatch, crash_at):
    """save_state renames six times (two atomic writes, four rotations); dying before the k-th
    rename must leave the newest complete state loadable, never a mixed one."""
    import torch

    from synthct.engine.checkpoint import load_state, save_state

    save_state(tmp_path, _state(1))
    save_state(tmp_path, _state(2))
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == crash_at:
            raise Crash
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    crashed = True
    try:
        save_state(tmp_path, _state(3))
        crashed = False
    except Crash:
        pass
    monkeypatch.undo()
    assert crashed == (crash_at <= 6) and len(calls) == min(crash_at, 6)
    # Both state.next files are complete once the second atomic write has renamed its file.
    assert newest_complete_step(tmp_path) == (3 if crash_at >= 3 else 2)
    state, _ = load_state(tmp_path)
    assert state["step"] == newest_complete_step(tmp_path)
    assert torch.equal(state["weights"], torch.full((64, 64), float(state["step"])))
    # Training goes on from there and the rotation heals.
    save_state(tmp_path, _state(4))
    state, which = load_state(tmp_path)
    assert (which, state["step"]) == ("state", 4)
    assert not list(tmp_path.glob(".*.tmp"))


# --------------------------------------------------------------------------- damaged checkpoints via the CLI


def one_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("synthct: error")]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture()
def trained(phantoms, tmp_path):
    from synthct.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", str(phantoms), "--out", str(run), *TINY, "--steps", "3",
                 "--set", "train.checkpoint_every=1"]) == 0
    return run


def _flip_byte(path: Path, offset_from_end: int = 64) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip weights", "truncate weights", "truncate sidecar", "edit sidecar step"])
def test_damaged_state_falls_back_to_the_previous_one_and_says_so(trained, capsys, damage):
    from synthct.cli import main
    from synthct.engine.checkpoint import load_state

    checkpoints = trained / "checkpoints"
    assert load_state(checkpoints)[0]["step"] == 3 and load_state(checkpoints.joinpath())[1] == "state"
    weights, sidecar = checkpoints / "state.safetensors", checkpoints / "state.json"
    if damage == "flip weights":
        _flip_byte(weights)  # same size: only the checksum can tell
    elif damage == "truncate weights":
        weights.write_bytes(weights.read_bytes()[:-1000])
    elif damage == "truncate sidecar":
        sidecar.write_text(sidecar.read_text()[:500])
    else:  # a sidecar edited by hand no longer matches the weights it claims
        info = json.loads(sidecar.read_text())
        info["sha256"] = "0" * 64
        sidecar.write_text(json.dumps(info))
    capsys.readouterr()
    assert main(["train", "--resume", str(trained), "--steps", "4", "--set", "train.threads=1"]) == 0
    err = capsys.readouterr().err
    assert "checkpoints/state was unusable; resuming from checkpoints/state.prev" in err
    assert "resuming at step 2" in err and "Traceback" not in err
    state, which = load_state(checkpoints)
    assert (which, state["step"]) == ("state", 4)


def test_every_state_damaged_is_one_line_naming_the_file(trained, capsys):
    from synthct.cli import main

    for name in STATE_NAMES:
        if (trained / "checkpoints" / f"{name}.safetensors").is_file():
            _flip_byte(trained / "checkpoints" / f"{name}.safetensors")
    capsys.readouterr()
    assert main(["train", "--resume", str(trained), "--steps", "4"]) == 2
    line = one_line_error(capsys)
    assert "checkpoints/state.safetensors: checksum mismatch" in line


@pytest.mark.parametrize("damage", ["flip weights", "truncate weights", "truncate sidecar"])
def test_damaged_generator_is_refused_by_translate_in_one_line(phantoms, trained, tmp_path, capsys, damage):
    from synthct.cli import main

    weights, sidecar = trained / "generator_mr2ct.safetensors", trained / "generator_mr2ct.json"
    if damage == "flip weights":
        _flip_byte(weights)
    elif damage == "truncate weights":
        weights.write_bytes(weights.read_bytes()[:200])
    else:
        sidecar.write_text(sidecar.read_text()[:40])
    capsys.readouterr()
    rc = main(["translate", "--model", str(trained), "--direction", "mr2ct",
               str(phantoms / "phantom_000" / "mr.nii.gz"), "--out",
               str(tmp_path / "out"), "--device", "cpu"])
    assert rc == 2
    line = one_line_error(capsys)
    target = sidecar if damage == "truncate sidecar" else weights
    assert str(target) in line and ("corrupted or truncated" in line), line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------- failing writes


@pytest.mark.parametrize("failing", ["create", "rename"])
def test_a_failing_checkpoint_write_keeps_the_previous_checkpoint_and_says_so(phantoms, tmp_path, capsys,
                                                                               monkeypatch, failing):
    """The disk fills up while training writes its third checkpoint: creating the file or renaming
    it fails with ENOSPC (simulated: tests run as root, where a read-only folder stops nothing)."""
    import tempfile

    from synthct.cli import main
    from synthct.engine import trainer
    from synthct.engine.checkpoint import load_state

    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    saves = []
    real_save_state, real_mkstemp, real_replace = trainer.save_state, tempfile.mkstemp, os.replace

    def disk_full(path) -> bool:
        return len(saves) >= 3 and Path(path).parent == checkpoints

    def save_state(folder, state):
        saves.append(state["step"])
        real_save_state(folder, state)

    def mkstemp(*args, dir=None, **kwargs):
        if disk_full(Path(dir) / "new"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkstemp(*args, dir=dir, **kwargs)

    def replace(src, dst):
        if disk_full(dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(trainer, "save_state", save_state)
    monkeypatch.setattr(*((tempfile, "mkstemp", mkstemp) if failing == "create" else (os, "replace", replace)))
    rc = main(["train", "--data", str(phantoms), "--out", str(run), *TINY, "--steps", "6",
               "--set", "train.checkpoint_every=1"])
    monkeypatch.undo()
    assert rc == 2 and saves == [1, 2, 3]
    line = one_line_error(capsys)
    assert "No space left on device" in line and "previous checkpoint is kept" in line, line
    state, which = load_state(checkpoints)
    assert (which, state["step"]) == ("state", 2)
    assert not list(checkpoints.glob(".*.tmp"))
    assert main(["train", "--resume", str(run), "--steps", "4", "--set", "train.threads=1"]) == 0
    assert load_state(checkpoints)[0]["step"] == 4


if __name__ == "__main__":
    data_root, run_root, kill_count, rng_seed = sys.argv[1:5]
    print(json.dumps(_kill_loop(Path(data_root), Path(run_root), int(kill_count), int(rng_seed))))
