"""Typed run configuration: dataclasses that load from YAML, take ``key=value`` overrides and
are saved with every run, so a run folder always says exactly how it was made."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from synthct.errors import SynthctError


@dataclass
class DataConfig:
    mr: str | None = None  # folder (or file) of MR images/volumes
    ct: str | None = None  # folder (or file) of CT images/volumes
    root: str | None = None  # CycleGAN (trainA/trainB) or SynthRAD (<case>/mr, ct, mask) layout
    size: int = 256  # training slices are resized/cropped/padded to size x size
    slices: int = 1  # 2.5D: k neighbouring slices as input channels (odd)
    axis: int = 0  # slicing axis of the (z, y, x) array; 0 = axial for axial acquisitions
    paired: bool = False  # keep MR/CT pairing (pix2pix); CycleGAN draws unpaired partners
    intensity: str = "auto"  # auto | hu | 8bit: 8bit for PNG/JPEG data sets, hu otherwise
    ct_window: tuple[float, float] = (-1024.0, 3000.0)  # HU mapped to [-1, 1]
    mr_percentiles: tuple[float, float] = (0.5, 99.5)  # inside the body mask, mapped to [-1, 1]
    flip: bool = True  # random left-right flips
    affine: float = 0.0  # small random affine: max rotation in degrees (scale +-affine/100)
    resize: str = "fit"  # fit (resize longest side, pad) | crop (random crop at native size) | none
    min_body_fraction: float = 0.02  # slices with less body than this are skipped
    cache: str = "memory"  # memory | mmap (decoded slices memory-mapped from the run folder)


@dataclass
class ModelConfig:
    name: str = "cyclegan"  # cyclegan | pix2pix | cut
    generator: str = "resnet"  # resnet | unet
    ngf: int = 64
    ndf: int = 64
    blocks: int = 9  # residual blocks of the ResNet generator (6 or 9 in the paper)
    # How the ResNet generator upsamples: "transpose" (the paper's fractionally-strided convolution)
    # or "resize" (nearest-neighbour resize + convolution, which leaves no checkerboard texture).
    upsample: str = "transpose"
    unet_downs: int = 8  # U-Net depth: 8 for 256x256 slices (sizes must be multiples of 2**unet_downs)
    d_layers: int = 3  # PatchGAN depth: 3 gives the 70x70 receptive field
    # The PatchGAN's normalisation: "instance" (the reference) or "none". InstanceNorm takes each
    # feature map's mean and spread out of every image; without it the discriminator keeps them.
    d_norm: str = "instance"
    # CycleGAN: PatchGANs at this many scales (1, 1/2, 1/4, ...; pix2pixHD's multi-scale
    # discriminator); 1 = the single PatchGAN of the paper.
    d_scales: int = 1
    gan_mode: str = "lsgan"  # lsgan | vanilla | hinge
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5  # times lambda_cycle; 0 disables the identity loss
    lambda_l1: float = 100.0  # pix2pix
    lambda_struct: float = 0.0  # structure-consistency loss between input and translation
    struct_loss: str = "mind"  # mind | ngf
    lambda_nce: float = 1.0  # CUT
    nce_idt: bool = True  # CUT identity NCE (False gives FastCUT)
    pool_size: int = 50  # image history buffer for the discriminators
    # CycleGAN: translations are air outside their source's body mask and the discriminators judge
    # patches inside the body only (see models/cyclegan.py); inference then masks by default.
    body_masked: bool = False
    # CycleGAN: weight of a third discriminator term that shows each discriminator the other
    # domain's real images as fakes (D_ct learns that an MR is not a CT), meant to make a translation
    # that keeps its source's contrast read as fake; on the real brain scans such translations still
    # passed (docs/RESULTS.md). 0 = off (the paper's objective).
    lambda_source_fake: float = 0.0
    # CycleGAN: standard deviation (in the [-1, 1] units of the images) of Gaussian noise added to
    # each translation before it is translated back, so the cycle cannot be closed through
    # low-amplitude signals hidden in a translation (Chu et al. 2017's "steganography"); 0 = off.
    cycle_noise: float = 0.0
    # What the contrast warm-up (train.contrast_warmup) teaches the generators: "restore" their own
    # domain from random grey-level maps of it, or "inverted": each domain's foreground negated,
    # as a prior for the other's contrast (models/contrast.py).
    warmup_target: str = "restore"


@dataclass
class TrainConfig:
    epochs: int | None = None
    steps: int | None = None  # total optimisation steps; overrides epochs
    batch_size: int = 1
    lr: float = 2e-4
    # The discriminators' learning rate; None = lr. A faster discriminator (two time-scale
    # update rule, Heusel et al. 2017) keeps it informative while the generators move.
    lr_d: float | None = None
    beta1: float = 0.5
    beta2: float = 0.999
    decay_start: float = 0.5  # fraction of training after which lr decays linearly to 0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    compile: bool = False
    # Stop (resumably) once this many steps are done, leaving the schedule as it is: a run can
    # be looked at partway and continued with --resume as if it had never stopped.
    stop_at_step: int | None = None
    max_minutes: float | None = None  # wall-clock budget; training stops (and saves) when spent.
    # With a budget and neither steps nor epochs, the lr schedule follows the clock instead of steps.
    clock: str = "wall"  # wall | cpu: budgets in this process's CPU time / threads (fair on a busy machine)
    snapshot_minutes: float | None = None  # keep a copy of the generators every N minutes (learning curves)
    # Exponential moving average of the generators' weights (decay per step, e.g. 0.995): the
    # exported generators and snapshots are the averages; raw/ keeps the last unaveraged weights.
    ema: float | None = None
    # Progressive resizing: the first coarse_until of the schedule (of the budget when the
    # schedule follows the clock) trains on whole slices downsampled to coarse_size x coarse_size,
    # at a quarter of the cost per step at half the size; the rest at data.size.
    coarse_size: int | None = None
    coarse_until: float = 0.5
    # Contrast warm-up (CycleGAN): the first contrast_warmup of the schedule trains only the
    # generators towards model.warmup_target (models/contrast.py), before the adversarial game
    # starts; 0 = off, 1 = warm-up only.
    contrast_warmup: float = 0.0
    # Discriminator warm-up (CycleGAN): the next discriminator_warmup of the schedule trains only
    # D_ct and D_mr, against the translations of the generators as they stand, before the game
    # starts; 0 = off. A discriminator that already tells the domains apart gives the generators
    # an informative gradient from the first step of the game.
    discriminator_warmup: float = 0.0
    log_every: int = 10
    sample_every: int = 200
    checkpoint_every: int = 500
    nan_policy: str = "stop"  # stop | skip
    threads: int | None = None  # CPU threads for torch (default: all cores)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _coerce(value, hint, where: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise SynthctError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise SynthctError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())):
            raise SynthctError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise SynthctError(f"{where}: expected a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise SynthctError(f"{where}: expected text, got {value!r}")
        return str(value)
    return value


def _from_dict(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise SynthctError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        # Keys come from the user's file: show odd ones (newlines, control characters) escaped.
        shown = sorted(f"{where}.{k if str(k).isprintable() else repr(k)}".lstrip(".") for k in unknown)
        raise SynthctError(f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(shown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        key = f"{where}.{name}".lstrip(".")
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value or {}, key)
        else:
            kwargs[name] = _coerce(value, hint, key)
    return cls(**kwargs)


def config_from_dict(data: dict) -> RunConfig:
    return _from_dict(RunConfig, data, "")


def config_to_dict(cfg: RunConfig) -> dict:
    def plain(v):
        if isinstance(v, tuple):
            return list(v)
        return v

    return {sec: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, sec)).items()}
            for sec in ("data", "model", "train")}


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise SynthctError("config file not found", path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SynthctError(f"not valid YAML ({line})", path) from None
    except RecursionError:
        raise SynthctError("not valid YAML (nested too deeply)", path) from None
    try:
        return config_from_dict(data)
    except SynthctError as exc:
        raise SynthctError(exc.problem, path) from None


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars or lists)."""
    data = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise SynthctError(f"--set expects section.key=value, got '{item}'")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2 or parts[0] not in data:
            raise SynthctError(f"--set key must be data.*, model.* or train.*, got '{key}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        data[parts[0]][parts[1]] = value
    return config_from_dict(data)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from synthct.io.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
