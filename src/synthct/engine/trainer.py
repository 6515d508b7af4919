"""The training loop: device, precision, optimisers and schedule, data-parallel gradients,
logging, samples, checkpoints, and clean stops (budget, Ctrl-C / SIGTERM, NaN).

The model object owns the networks and the objective (``generator_loss``,
``discriminator_loss``); this module only knows how to optimise it. :class:`Trainer` is one
optimisation step at a time (benchmarks time ``Trainer.step``); :func:`train` is the whole run
on a run folder.
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from synthct.config import RunConfig, config_to_dict, save_config
from synthct.engine import distributed as ddp
from synthct.engine.checkpoint import (generator_architecture, has_state, load_state, save_generator,
                                       save_state)
from synthct.engine.logging import RunLogger, plot_loss_curves, read_log, save_sample_grid
from synthct.engine.precision import Precision, resolve_device, resolve_precision
from synthct.errors import SynthctError

NAN_POLICIES = ("stop", "skip")
RUN_ARTIFACTS = ("config.yaml", "log.csv", "loss_curves.png", "checkpoints", "samples", "tensorboard",
                 "snapshots", "raw",
                 "generator_mr2ct.safetensors", "generator_mr2ct.json",
                 "generator_ct2mr.safetensors", "generator_ct2mr.json")


class NonFiniteLoss(SynthctError):
    """A loss became NaN or infinite and ``train.nan_policy`` is "stop"."""


def lr_factor(step: int, total_steps: int, decay_start: float) -> float:
    """Constant learning rate, then linear decay to 0 over the last (1 - decay_start) of training
    (Zhu et al. 2017: 100 epochs constant + 100 epochs decay is decay_start = 0.5)."""
    start = int(decay_start * total_steps)
    if step < start:
        return 1.0
    return max(0.0, 1.0 - (step - start) / max(1, total_steps - start))


def lr_factor_at(progress: float, decay_start: float) -> float:
    """The same schedule over a fraction of training done (a time budget's fraction spent)."""
    if progress < decay_start:
        return 1.0
    return max(0.0, 1.0 - (progress - decay_start) / max(1e-9, 1.0 - decay_start))


@dataclass
class StepOutput:
    losses: dict[str, float]
    skipped: bool
    cache: dict | None = None


def downsample_batch(batch: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """Whole slices at size x size; area averaging is the anti-aliased downsampling."""
    return {name: F.interpolate(x, size=(size, size), mode="area") for name, x in batch.items()}


def smallest_image(cfg: RunConfig) -> int:
    """The smallest slice the discriminators can judge: the PatchGAN's last two 4 x 4 convolutions
    need 4 pixels after its d_layers halvings, at the coarsest of its scales."""
    return 2 ** (cfg.model.d_layers + 2 + cfg.model.d_scales - 1)


def check_sizes(cfg: RunConfig) -> None:
    smallest = smallest_image(cfg)
    if cfg.data.resize != "none" and cfg.data.size < smallest:
        raise SynthctError(f"data.size must be at least {smallest} for a PatchGAN with model.d_layers="
                           f"{cfg.model.d_layers} and model.d_scales={cfg.model.d_scales}, got {cfg.data.size}")
    size, until = cfg.train.coarse_size, cfg.train.coarse_until
    if size is None:
        return
    multiple = 2 ** cfg.model.unet_downs if cfg.model.generator == "unet" else 4
    if not 0 < size < cfg.data.size or size % multiple:
        raise SynthctError(f"train.coarse_size must be smaller than data.size ({cfg.data.size}) and a multiple "
                           f"of {multiple} for the {cfg.model.generator} generator, got {size}")
    if size < smallest:
        raise SynthctError(f"train.coarse_size must be at least {smallest} for a PatchGAN with model.d_layers="
                           f"{cfg.model.d_layers} and model.d_scales={cfg.model.d_scales}, got {size}")
    if not 0.0 < until <= 1.0:
        raise SynthctError(f"train.coarse_until must be a fraction of training in (0, 1], got {until}")


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


def check_warmup(cfg: RunConfig) -> None:
    warmups = {"contrast_warmup": cfg.train.contrast_warmup, "discriminator_warmup": cfg.train.discriminator_warmup}
    for name, warmup in warmups.items():
        if not 0.0 <= warmup <= 1.0:
            raise SynthctError(f"train.{name} must be a fraction of training in [0, 1], got {warmup}")
        if warmup and cfg.model.name != "cyclegan":
            raise SynthctError(f"train.{name} is a CycleGAN warm-up; model.name is {cfg.model.name}")
    if sum(warmups.values()) > 1.0:
        raise SynthctError("train.contrast_warmup + train.discriminator_warmup must not exceed 1 (the whole "
                           f"training), got {sum(warmups.values()):g}")


def _capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"].to(torch.uint8))
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Optimises a synthct model: Adam(lr, (beta1, beta2)) for the generators and for the
    discriminators, each with a constant-then-linear-decay LambdaLR over ``total_steps``."""

    def __init__(self, model: nn.Module, cfg: RunConfig, total_steps: int, device: torch.device,
                 precision: Precision, env: ddp.DistEnv | None = None):
        if cfg.train.nan_policy not in NAN_POLICIES:
            raise SynthctError(f"unknown train.nan_policy '{cfg.train.nan_policy}' (use stop or skip)")
        self.cfg = cfg
        self.device = device
        self.precision = precision
        self.env = env or ddp.DistEnv()
        self.total_steps = total_steps
        self.step_index = 0  # optimisation steps taken (skipped ones included)
        # Set by a time-budgeted run before every step: the share of the budget spent. The lr
        # schedule then follows the clock, so the decay ends when the budget does.
        self.time_fraction: float | None = None
        self.skipped_steps = 0
        self.model = model.to(device=device, memory_format=precision.train_memory_format)
        ddp.broadcast_module(self.model, self.env)
        self.g_params = [p for p in model.generator_parameters()]
        self.d_params = [p for p in model.discriminator_parameters()]
        betas = (cfg.train.beta1, cfg.train.beta2)
        # fused=True: the same Adam update in one kernel per parameter; the default for-loop
        # implementation took 0.7 s per update of a 256/ngf64 CycleGAN on 2 CPU cores, fused 0.13 s.
        self.opt_g = torch.optim.Adam(self.g_params, lr=cfg.train.lr, betas=betas, fused=True)
        lr_d = cfg.train.lr if cfg.train.lr_d is None else cfg.train.lr_d
        self.opt_d = (torch.optim.Adam(self.d_params, lr=lr_d, betas=betas, fused=True)
                      if self.d_params else None)
        def schedule(step: int) -> float:
            if self.time_fraction is not None:
                return lr_factor_at(self.time_fraction, cfg.train.decay_start)
            return lr_factor(step, total_steps, cfg.train.decay_start)

        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, schedule)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, schedule) if self.opt_d else None
        self.scaler = torch.amp.GradScaler(device.type) if precision.needs_scaler else None
        ema = cfg.train.ema
        if ema is not None and not 0.0 < ema < 1.0:
            raise SynthctError(f"train.ema must be a decay between 0 and 1 (e.g. 0.995), got {ema}")
        # Averaged generators (Polyak / EMA, as in Yazici et al. 2019 for GANs): the adversarial
        # game keeps the raw weights moving; their average is the steadier translator.
        self.ema = {direction: AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(ema), use_buffers=False)
                    for direction, module in model.generators().items()} if ema else {}
        if cfg.train.compile:
            # In-place compile keeps parameter names, so checkpoints stay compatible.
            for child in model.children():
                if any(True for _ in child.parameters()):
                    child.compile()
        self.model.train()

    @property
    def lr(self) -> float:
        return self.opt_g.param_groups[0]["lr"]

    @property
    def progress(self) -> float:
        """Share of the schedule done: of the budget when it follows the clock, else of the steps."""
        return self.time_fraction if self.time_fraction is not None else self.step_index / self.total_steps

    @property
    def image_size(self) -> int:
        """The slice size of the next step (progressive resizing: coarse first)."""
        coarse = self.cfg.train.coarse_size
        return coarse if coarse and self.progress < self.cfg.train.coarse_until else self.cfg.data.size

    @property
    def phase(self) -> str:
        """What the next step trains: "contrast_warmup" (the generators alone), then
        "discriminator_warmup" (the discriminators alone), then "game"."""
        contrast, discriminator = self.cfg.train.contrast_warmup, self.cfg.train.discriminator_warmup
        if self.progress < contrast:
            return "contrast_warmup"
        return "discriminator_warmup" if self.progress < contrast + discriminator else "game"

    def _to_device(self, batch: dict) -> dict[str, torch.Tensor]:
        return {name: torch.as_tensor(x).to(self.device, non_blocking=True).contiguous(
            memory_format=self.precision.train_memory_format) for name, x in batch.items()}

    def _check_finite(self, loss: torch.Tensor, what: str) -> bool:
        finite = ddp.all_true(bool(torch.isfinite(loss.detach()).item()), self.env, self.device)
        if finite:
            return True
        if self.cfg.train.nan_policy == "stop":
            raise NonFiniteLoss(f"{what} loss became NaN/inf at step {self.step_index + 1}; training "
                                "stopped, the last good checkpoint is kept (train.nan_policy=skip skips "
                                "such steps; a lower --lr or --precision fp32 may help)")
        return False

    def _skip(self) -> StepOutput:
        self.opt_g.zero_grad(set_to_none=True)
        if self.opt_d:
            self.opt_d.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self._advance()
        return StepOutput({}, skipped=True)

    def _advance(self) -> None:
        self.step_index += 1
        with warnings.catch_warnings():
            # The schedule follows steps taken, also when GradScaler or nan_policy=skip left out
            # an optimiser update; torch warns about exactly that order.
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.sched_g.step()
            if self.sched_d:
                self.sched_d.step()

    def _backward(self, loss: torch.Tensor, params: list[nn.Parameter]) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        ddp.average_gradients(params, self.env)

    def _update(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    def step(self, batch: dict) -> StepOutput:
        """One step: L_G -> backward -> L_D -> backward -> Adam on G, Adam on D (or, during a
        warm-up, a step of the generators alone or of the discriminators alone).

        L_D only sees detached fakes, so computing it before G's update gives the same result
        as the reference order and lets a NaN in either loss skip the whole step."""
        if self.image_size != batch["mr"].shape[-1]:
            batch = downsample_batch(batch, self.image_size)
        batch = self._to_device(batch)
        phase = self.phase
        if phase == "contrast_warmup":  # L_warm -> backward -> Adam on the generators
            return self._one_side_step(lambda: self.model.warmup_loss(batch), self.opt_g, self.g_params, "warm-up")
        if phase == "discriminator_warmup":  # L_D against the generators as they stand -> Adam on D
            return self._one_side_step(lambda: self.model.discriminator_loss(batch, self.model.translations(batch)),
                                       self.opt_d, self.d_params, "discriminator")
        self.opt_g.zero_grad(set_to_none=True)
        with self.precision.autocast():
            loss_g, terms, cache = self.model.generator_loss(batch)
        if not self._check_finite(loss_g, "generator"):
            return self._skip()
        self._backward(loss_g, self.g_params)
        if self.opt_d:
            self.opt_d.zero_grad(set_to_none=True)
            with self.precision.autocast():
                loss_d, terms_d = self.model.discriminator_loss(batch, cache)
            if not self._check_finite(loss_d, "discriminator"):
                return self._skip()
            self._backward(loss_d, self.d_params)
            terms = {**terms, **terms_d}
        self._update(self.opt_g)
        if self.opt_d:
            self._update(self.opt_d)
        return self._finish(terms, cache | {"batch": batch})

    def _one_side_step(self, loss_and_terms, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                       what: str) -> StepOutput:
        """A warm-up step: one loss, one backward, one optimiser; the other side waits."""
        optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            loss, terms = loss_and_terms()
        if not self._check_finite(loss, what):
            return self._skip()
        self._backward(loss, params)
        self._update(optimizer)
        return self._finish(terms, None)

    def _finish(self, terms: dict[str, torch.Tensor], cache: dict | None) -> StepOutput:
        if self.scaler:
            self.scaler.update()
        generators = self.model.generators()
        for direction, average in self.ema.items():
            average.update_parameters(generators[direction])
        self._advance()
        names = list(terms)
        values = torch.stack([terms[n].detach().float().reshape(()) for n in names]).tolist() if names else []
        return StepOutput(dict(zip(names, values)), skipped=False, cache=cache)

    def export_generators(self) -> dict[str, nn.Module]:
        """The generators to translate with: the averages when train.ema is set."""
        return {d: average.module for d, average in self.ema.items()} or self.model.generators()

    def replica_state(self) -> dict:
        """What differs between data-parallel processes: their RNG streams and the image pools
        of the fakes each one generated (on the CPU, so it can travel to rank 0)."""
        state = {"rng": _capture_rng()}
        if hasattr(self.model, "pools_state_dict"):
            state["pools"] = {name: t.cpu() for name, t in self.model.pools_state_dict().items()}
        return state

    def state_dict(self, replicas: list[dict] | None = None) -> dict:
        """The whole training state; ``replicas`` are every process's :meth:`replica_state`
        (rank order) in a data-parallel run, stored apart so each process resumes its own."""
        replicas = replicas or [self.replica_state()]
        state = {
            "step": self.step_index,
            "skipped_steps": self.skipped_steps,
            "model": dict(self.model.state_dict()),
            "opt_g": self.opt_g.state_dict(),
            "sched_g": self.sched_g.state_dict(),
        }
        state |= replicas[0] if len(replicas) == 1 else {"replicas": replicas}
        if self.opt_d:
            state["opt_d"] = self.opt_d.state_dict()
            state["sched_d"] = self.sched_d.state_dict()
        if self.scaler:
            state["scaler"] = self.scaler.state_dict()
        if self.ema:
            state["ema"] = {d: dict(average.state_dict()) for d, average in self.ema.items()}
        return state

    def _own_replica_state(self, state: dict) -> dict:
        replicas = state.get("replicas")
        if replicas is None:  # a single-process checkpoint
            return state
        # Resumed on more processes than saved it: the extra ones start from rank 0's streams.
        return replicas[self.env.rank] if self.env.rank < len(replicas) else replicas[0]

    def load_state_dict(self, state: dict) -> None:
        try:
            own = self._own_replica_state(state)
            self.model.load_state_dict(state["model"], strict=True)
            self.opt_g.load_state_dict(state["opt_g"])
            self.sched_g.load_state_dict(state["sched_g"])
            if self.opt_d:
                self.opt_d.load_state_dict(state["opt_d"])
                self.sched_d.load_state_dict(state["sched_d"])
            if "pools" in own and hasattr(self.model, "load_pools_state_dict"):
                self.model.load_pools_state_dict(own["pools"])
            if self.scaler and "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
            for direction, average in self.ema.items():
                average.load_state_dict(state["ema"][direction])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise SynthctError(f"checkpoint does not match this model/config ({str(exc).splitlines()[0]})") from None
        for optimizer in (self.opt_g, self.opt_d):
            if optimizer:
                _match_parameter_layout(optimizer)
        self.step_index = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        _restore_rng(own["rng"])


def _match_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give restored moment buffers their parameter's memory layout. Checkpoints store tensors
    contiguous, but channels_last parameters (Precision.train_memory_format) have channels_last
    moments, and fused Adam walks parameter and moments as flat memory, so the layouts must agree."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int  # optimisation steps done in total (including earlier runs when resumed)
    total_steps: int
    epoch: int
    stopped: str  # done | budget | signal | step (train.stop_at_step)
    signal: int | None = None  # SIGINT / SIGTERM that stopped the run
    losses: dict[str, float] = field(default_factory=dict)  # last logged values
    skipped_steps: int = 0
    precision: str = "fp32"
    device: str = "cpu"
    generators: dict[str, Path] = field(default_factory=dict)
    model: nn.Module | None = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signal if self.signal else 0


class _StopSignals:
    """SIGINT/SIGTERM set a flag so the loop finishes its step and saves; a second one aborts."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled item order of one epoch; a pure function of (seed, epoch) so a resumed run
    continues mid-epoch exactly where it stopped."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def collate(dataset, indices: list[int]) -> dict[str, torch.Tensor]:
    items = [dataset[i] for i in indices]
    return {name: torch.stack([torch.as_tensor(item[name]) for item in items]) for name in items[0]}


def _budget_clock(kind: str):
    """Seconds for budgets and logs: wall time, or this process's CPU time per thread, which
    gives a run on a shared machine the compute it would have had alone."""
    if kind == "wall":
        return time.monotonic
    if kind == "cpu":
        threads = torch.get_num_threads()
        return lambda: time.process_time() / threads
    raise SynthctError(f"unknown train.clock '{kind}' (use wall or cpu)")


def _build_model(cfg: RunConfig, channels: int) -> nn.Module:
    from synthct.models import build_model

    if cfg.model.generator == "unet" and cfg.data.size % 2 ** cfg.model.unet_downs:
        raise SynthctError(f"a U-Net with model.unet_downs={cfg.model.unet_downs} needs data.size to be a "
                           f"multiple of {2 ** cfg.model.unet_downs}, got {cfg.data.size} (lower model.unet_downs)")
    try:
        return build_model(cfg.model, in_channels=channels, out_channels=channels)
    except ValueError as exc:
        raise SynthctError(f"cannot build model: {exc}") from None


def _load_data(cfg: RunConfig, run_dir: Path):
    from synthct.data.layouts import collect_sources
    from synthct.data.slices import SliceDataset

    sources = collect_sources(cfg.data, split="train")
    paired = cfg.model.name == "pix2pix" or cfg.data.paired
    if cfg.model.name == "pix2pix" and not sources.paired:
        raise SynthctError("pix2pix needs paired, co-registered MR/CT: use a SynthRAD layout "
                           "(<case>/mr.nii.gz + ct.nii.gz) or --set data.paired=true with matching "
                           "MR and CT folders")
    cache_dir = run_dir / "cache" if cfg.data.cache == "mmap" else None
    dataset = SliceDataset(sources, cfg.data, paired=paired, seed=cfg.train.seed, cache_dir=cache_dir,
                           body_masks=cfg.model.body_masked)
    if len(dataset) == 0:
        raise SynthctError("no usable training slices (all below data.min_body_fraction?)",
                           cfg.data.root or cfg.data.mr)
    return dataset


def generator_meta(cfg: RunConfig, module: nn.Module, direction: str, dataset, step: int, epoch: int) -> dict:
    source, target = direction.split("2")
    mappings = dataset.mappings
    return {
        "direction": direction, "source": source, "target": target, "model": cfg.model.name,
        "architecture": generator_architecture(module, cfg.model.generator, cfg.data.slices,
                                               cfg.model.ngf, cfg.model.blocks),
        "slices": cfg.data.slices, "size": cfg.data.size, "axis": cfg.data.axis, "resize": cfg.data.resize,
        "intensity_mode": dataset.intensity_mode,
        "body_masked": cfg.model.body_masked,
        "input_mapping": mappings[source], "output_mapping": mappings[target],
        "step": step, "epoch": epoch, "config": config_to_dict(cfg),
    }


def export_generators(modules: dict[str, nn.Module], cfg: RunConfig, folder: Path, dataset, step: int,
                      epoch: int) -> dict[str, Path]:
    paths = {}
    for direction, module in modules.items():
        meta = generator_meta(cfg, module, direction, dataset, step, epoch)
        paths[direction] = save_generator(module, folder / f"generator_{direction}", meta)
    return paths


def train(cfg: RunConfig, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
          quiet: bool = False) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (or continue it with ``resume``); see module docstring."""
    run_dir = Path(run_dir)
    env = ddp.detect_env()
    device = resolve_device(cfg.train.device, env.local_rank)
    ddp.init(env, device)
    try:
        result = _train(cfg, run_dir, resume, overwrite, quiet, env, device)
    except BaseException:
        ddp.shutdown(env)  # no barrier: a failed rank must not wait for the others
        raise
    ddp.shutdown(env, synchronise=True)
    return result


def _train(cfg, run_dir, resume, overwrite, quiet, env, device) -> TrainResult:
    from synthct.models import check_model_config

    check_model_config(cfg.model)
    check_sizes(cfg)
    check_warmup(cfg)
    check_optimisation(cfg)
    if cfg.train.stop_at_step is not None and cfg.train.stop_at_step < 1:
        raise SynthctError(f"train.stop_at_step must be a step number of at least 1, got {cfg.train.stop_at_step}")
    if cfg.train.batch_size < 1:
        raise SynthctError(f"train.batch_size must be at least 1, got {cfg.train.batch_size}")
    if env.is_main:
        prepare_run_dir(run_dir, resume, overwrite)
    log = RunLogger(run_dir, enabled=env.is_main and not quiet, writes_files=env.is_main)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    precision = resolve_precision(cfg.train.precision, device)
    seed_everything(cfg.train.seed)

    dataset = _load_data(cfg, run_dir)
    per_rank = len(dataset) // env.world_size
    steps_per_epoch = per_rank // cfg.train.batch_size
    if steps_per_epoch < 1:
        raise SynthctError(f"only {len(dataset)} training slices for batch size {cfg.train.batch_size}"
                           f"{f' on {env.world_size} processes' if env.enabled else ''}")
    budget_s = cfg.train.max_minutes * 60 if cfg.train.max_minutes else None
    by_time = budget_s is not None and not cfg.train.steps and not cfg.train.epochs
    if cfg.train.steps:
        total_steps = cfg.train.steps
    elif cfg.train.epochs:
        total_steps = cfg.train.epochs * steps_per_epoch
    elif by_time:
        total_steps = 10**12  # the budget ends training
    else:
        raise SynthctError("set the length of training: --steps N, --epochs N or --minutes M "
                           "(train.steps / train.epochs / train.max_minutes)")

    model = _build_model(cfg, cfg.data.slices)
    trainer = Trainer(model, cfg, total_steps, device, precision, env)
    checkpoints = run_dir / "checkpoints"
    elapsed_before = 0.0
    if resume:
        state, which = load_state(checkpoints)
        if which != "state":
            log.say("the last checkpoint write was interrupted before its final rename; resuming from "
                    f"checkpoints/{which}" if which == "state.next" else
                    f"checkpoints/state was unusable; resuming from checkpoints/{which}")
        trainer.load_state_dict(state)
        elapsed_before = float(state.get("elapsed_s", 0.0))
        log.truncate_after(trainer.step_index)
    if env.is_main:
        save_config(cfg, run_dir / "config.yaml")

    log.say(f"training {cfg.model.name} ({cfg.model.generator}, ngf {cfg.model.ngf}) on {device}"
            f"{f' x{env.world_size} processes' if env.enabled else ''}: precision {precision.name} "
            f"({precision.reason}), {len(dataset)} slices {cfg.data.size}px x{cfg.data.slices}, "
            f"batch {cfg.train.batch_size}, {steps_per_epoch} steps/epoch"
            + (f", {cfg.train.max_minutes:g} min with the lr schedule following the clock" if by_time
               else f", {total_steps} steps")
            + (f", resuming at step {trainer.step_index}" if resume else "")
            + (f"; the first {cfg.train.coarse_until:.0%} at {cfg.train.coarse_size}px" if cfg.train.coarse_size else "")
            + (f"; the first {cfg.train.contrast_warmup:.0%} a contrast warm-up of the generators"
               if cfg.train.contrast_warmup else "")
            + (f"; {'then' if cfg.train.contrast_warmup else 'the first'} {cfg.train.discriminator_warmup:.0%} "
               "a warm-up of the discriminators"
               if cfg.train.discriminator_warmup else ""))

    def checkpoint() -> dict[str, Path]:
        """Full state for resuming, then the generators for translating (written by rank 0;
        every process must call it, since each hands rank 0 its own RNG streams and pools)."""
        replicas = ddp.gather_to_main(trainer.replica_state(), env)
        if not env.is_main:
            return {}
        log.flush()
        epoch = trainer.step_index // steps_per_epoch
        state = trainer.state_dict(replicas) | {"epoch": epoch, "elapsed_s": elapsed_before + clock() - train_started}
        save_state(checkpoints, state)
        if trainer.ema:
            export_generators(model.generators(), cfg, run_dir / "raw", dataset, trainer.step_index, epoch)
        return export_generators(trainer.export_generators(), cfg, run_dir, dataset, trainer.step_index, epoch)

    def snapshot(step: int, epoch: int) -> None:
        for direction, module in trainer.export_generators().items():
            meta = generator_meta(cfg, module, direction, dataset, step, epoch)
            save_generator(module, run_dir / "snapshots" / f"generator_{direction}_step{step:07d}", meta)

    stopped, stop_signal, last_losses, generators = "done", None, {}, {}
    # A stop point the run has already passed is behind it: resuming continues past it.
    stop_at = cfg.train.stop_at_step if (cfg.train.stop_at_step or 0) > trainer.step_index else None
    saved_at = trainer.step_index if resume else -1
    saved_here = False  # rank-independent, unlike `generators`, so every process checkpoints together
    clock = _budget_clock(cfg.train.clock)
    train_started = clock()  # budgets count training, not data loading

    def spent_s() -> float:
        # A clock-driven schedule spans resumes; a step-driven budget is per invocation.
        return (elapsed_before if by_time else 0.0) + clock() - train_started

    snapshot_s = cfg.train.snapshot_minutes * 60 if cfg.train.snapshot_minutes else None
    next_snapshot = (int(spent_s() // snapshot_s) + 1) * snapshot_s if snapshot_s else None
    if snapshot_s and env.is_main and not resume:
        snapshot(0, 0)
    with _StopSignals() as signals, log.progress(None if by_time else total_steps, trainer.step_index) as bar:
        while trainer.step_index < total_steps:
            if by_time:
                trainer.time_fraction = min(1.0, spent_s() / budget_s)
            epoch, position = divmod(trainer.step_index, steps_per_epoch)
            dataset.set_epoch(epoch)
            order = ddp.shard(epoch_order(len(dataset), cfg.train.seed, epoch), env)
            tick = time.monotonic()
            batch_size = cfg.train.batch_size
            batch = collate(dataset, order[position * batch_size:(position + 1) * batch_size])
            data_s = time.monotonic() - tick
            lr = trainer.lr
            try:
                out = trainer.step(batch)
            except NonFiniteLoss:
                log.close()
                raise
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_s = time.monotonic() - tick - data_s
            step = trainer.step_index
            if out.losses:
                last_losses = out.losses
            log.record(step=step, epoch=epoch, elapsed_s=elapsed_before + clock() - train_started, lr=lr,
                       data_s=data_s, step_s=step_s, skipped=int(out.skipped), losses=out.losses)
            bar.update(1)
            if env.is_main and out.cache is not None and cfg.train.sample_every and step % cfg.train.sample_every == 0:
                save_sample_grid(model.samples(out.cache, out.cache["batch"]),
                                 run_dir / "samples" / f"step_{step:06d}.png")
            if step % cfg.train.log_every == 0:
                log.flush()
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0 and step < total_steps:
                generators = checkpoint()
                saved_at, saved_here = step, True
            if next_snapshot is not None and spent_s() >= next_snapshot:
                if env.is_main:
                    snapshot(step, epoch)
                next_snapshot += snapshot_s
            over_budget = budget_s is not None and spent_s() >= budget_s
            # 0 go on, 1 budget spent, else a signal number (SIGINT 2, SIGTERM 15): every process
            # stops at the same step for the same reason, also when only one of them was signalled.
            stop = ddp.max_over_ranks(signals.received or int(over_budget), env, device)
            if stop:
                stopped, stop_signal = ("signal", stop) if stop > 1 else ("budget", None)
                break
            if stop_at is not None and step >= stop_at:
                stopped = "step"
                break
        if saved_at != trainer.step_index or not saved_here:
            generators = checkpoint()
    epoch = trainer.step_index // steps_per_epoch
    if stopped == "signal":
        name = signal.Signals(stop_signal).name
        log.say(f"stopped by {name} at step {trainer.step_index}; resumable state saved "
                f"(synthct train --resume {run_dir})")
    elif stopped == "step":
        log.say(f"stopped at step {trainer.step_index} (train.stop_at_step); resumable state saved "
                f"(synthct train --resume {run_dir} continues past it)")
    elif stopped == "budget":
        log.say(f"time budget of {cfg.train.max_minutes:g} min spent at step {trainer.step_index}"
                f"{'' if by_time else f'/{total_steps}'}; "
                f"state saved (continue with synthct train --resume {run_dir})")
    if env.is_main:
        log.close()
        plot_loss_curves(read_log(run_dir / "log.csv"), run_dir / "loss_curves.png")
        log.say(f"done: {trainer.step_index}{'' if by_time else f'/{total_steps}'} steps, data wait {log.data_wait_fraction():.0%} "
                f"of step time, {trainer.skipped_steps} skipped; generators in {run_dir}")
    return TrainResult(run_dir=run_dir, steps=trainer.step_index, total_steps=total_steps, epoch=epoch,
                       stopped=stopped, signal=stop_signal,
                       losses=last_losses, skipped_steps=trainer.skipped_steps, precision=precision.name,
                       device=str(device), generators=generators, model=model)
