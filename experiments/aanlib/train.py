"""Train a model on the prepared folders: the CycleGAN unpaired, pix2pix, RegGAN and the regression
on the true pairs, and the semi-supervised CycleGAN with some training patients as pairs.

Semi-supervised (``paired_patients``): the named training patients' slices become ``data.pairs``
(their true pairs), the other training patients' MR and CT the unpaired data, each modality
shuffled and renamed on its own as ``prepare`` does, so nothing leaks their pairing.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from synthct.errors import SynthctError
from synthct.io.atomic import atomic_write_bytes

from experiments.aanlib.common import read_manifest

# model -> (preset, overrides). RegGAN and the regression start from the pix2pix recipe (U-Net
# 256, batch 1, Adam 2e-4); the regression has no adversary, so its adversarial options go back
# to their defaults (an option a model does not read may not be set).
PRESETS = {
    "cyclegan": ("aanlib_cyclegan", []),
    "pix2pix": ("aanlib_pix2pix", []),
    "reggan": ("aanlib_pix2pix", ["model.name=reggan"]),
    "regression": ("aanlib_pix2pix", ["model.name=regression", "model.gan_mode=lsgan"]),
}
PAIRED_MODELS = ("pix2pix", "reggan", "regression")


def semi_supervised_folders(work: Path, patients: list[str], seed: int = 0) -> tuple[Path, Path, Path]:
    """(unpaired MR, unpaired CT, pairs) folders for ``patients`` as the paired ones, made once
    under WORK/semi_<patients>/ from the prepared true pairs."""
    manifest = read_manifest(work)
    if "train" not in manifest:
        raise SynthctError("prepared before the training slices were listed; run prepare --overwrite", work)
    unknown = sorted(set(patients) - set(manifest["train_cases"]))
    if unknown:
        raise SynthctError(f"paired patient{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} not among the "
                           f"fold's training patients {', '.join(manifest['train_cases'])}")
    if set(patients) == set(manifest["train_cases"]):
        raise SynthctError("every training patient would be paired; leave some unpaired")
    folder = Path(work) / f"semi_{'-'.join(sorted(patients, key=int))}"
    unpaired_mr, unpaired_ct, pairs = folder / "unpaired_mr", folder / "unpaired_ct", folder / "pairs"
    if not pairs.is_dir():
        shutil.rmtree(folder, ignore_errors=True)  # a partial folder from an interrupted start
        rows = manifest["train"]
        rng = random.Random(seed)
        for modality, target in (("mr", unpaired_mr), ("ct", unpaired_ct)):
            order = [r["id"] for r in rows if r["case"] not in patients]
            rng.shuffle(order)  # one draw per modality: the MR and CT orders are independent
            for index, slice_id in enumerate(order):
                source = Path(work) / "train_pairs" / modality / f"{slice_id}.png"
                atomic_write_bytes(target / f"{modality}_{index:03d}.png", source.read_bytes())
        staging = folder / "pairs.partial"
        for row in (r for r in rows if r["case"] in patients):
            for modality in ("mr", "ct"):
                source = Path(work) / "train_pairs" / modality / f"{row['id']}.png"
                atomic_write_bytes(staging / modality / f"{row['id']}.png", source.read_bytes())
        staging.rename(pairs)
    return unpaired_mr, unpaired_ct, pairs


def training_config(work: Path, model: str, overrides: list[str], paired_patients: list[str] | None = None,
                    pseudo_pairs: bool = False):
    """The preset of ``model`` with ``overrides`` (KEY=VALUE), reading the prepared folders (a paired
    model with ``pseudo_pairs``: WORK/pseudo_pairs, made by the pseudo-pairs command)."""
    from synthct.config import apply_overrides
    from synthct.engine import load_run_config

    work = Path(work)
    read_manifest(work)
    preset, model_overrides = PRESETS[model]
    cfg = apply_overrides(load_run_config(preset), model_overrides + overrides)
    paired = model in PAIRED_MODELS
    if pseudo_pairs:
        from experiments.aanlib.atlas import PSEUDO_PAIRS, pseudo_pair_inputs

        if not paired or paired_patients:
            raise SynthctError(f"--pseudo-pairs is for {', '.join(PAIRED_MODELS)}, without --paired-patients")
        pairs = work / PSEUDO_PAIRS
        if not (pairs / "pairs.csv").is_file():
            raise SynthctError("no pseudo-pairs yet; run the pseudo-pairs command first", pairs)
        pseudo_pair_inputs(work)  # the fold is still the one they were made from
        mr, ct = pairs / "mr", pairs / "ct"
    elif paired_patients:
        if model != "cyclegan":
            raise SynthctError(f"--paired-patients is for the semi-supervised cyclegan; {model} trains on all pairs")
        mr, ct, pairs = semi_supervised_folders(work, paired_patients)
        cfg.data.pairs, cfg.data.pair_cases = str(pairs), ()
    elif paired:
        mr, ct = work / "train_pairs" / "mr", work / "train_pairs" / "ct"
    else:
        mr, ct = work / "train_mr", work / "train_ct"
    cfg.data.mr, cfg.data.ct, cfg.data.paired = str(mr), str(ct), paired
    cfg.data.root = None
    return cfg


def train_run(work: Path, model: str, run_dir: Path, overrides: list[str], minutes: float | None = None,
              steps: int | None = None, restarts: tuple[int, int] | None = None,
              overwrite: bool = False, paired_patients: list[str] | None = None, pseudo_pairs: bool = False) -> int:
    """Train ``model`` into ``run_dir`` for ``steps`` and/or ``minutes``; ``restarts`` = (N, check
    steps) as ``synthct train --restarts``. Returns the exit code."""
    from synthct.engine.restarts import train_with_restarts
    from synthct.engine.trainer import train

    cfg = training_config(work, model, overrides, paired_patients, pseudo_pairs)
    if minutes is not None:
        cfg.train.max_minutes = minutes
    if steps is not None:
        cfg.train.steps = steps
    if restarts:
        return train_with_restarts(cfg, run_dir, *restarts, overwrite=overwrite).exit_code
    return train(cfg, run_dir, overwrite=overwrite).exit_code


def step_gflop(model: str, overrides: list[str], with_pairs: bool = False) -> float:
    """The GFLOP of one fp32 training step of ``model``'s preset with ``overrides``, counted by
    torch's FLOP counter on a random batch (``with_pairs``: a semi-supervised step, which adds a
    paired batch). Independent of the machine, unlike its seconds."""
    import torch

    from synthct.config import apply_overrides
    from synthct.engine import load_run_config
    from synthct.engine.trainer import Trainer, seed_everything
    from synthct.measure import count_flops
    from synthct.models import build_model
    from synthct.runtime import resolve_precision

    preset, model_overrides = PRESETS[model]
    cfg = apply_overrides(load_run_config(preset), model_overrides + overrides)
    if with_pairs and model != "cyclegan":
        raise SynthctError(f"pairs beside unpaired data are for the semi-supervised cyclegan, not {model}")
    cpu = torch.device("cpu")
    seed_everything(0)
    k, size = cfg.data.slices, cfg.data.size
    trainer = Trainer(build_model(cfg.model, k, k), cfg, total_steps=cfg.train.steps or 1000, device=cpu,
                      precision=resolve_precision("fp32", cpu))
    names = ("mr", "ct") + (("mr_pair", "ct_pair") if with_pairs else ())
    draw = torch.Generator().manual_seed(0)
    batch = {name: torch.rand(cfg.train.batch_size, k, size, size, generator=draw) * 2 - 1 for name in names}
    if cfg.model.body_masked:
        batch |= {name: torch.ones(cfg.train.batch_size, k, size, size) for name in ("mr_body", "ct_body")}
    return count_flops(lambda: trainer.step(batch)) / 1e9
