"""Train a preset on the prepared folders: the CycleGAN unpaired, pix2pix on the true pairs."""

from __future__ import annotations

from pathlib import Path

from experiments.aanlib.common import read_manifest

PRESETS = {"cyclegan": "aanlib_cyclegan", "pix2pix": "aanlib_pix2pix"}


def training_config(work: Path, model: str, overrides: list[str]):
    """The preset of ``model`` with ``overrides`` (KEY=VALUE), reading the prepared folders."""
    from synthct.config import apply_overrides
    from synthct.engine import load_run_config

    work = Path(work)
    read_manifest(work)
    cfg = apply_overrides(load_run_config(PRESETS[model]), overrides)
    paired = model == "pix2pix"
    mr, ct = (work / "train_pairs" / "mr", work / "train_pairs" / "ct") if paired else (work / "train_mr", work / "train_ct")
    cfg.data.mr, cfg.data.ct, cfg.data.paired = str(mr), str(ct), paired
    cfg.data.root = None
    return cfg


def train_run(work: Path, model: str, run_dir: Path, overrides: list[str], minutes: float | None = None,
              steps: int | None = None, restarts: tuple[int, int, float] | None = None,
              overwrite: bool = False) -> int:
    """Train ``model`` into ``run_dir`` for ``steps`` and/or ``minutes``; ``restarts`` = (N, check
    steps, threshold) as ``synthct train --restarts``. Returns the exit code."""
    from synthct.engine.restarts import train_with_restarts
    from synthct.engine.trainer import train

    cfg = training_config(work, model, overrides)
    if minutes is not None:
        cfg.train.max_minutes = minutes
    if steps is not None:
        cfg.train.steps = steps
    if restarts:
        return train_with_restarts(cfg, run_dir, *restarts, overwrite=overwrite).exit_code
    return train(cfg, run_dir, overwrite=overwrite).exit_code
