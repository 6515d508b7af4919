"""synthct train: train a CycleGAN (or pix2pix / CUT / RegGAN / regression) on MR and CT folders into a
run folder."""

from __future__ import annotations

from pathlib import Path

HELP = "train an MR<->CT translation model (CycleGAN by default) into a run folder"

# Direct flags: (argparse dest, config section, config key).
DIRECT_FLAGS = (
    ("size", "data", "size"), ("slices", "data", "slices"),
    ("model", "model", "name"), ("ngf", "model", "ngf"), ("ndf", "model", "ndf"), ("blocks", "model", "blocks"),
    ("batch_size", "train", "batch_size"), ("epochs", "train", "epochs"), ("steps", "train", "steps"),
    ("lr", "train", "lr"), ("precision", "train", "precision"), ("device", "train", "device"),
    ("seed", "train", "seed"), ("minutes", "train", "max_minutes"),
    ("lambda_struct", "model", "lambda_struct"), ("struct_loss", "model", "struct_loss"),
)


def add_arguments(parser) -> None:
    reference = parser.add_argument_group("reference")
    reference.add_argument("--list-options", action="store_true",
                           help="print every config option (section.key) with its default and meaning, and exit")
    reference.add_argument("--markdown", action="store_true",
                           help="with --list-options: as the Markdown of docs/CONFIG.md")
    data = parser.add_argument_group("data")
    data.add_argument("--mr", metavar="DIR", help="folder (or file) of MR images/volumes")
    data.add_argument("--ct", metavar="DIR", help="folder (or file) of CT images/volumes")
    data.add_argument("--data", metavar="ROOT",
                      help="data root: CycleGAN layout (trainA/, trainB/), pairs (mr/, ct/ paired by name) or SynthRAD "
                           "(<case>/mr, ct, mask)")
    data.add_argument("--pairs", metavar="DIR",
                      help="semi-supervised CycleGAN: paired cases beside the unpaired data (SynthRAD layout, "
                           "or mr/ + ct/ folders whose files pair by name); as few as one patient")
    run = parser.add_argument_group("run")
    run.add_argument("--out", metavar="RUN_DIR", help="run folder for checkpoints, logs, samples, generators")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")
    run.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    run.add_argument("--config", default=None, metavar="FILE|PRESET",
                     help="YAML config or preset name (default, fast_cpu, pix2pix, tiny); default: default, "
                          "or the run's own config.yaml with --resume")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set model.lambda_identity=0 (repeatable)")
    flags = parser.add_argument_group("common settings (override --config and --set)")
    flags.add_argument("--size", type=int, help="training slice size in pixels")
    flags.add_argument("--slices", type=int, help="2.5D: number of neighbouring slices as channels (odd)")
    flags.add_argument("--model", choices=("cyclegan", "pix2pix", "cut", "reggan", "regression"))
    flags.add_argument("--ngf", type=int, help="generator base width")
    flags.add_argument("--ndf", type=int, help="discriminator base width")
    flags.add_argument("--blocks", type=int, help="residual blocks of the ResNet generator")
    flags.add_argument("--lambda-struct", type=float, metavar="WEIGHT",
                       help="weight of the structure-consistency loss between each input and its "
                            "translation (CycleGAN; 0 = off)")
    flags.add_argument("--struct-loss", choices=("mind", "ngf"),
                       help="structure-consistency loss: MIND descriptors or normalised gradient fields")
    flags.add_argument("--batch-size", type=int)
    length = flags.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int)
    length.add_argument("--steps", type=int, help="total optimisation steps (instead of --epochs)")
    flags.add_argument("--lr", type=float, help="initial learning rate (Adam)")
    flags.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    flags.add_argument("--device", choices=("auto", "cpu", "cuda"))
    flags.add_argument("--seed", type=int)
    flags.add_argument("--minutes", type=float, help="wall-clock budget; stops cleanly with a checkpoint")
    flags.add_argument("--compile", action="store_true", default=None, help="torch.compile the networks")
    from synthct.engine.restarts import DEFAULT_CHECK_STEPS, DEFAULT_RESTARTS

    restarts = parser.add_argument_group(
        "restarts", "judge each start with the training health check (RUN_DIR/health.json) and start the "
                    "next seed when it condemns the start; on by default for an unpaired CycleGAN with --steps")
    restarts.add_argument("--restarts", type=int, metavar="N",
                          help="set aside up to N starts that the health check condemns at the check step (the MR's "
                               "contrast order or a hidden code), each in RUN_DIR/restarts/seed_<n>/, and start "
                               "seed + 1; their steps count toward --steps, the last start is always kept, the "
                               "verdicts go to RUN_DIR/restarts.json (default: "
                               f"{DEFAULT_RESTARTS} for an unpaired CycleGAN with a step budget, else none; 0: off)")
    restarts.add_argument("--restart-check-steps", type=int, default=DEFAULT_CHECK_STEPS, metavar="STEPS",
                          help=f"steps a start trains before it is judged (default {DEFAULT_CHECK_STEPS})")


