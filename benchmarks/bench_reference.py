"""synthct's CycleGAN training step against the reference implementation's, side by side: both
codes on one machine, in one process, with the same torch thread count and the same synthetic
batch, timed in alternation (reference, synthct, [synthct bf16], reference, ...) after warm-up
steps that are not counted, so that load from other jobs falls on every code alike and the
ratio of the medians stays fair (docs/PERFORMANCE.md, "Side by side with the reference").

The reference is junyanz/pytorch-CycleGAN-and-pix2pix; nothing is fetched at run time:

    git clone https://github.com/junyanz/pytorch-CycleGAN-and-pix2pix /path/to/reference
    .venv/bin/python benchmarks/bench_reference.py --reference /path/to/reference \\
        [--size 256] [--ngf 64] [--pairs 5] [--warmup 1] [--threads 1]

Only the reference's model modules are imported (models/cycle_gan_model.py, models/base_model.py,
models/networks.py, util/image_pool.py), so torchvision is not needed. Its options parser pulls in
its data modules (and torchvision), so ``opt`` is an argparse.Namespace of its training defaults
for the CycleGAN, plus the model's own defaults from ``CycleGANModel.modify_commandline_options``.
The step timed is the reference's ``set_input`` + ``optimize_parameters``, and synthct's
``Trainer.step``: ResNet-9 generators (ngf 64), 70x70 PatchGAN (n_layers 3, ndf 64), instance
norm, no dropout, LSGAN, cycle weight 10, identity 0.5, image pool 50, Adam(2e-4, 0.5), batch 1,
one channel in and out.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from synthct.bench import make_trainer, random_batch
from synthct.measure import count_flops, cpu_flags, cpu_model, floor_seconds, load_average, matmul_rate
from synthct.runtime import cpu_bf16_support

REFERENCE_URL = "https://github.com/junyanz/pytorch-CycleGAN-and-pix2pix"
REFERENCE_MODULE = "models.cycle_gan_model"
SKIP_MESSAGE = (f"skipped: no reference checkout given. Clone it (git clone {REFERENCE_URL} PATH) "
                "and pass --reference PATH")

# The reference's training defaults (options/base_options.py, options/train_options.py) for
# `train.py --model cycle_gan` on one-channel images, without its parser.
REFERENCE_DEFAULTS = dict(
    isTrain=True, gpu_ids=[], checkpoints_dir="checkpoints", name="bench", preprocess="resize_and_crop",
    direction="AtoB", netG="resnet_9blocks", netD="basic", n_layers_D=3, ngf=64, ndf=64, norm="instance",
    init_type="normal", init_gain=0.02, gan_mode="lsgan", pool_size=50, lr=0.0002, beta1=0.5,
    input_nc=1, output_nc=1, batch_size=1,
)


@dataclass
class Timed:
    label: str
    precision: str
    seconds: list[float]
    flops: int | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def load_reference(checkout: Path):
    """The reference's CycleGANModel class, imported from ``checkout`` (models/ and util/ are
    top-level packages there, hence the path goes on sys.path)."""
    checkout = checkout.resolve()
    if not (checkout / "models" / "cycle_gan_model.py").is_file():
        raise SystemExit(f"{checkout}: not a checkout of {REFERENCE_URL} (no models/cycle_gan_model.py)")
    sys.path.insert(0, str(checkout))
    module = importlib.import_module(REFERENCE_MODULE)
    if checkout not in Path(module.__file__).resolve().parents:
        raise SystemExit(f"another '{REFERENCE_MODULE}' ({module.__file__}) was imported before {checkout}'s")
    return module.CycleGANModel


def reference_options(model_class, size: int, ngf: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    model_class.modify_commandline_options(parser, is_train=True)
    opt = argparse.Namespace(**REFERENCE_DEFAULTS)
    vars(opt).update(vars(parser.parse_args([])))
    opt.ngf, opt.crop_size, opt.load_size = ngf, size, size
    return opt


def reference_step(model_class, size: int, ngf: int, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """One training iteration of the reference's train.py loop body, on ``batch``."""
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # its network init prints a line per network
        model = model_class(reference_options(model_class, size, ngf))
    data = {"A": batch["mr"], "B": batch["ct"], "A_paths": ["mr"], "B_paths": ["ct"]}

    def step() -> None:
        model.set_input(data)
        model.optimize_parameters()
    return step


