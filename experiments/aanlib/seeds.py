"""A recipe over its seeds: the median and range of its scores, how many seeds reached the CT's
contrast, and each run's last training health verdict against that outcome.

The outcome rule is docs/RESULTS.md's, fixed before the runs it judges: a run *reached the CT's
contrast* when its plain head SSIM is at least 0.21 (the nine test-split hours that ended in the
CT's tissue order scored 0.21-0.27, the others 0.06-0.20). The health check condemns a run
("failed") or passes it ("healthy"); a passed run that did not reach the CT's contrast is a
*miss*, a condemned run that did is a *false alarm*. Beside it, each run's mean logged
discriminator loss over the second half of the first ``DEFAULT_CHECK_STEPS`` steps: the early
signal on which ``synthct train --restarts`` sets a start aside (at or above its threshold).

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
from synthct.engine.logging import read_log
from synthct.engine.restarts import DEFAULT_CHECK_STEPS, DEFAULT_THRESHOLD
from synthct.eval.health import discriminator_loss, discriminator_window, read_health
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
    early_discriminators: float | None = None  # what --restarts judges; None without a log reaching it

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
    verdict = health["checks"][-1]["verdict"] if health and health.get("checks") else None
    return SeedRun(run_dir.name, head_mae, plain_head_ssim, plain_head_ssim >= CT_CONTRAST_SSIM, verdict,
                   early_discriminator_loss(run_dir / "log.csv"))


def early_discriminator_loss(log: Path, check_steps: int = DEFAULT_CHECK_STEPS) -> float | None:
    """The discriminator loss --restarts judges a start on: the health check's at step check_steps,
    from log.csv; None when the log does not cover its window."""
    steps = discriminator_window(check_steps)
    logged = {int(row["step"]): discriminator_loss(row) for row in read_log(log)}
    judged = [logged[step] for step in steps if logged.get(step) is not None]
    return sum(judged) / len(judged) if len(judged) == len(steps) else None


def recipe_row(label: str, runs: list[SeedRun]) -> str:
    """| recipe | seeds | head MAE median (range) | reached the CT's contrast |"""
    maes = [r.head_mae for r in runs]
    spread = f"{np.median(maes):.1f} ({min(maes):.1f}-{max(maes):.1f})" if len(maes) > 1 else f"{maes[0]:.1f}"
    return f"| {label} | {len(runs)} | {spread} | {sum(r.reached for r in runs)} of {len(runs)} |"


EARLY = discriminator_window(DEFAULT_CHECK_STEPS)
HEALTH_HEADER = ["| run | plain head SSIM | outcome | last health verdict | | discriminator loss, steps "
                 f"{EARLY[0]}-{EARLY[-1]} |", "|---|---|---|---|---|---|"]


def health_rows(runs: list[SeedRun]) -> list[str]:
    """One row per run: plain head SSIM, outcome, last verdict, agreement, the early discriminator
    loss; then the counts."""
    rows = [f"| {r.name} | {r.head_ssim:.3f} | {'CT contrast' if r.reached else 'not reached'} | "
            f"{r.verdict or '-'} | {r.agreement} | {_early(r)} |" for r in runs]
    judged = [r for r in runs if r.verdict is not None]
    counts = {kind: sum(r.agreement == kind for r in judged) for kind in ("agrees", "miss", "false alarm")}
    early = [r for r in runs if r.early_discriminators is not None]
    at_chance = [r for r in early if r.early_discriminators >= DEFAULT_THRESHOLD]
    rows.append(f"| {len(judged)} judged | | {sum(not r.reached for r in judged)} not reached | | "
                f"{counts['agrees']} agree, {counts['miss']} missed, {counts['false alarm']} false alarms | "
                f"{len(at_chance)} of {len(early)} at chance, {sum(r.reached for r in at_chance)} of them reached |")
    return rows


def _early(run: SeedRun) -> str:
    if run.early_discriminators is None:
        return "-"
    at_chance = " (at chance)" if run.early_discriminators >= DEFAULT_THRESHOLD else ""
    return f"{run.early_discriminators:.3f}{at_chance}"


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
