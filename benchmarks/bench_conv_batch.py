"""Whether stacking a generator's passes into one batch would speed up its residual convolutions
(docs/PERFORMANCE.md, "Where the fp32 step spends its time"): one 3 x 3, 256 -> 256 convolution on
64 x 64 maps (the ResNet-9 block at 256 px, ngf 64), forward + backward in fp32 NCHW, at batch 1, 2
and 4; the cost per sample against batch 1, and the batch-1 rate in GFLOP/s. Two rounds, each a
median of 5 after 2 warm-ups.

    .venv/bin/python benchmarks/bench_conv_batch.py [--threads 2]
"""

import argparse
import statistics
import sys
import time

import torch

from synthct.measure import cpu_flags, cpu_model

FLOP_PER_SAMPLE = 3 * 2 * 64 * 64 * 256 * 256 * 9  # forward, input gradient and weight gradient


def seconds(conv: torch.nn.Conv2d, batch: int, repeats: int = 7, warmup: int = 2) -> float:
    x = torch.randn(batch, 256, 66, 66, requires_grad=True)  # padded as the reflection pad leaves it
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        conv(x).sum().backward()
        times.append(time.perf_counter() - started)
    return statistics.median(times[warmup:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    conv = torch.nn.Conv2d(256, 256, 3)
    print(f"CPU: {cpu_model()}, flags {' '.join(cpu_flags()) or 'none of the wide ones'}; {args.threads} threads")
    for round_ in (1, 2):
        one, two, four = (seconds(conv, b) for b in (1, 2, 4))
        print(f"round {round_}: batch 1 {one * 1e3:.1f} ms ({FLOP_PER_SAMPLE / one / 1e9:.0f} GFLOP/s); per sample "
              f"at batch 2 {two / 2 / one:.2f}x, at batch 4 {four / 4 / one:.2f}x batch 1's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
