"""Everything around the training loop's steps, as callbacks (in the manner of Lightning): the
log, sample grids, checkpoints, the health check, snapshots and the rules that stop a run (time
budget, Ctrl-C / SIGTERM, train.stop_at_step). The loop (engine.trainer) calls ``on_start``, then ``on_step``
after every optimisation step, then ``on_end`` once it finishes or a callback stops it; each
callback sees the run in progress (engine.trainer.Run) and the step just taken (:class:`StepInfo`).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from synthct.engine import distributed as ddp
from synthct.engine.logging import read_log, save_sample_grid
from synthct.errors import SynthctError
from synthct.eval.health import (DISCRIMINATOR_WINDOW, HEALTH_FILE, SAMPLE_SEED, SAMPLE_SLICES, HealthSample,
                                 body_from_image, check_health, discriminator_evidence, discriminator_loss,
                                 read_health, recent_discriminator_loss)
from synthct.io.atomic import atomic_write_text

if TYPE_CHECKING:
    from synthct.engine.trainer import Run, StepOutput


@dataclass
class StepInfo:
    step: int  # optimisation steps done, this one included
    epoch: int
    lr: float  # the generators' learning rate this step used
    data_s: float
    step_s: float
    out: StepOutput


class Callback:
    def on_start(self, run: Run) -> None:
        pass

    def on_step(self, run: Run, info: StepInfo) -> None:
        pass

    def on_end(self, run: Run) -> None:
        pass


class Clock:
    """Seconds for budgets and logs: wall time, or this process's CPU time per thread, which
    gives a run on a shared machine the compute it would have had alone. Training time counts
    from construction (after data loading) and adds ``elapsed_before`` from earlier invocations."""

    def __init__(self, kind: str, elapsed_before: float, budget_s: float | None, spans_resumes: bool):
        if kind == "wall":
            self.now = time.monotonic
        elif kind == "cpu":
            threads = torch.get_num_threads()
            self.now = lambda: time.process_time() / threads
        else:
            raise SynthctError(f"unknown train.clock '{kind}' (use wall or cpu)")
        self.elapsed_before = elapsed_before
        self.budget_s = budget_s
        # A budget that drives the lr schedule spans resumes; a step-driven run's is per invocation.
        self.spans_resumes = spans_resumes
        self.started = self.now()

    def elapsed(self) -> float:
        """Training time of the whole run, earlier invocations included."""
        return self.elapsed_before + self.now() - self.started

    def spent(self) -> float:
        """Time counted against the budget."""
        return (self.elapsed_before if self.spans_resumes else 0.0) + self.now() - self.started

    def fraction_spent(self) -> float:
        return min(1.0, self.spent() / self.budget_s)

    def over_budget(self) -> bool:
        return self.budget_s is not None and self.spent() >= self.budget_s


class StopSignals:
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


class StepLog(Callback):
    """A log.csv row and a progress-bar tick per step; rows reach the file every ``every`` steps."""

    def __init__(self, every: int):
        self.every = every

    def on_step(self, run: Run, info: StepInfo) -> None:
        if info.out.losses:
            run.losses = info.out.losses
        run.log.record(step=info.step, epoch=info.epoch, elapsed_s=run.clock.elapsed(), lr=info.lr,
                       data_s=info.data_s, step_s=info.step_s, skipped=int(info.out.skipped),
                       losses=info.out.losses)
        run.log.bar.update(1)
        if info.step % self.every == 0:
            run.log.flush()


class Samples(Callback):
    """A grid of training translations every ``every`` steps (0: never), in samples/."""

    def __init__(self, every: int):
        self.every = every

    def on_step(self, run: Run, info: StepInfo) -> None:
        cache = info.out.cache
        if run.env.is_main and cache is not None and self.every and info.step % self.every == 0:
            save_sample_grid(run.trainer.model.samples(cache, cache["batch"]),
                             run.run_dir / "samples" / f"step_{info.step:06d}.png")


class Checkpoints(Callback):
    """A resumable checkpoint every ``every`` steps (0: none on the way) and one at the end,
    unless the last step already has one. Every process takes part (see Run.checkpoint)."""

    def __init__(self, every: int):
        self.every = every
        self.saved_at = -1  # the step of this invocation's last checkpoint

    def on_step(self, run: Run, info: StepInfo) -> None:
        if self.every and info.step % self.every == 0 and info.step < run.total_steps:
            run.checkpoint()
            self.saved_at = info.step

    def on_end(self, run: Run) -> None:
        if self.saved_at != run.trainer.step_index:
            run.checkpoint()


class Snapshots(Callback):
    """A copy of the generators every ``minutes`` of training time (and at step 0 of a new run),
    in snapshots/, for learning curves."""

    def __init__(self, minutes: float | None):
        self.every_s = minutes * 60 if minutes else None
        self.next_s: float | None = None

    def on_start(self, run: Run) -> None:
        if not self.every_s:
            return
        self.next_s = (int(run.clock.spent() // self.every_s) + 1) * self.every_s
        if run.env.is_main and not run.resumed:
            run.snapshot(0, 0)

    def on_step(self, run: Run, info: StepInfo) -> None:
        if self.next_s is not None and run.clock.spent() >= self.next_s:
            if run.env.is_main:
                run.snapshot(info.step, info.epoch)
            self.next_s += self.every_s


class Stops(Callback):
    """Ends the run, every process at the same step: on a signal, when the budget is spent, or
    at train.stop_at_step (unless the run has already passed it: resuming continues past it)."""

    def __init__(self, signals: StopSignals, stop_at_step: int | None):
        self.signals = signals
        self.stop_at_step = stop_at_step

    def on_start(self, run: Run) -> None:
        if (self.stop_at_step or 0) <= run.trainer.step_index:
            self.stop_at_step = None
        # A resume whose time budget is already spent takes no step (a new run takes at least one).
        if run.resumed and ddp.max_over_ranks(int(run.clock.over_budget()), run.env, run.trainer.device):
            run.stopped = "budget"

    def on_step(self, run: Run, info: StepInfo) -> None:
        # 0 go on, 1 budget spent, else a signal number (SIGINT 2, SIGTERM 15): every process
        # stops at the same step for the same reason, also when only one of them was signalled.
        stop = ddp.max_over_ranks(self.signals.received or int(run.clock.over_budget()), run.env,
                                  run.trainer.device)
        if stop:
            run.stopped, run.signal = ("signal", stop) if stop > 1 else ("budget", None)
        elif self.stop_at_step is not None and info.step >= self.stop_at_step:
            run.stopped = "step"


class HealthCheck(Callback):
    """The training health check (synthct.eval.health) at every checkpoint step and at the end:
    its verdict goes to the log and, with those before it, to RUN_DIR/health.json. It judges the
    generators training exports, on a fixed sample of training slices drawn at the start, and the
    discriminator losses of the later half of the steps taken, at most the last ``window``."""

    def __init__(self, every: int, window: int = DISCRIMINATOR_WINDOW):
        self.every = every
        self.window = window
        self.sample: HealthSample | None = None
        self.losses: deque[tuple[int, float]] = deque(maxlen=window)  # (step, mean discriminator loss)
        self.checks: list[dict] = []

    def on_start(self, run: Run) -> None:
        if not run.env.is_main:
            return
        self.sample = _health_sample(run.dataset)
        if run.resumed:
            record = read_health(run.run_dir)
            self.checks = [c for c in record["checks"] if c["step"] <= run.trainer.step_index] if record else []
            for row in read_log(run.run_dir / "log.csv"):
                self._remember(int(row["step"]), row)

    def on_step(self, run: Run, info: StepInfo) -> None:
        if not run.env.is_main:
            return
        self._remember(info.step, info.out.losses)
        if self.every and info.step % self.every == 0 and info.step < run.total_steps:
            self.check(run)

    def on_end(self, run: Run) -> None:
        if not run.env.is_main:
            return
        if self.checks and self.checks[-1]["step"] == run.trainer.step_index:
            if self.checks[-1].get("final", True) == _last_step(run):
                return
            self.checks.pop()  # checked at this step before the time budget ended the run
        self.check(run)

    def _remember(self, step: int, losses: dict) -> None:
        loss = discriminator_loss(losses)
        if loss is not None:
            self.losses.append((step, loss))

    def _discriminators(self, step: int, gan_mode: str) -> dict | None:
        recent = recent_discriminator_loss(self.losses, step, self.window)
        if recent is None:
            return None
        loss, window = recent
        return discriminator_evidence(loss, gan_mode, window)

    def check(self, run: Run) -> None:
        step = run.trainer.step_index
        # Paired slices beside unpaired data tie the generator to the real CT as a paired model's
        # L1 does: both semi-supervised runs on the real scans sat at chance while in the CT's
        # contrast. The discriminator signal judges plain unpaired training only.
        judged = run.trainer.model.chance_means_failure and not (run.cfg.data.paired or run.cfg.data.pairs)
        verdict = check_health(run.trainer.export_generators(), self.sample, step,
                               air_outside=run.cfg.model.body_masked,
                               discriminators=self._discriminators(step, run.cfg.model.gan_mode) if judged else None,
                               final=_last_step(run))
        run.log.say(verdict.line())
        self.checks.append(verdict.to_dict())
        atomic_write_text(run.run_dir / HEALTH_FILE, json.dumps({"checks": self.checks}, indent=2) + "\n")


def _last_step(run: Run) -> bool:
    """Whether the run ends at its current step: a run stopped by a signal or at
    train.stop_at_step goes on later."""
    return run.trainer.step_index >= run.total_steps or run.stopped == "budget"


def _health_sample(dataset) -> HealthSample:
    """The health check's slices: the same items of the first epoch on every check and resume."""
    from synthct.engine.setup import collate

    count = min(SAMPLE_SLICES, len(dataset))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(SAMPLE_SEED))
    dataset.set_epoch(0)
    batch = collate(dataset, sorted(order[:count].tolist()))
    bodies = {name: batch.get(f"{name}_body") for name in ("mr", "ct")}
    return HealthSample(batch["mr"], batch["ct"],
                        *(body if body is not None else body_from_image(batch[name]) for name, body in bodies.items()))
