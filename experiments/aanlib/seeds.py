"""A recipe over its seeds: the median and range of its scores, how many seeds reached the CT's
contrast, and each run's last training health verdict against that outcome.

The outcome rule is docs/RESULTS.md's, fixed before the runs it judges: a run *reached the CT's
contrast* when its plain head SSIM is at least 0.21 (the nine test-split hours that ended in the
CT's tissue order scored 0.21-0.27, the others 0.06-0.20). The health check condemns a run
("failed") or passes it ("healthy"); a passed run that did not reach the CT's contrast is a
*miss*, a condemned run that did is a *false alarm*. Beside it, the restart verdict: whether the
health check at step ``DEFAULT_CHECK_STEPS`` found a failure that makes ``synthct train``'s
restarts set a start aside (``CONDEMNING``), with its own misses and false alarms.

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

from experiments.aanlib import ledger
from synthct.engine.restarts import CONDEMNING, DEFAULT_CHECK_STEPS
from synthct.eval.health import read_health
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
    condemned: list[str] | None = None  # the restart verdict's failures; None without a check at its step

    @property
    def agreement(self) -> str:
        return _agreement(None if self.verdict is None else self.verdict != "healthy", self.reached)

    @property
    def restart_agreement(self) -> str:
        return _agreement(None if self.condemned is None else bool(self.condemned), self.reached)


def _agreement(condemned: bool | None, reached: bool) -> str:
    if condemned is None:
        return "-"
    if condemned != reached:
        return "agrees"
    return "false alarm" if condemned else "miss"


def read_seed_run(plain_result: Path, scored_result: Path, run_dir: Path) -> SeedRun:
    """A run's outcome from its plain scoring, its head MAE from ``scored_result`` (the scoring
    quoted: plain or with translate's options) and its last health verdict from ``run_dir``."""
    for path in (plain_result, scored_result):
        if not Path(path).is_file():
            raise SynthctError("result not found; run evaluate first", path)
    plain = json.loads(Path(plain_result).read_text(encoding="utf-8"))
    if plain.get("inference", {}).get("tta", "none") != "none" or plain.get("inference", {}).get("mask") == "auto":
        raise SynthctError("the outcome is judged on a plain scoring (no --tta, no --mask)", plain_result)
    scored = json.loads(Path(scored_result).read_text(encoding="utf-8"))
    return _seed_run(Path(run_dir), scored["means"]["head_mae"], plain["means"]["head_ssim"])


def ledger_seed_run(book: Path, run_dir: Path, tta: str, mask: str) -> SeedRun:
    """A test-split run's outcome and head MAE from its last scorings in the ledger (plain, and with
    ``tta``/``mask``), so that its folder need not exist; its health verdict where the folder does."""
    name = Path(run_dir).name
    plain, scored = (ledger.last_scoring(book, name, *options) for options in (("none", "none"), (tta, mask)))
    for row, what in ((plain, "plain scoring"), (scored, f"scoring with --tta {tta} --mask {mask}")):
        if row is None:
            raise SynthctError(f"the ledger holds no {what} of {name}", book)
    return _seed_run(Path(run_dir), float(scored["head_mae"]), float(plain["head_ssim"]))


def _seed_run(run_dir: Path, head_mae: float, plain_head_ssim: float) -> SeedRun:
    health = read_health(run_dir)
    checks = health.get("checks", []) if health else []
    verdict = checks[-1]["verdict"] if checks else None
    return SeedRun(run_dir.name, head_mae, plain_head_ssim, plain_head_ssim >= CT_CONTRAST_SSIM, verdict,
                   restart_failures(checks))


def restart_failures(checks: list[dict], check_steps: int = DEFAULT_CHECK_STEPS) -> list[str] | None:
    """The failures for which restarts would set the start aside, from the health check at step
    ``check_steps``; None when the run had no check at that step."""
    at_step = [check for check in checks if check["step"] == check_steps]
    return [name for name in at_step[0]["failures"] if name in CONDEMNING] if at_step else None


def recipe_row(label: str, runs: list[SeedRun]) -> str:
    """| recipe | seeds | head MAE median (range) | reached the CT's contrast |"""
    maes = [r.head_mae for r in runs]
    spread = f"{np.median(maes):.1f} ({min(maes):.1f}-{max(maes):.1f})" if len(maes) > 1 else f"{maes[0]:.1f}"
    return f"| {label} | {len(runs)} | {spread} | {sum(r.reached for r in runs)} of {len(runs)} |"


HEALTH_HEADER = ["| run | plain head SSIM | outcome | last health verdict | | restart verdict at step "
                 f"{DEFAULT_CHECK_STEPS} | |", "|---|---|---|---|---|---|---|"]


def health_rows(runs: list[SeedRun]) -> list[str]:
    """One row per run: plain head SSIM, outcome, last verdict and the restart verdict, each against
    the outcome; then the counts."""
    rows = [f"| {r.name} | {r.head_ssim:.3f} | {'CT contrast' if r.reached else 'not reached'} | "
            f"{r.verdict or '-'} | {r.agreement} | {_restart_verdict(r)} | {r.restart_agreement} |" for r in runs]
    rows.append(f"| {sum(r.verdict is not None for r in runs)} judged | | "
                f"{sum(not r.reached for r in runs if r.verdict is not None)} not reached | | "
                f"{_counts(r.agreement for r in runs)} | {sum(r.condemned is not None for r in runs)} judged | "
                f"{_counts(r.restart_agreement for r in runs)} |")
    return rows


def _restart_verdict(run: SeedRun) -> str:
    if run.condemned is None:
        return "-"
    return f"set aside ({', '.join(run.condemned)})" if run.condemned else "kept"


def _counts(agreements) -> str:
    found = list(agreements)
    return f"{found.count('agrees')} agree, {found.count('miss')} missed, {found.count('false alarm')} false alarms"


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
