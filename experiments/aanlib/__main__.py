"""python -m experiments.aanlib COMMAND: the real-scan experiment's command line (see README.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from synthct.engine.restarts import DEFAULT_CHECK_STEPS
from synthct.errors import SynthctError
from synthct.io.atomic import atomic_write_text

from experiments.aanlib import ledger
from experiments.aanlib.common import DEFAULT_DATA, REPO, RUNS, refuse_existing, summary, write_json
from experiments.aanlib.prepare import FOLDS

INFERENCE = (("--tta", dict(choices=("none", "flip"), default="none", help="as synthct translate --tta")),
             ("--mask", dict(choices=("auto", "none"), default="none",
                         help="as synthct translate --mask (default none: the translation as it is)")))


def cmd_prepare(args) -> None:
    from experiments.aanlib.prepare import prepare

    manifest = prepare(args.data, args.work, args.fold, args.seed, args.overwrite)
    print(f"prepared the {args.fold} fold in {args.work}: {manifest['train_slices']} training slices (cases "
          f"{', '.join(manifest['train_cases'])}), {len(manifest['scored'])} scored slices (cases "
          f"{', '.join(manifest['scored_cases'])})")


def cmd_baselines(args) -> None:
    from experiments.aanlib.baselines import baselines

    out = args.work / "results" / "baselines.json"
    refuse_existing(out, args.overwrite)
    found = baselines(args.work)
    write_json(out, found, args.overwrite)
    for result in found["baselines"].values():
        print(summary(result))
    print(f"written to {out}")


def _registration_result(args, name: str, make) -> dict:
    """``make(work, workers, seed, overwrite)``'s result, written once to WORK/results/<name>.json."""
    out = args.work / "results" / f"{name}.json"
    refuse_existing(out, args.overwrite)
    result = make(args.work, args.workers, args.seed, args.overwrite)
    write_json(out, result, args.overwrite)
    return result


def _seconds_line(result: dict, name: str, work: Path) -> str:
    seconds = result["seconds"]
    return (f"{seconds['wall']:.0f} s wall, {seconds['cpu']:.0f} s CPU ({seconds['workers']} workers); written to "
            f"{work / 'results' / f'{name}.json'}")


def cmd_atlas(args) -> None:
    from experiments.aanlib.atlas import NAME, atlas

    result = _registration_result(args, NAME, atlas)
    print(summary(result))
    print(_seconds_line(result, NAME, args.work))


def cmd_pseudo_pairs(args) -> None:
    from experiments.aanlib.atlas import PSEUDO_PAIRS, pseudo_pairs

    result = _registration_result(args, PSEUDO_PAIRS, pseudo_pairs)
    own = result["to_own_ct"]
    print(f"{result['n_pairs']} pseudo-pairs in {result['pairs']} (training patients "
          f"{', '.join(result['train_cases'])}, none fused from its own patient); fused CT against the MR's own CT: "
          f"head MAE {own['head_mae']:.2f}, head SSIM {own['head_ssim']:.3f}")
    print(_seconds_line(result, PSEUDO_PAIRS, args.work))


def cmd_train(args) -> int:
    from experiments.aanlib.train import train_run

    restarts = (args.restarts, args.restart_check_steps) if args.restarts else None
    patients = args.paired_patients.split(",") if args.paired_patients else None
    overrides = args.overrides + ([f"train.seed={args.seed}"] if args.seed is not None else [])
    return train_run(args.work, args.model, args.run or args.work / "runs" / run_name(args), overrides,
                     args.minutes, args.steps, restarts, args.overwrite, patients, args.pseudo_pairs)


def cmd_flops(args) -> None:
    from experiments.aanlib.train import step_gflop

    name = "semi-supervised cyclegan" if args.with_pairs else args.model
    print(f"{name}: {step_gflop(args.model, args.overrides, args.with_pairs):.1f} GFLOP per training step")


