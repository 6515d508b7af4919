"""synthct demo: the main job end to end on built-in synthetic phantoms."""

from __future__ import annotations

HELP = "run the whole job on built-in phantoms: train, translate, evaluate, report"


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo_out", help="folder for everything the demo makes (default demo_out)")
    parser.add_argument("--steps", type=int, default=400,
                        help="training budget in optimisation steps (default 400: under 5 minutes in all on 2 cores)")
    parser.add_argument("--size", type=int, default=96, help="phantom slice size = training size (default 96)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the demo's training config, e.g. --set model.lambda_identity=0 (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")


def run(args) -> int:
    from synthct.demo import DemoSettings, run_demo
    from synthct.errors import SynthctError

    if args.steps < 1:
        raise SynthctError(f"--steps must be at least 1, got {args.steps}")
    settings = DemoSettings(steps=args.steps, size=args.size, seed=args.seed, device=args.device,
                            precision=args.precision, overrides=tuple(args.overrides))
    run_demo(args.out, settings, overwrite=args.overwrite)
    return 0
