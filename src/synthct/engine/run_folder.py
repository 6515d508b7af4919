"""The run folder: what a training run writes there, and the rule that one folder holds one run."""

from __future__ import annotations

import shutil
from pathlib import Path

from synthct.config import RunConfig, config_to_yaml
from synthct.engine.checkpoint import has_state
from synthct.errors import SynthctError
from synthct.io.atomic import atomic_write_text

RUN_ARTIFACTS = ("config.yaml", "log.csv", "loss_curves.png", "checkpoints", "samples", "tensorboard",
                 "snapshots", "raw", "health.json",
                 "generator_mr2ct.safetensors", "generator_mr2ct.json",
                 "generator_ct2mr.safetensors", "generator_ct2mr.json")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder: resuming needs a run, a new run needs an empty
    one (or ``overwrite``, which removes the previous run's files, and only those)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise SynthctError("run folder exists and is not a folder", run_dir)
    has_run = run_dir.is_dir() and any((run_dir / name).exists() for name in RUN_ARTIFACTS)
    if resume:
        if not has_state(run_dir / "checkpoints"):
            raise SynthctError("nothing to resume: no checkpoints/state.json in this folder", run_dir)
        return
    if has_run:
        if not overwrite:
            raise SynthctError("already holds a training run; use --resume to continue it or "
                               "--overwrite to start again", run_dir)
        for name in RUN_ARTIFACTS:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def write_config(cfg: RunConfig, run_dir: Path) -> None:
    """``config.yaml``: the whole configuration the run trains with (--resume reads it back)."""
    atomic_write_text(Path(run_dir) / "config.yaml", config_to_yaml(cfg))
