"""synthct report: one self-contained HTML page with metrics, a case viewer and training curves."""

from __future__ import annotations

HELP = "write a self-contained HTML report (metrics, input | synthetic | reference | error viewer, losses)"


def add_arguments(parser) -> None:
    parser.add_argument("--pred", required=True, help="predictions: <case>/sct.* (or ct.*) folders or <case>.<ext> files")
    parser.add_argument("--ref", required=True, help="references: <case>/ct.* folders or <case>.<ext> files")
    parser.add_argument("--eval", dest="eval_dir",
                        help="folder with metrics.csv and summary.json from 'synthct evaluate' "
                        "(default: evaluate now)")
    parser.add_argument("--inputs", help="input MRs: <case>/mr.* folders or <case>.<ext> files "
                        "(default: <case>/mr.* beside the reference)")
    parser.add_argument("--mask", help="masks for evaluating now (as in 'synthct evaluate')")
    parser.add_argument("--mode", choices=("hu", "8bit", "auto"), default="auto",
                        help="metrics and display mode when evaluating now (default: auto)")
    parser.add_argument("--run", help="training run folder: plots run/log.csv, shows the health check of "
                        "run/health.json and the latest run/samples/*.png")
    parser.add_argument("--note", help="a note shown at the top of the report")
    parser.add_argument("--max-slices", type=int, default=24, help="slices embedded per case (default: 24)")
    parser.add_argument("--max-size", type=int, default=128, help="longest side of embedded slices in pixels (default: 128)")
    parser.add_argument("--out", required=True, help="HTML file to write; figures go to <its folder>/figures/")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report and figures")


def read_evaluation(eval_dir) -> tuple[dict, list[dict]]:
    """summary.json and the rows of metrics.csv (metric columns as floats) written by 'synthct evaluate'."""
    import csv
    import json
    from pathlib import Path

    from synthct.errors import SynthctError

    summary_path, csv_path = Path(eval_dir) / "summary.json", Path(eval_dir) / "metrics.csv"
    for path in (summary_path, csv_path):
        if not path.is_file():
            raise SynthctError("not found; run 'synthct evaluate --out' on this folder first", path)
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SynthctError("not UTF-8 text", summary_path) from None
    except json.JSONDecodeError as exc:
        raise SynthctError(f"not valid JSON ({exc.msg}, line {exc.lineno})", summary_path) from None
    if not isinstance(summary, dict) or not isinstance(summary.get("metrics", {}), dict):
        raise SynthctError("not an evaluation summary (expected an object with 'metrics')", summary_path)
    metric_names = list(summary.get("metrics", {}))
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SynthctError(f"not a readable CSV ({type(exc).__name__})", csv_path) from None
    if "case" not in columns:
        raise SynthctError("no 'case' column; not a metrics.csv written by 'synthct evaluate'", csv_path)
    for row in rows:
        for name in metric_names:
            try:
                row[name] = float(row[name])
            except (KeyError, TypeError, ValueError):
                raise SynthctError(f"column '{name}' missing or not a number for case {row.get('case')}", csv_path) from None
    return summary, rows


def run(args) -> int:
    from synthct.errors import SynthctError
    from synthct.eval.evaluate import evaluate_cases, match_cases
    from synthct.eval.report import load_report_cases, write_report

    if args.max_slices < 1 or args.max_size < 8:
        raise SynthctError("--max-slices must be >= 1 and --max-size >= 8")
    if args.eval_dir:
        summary, rows = read_evaluation(args.eval_dir)
        cases, _ = match_cases(args.pred, args.ref, input_dir=args.inputs)
    else:
        result = evaluate_cases(args.pred, args.ref, args.mask, args.mode, input_dir=args.inputs)
        summary, rows, cases = result.summary(), result.rows, result.cases
    evaluated = {row["case"] for row in rows}
    report_cases = load_report_cases([c for c in cases if c.name in evaluated])
    out = write_report(args.out, report_cases, summary, rows, run_dir=args.run, note=args.note,
                       max_slices=args.max_slices, max_size=args.max_size, overwrite=args.overwrite)
    print(f"wrote {out} ({len(report_cases)} case(s))")
    return 0