def cmd_fields(args) -> None:
    from experiments.aanlib.fields import run_fields

    rows = run_fields(args.run, args.work, args.every)
    median = {key: float(np.median([r[key] for r in rows])) for key in rows[0]}
    text = f"{args.run.name}, {len(rows)} training pairs, medians over slices: head L1 of G(mr) to the CT " \
           f"{median['l1_to_ct']:.1f} grey levels"
    if "field_mean_px" in median:
        text += (f", to the warped CT {median['l1_to_warped_ct']:.1f}; displacement {median['field_mean_px']:.2f} px "
                 f"mean, {median['field_p95_px']:.2f} px 95th percentile in the head, average vector "
                 f"({median['shift_x_px']:+.2f}, {median['shift_y_px']:+.2f}) px (x, y) and "
                 f"{median['field_beyond_shift_px']:.2f} px beyond it; G(mr) moved back by that vector "
                 f"{median['l1_shifted_back']:.1f} from the CT, by the whole field {median['l1_warped_back']:.1f}")
    print(text)


def run_name(args) -> str:
    """<model>[_pairs-<patients>][_pseudo-pairs][_seed<N>]: the default run folder's name."""
    pairs = f"_pairs-{args.paired_patients.replace(',', '-')}" if args.paired_patients else ""
    pairs += "_pseudo-pairs" if args.pseudo_pairs else ""
    return f"{args.model}{pairs}{'' if args.seed is None else f'_seed{args.seed}'}"


def cmd_evaluate(args) -> None:
    from experiments.aanlib.evaluate import evaluate, inference_suffix

    name = (args.run.stem if args.run.is_file() else args.run.name) + inference_suffix(args.tta, args.mask)
    out = args.out or args.work / "results" / f"{name}.json"
    refuse_existing(out, args.overwrite)
    result = evaluate(args.work, args.run, name, args.device, tta=args.tta, mask=args.mask, ledger_path=args.ledger)
    write_json(out, result, args.overwrite)
    print(summary(result))
    print(f"written to {out}")


def cmd_curve(args) -> None:
    from experiments.aanlib.curve import curve, plot_curve
    from experiments.aanlib.evaluate import inference_suffix
    from experiments.aanlib.table import reference_lines

    name = args.run.name + inference_suffix(args.tta, args.mask)
    points_file, plot_file = (args.work / "results" / f"curve_{name}{suffix}" for suffix in (".json", ".png"))
    refuse_existing(points_file, args.overwrite)
    found = curve(args.work, args.run, args.device, args.tta, args.mask, args.ledger)
    write_json(points_file, found, args.overwrite)
    plot_curve(found, reference_lines(args.work), plot_file)
    for point in found["points"]:
        print(f"step {point['step']:>7}  {point['minutes']:7.1f} min  head MAE {point['means']['head_mae']:.2f}")
    print(f"written to {points_file} and {plot_file}")


def _labelled(items: list[str], option: str) -> list[tuple[str, str]]:
    if bad := [item for item in items if "=" not in item]:
        raise SynthctError(f"{option} expects LABEL=VALUE, got '{bad[0]}'")
    return [tuple(item.split("=", 1)) for item in items]


def cmd_seeds(args) -> None:
    from experiments.aanlib.evaluate import inference_suffix
    from experiments.aanlib.seeds import (HEALTH_HEADER, health_rows, ledger_seed_run, promotion, promotion_row,
                                         read_seed_run, recipe_row)

    suffix = inference_suffix(args.tta, args.mask)
    lines = ["| recipe | seeds | head MAE median (range) | reached the CT's contrast |", "|---|---|---|---|"]
    recipes = {}
    for label, names in _labelled(args.recipe, "--recipe"):
        recipes[label] = [ledger_seed_run(args.ledger, args.work / "runs" / name, args.tta, args.mask) if args.ledger
                          else read_seed_run(args.work / "results" / f"{name}.json",
                                             args.work / "results" / f"{name}{suffix}.json", args.work / "runs" / name)
                          for name in names.split(",")]
        lines.append(recipe_row(label, recipes[label]))
    if args.against:
        if args.against not in recipes:
            raise SynthctError(f"--against names no --recipe: '{args.against}'")
        lines += ["", f"| lever against {args.against} | median gain (grey levels) | same-seed pairs won | "
                  "CT contrast reached | promoted |", "|---|---|---|---|---|"]
        lines += [promotion_row(label, promotion(runs, recipes[args.against]))
                  for label, runs in recipes.items() if label != args.against]
    every = [run for runs in recipes.values() for run in runs]
    if any(r.verdict for r in every):
        lines += ["", *HEALTH_HEADER]
        lines += health_rows(every)
    print("\n".join(lines))


