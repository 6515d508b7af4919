"""What a run needs before its first step: its configuration checked, its training slices and
its model. Configuration mistakes become one-line SynthctErrors before the run folder is touched."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from synthct.config import RunConfig
from synthct.errors import SynthctError
from synthct.models import MODELS, build_model, check_model_config, model_class


def check_config(cfg: RunConfig) -> None:
    """Every configuration mistake the run can find before it touches the run folder."""
    check_model_config(cfg.model)
    check_pairs_option(cfg)
    check_sizes(cfg)
    check_optimisation(cfg)
    if cfg.train.stop_at_step is not None and cfg.train.stop_at_step < 1:
        raise SynthctError(f"train.stop_at_step must be a step number of at least 1, got {cfg.train.stop_at_step}")
    if cfg.train.batch_size < 1:
        raise SynthctError(f"train.batch_size must be at least 1, got {cfg.train.batch_size}")


def check_pairs_option(cfg: RunConfig) -> None:
    """data.pairs only for a model that reads paired slices beside unpaired ones, and
    model.register only with data.pairs."""
    if cfg.data.pairs and not model_class(cfg.model.name).uses_pairs:
        users = [name for name, cls in MODELS.items() if cls.uses_pairs]
        raise SynthctError(f"{cfg.model.name} does not train on extra pairs (--pairs is for {', '.join(users)}; "
                           "a paired model takes the pairs as its data)")
    if cfg.model.register and not cfg.data.pairs:
        raise SynthctError("model.register registers the paired slices of --pairs (data.pairs): give them")


def smallest_image(cfg: RunConfig) -> int:
    """The smallest slice the discriminators can judge: the PatchGAN's last two 4 x 4 convolutions
    need 4 pixels after its d_layers halvings."""
    return 2 ** (cfg.model.d_layers + 2)


def check_sizes(cfg: RunConfig) -> None:
    smallest = smallest_image(cfg)
    if cfg.data.resize != "none" and cfg.data.size < smallest:
        raise SynthctError(f"data.size must be at least {smallest} for a PatchGAN with model.d_layers="
                           f"{cfg.model.d_layers}, got {cfg.data.size}")


def check_optimisation(cfg: RunConfig) -> None:
    """Values torch would otherwise reject mid-start with its own exception, or that would divide by zero."""
    t = cfg.train
    for name, value in (("lr", t.lr), ("lr_d", t.lr_d)):
        if value is not None and not value > 0:
            raise SynthctError(f"train.{name} must be a positive learning rate, got {value}")
    for name, value in (("beta1", t.beta1), ("beta2", t.beta2)):
        if not 0.0 <= value < 1.0:
            raise SynthctError(f"train.{name} must lie in [0, 1) (Adam), got {value}")
    if not 0.0 <= t.decay_start <= 1.0:
        raise SynthctError(f"train.decay_start must be a fraction of training in [0, 1], got {t.decay_start}")
    if t.log_every < 1:
        raise SynthctError(f"train.log_every must be a step count of at least 1, got {t.log_every}")
    for name, value in (("sample_every", t.sample_every), ("checkpoint_every", t.checkpoint_every)):
        if value < 0:
            raise SynthctError(f"train.{name} must be a step count (0: never), got {value}")
    if t.threads is not None and t.threads < 0:
        raise SynthctError(f"train.threads must be a thread count (0 or unset: all cores), got {t.threads}")
    if t.max_minutes is not None and not t.max_minutes > 0:
        raise SynthctError(f"train.max_minutes must be positive, got {t.max_minutes}")


def build_run_model(cfg: RunConfig, channels: int) -> nn.Module:
    if cfg.model.generator == "unet" and cfg.data.size % 2 ** cfg.model.unet_downs:
        raise SynthctError(f"a U-Net with model.unet_downs={cfg.model.unet_downs} needs data.size to be a "
                           f"multiple of {2 ** cfg.model.unet_downs}, got {cfg.data.size} (lower model.unet_downs)")
    try:
        return build_model(cfg.model, in_channels=channels, out_channels=channels)
    except ValueError as exc:
        raise SynthctError(f"cannot build model: {exc}") from None


def load_training_data(cfg: RunConfig, run_dir: Path):
    from synthct.data.layouts import collect_sources
    from synthct.data.slices import SliceDataset

    sources = collect_sources(cfg.data, split="train")
    needs_pairs = model_class(cfg.model.name).needs_pairs
    paired = needs_pairs or cfg.data.paired
    if needs_pairs and not sources.paired:
        raise SynthctError(f"{cfg.model.name} needs paired, co-registered MR/CT: use a SynthRAD layout "
                           "(<case>/mr.nii.gz + ct.nii.gz) or --set data.paired=true with matching "
                           "MR and CT folders")
    cache_dir = run_dir / "cache" if cfg.data.cache == "mmap" else None
    dataset = SliceDataset(sources, cfg.data, paired=paired, seed=cfg.train.seed, cache_dir=cache_dir,
                           body_masks=cfg.model.body_masked)
    if len(dataset) == 0:
        raise SynthctError("no usable training slices (all below data.min_body_fraction?)",
                           cfg.data.root or cfg.data.mr)
    return with_pairs(cfg, dataset, cache_dir) if cfg.data.pairs else dataset


def with_pairs(cfg: RunConfig, unpaired, cache_dir: Path | None):
    """The unpaired slices with data.pairs beside them; records the paired cases in
    cfg.data.pair_cases (so config.yaml names them) and refuses others on resume."""
    from synthct.data.pairs import WithPairs, pair_sources
    from synthct.data.slices import SliceDataset

    sources = pair_sources(cfg.data.pairs)
    if cfg.data.pair_cases and tuple(cfg.data.pair_cases) != tuple(sources.cases):
        raise SynthctError(f"data.pairs holds cases {', '.join(sources.cases)}, but the run was configured with "
                           f"{', '.join(cfg.data.pair_cases)} (data.pair_cases)", cfg.data.pairs)
    cfg.data.pair_cases = tuple(sources.cases)
    pairs = SliceDataset(sources, cfg.data, paired=True, seed=cfg.train.seed,
                         cache_dir=None if cache_dir is None else cache_dir / "pairs")
    return WithPairs(unpaired, pairs, cfg.train.seed)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled item order of one epoch; a pure function of (seed, epoch) so a resumed run
    continues mid-epoch exactly where it stopped."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def collate(dataset, indices: list[int]) -> dict[str, torch.Tensor]:
    items = [dataset[i] for i in indices]
    return {name: torch.stack([torch.as_tensor(item[name]) for item in items]) for name in items[0]}
