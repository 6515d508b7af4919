"""Learning curves: the scores of every generator snapshot of a run against its training minutes
(runs keep snapshots with ``train.snapshot_minutes``, as the presets do)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from synthct.errors import SynthctError
from synthct.io.atomic import atomic_path

from experiments.aanlib import ledger
from experiments.aanlib.common import load_scored_set, protocol
from experiments.aanlib.evaluate import evaluate

SNAPSHOT_PATTERN = re.compile(r"generator_mr2ct_step(\d+)\.safetensors")


def find_snapshots(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, weights) of ``RUN_DIR/snapshots/generator_mr2ct_step{N}.safetensors`` by step; the
    run's final generator joins when no snapshot has its step."""
    run_dir = Path(run_dir)
    found = {}
    if (run_dir / "snapshots").is_dir():
        for path in (run_dir / "snapshots").iterdir():
            match = SNAPSHOT_PATTERN.fullmatch(path.name)
            if match and path.with_suffix(".json").is_file():
                found[int(match.group(1))] = path
    final = run_dir / "generator_mr2ct.safetensors"
    if final.is_file() and final.with_suffix(".json").is_file():
        step = json.loads(final.with_suffix(".json").read_text(encoding="utf-8")).get("step")
        if isinstance(step, int) and step not in found:
            found[step] = final
    if not found:
        raise SynthctError("no MR->CT generator snapshots (snapshots/generator_mr2ct_step{N}.safetensors) "
                           "or final generator in this run", run_dir)
    return sorted(found.items())


def elapsed_by_step(log_csv: Path) -> dict[int, float]:
    """Training seconds at the end of each logged step (``log.csv``: step, elapsed_s)."""
    if not Path(log_csv).is_file():
        raise SynthctError("training log not found", log_csv)
    with open(log_csv, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not {"step", "elapsed_s"} <= set(reader.fieldnames or []):
            raise SynthctError("log has no step / elapsed_s columns", log_csv)
        return {int(row["step"]): float(row["elapsed_s"]) for row in reader}


def curve(work: Path, run_dir: Path, device: str = "auto", tta: str = "none", mask: str = "none",
          ledger_path: Path = ledger.LEDGER) -> dict:
    """Scores of every generator snapshot of a run against its training minutes."""
    run_dir = Path(run_dir)
    elapsed = elapsed_by_step(run_dir / "log.csv")
    scored = load_scored_set(work)
    points = []
    for step, weights in find_snapshots(run_dir):
        if step not in elapsed and step != 0:
            raise SynthctError(f"step {step} of {weights.name} is not in log.csv", run_dir / "log.csv")
        result = evaluate(work, weights, f"{run_dir.name} step {step}", device, scored, tta, mask, ledger_path)
        points.append({"step": step, "minutes": elapsed.get(step, 0.0) / 60, "generator": str(weights),
                       "means": result["means"]})
    return {"run": str(run_dir), "protocol": protocol(work, scored),
            "inference": {"tta": tta, "mask": mask}, "points": points}


def plot_curve(curve_result: dict, reference_lines: dict[str, float], path: Path) -> None:
    """Head MAE against training minutes, with horizontal reference lines (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.6, 4.0), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    minutes = [p["minutes"] for p in curve_result["points"]]
    axes.plot(minutes, [p["means"]["head_mae"] for p in curve_result["points"]], "o-", color="black", label="synthct")
    for (label, value), style in zip(reference_lines.items(), ("--", ":", "-.", (0, (5, 1)))):
        axes.axhline(value, linestyle=style, linewidth=1, color="grey", label=f"{label} {value:.1f}")
    # A legend, not labels on the lines: reference values a grey level or two apart would print
    # on top of each other.
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    axes.set_xlabel("training time (minutes)")
    axes.set_ylabel("head MAE (0..255, mean over the scored slices)")
    inference = curve_result.get("inference") or {}
    options = " ".join(f"--{key} {value}" for key, value in inference.items() if value in ("flip", "auto"))
    axes.set_title(f"AANLIB, MR -> CT: {Path(curve_result['run']).name}"
                   + (f", translated with {options}" if options else ""), fontsize=9)
    axes.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")