def cmd_scored(args) -> int:
    return 0 if ledger.last_scoring(args.ledger, args.run, args.tta, args.mask, args.step) else 1


def cmd_table(args) -> None:
    from experiments.aanlib.table import markdown_table

    pairing = dict(_labelled(args.pairing, "--pairing"))
    ours = []
    for label, path in _labelled(args.result, "--result"):
        if not Path(path).is_file():
            raise SynthctError("result not found", path)
        means = json.loads(Path(path).read_text(encoding="utf-8"))["means"]
        ours.append((label, pairing.get(label, "unpaired"), means))
    baseline_file = args.work / "results" / "baselines.json"
    found = json.loads(baseline_file.read_text(encoding="utf-8")) if baseline_file.is_file() else None
    table = markdown_table(ours, found)
    if args.out:
        refuse_existing(args.out, args.overwrite)
        atomic_write_text(args.out, table)
    else:
        print(table, end="")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=("cyclegan", "pix2pix", "reggan", "regression"), default="cyclegan")
    p.add_argument("--paired-patients", metavar="CASE[,CASE]",
                   help="semi-supervised cyclegan: these training patients' slices as pairs (synthct train "
                        "--pairs), the other training patients unpaired")
    p.add_argument("--pseudo-pairs", action="store_true",
                   help="pix2pix, reggan, regression: train on WORK/pseudo_pairs (the pseudo-pairs command) "
                        "instead of the true pairs")
    p.add_argument("--seed", type=int, help="train.seed; the default run folder then ends in _seed<N>")
    p.add_argument("--run", type=Path, help="run folder (default WORK/runs/<model>)")
    p.add_argument("--minutes", type=float, help="wall-clock budget; without --steps the lr schedule follows it")
    p.add_argument("--steps", type=int, help="optimisation steps (needed with --restarts)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set model.ngf=16 (repeatable)")
    p.add_argument("--restarts", type=int, default=0, metavar="N",
                   help="as synthct train --restarts (default 0: an experiment's starts are all kept, to be judged)")
    p.add_argument("--restart-check-steps", type=int, default=DEFAULT_CHECK_STEPS, metavar="STEPS",
                   help=f"as synthct train (default {DEFAULT_CHECK_STEPS})")


