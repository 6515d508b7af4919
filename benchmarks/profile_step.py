"""Where a preset's training step spends its time: the real ``Trainer.step`` of the preset's model
on random one-channel batches (batch 1), its median time, its FLOPs and FLOP floor at the matmul
rate measured in the same run, and a torch.profiler profile of as many further steps, whose self
CPU time is grouped by what it belongs to: convolutions by kind (weight shape, stride, transposed),
instance norm, pads, the R1 penalty's extra passes, Adam, copies, elementwise ops
(docs/PERFORMANCE.md, "The brain preset's step").

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_step.py [--config aanlib_cyclegan] \\
        [--size 256] [--precision fp32|bf16] [--warmup 1] [--steps 3] [--threads 1] \\
        [--set model.r1_gamma=0 ...]

The convolution kinds are named for the ResNet generator and the PatchGAN (a 4 x 4 kernel is taken
for a PatchGAN layer). The R1 penalty's time is what runs inside ``r1_penalty`` (the input
gradient through D, built differentiable) plus the backward of every autograd node created
there, found by its sequence number; the rest of the discriminator's work stays in the other rows,
so running again with ``--set model.r1_gamma=0`` gives R1's whole cost. On a shared machine the
shares are the result, not the seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from typing import NamedTuple
from unittest import mock

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from synthct.bench import random_batch
from synthct.config import apply_overrides
from synthct.engine import load_run_config
from synthct.engine.trainer import Trainer, seed_everything
from synthct.measure import count_flops, cpu_flags, cpu_model, floor_seconds, load_average, matmul_rate
from synthct.models import build_model, shared
from synthct.runtime import resolve_precision

R1_RANGE = "synthct::r1_penalty"
ENGINE = "autograd::engine::evaluate_function: "

RESIDUAL = "3 x 3 residual convolutions"
DOWN = "3 x 3 stride-2 convolutions (down)"
UP = "3 x 3 transposed convolutions (up)"
STEM = "7 x 7 stem convolution"
HEAD = "7 x 7 output head (matrix products)"
PATCHGAN = "PatchGAN convolutions (4 x 4)"
NORM = "instance norm (+ ReLU / LeakyReLU), forward + backward"
PAD = "reflection pads"
R1 = "R1 penalty: input gradient through D and its backward"
ADAM = "Adam (fused) and zero_grad"
COPY = "copies and layout/dtype conversions"
ELEMENTWISE = "elementwise, activations, losses"
OTHER = "other (allocation, views, autograd bookkeeping)"
UNTRACED = "outside torch ops (Python)"

# Ops whose time (their own and their children's) belongs to a layer; a convolution is further
# told apart by its arguments.
CONVOLUTIONS = {"aten::convolution": 1, "aten::convolution_backward": 2}  # name -> weight's position
OWNERS = {"_FewOutputConv": HEAD, "_FewOutputConvBackward": HEAD,
          "_InstanceNormAct": NORM, "_InstanceNormActBackward": NORM,
          "aten::reflection_pad2d": PAD, "aten::reflection_pad2d_backward": PAD,
          "aten::_fused_adam_": ADAM}
COPIES = {"aten::copy_", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::clone"}
ELEMENTWISE_OPS = {
    "aten::add", "aten::add_", "aten::sub", "aten::sub_", "aten::mul", "aten::mul_", "aten::div",
    "aten::div_", "aten::neg", "aten::pow", "aten::abs", "aten::sgn", "aten::sign", "aten::where",
    "aten::gt", "aten::lt", "aten::ge", "aten::le", "aten::eq", "aten::clamp_min", "aten::clamp_min_",
    "aten::relu", "aten::relu_", "aten::leaky_relu", "aten::leaky_relu_", "aten::leaky_relu_backward",
    "aten::threshold_backward", "aten::tanh", "aten::tanh_backward", "aten::sum", "aten::mean",
    "aten::l1_loss", "aten::mse_loss", "aten::mse_loss_backward", "aten::fill_", "aten::zero_",
    "aten::addcmul", "aten::addcmul_", "aten::square", "aten::sqrt", "aten::rsqrt", "aten::exp",
}


class Op(NamedTuple):
    """What the grouping needs of a profiled op: its name, input shapes and scalar arguments."""
    name: str
    shapes: list
    args: list


def conv_kind(op: Op) -> str:
    """A convolution's row from its weight's shape, its stride and whether it is transposed (the
    profile cannot tell a down convolution from an up one by weight shape alone at ngf 32: both
    can be 64 x 32 x 3 x 3)."""
    at = CONVOLUTIONS[op.name]
    out_channels, in_channels, kernel = op.shapes[at][0], op.shapes[at][1], op.shapes[at][-1]
    stride, transposed = op.args[at + 2], op.args[at + 5]
    if transposed:
        return UP
    if kernel == 4:
        return PATCHGAN
    if kernel == 7:
        return STEM if in_channels < out_channels else HEAD
    return DOWN if max(stride) > 1 else RESIDUAL


def categorise(chain: list[Op]) -> str:
    """The row of an op's self time; ``chain`` is the op followed by its enclosing ops. The
    innermost enclosing op that belongs to a layer decides (so the copies inside a convolution
    count as the convolution's); autocast's weight casts sit beside the convolution, not in it,
    and count as copies."""
    for op in chain:
        if op.name in CONVOLUTIONS:
            return conv_kind(op)
        if op.name in OWNERS:
            return OWNERS[op.name]
        if op.name.startswith("Optimizer."):
            return ADAM
    name = chain[0].name
    return COPY if name in COPIES else ELEMENTWISE if name in ELEMENTWISE_OPS else OTHER


def ancestors(event):
    while event is not None:
        yield event
        event = event.cpu_parent


def r1_nodes(events) -> set[int]:
    """Sequence numbers of the autograd nodes created inside r1_penalty. Their backward runs
    later, in the discriminator's loss.backward(), as engine events carrying the node's number.
    An op records the number its node gets (the next one); the engine events inside the range
    carry the numbers of the discriminator's forward nodes that the input gradient walks
    through, made before the range, so they are left out."""
    inside = [e for e in events if any(a.name == R1_RANGE for a in ancestors(e))]
    evaluated = {e.sequence_nr for e in inside if e.name.startswith(ENGINE)}
    return {e.sequence_nr for e in inside if e.sequence_nr >= 0} - evaluated


def group(events) -> tuple[dict[str, float], dict[str, set[str]]]:
    """Self CPU microseconds per row, and the weight shapes seen in each convolution row."""
    r1 = r1_nodes(events)
    totals: dict[str, float] = defaultdict(float)
    weights: dict[str, set[str]] = defaultdict(set)
    for event in events:
        chain = list(ancestors(event))
        if any(a.name == R1_RANGE or (a.name.startswith(ENGINE) and a.sequence_nr in r1) for a in chain):
            row = R1
        else:
            ops = [Op(a.name, a.input_shapes, a.concrete_inputs) for a in chain]
            row = categorise(ops)
            conv = next((op for op in ops if op.name in CONVOLUTIONS), None)
            if conv is not None and row == conv_kind(conv):
                weights[row].add(" x ".join(map(str, conv.shapes[CONVOLUTIONS[conv.name]])))
        totals[row] += event.self_cpu_time_total
    return totals, weights


def r1_marked(function):
    """``function`` (r1_penalty) run inside a named profiler range."""
    def marked(*args, **kwargs):
        with record_function(R1_RANGE):
            return function(*args, **kwargs)
    return marked


def make_step(config: str, overrides: list[str], size: int | None, precision: str):
    cfg = apply_overrides(load_run_config(config), overrides + ([f"data.size={size}"] if size else []))
    cpu = torch.device("cpu")
    seed_everything(0)
    trainer = Trainer(build_model(cfg.model, in_channels=1, out_channels=1), cfg, total_steps=10 ** 6,
                      device=cpu, precision=resolve_precision(precision, cpu))
    batch = random_batch(cfg.data.size)
    return (lambda: trainer.step(batch)), cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="aanlib_cyclegan", help="preset name or config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.r1_gamma=0 (repeatable)")
    parser.add_argument("--size", type=int, help="image size (default: the preset's data.size)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--warmup", type=int, default=1, help="steps before the timed ones, not counted")
    parser.add_argument("--steps", type=int, default=3, help="steps timed, then as many profiled")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    cpu = torch.device("cpu")
    load_before = load_average()
    step, cfg = make_step(args.config, args.overrides, args.size, args.precision)
    for _ in range(args.warmup):
        step()
    # One matmul rate after each timed step, their median: on a shared machine the rate moves
    # with the load as much as the step does.
    seconds, rates = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
        rates.append(matmul_rate(dtype, cpu, repeats=3))
    # Profiled separately: the profiler's per-op overhead is left out of the timed steps. The model
    # code has no profiler ranges, so r1_penalty runs inside one for these steps only.
    with mock.patch.object(shared, "r1_penalty", r1_marked(shared.r1_penalty)), \
            profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        profiled = time.perf_counter() - start
    flops = count_flops(step)
    totals, weights = group(prof.events())
    totals[UNTRACED] = max(0.0, profiled * 1e6 - sum(totals.values()))

    model = cfg.model
    median, rate = statistics.median(seconds), statistics.median(rates)
    floor = floor_seconds(flops, rate)
    print(f"CPU: {cpu_model()}, flags {' '.join(cpu_flags()) or 'unknown'} "
          f"({torch.backends.cpu.get_cpu_capability()} kernels); torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); load before/after {load_before}/{load_average()}")
    print(f"{args.config}: {cfg.data.size} px, {model.name} {model.generator} ngf {model.ngf} / ndf {model.ndf}, "
          f"{model.blocks} blocks, identity {model.lambda_identity}, r1_gamma {model.r1_gamma}, "
          f"batch 1, {args.precision}; {args.warmup} warm-up step(s)")
    print(f"Step: median {median:.3f} s of {args.steps} ({' '.join(f'{s:.2f}' for s in seconds)}), "
          f"profiled {profiled / args.steps:.3f} s/step; {flops / 1e9:.1f} GFLOP; {args.precision} matmul "
          f"{rate * 1e3:.1f} GFLOP/s (median of {len(rates)}); floor {floor:.3f} s, x floor {median / floor:.2f}")
    print()
    total = sum(totals.values())
    print("| what | weights | share of the step | ms per step |")
    print("|---|---|---|---|")
    for row, micros in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"| {row} | {', '.join(sorted(weights[row]))} | {100 * micros / total:.1f} % "
              f"| {micros / 1e3 / args.steps:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
