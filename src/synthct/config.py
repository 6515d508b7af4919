"""Typed run configuration: dataclasses that load from YAML text and take ``key=value``
overrides. Every field carries a one-line ``help``, the single source of ``synthct train
--list-options`` and docs/CONFIG.md. Reading and writing config files is the engine's job
(synthct.engine.load_config, the run folder's config.yaml); this module does no file I/O."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field

import yaml

from synthct.errors import SynthctError


def option(default, help: str, **kwargs):
    """A config field with its one-line meaning."""
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class DataConfig:
    mr: str | None = option(None, "folder (or file) of MR images/volumes")
    ct: str | None = option(None, "folder (or file) of CT images/volumes")
    root: str | None = option(None, "data root: CycleGAN (trainA/trainB), pairs (mr/, ct/ paired by name) or SynthRAD "
                                           "(<case>/mr, ct, mask) layout")
    size: int = option(256, "training slices are resized/cropped/padded to size x size pixels")
    slices: int = option(1, "2.5D: k neighbouring slices as input channels (odd)")
    axis: int = option(0, "slicing axis of the (z, y, x) array; 0 = axial for axial acquisitions")
    paired: bool = option(False, "keep MR/CT pairing (pix2pix always does); unpaired models draw random partners")
    intensity: str = option("auto", "auto | hu | 8bit: 8bit for PNG/JPEG data sets, hu otherwise")
    ct_window: tuple[float, float] = option((-1024.0, 3000.0), "HU range mapped to [-1, 1]")
    mr_percentiles: tuple[float, float] = option((0.5, 99.5), "MR percentiles inside the body mapped to [-1, 1]")
    flip: bool = option(True, "random left-right flips")
    affine: float = option(0.0, "small random affine: max rotation in degrees (scale +-affine/100); 0 = off")
    resize: str = option("fit", "fit (resize longest side, pad) | crop (random crop at native size) | none")
    min_body_fraction: float = option(0.02, "slices with less body than this fraction are skipped")
    cache: str = option("memory", "memory | mmap (decoded slices memory-mapped from the run folder)")
    pairs: str | None = option(None, "semi-supervised: folder of paired cases (SynthRAD layout, or mr/ + ct/ "
                                     "pairing by file name) beside the unpaired data; every step adds one pair")
    pair_cases: tuple[str, ...] = option((), "the paired cases of data.pairs, filled when the run starts "
                                             "(a resumed run refuses other pairs)")


@dataclass
class ModelConfig:
    name: str = option("cyclegan", "cyclegan | pix2pix | cut | reggan | regression")
    generator: str = option("resnet", "resnet | unet")
    ngf: int = option(64, "generator base width (filters of the first layer)")
    ndf: int = option(64, "discriminator base width")
    blocks: int = option(9, "residual blocks of the ResNet generator (6 or 9 in the paper)")
    unet_downs: int = option(8, "U-Net depth: 8 for 256 px slices (sizes must be multiples of 2**unet_downs)")
    d_layers: int = option(3, "PatchGAN depth: 3 gives the 70x70 receptive field")
    gan_mode: str = option("lsgan", "adversarial loss: lsgan | vanilla | hinge")
    lambda_cycle: float = option(10.0, "weight of the cycle-consistency loss")
    lambda_identity: float = option(0.5, "weight of the identity loss, times lambda_cycle; 0 = off")
    lambda_l1: float = option(100.0, "weight of the L1 loss to the paired CT")
    lambda_corr: float = option(20.0, "weight of the L1 loss between the translation and the CT registered onto it "
                                      "(RegGAN's correction loss; the paper's 20)")
    lambda_smooth: float = option(10.0, "weight of the smoothness loss of the registration field (the paper's 10)")
    lambda_pair: float = option(10.0, "weight of the L1 loss on the paired slices of data.pairs (as lambda_cycle: "
                                      "a pair weighs as much as a cycle)")
    register: bool = option(False, "the paired L1 loss goes through RegGAN's registration network (data.pairs "
                                   "registered only approximately)")
    lambda_struct: float = option(0.0, "weight of the structure-consistency loss between input and translation; 0 = off")
    struct_loss: str = option("mind", "structure-consistency loss: mind (MIND descriptors) | ngf (normalised gradient fields)")
    lambda_nce: float = option(1.0, "weight of the PatchNCE loss")
    nce_idt: bool = option(True, "identity PatchNCE term on CT (false gives FastCUT)")
    pool_size: int = option(50, "history of translations shown to the discriminators (pix2pix and cut keep none, "
                                "as the reference); 0 = off")
    body_masked: bool = option(False, "translations are air outside their source's body and discriminators judge "
                                      "the body only")
    r1_gamma: float = option(0.0, "R1 penalty gamma / 2 * E|grad D(real)|^2 per PatchGAN patch, beside the GAN terms "
                                  "inside each discriminator's 0.5 (Mescheder et al. 2018 use 10); 0 = off")


@dataclass
class TrainConfig:
    epochs: int | None = option(None, "passes over the training slices")
    steps: int | None = option(None, "total optimisation steps; overrides epochs")
    batch_size: int = option(1, "slices per step (per process)")
    lr: float = option(2e-4, "learning rate of the generators (Adam)")
    lr_d: float | None = option(None, "learning rate of the discriminators; unset = lr (two time-scale updates)")
    beta1: float = option(0.5, "Adam beta1")
    beta2: float = option(0.999, "Adam beta2")
    decay_start: float = option(0.5, "fraction of training after which the lr decays linearly to 0")
    precision: str = option("auto", "auto | fp32 | bf16 | fp16")
    device: str = option("auto", "auto | cpu | cuda")
    seed: int = option(0, "seed of every random number generator")
    compile: bool = option(False, "torch.compile the networks")
    stop_at_step: int | None = option(None, "stop resumably at this step, the lr schedule unchanged")
    max_minutes: float | None = option(None, "time budget; training stops and saves when spent (without steps "
                                             "or epochs the lr schedule follows it)")
    clock: str = option("wall", "wall | cpu: budgets in wall time or in this process's CPU time per thread")
    snapshot_minutes: float | None = option(None, "keep a copy of the generators every N minutes in snapshots/")
    ema: float | None = option(None, "decay of an exponential moving average of the generators (e.g. 0.995); "
                                     "exported generators are the averages")
    log_every: int = option(10, "steps between log.csv flushes")
    sample_every: int = option(200, "steps between sample grids; 0 = never")
    checkpoint_every: int = option(500, "steps between resumable checkpoints; 0 = only at the end")
    nan_policy: str = option("stop", "stop | skip: what a NaN/inf loss does")
    threads: int | None = option(None, "CPU threads for torch; unset or 0 = all cores")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}

# Options that measurements found did not help (docs/RESULTS.md), with the value that meant
# "off". Configs of older runs still list them: at that value they are dropped, at any other
# the config is refused, since this version cannot do what it asks.
REMOVED_OPTIONS = {
    ("model", "upsample"): "transpose",
    ("model", "d_norm"): "instance",
    ("model", "d_scales"): 1,
    ("model", "lambda_source_fake"): 0.0,
    ("model", "warmup_target"): "restore",
    ("model", "diffaugment"): False,
    ("model", "spectral_norm"): False,
    ("model", "cycle_noise"): 0.0,
    ("train", "coarse_size"): None,
    ("train", "coarse_until"): 0.5,
    ("train", "contrast_warmup"): 0.0,
    ("train", "discriminator_warmup"): 0.0,
}


def drop_removed_options(section: str, values: dict) -> dict:
    """``values`` without removed options left at their old default; any other value of one
    is refused."""
    kept = dict(values)
    for (where, key), default in REMOVED_OPTIONS.items():
        if where != section or key not in kept:
            continue
        value = kept.pop(key)
        if value != default:
            raise SynthctError(f"{section}.{key} was removed (it did not help; see docs/RESULTS.md): "
                               "delete it from the config")
    return kept


def documented_options() -> list[tuple[str, str, str]]:
    """Every option as (section.key, default as YAML, one-line meaning), in config order."""
    rows = []
    for section, cls in SECTIONS.items():
        defaults = cls()
        for f in dataclasses.fields(cls):
            value = getattr(defaults, f.name)
            # A YAML scalar document ends in "...": keep the value alone.
            shown = yaml.safe_dump(list(value) if isinstance(value, tuple) else value,
                                   default_flow_style=True).strip().removesuffix("\n...")
            rows.append((f"{section}.{f.name}", shown, f.metadata["help"]))
    return rows


def _coerce(value, hint, where: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple and args[-1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise SynthctError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], where) for v in value)
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
    if SECTIONS.get(where) is cls:
        data = drop_removed_options(where, data)
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


def config_from_yaml(text: str) -> RunConfig:
    """The config a YAML document describes; problems as SynthctError without a path."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SynthctError(f"not valid YAML ({line})") from None
    except RecursionError:
        raise SynthctError("not valid YAML (nested too deeply)") from None
    return config_from_dict(data)


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


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
