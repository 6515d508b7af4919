"""Command-line entry point.

Each subcommand lives in ``synthct.commands.<name>`` and exposes ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; this module only dispatches and turns
errors into one line. Heavy imports (torch) happen inside ``run`` so ``synthct info`` and
``--help`` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from synthct import __version__
from synthct.errors import SynthctError


def _command_modules():
    import synthct.commands as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield info.name.replace("_", "-"), importlib.import_module(f"synthct.commands.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synthct",
        description="Unpaired MR <-> CT translation (CycleGAN) with HU-exact medical image I/O.",
    )
    parser.add_argument("--version", action="version", version=f"synthct {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _command_modules():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except SynthctError as exc:
        print(f"synthct: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("synthct: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("synthct: error: out of memory (try a smaller --batch-size or --size)", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - last line of defence: never show users a traceback
        if os.environ.get("SYNTHCT_DEBUG"):
            raise
        print(
            f"synthct: internal error: {type(exc).__name__}: {exc} (set SYNTHCT_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 3
