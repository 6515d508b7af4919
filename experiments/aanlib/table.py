"""The results table: our runs, the baselines and the reference implementation's published numbers."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.aanlib.baselines import CONSTANT_GREY

# Published numbers of the reference implementation on the test split; "head_" = in the head mask.
REFERENCE_ROWS = (
    ("reference CycleGAN (published)", "unpaired",
     {"head_mae": 82.6, "head_psnr": 7.3, "head_ssim": 0.15, "mae": 42.1, "psnr": 10.5, "ssim": 0.51}),
    ("reference pix2pix (published, upper bound)", "paired",
     {"head_mae": 55.9, "head_psnr": 9.5, "head_ssim": 0.31, "mae": 27.8, "psnr": 12.5, "ssim": 0.63}),
    ("MR as CT (published)", "none", {"head_mae": 84.1}),
    (f"constant {CONSTANT_GREY:g} in the head (published)", "none", {"head_mae": 75.2}),
)
COLUMNS = (("head_mae", "head MAE", 1), ("head_psnr", "head PSNR (dB)", 1), ("head_ssim", "head SSIM", 2),
           ("mae", "MAE", 1), ("psnr", "PSNR (dB)", 1), ("ssim", "SSIM", 2))
BASELINE_LABELS = {"mr_as_ct": "MR as CT", "histogram_matched": "MR histogram-matched to training CT",
                   "inverted_histogram_matched": "inverted MR histogram-matched to training CT",
                   "constant_110": f"constant {CONSTANT_GREY:g} in the head",
                   "constant_train_median": "constant = training-CT median in the head",
                   "constant_best_oracle": "best constant in the head (oracle)"}


def _cell(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(ours: list[tuple[str, str, dict]], baseline_result: dict | None) -> str:
    """Docs-ready Markdown: rows of (label, pairing, means) of our runs, then the baselines and the
    published numbers."""
    rows = list(ours)
    if baseline_result is not None:
        rows += [(BASELINE_LABELS.get(key, key), "none", found["means"])
                 for key, found in baseline_result["baselines"].items()]
    rows.extend(REFERENCE_ROWS)
    lines = ["| method | pairing | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|" + "---|" * (len(COLUMNS) + 2)]
    for label, pairing, means in rows:
        cells = [_cell(means.get(key), digits) for key, _, digits in COLUMNS]
        lines.append(f"| {label} | {pairing} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def reference_lines(work: Path) -> dict[str, float]:
    """Head MAEs to draw beside a learning curve: the published ones and, once scored, the baselines'."""
    lines = {"ref. CycleGAN": REFERENCE_ROWS[0][2]["head_mae"], "ref. pix2pix": REFERENCE_ROWS[1][2]["head_mae"]}
    baseline_file = Path(work) / "results" / "baselines.json"
    if baseline_file.is_file():
        found = json.loads(baseline_file.read_text(encoding="utf-8"))["baselines"]
        lines |= {"MR as CT": found["mr_as_ct"]["means"]["head_mae"],
                  f"constant {CONSTANT_GREY:g}": found["constant_110"]["means"]["head_mae"]}
    return lines
