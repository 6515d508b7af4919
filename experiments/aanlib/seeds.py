"""A recipe over its seeds: the median and range of its scores, how many seeds reached the CT's
contrast, and each run's last training health verdict against that outcome.

The outcome rule is docs/RESULTS.md's, fixed before the runs it judges: a run *reached the CT's
contrast* when its plain head SSIM is at least 0.21 (the nine test-split hours that ended in the
CT's tissue order scored 0.21-0.27, the others 0.06-0.20). The health check condemns a run
("failed") or passes it ("healthy"); a passed run that did not reach the CT's contrast is a
*miss*, a condemned run that did is a *false alarm*.

The promotion rule is docs/RESULTS.md's too: a lever screened against the preset on the same seeds
is promoted when its median head MAE is at least ``PROMOTION_MARGIN`` grey levels below the
preset's, it is lower on at least two of three same-seed pairs, and it reaches the CT's contrast on
no fewer seeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthct.errors import SynthctError

CT_CONTRAST_SSIM = 0.21
PROMOTION_MARGIN = 2.0  # grey levels


@dataclass(frozen=True)
class SeedRun:
    name: str
    head_mae: float
    head_ssim: float
    reached: bool
    verdict: str | None  # the health check's last verdict, None when the run has none

    @property
    def agreement(self) -> str:
        if self.verdict is None:
            return "-"
        healthy = self.verdict == "healthy"
        if healthy == self.reached:
            return "agrees"
        return "miss" if healthy else "false alarm"


def read_seed_run(plain_result: Path, scored_result: Path, run_dir: Path) -> SeedRun:
    """A run's outcome from its plain scoring, its head MAE from ``scored_result`` (the scoring
    quoted: plain or with translate's options) and its last health verdict from ``run_dir``."""
    from synthct.eval.health import read_health

    for path in (plain_result, scored_result):
        if not Path(path).is_file():
            raise SynthctError("result not found; run evaluate first", path)
    plain = json.loads(Path(plain_result).read_text(encoding="utf-8"))
    if plain.get("inference", {}).get("tta", "none") != "none" or plain.get("inference", {}).get("mask") == "auto":
        raise SynthctError("the outcome is judged on a plain scoring (no --tta, no --mask)", plain_result)
    scored = json.loads(Path(scored_result).read_text(encoding="utf-8"))
    health = read_health(run_dir)
    verdict = health["checks"][-1]["verdict"] if health and health.get("checks") else None
    ssim = plain["means"]["head_ssim"]
    return SeedRun(Path(run_dir).name, scored["means"]["head_mae"], ssim, ssim >= CT_CONTRAST_SSIM, verdict)


def recipe_row(label: str, runs: list[SeedRun]) -> str:
    """| recipe | seeds | head MAE median (range) | reached the CT's contrast |"""
    maes = [r.head_mae for r in runs]
    spread = f"{np.median(maes):.1f} ({min(maes):.1f}-{max(maes):.1f})" if len(maes) > 1 else f"{maes[0]:.1f}"
    return f"| {label} | {len(runs)} | {spread} | {sum(r.reached for r in runs)} of {len(runs)} |"


def health_rows(runs: list[SeedRun]) -> list[str]:
    """One row per run: plain head SSIM, outcome, last verdict, agreement; then the counts."""
    rows = [f"| {r.name} | {r.head_ssim:.3f} | {'CT contrast' if r.reached else 'not reached'} | "
            f"{r.verdict or '-'} | {r.agreement} |" for r in runs]
    judged = [r for r in runs if r.verdict is not None]
    counts = {kind: sum(r.agreement == kind for r in judged) for kind in ("agrees", "miss", "false alarm")}
    rows.append(f"| {len(judged)} judged | | {sum(not r.reached for r in judged)} not reached | | "
                f"{counts['agrees']} agree, {counts['miss']} missed, {counts['false alarm']} false alarms |")
    return rows


@dataclass(frozen=True)
class Promotion:
    median_gain: float  # the preset's median head MAE minus the lever's (positive: the lever is better)
    pairs_won: int
    pairs: int
    reached: int
    reached_preset: int

    @property
    def promoted(self) -> bool:
        return (self.median_gain >= PROMOTION_MARGIN and 3 * self.pairs_won >= 2 * self.pairs
                and self.reached >= self.reached_preset)


def promotion(lever: list[SeedRun], preset: list[SeedRun]) -> Promotion:
    """The promotion rule for a lever's runs against the preset's, paired seed by seed (the two
    lists in the same seed order)."""
    if len(lever) != len(preset):
        raise SynthctError(f"a lever is judged on the preset's seeds: {len(lever)} runs against {len(preset)}")
    gain = float(np.median([r.head_mae for r in preset]) - np.median([r.head_mae for r in lever]))
    won = sum(mine.head_mae < theirs.head_mae for mine, theirs in zip(lever, preset))
    return Promotion(gain, won, len(lever), sum(r.reached for r in lever), sum(r.reached for r in preset))


def promotion_row(label: str, found: Promotion) -> str:
    """| lever | median gain | same-seed pairs won | CT contrast reached | promoted |"""
    return (f"| {label} | {found.median_gain:+.1f} | {found.pairs_won} of {found.pairs} | "
            f"{found.reached} (preset {found.reached_preset}) | {'yes' if found.promoted else 'no'} |")