def synthct_step(size: int, ngf: int, precision: str, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    trainer, _ = make_trainer(size, ngf, 9, precision, torch.device("cpu"))
    return lambda: trainer.step(batch)


def alternate(steps: dict[str, Callable[[], object]], pairs: int, warmup: int,
              clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds of each step, measured in rounds that run every step once in turn (A B C A B C
    ...), after ``warmup`` rounds that are not kept."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(max(1, pairs)):
        for name, step in steps.items():
            start = clock()
            step()
            seconds[name].append(clock() - start)
    return seconds


def measure(reference: Path, size: int, ngf: int, pairs: int, warmup: int, with_bf16: bool,
            floors: bool) -> tuple[list[Timed], dict[str, float]]:
    """The timed rows (reference fp32 first) and the matmul rates that the floors divide by:
    the median of one rate per round, measured in the rounds themselves, since on a shared
    machine the rate moves with the load as much as the steps do."""
    model_class = load_reference(reference)
    batch = random_batch(size)
    rows = [("reference", "fp32", reference_step(model_class, size, ngf, batch)),
            ("synthct", "fp32", synthct_step(size, ngf, "fp32", batch))]
    if with_bf16:
        rows.append(("synthct", "bf16", synthct_step(size, ngf, "bf16", batch)))
    steps = {f"{label} {precision}": step for label, precision, step in rows}
    precisions = {row[1] for row in rows} if floors else set()
    sampled: dict[str, list[float]] = {precision: [] for precision in precisions}
    for precision in precisions:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        steps[f"matmul {precision}"] = lambda dtype=dtype, rates=sampled[precision]: rates.append(
            matmul_rate(dtype, torch.device("cpu"), repeats=3))
    seconds = alternate(steps, pairs, warmup)
    timed = [Timed(label, precision, seconds[f"{label} {precision}"]) for label, precision, _ in rows]
    if floors:
        for row, (_, _, step) in zip(timed, rows):
            row.flops = count_flops(step)
    return timed, {precision: statistics.median(rates[warmup:]) for precision, rates in sampled.items()}


def paired_ratio(reference: Timed, row: Timed) -> float:
    """The median over rounds of the reference's step over this row's in the same round: the
    load of a shared machine changes between rounds more than within one."""
    return statistics.median(r / s for r, s in zip(reference.seconds, row.seconds))


def markdown(rows: list[Timed], rates: dict[str, float]) -> str:
    reference = rows[0]
    head = ["code", "precision", "median s/step", "steps (s)", "reference fp32 / this: medians",
            "same-round ratios, median"]
    if rates:
        head += ["TFLOP", "FLOP floor (s)", "x floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.label, row.precision, f"{row.median:.3f}", " ".join(f"{s:.2f}" for s in row.seconds),
                 f"{reference.median / row.median:.2f}x", f"{paired_ratio(reference, row):.2f}x"]
        if rates:
            floor = floor_seconds(row.flops, rates[row.precision])
            cells += [f"{row.flops / 1e12:.3f}", f"{floor:.3f}", f"{row.median / floor:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, help=f"a checkout of {REFERENCE_URL}")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=5, help="timed rounds, each running every code once")
    parser.add_argument("--warmup", type=int, default=1, help="rounds before the timed ones, not counted")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for every code")
    parser.add_argument("--no-bf16", action="store_true", help="leave out synthct's bf16 row")
    parser.add_argument("--no-floors", action="store_true",
                        help="leave out the FLOP counts and the matmul rates (one more step per code)")
    args = parser.parse_args(argv)
    if args.reference is None:
        print(SKIP_MESSAGE)
        return 0
    torch.set_num_threads(args.threads)
    with_bf16 = cpu_bf16_support() is not None and not args.no_bf16
    load_before = load_average()
    rows, rates = measure(args.reference, args.size, args.ngf, args.pairs, args.warmup, with_bf16,
                          floors=not args.no_floors)
    print(f"CPU: {cpu_model()}, flags {' '.join(cpu_flags()) or 'unknown'} "
          f"({torch.backends.cpu.get_cpu_capability()} kernels); torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); {args.size} px, ngf {args.ngf}, batch 1; medians of "
          f"{args.pairs} alternated rounds after {args.warmup} warm-up round(s); load before/after "
          f"{load_before}/{load_average()}")
    if rates:
        print("Matmul rates (TFLOP/s, median of one per round): "
              + ", ".join(f"{name} {rate:.3f}" for name, rate in sorted(rates.items(), reverse=True)))
    if not with_bf16 and not args.no_bf16:
        print("No bf16 row: this CPU has neither AVX512-BF16 nor AMX, so bf16 would be emulated.")
    print()
    print(markdown(rows, rates), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