def _add_scoring_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--run", type=Path, required=True, help=what)
    for flag, options in INFERENCE:
        p.add_argument(flag, **options)
    p.add_argument("--device", default="auto")
    p.add_argument("--ledger", type=Path, default=ledger.LEDGER,
                   help=f"where test-split scorings are recorded (default {ledger.LEDGER.relative_to(REPO)})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.aanlib",
                                     description="MR -> CT on the Harvard AANLIB brain CT / MR slice pairs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--fold", choices=FOLDS, default="test",
                       help="test: train on the six training patients, score the test split (the final recipe); "
                            "validation: train on 20, 280, 320, 370 and score 200, 330 (choosing settings)")
        p.add_argument("--work", type=Path, help=f"experiment folder (default {RUNS.relative_to(REPO)}/FOLD)")
        p.add_argument("--overwrite", action="store_true")
        p.set_defaults(handler=handler)
        return p

    p = command("prepare", cmd_prepare,
                "copy the fold's slices into unpaired and paired training folders and the scored set")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="AANLIB folder with CT/, MRI/, splits.csv")
    p.add_argument("--seed", type=int, default=0, help="seed of the independent MR and CT shuffles")
    command("baselines", cmd_baselines, "score MR-as-CT, histogram matching and constant baselines")
    p = command("atlas", cmd_atlas, "the registration-only baseline: synthct pair fuses the fold's training CTs "
                "registered onto each scored MR (multi-atlas, no network); score the fused CTs")
    p.add_argument("--workers", type=int, default=2, help="registrations in parallel (synthct pair --workers, default 2)")
    p.add_argument("--seed", type=int, default=0, help="synthct pair --seed (default 0)")
    p = command("pseudo-pairs", cmd_pseudo_pairs, "synthct pair on the fold's training MRs, each against the other "
                "training patients' CTs (never a scored patient's): pseudo-pairs for train --pseudo-pairs")
    p.add_argument("--workers", type=int, default=2,
                   help="registrations in parallel (synthct pair --workers, default 2)")
    p.add_argument("--seed", type=int, default=0, help="synthct pair --seed (default 0)")
    _add_train_options(command("train", cmd_train, "train a preset on the prepared folders"))
    p = command("flops", cmd_flops, "the GFLOP of one training step of a model's preset (fp32, counted by torch)")
    p.add_argument("--model", choices=("cyclegan", "pix2pix", "reggan", "regression"), default="cyclegan")
    p.add_argument("--with-pairs", action="store_true", help="a semi-supervised cyclegan step (adds a paired batch)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set data.size=128 (repeatable)")
    p = command("fields", cmd_fields, "a paired run's L1 to the CT on its own training pairs; for RegGAN also to the "
                "warped CT, and its displacement fields")
    p.add_argument("--run", type=Path, required=True, help="RegGAN, pix2pix or regression run folder (its last "
                   "checkpoint is read)")
    p.add_argument("--every", type=int, default=1, help="use every N-th training pair (default 1: all)")
    p = command("evaluate", cmd_evaluate, "translate the scored MR slices with a run's generator and score them")
    _add_scoring_options(p, "run folder or generator .safetensors")
    p.add_argument("--out", type=Path, help="result JSON (default WORK/results/<run>[_tta-flip][_mask-auto].json)")
    _add_scoring_options(command("curve", cmd_curve, "score every generator snapshot of a run against its minutes"),
                         "run folder")
    p = command("seeds", cmd_seeds, "median and range of recipes over their seeds, and the health verdicts "
                "against each run's outcome (plain head SSIM >= 0.21: the CT's contrast reached)")
    p.add_argument("--recipe", action="append", default=[], metavar="LABEL=RUN[,RUN...]",
                   help="a recipe's runs (names under WORK/runs, each scored plainly by evaluate; repeatable)")
    p.add_argument("--against", metavar="LABEL",
                   help="judge every other recipe against this one by the promotion rule (runs paired in the "
                        "order given, seed by seed)")
    for flag, options in INFERENCE:
        p.add_argument(flag, **(options | {"help": "head MAE from the scoring with this option (" + options["help"] + ")"}))
    p.add_argument("--ledger", type=Path, help="read the test-split scorings from this ledger rather than from "
                   "WORK/results, so that the runs' folders need not exist (health verdicts come from those that do)")
    p = command("scored", cmd_scored, "exit 0 when the ledger holds a run's test-split scoring at a step, 1 when not")
    p.add_argument("--run", required=True, help="the run's name (its folder's name)")
    p.add_argument("--step", type=int, required=True)
    for flag, options in INFERENCE:
        p.add_argument(flag, **options)
    p.add_argument("--ledger", type=Path, default=ledger.LEDGER)
    p = command("table", cmd_table, "Markdown table of results, baselines and the reference's published numbers")
    p.add_argument("--result", action="append", default=[], metavar="LABEL=RESULT.json",
                   help="an evaluate result with its row label (repeatable)")
    p.add_argument("--pairing", action="append", default=[], metavar="LABEL=PAIRING",
                   help="pairing column of a --result row (default: unpaired)")
    p.add_argument("--out", type=Path, help="write the table here (default: print it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.work = args.work or RUNS / args.fold
    try:
        return args.handler(args) or 0
    except SynthctError as exc:
        print(f"experiments.aanlib: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