def build_config(args):
    """preset/config < --set < direct flags; with --resume the run's config.yaml is the base."""
    from synthct.config import apply_overrides, config_from_dict, config_to_dict
    from synthct.engine import load_config, load_run_config

    if args.config is not None:
        cfg = load_run_config(args.config)
    elif args.resume:
        cfg = load_config(Path(args.resume) / "config.yaml")
    else:
        cfg = load_run_config("default")
    cfg = apply_overrides(cfg, args.overrides)
    data = config_to_dict(cfg)
    for dest, section, key in DIRECT_FLAGS:
        value = getattr(args, dest)
        if value is not None:
            data[section][key] = value
    if args.epochs is not None:
        data["train"]["steps"] = None
    if args.compile:
        data["train"]["compile"] = True
    if args.mr or args.ct:
        data["data"].update(mr=args.mr, ct=args.ct, root=None)
    elif args.data:
        data["data"].update(root=args.data, mr=None, ct=None)
    if args.pairs:
        # A new run finds its paired cases in the folder; a resumed one checks them against config.yaml.
        data["data"].update(pairs=args.pairs, **({} if args.resume else {"pair_cases": []}))
    return config_from_dict(data)


def _check_inputs(args) -> None:
    from synthct.errors import SynthctError

    if args.resume and args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        raise SynthctError("--resume continues a run in its own folder; leave out --out or give the same folder")
    if not (args.out or args.resume):
        raise SynthctError("say where the run goes: --out RUN_DIR (or --resume RUN_DIR)")
    if args.resume and args.restarts is not None:
        raise SynthctError("--restarts starts a run; --resume continues the kept start without it")
    if args.resume and args.overwrite:
        raise SynthctError("--resume and --overwrite contradict each other")
    if args.data and (args.mr or args.ct):
        raise SynthctError("give either --data ROOT or --mr DIR --ct DIR, not both")
    if bool(args.mr) != bool(args.ct):
        raise SynthctError("--mr and --ct go together (or use --data ROOT)")
    for path in (args.mr, args.ct, args.data, args.pairs):
        if path and not Path(path).exists():
            raise SynthctError("not found", path)
    if args.resume:
        if not Path(args.resume).is_dir():
            raise SynthctError("run folder not found", args.resume)
        if not (Path(args.resume) / "config.yaml").is_file():
            raise SynthctError("not a synthct run folder (no config.yaml)", args.resume)


def option_reference(markdown: bool = False) -> str:
    """Every config option with its default and one-line meaning (and, for model options, the
    models that read it): the text of --list-options, or with ``markdown`` docs/CONFIG.md."""
    from synthct.config import REMOVED_OPTIONS, documented_options
    from synthct.models import MODELS, option_users

    rows = []
    for key, default, meaning in documented_options():
        section, name = key.split(".")
        users = option_users(name) if section == "model" and name != "name" else []
        if users and len(users) < len(MODELS):
            meaning += f" ({', '.join(users)})"
        rows.append((key, default, meaning))
    if not markdown:
        width = max(len(key) + len(default) for key, default, _ in rows) + 3
        return "".join(f"{f'{key} = {default}':<{width}} {meaning}\n" for key, default, meaning in rows)
    lines = ["# Configuration options", "",
             "Every option of a run's `config.yaml`, as `section.key`, with its default. Set one with",
             "`synthct train --set section.key=value`, or in a YAML file given to `--config`. Model options",
             "name the models that read them when not all do; setting one for another model is refused.",
             "This file is generated by `synthct train --list-options --markdown`; a test keeps it current."]
    section = None
    for key, default, meaning in rows:
        if key.split(".")[0] != section:
            section = key.split(".")[0]
            lines += ["", f"## {section}", "", "| option | default | meaning |", "|---|---|---|"]
        lines.append(f"| `{key}` | `{default}` | {meaning.replace('|', chr(92) + '|')} |")
    lines += ["", "## Removed options", "",
              "Measured and found not to help (docs/RESULTS.md). A config that sets one of these to anything but",
              "the value shown is refused; at that value it is ignored, so older runs still resume.", ""]
    lines += [f"- `{section}.{name}`: `{value}`" for (section, name), value in REMOVED_OPTIONS.items()]
    return "\n".join(lines) + "\n"


def run(args) -> int:
    if args.list_options:
        print(option_reference(markdown=args.markdown), end="")
        return 0
    _check_inputs(args)
    cfg = build_config(args)
    if not (cfg.data.root or cfg.data.mr):
        from synthct.errors import SynthctError

        raise SynthctError("no training data: give --mr DIR --ct DIR or --data ROOT")

    from synthct.engine.trainer import train

    run_dir = Path(args.resume or args.out)
    restarts, why_not = args.restarts, None
    if restarts is None and not args.resume:
        from synthct.engine.restarts import default_restarts

        restarts, why_not = default_restarts(cfg, args.restart_check_steps)
    if restarts:
        from synthct.engine.restarts import train_with_restarts

        result = train_with_restarts(cfg, run_dir, restarts, args.restart_check_steps, overwrite=args.overwrite)
    else:
        result = train(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite, note=why_not)
    return result.exit_code
