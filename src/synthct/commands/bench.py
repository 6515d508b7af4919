"""synthct bench: the performance table of benchmarks/bench_perf.py (see docs/PERFORMANCE.md)."""

from __future__ import annotations

HELP = "measure training/inference speed, memory and data wait against the machine's FLOP floor"
SECTIONS = ("train", "inference", "volume", "memory", "data", "quality")  # synthct.bench.SECTIONS


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="128/ngf32 training only, 128 px inference, a 128x128x32 volume, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure (median; default 3)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="measure only these sections")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2; 0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (train.compile)")
    parser.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --json / --markdown files")


def run(args) -> int:
    from synthct import bench

    return bench.run(args)
