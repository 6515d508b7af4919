"""The training loop: device, precision, optimisers and schedule, data-parallel gradients, and
the run around them.

The model object owns the networks and the objective (synthct.models.base.TranslationModel);
this module only knows how to optimise it. :class:`Trainer` is one optimisation step at a time
(benchmarks time ``Trainer.step``); :func:`train` is the whole run on a run folder, a short
sequence of named steps whose loop hands logging, samples, checkpoints, snapshots and stopping
to the callbacks of engine.callbacks.
"""

from __future__ import annotations

import random
import re
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from synthct.config import RunConfig
from synthct.engine import distributed as ddp
from synthct.engine.callbacks import (Callback, Checkpoints, Clock, HealthCheck, Samples, Snapshots, StepInfo,
                                      StepLog, Stops, StopSignals)
from synthct.engine.checkpoint import load_state, save_state
from synthct.engine.logging import RunLogger, plot_loss_curves, read_log
from synthct.runtime import Precision, resolve_device, resolve_precision
from synthct.engine.run_folder import prepare_run_dir, write_config
from synthct.engine.setup import build_run_model, check_config, collate, epoch_order, load_training_data
from synthct.errors import SynthctError
from synthct.models.base import TranslationModel
from synthct.models.saved import save_generators

NAN_POLICIES = ("stop", "skip")


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

    def __init__(self, model: TranslationModel, cfg: RunConfig, total_steps: int, device: torch.device,
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
        """One step: L_G -> backward -> L_D -> backward -> Adam on G, Adam on D (the discriminator
        half only for a model with discriminators).

        L_D only sees detached fakes, so computing it before G's update gives the same result
        as the reference order and lets a NaN in either loss skip the whole step."""
        batch = self._to_device(batch)
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

    def _finish(self, terms: dict[str, torch.Tensor], cache: dict) -> StepOutput:
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
            if "pools" in own:
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


def _schedule(cfg: RunConfig, slices: int, env: ddp.DistEnv) -> tuple[int, int, bool]:
    """(steps per epoch, total steps, whether the lr schedule follows the time budget)."""
    steps_per_epoch = slices // env.world_size // cfg.train.batch_size
    if steps_per_epoch < 1:
        raise SynthctError(f"only {slices} training slices for batch size {cfg.train.batch_size}"
                           f"{f' on {env.world_size} processes' if env.enabled else ''}")
    by_time = cfg.train.max_minutes is not None and not cfg.train.steps and not cfg.train.epochs
    if cfg.train.steps:
        return steps_per_epoch, cfg.train.steps, by_time
    if cfg.train.epochs:
        return steps_per_epoch, cfg.train.epochs * steps_per_epoch, by_time
    if by_time:
        return steps_per_epoch, 10**12, by_time  # the budget ends training
    raise SynthctError("set the length of training: --steps N, --epochs N or --minutes M "
                       "(train.steps / train.epochs / train.max_minutes)")


def _resume(trainer: Trainer, run_dir: Path, log: RunLogger) -> float:
    """Load the run's last complete checkpoint into ``trainer``; returns the training time before it."""
    state, which = load_state(run_dir / "checkpoints")
    if which != "state":
        log.say("the last checkpoint write was interrupted before its final rename; resuming from "
                f"checkpoints/{which}" if which == "state.next" else
                f"checkpoints/state was unusable; resuming from checkpoints/{which}")
    trainer.load_state_dict(state)
    log.truncate_after(trainer.step_index)
    return float(state.get("elapsed_s", 0.0))


@dataclass
class Run:
    """A training run in progress, as the loop and its callbacks see it."""

    cfg: RunConfig
    run_dir: Path
    env: ddp.DistEnv
    trainer: Trainer
    dataset: object
    log: RunLogger
    steps_per_epoch: int
    total_steps: int
    by_time: bool  # the lr schedule follows the time budget
    resumed: bool
    clock: Clock
    stopped: str | None = None  # budget | signal | step, once a callback stops the run
    signal: int | None = None
    losses: dict[str, float] = field(default_factory=dict)  # the last logged values
    generators: dict[str, Path] = field(default_factory=dict)  # written by this process

    @property
    def epoch(self) -> int:
        return self.trainer.step_index // self.steps_per_epoch

    def next_batch(self) -> tuple[dict[str, torch.Tensor], float]:
        """The batch of the next step and the seconds spent assembling it."""
        epoch, position = divmod(self.trainer.step_index, self.steps_per_epoch)
        self.dataset.set_epoch(epoch)
        order = ddp.shard(epoch_order(len(self.dataset), self.cfg.train.seed, epoch), self.env)
        size = self.cfg.train.batch_size
        tick = time.monotonic()
        batch = collate(self.dataset, order[position * size:(position + 1) * size])
        return batch, time.monotonic() - tick

    def step(self, batch: dict[str, torch.Tensor], data_s: float) -> StepInfo:
        epoch, lr = self.epoch, self.trainer.lr
        tick = time.monotonic()
        try:
            out = self.trainer.step(batch)
        except NonFiniteLoss:
            self.log.close()
            raise
        if self.trainer.device.type == "cuda":
            torch.cuda.synchronize(self.trainer.device)
        return StepInfo(self.trainer.step_index, epoch, lr, data_s, time.monotonic() - tick, out)

    def checkpoint(self) -> None:
        """Full state for resuming, then the generators for translating (written by rank 0;
        every process must call it, since each hands rank 0 its own RNG streams and pools)."""
        replicas = ddp.gather_to_main(self.trainer.replica_state(), self.env)
        if not self.env.is_main:
            return
        self.log.flush()
        step, epoch = self.trainer.step_index, self.epoch
        save_state(self.run_dir / "checkpoints",
                   self.trainer.state_dict(replicas) | {"epoch": epoch, "elapsed_s": self.clock.elapsed()})
        if self.trainer.ema:
            save_generators(self.trainer.model.generators(), self.cfg, self.run_dir / "raw", self.dataset, step, epoch)
        self.generators = save_generators(self.trainer.export_generators(), self.cfg, self.run_dir, self.dataset,
                                          step, epoch)

    def snapshot(self, step: int, epoch: int) -> None:
        save_generators(self.trainer.export_generators(), self.cfg, self.run_dir / "snapshots", self.dataset,
                        step, epoch, suffix=f"_step{step:07d}")


def _fit(run: Run, callbacks: list[Callback]) -> None:
    """The loop: batch, step, callbacks; until the schedule ends or a callback stops the run."""
    for callback in callbacks:
        callback.on_start(run)
    while not run.stopped and run.trainer.step_index < run.total_steps:
        if run.by_time:
            run.trainer.time_fraction = run.clock.fraction_spent()
        info = run.step(*run.next_batch())
        for callback in callbacks:
            callback.on_step(run, info)
        if run.stopped:
            break
    for callback in callbacks:
        callback.on_end(run)


def train(cfg: RunConfig, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
          quiet: bool = False, note: str | None = None) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (or continue it with ``resume``); see module docstring.
    ``note``: a line for the user, said once the run has started (after its description)."""
    run_dir = Path(run_dir)
    env = ddp.detect_env()
    device = resolve_device(cfg.train.device, env.local_rank)
    ddp.init(env, device)
    try:
        result = _train(cfg, run_dir, resume, overwrite, quiet, env, device, note)
    except BaseException:
        ddp.shutdown(env)  # no barrier: a failed rank must not wait for the others
        raise
    ddp.shutdown(env, synchronise=True)
    return result


def _train(cfg, run_dir, resume, overwrite, quiet, env, device, note) -> TrainResult:
    check_config(cfg)
    if env.is_main:
        prepare_run_dir(run_dir, resume, overwrite)
    log = RunLogger(run_dir, enabled=env.is_main and not quiet, writes_files=env.is_main)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    precision = resolve_precision(cfg.train.precision, device)
    seed_everything(cfg.train.seed)
    dataset = load_training_data(cfg, run_dir)
    steps_per_epoch, total_steps, by_time = _schedule(cfg, len(dataset), env)
    trainer = Trainer(build_run_model(cfg, cfg.data.slices), cfg, total_steps, device, precision, env)
    elapsed_before = _resume(trainer, run_dir, log) if resume else 0.0
    if env.is_main:
        write_config(cfg, run_dir)
    log.say(_describe(cfg, trainer, len(dataset), steps_per_epoch, by_time, resume))
    if note:
        log.say(note)
    budget_s = cfg.train.max_minutes * 60 if cfg.train.max_minutes else None
    run = Run(cfg, run_dir, env, trainer, dataset, log, steps_per_epoch, total_steps, by_time, resume,
              Clock(cfg.train.clock, elapsed_before, budget_s, spans_resumes=by_time))
    with StopSignals() as signals, log.progress(None if by_time else total_steps, trainer.step_index):
        _fit(run, [StepLog(cfg.train.log_every), Samples(cfg.train.sample_every),
                   Checkpoints(cfg.train.checkpoint_every), HealthCheck(cfg.train.checkpoint_every),
                   Snapshots(cfg.train.snapshot_minutes), Stops(signals, cfg.train.stop_at_step)])
    _report_end(run)
    return TrainResult(run_dir=run_dir, steps=trainer.step_index, total_steps=total_steps, epoch=run.epoch,
                       stopped=run.stopped or "done", signal=run.signal, losses=run.losses,
                       skipped_steps=trainer.skipped_steps, precision=precision.name, device=str(device),
                       generators=run.generators, model=trainer.model)


def _describe(cfg: RunConfig, trainer: Trainer, slices: int, steps_per_epoch: int, by_time: bool,
              resume: bool) -> str:
    env = trainer.env
    return (f"training {cfg.model.name} ({cfg.model.generator}, ngf {cfg.model.ngf}) on {trainer.device}"
            f"{f' x{env.world_size} processes' if env.enabled else ''}: precision {trainer.precision.name} "
            f"({trainer.precision.reason}), {slices} slices {cfg.data.size}px x{cfg.data.slices}, "
            f"batch {cfg.train.batch_size}, {steps_per_epoch} steps/epoch"
            + (f", {cfg.train.max_minutes:g} min with the lr schedule following the clock" if by_time
               else f", {trainer.total_steps} steps")
            + (f", pairs from {', '.join(cfg.data.pair_cases)}" if cfg.data.pairs else "")
            + (f", resuming at step {trainer.step_index}" if resume else ""))


def _report_end(run: Run) -> None:
    """Say why the run stopped; rank 0 closes log.csv and draws the loss curves."""
    step, run_dir, log = run.trainer.step_index, run.run_dir, run.log
    of_total = "" if run.by_time else f"/{run.total_steps}"
    if run.stopped == "signal":
        log.say(f"stopped by {signal.Signals(run.signal).name} at step {step}; resumable state saved "
                f"(synthct train --resume {run_dir})")
    elif run.stopped == "step":
        log.say(f"stopped at step {step} (train.stop_at_step); resumable state saved "
                f"(synthct train --resume {run_dir} continues past it)")
    elif run.stopped == "budget":
        log.say(f"time budget of {run.cfg.train.max_minutes:g} min spent at step {step}{of_total}; "
                f"state saved (continue with synthct train --resume {run_dir})")
    if run.env.is_main:
        log.close()
        plot_loss_curves(read_log(run_dir / "log.csv"), run_dir / "loss_curves.png")
        log.say(f"done: {step}{of_total} steps, data wait {log.data_wait_fraction():.0%} "
                f"of step time, {run.trainer.skipped_steps} skipped; generators in {run_dir}")
