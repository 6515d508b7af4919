"""Memory layout of fp32 CPU training and inference: channels_last against plain NCHW, measured
in one run on the same machine (docs/PERFORMANCE.md, "fp32 on a CPU without fast bf16").

synthct trains in ``Precision.train_memory_format`` (channels_last for bf16 on CPU and on CUDA,
NCHW for fp32 on CPU) and translates in channels_last. This times both layouts for a CycleGAN
training step (the real Trainer, identity loss on as in the paper's default) and for a 256 x 256
slice of inference, fp32.

    .venv/bin/python benchmarks/bench_layout.py [--sizes 256] [--ngf 32 64] [--repeats 7] [--threads 2]
"""

import argparse
import dataclasses
import sys

import numpy as np
import torch

from synthct.bench import cpu_model, make_trainer, median_seconds, random_batch
from synthct.runtime import Precision

LAYOUTS = {"channels_last": torch.channels_last, "NCHW": torch.contiguous_format}


@dataclasses.dataclass(frozen=True)
class FixedLayout(Precision):
    layout: torch.memory_format = torch.contiguous_format

    @property
    def train_memory_format(self) -> torch.memory_format:
        return self.layout


def train_step_seconds(size: int, ngf: int, layout: torch.memory_format, repeats: int) -> float:
    trainer, _ = make_trainer(size, ngf, 9, "fp32", torch.device("cpu"))
    trainer.precision = FixedLayout("fp32", "cpu", "benchmark", layout)
    trainer.model.to(memory_format=layout)
    batch = random_batch(size)
    return median_seconds(lambda: trainer.step(batch), torch.device("cpu"), repeats, warmup=2)


def inference_seconds(size: int, ngf: int, layout: torch.memory_format, repeats: int) -> float:
    from synthct.models.generators import ResnetGenerator

    torch.manual_seed(0)
    net = ResnetGenerator(1, 1, ngf=ngf, n_blocks=9).to(memory_format=layout).eval()
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (1, 1, size, size)).astype(np.float32))
    x = x.contiguous(memory_format=layout)

    def run():
        with torch.inference_mode():
            net(x)
    return median_seconds(run, torch.device("cpu"), repeats, warmup=2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--ngf", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()} ({torch.backends.cpu.get_cpu_capability()} kernels), {args.threads} threads, "
          f"torch {torch.__version__}, fp32, median of {args.repeats}")
    print("| what | size | ngf | channels_last (s) | NCHW (s) | channels_last / NCHW |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        for ngf in args.ngf:
            for what, fn in (("train step", train_step_seconds), ("inference, 1 slice", inference_seconds)):
                t = {name: fn(size, ngf, layout, args.repeats) for name, layout in LAYOUTS.items()}
                print(f"| {what} | {size} | {ngf} | {t['channels_last']:.3f} | {t['NCHW']:.3f} | "
                      f"{t['channels_last'] / t['NCHW']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
