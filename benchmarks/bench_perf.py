"""Performance table of synthct (training, inference, volume, memory, data wait; fp32 and the
automatic precision, next to measured matmul rates and FLOP floors). See docs/PERFORMANCE.md.

    .venv/bin/python benchmarks/bench_perf.py [--quick] [--repeats N] [--only train inference ...]
                                              [--json FILE] [--markdown FILE] [--device cuda]
"""

import sys

from synthct.bench import main

if __name__ == "__main__":
    sys.exit(main())
