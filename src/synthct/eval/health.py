"""The training health check: does a run look like one of the unpaired failures seen on the real
brain scans (docs/RESULTS.md)? It reads training data only, never a paired CT.

It translates a fixed sample of training MR slices (with their body masks) and measures, in the
model's [-1, 1] units, on each slice's centre channel and inside the body:

* ``mr_order``: the translation keeps the MR's contrast order. The rank (Spearman) correlation
  between the MR and G(mr) is 1 for any increasing function of the MR, such as the MR
  quantile-mapped onto the CT histogram, the "MR's order" reference. Real CT does not allow that
  from a T2 MR: fluid is bright in T2 and near water in CT, bone dark in T2 and the brightest in
  CT. On the 73 slices of the four training patients of the AANLIB validation protocol (20, 280,
  320, 370; head mask: MR above grey 12.75, holes filled) the real CT's correlation with its MR
  was -0.26 (median; -0.50 to +0.28), while the MR's order outcome (T2-bright fluid left bright
  inside a CT-bright skull), imitated by the MR's quantile map with the CT's own values on the
  CT's brightest tenth, gave +0.40 (+0.19 to +0.73). The medians of 4 slices drawn from each never
  crossed (5,000 draws): the check fails at a median correlation of ``MR_ORDER_RHO`` or more,
  between the two. That is a calibration on an imitation, for T2 MR; the runs in the MR's order
  themselves are still to be checked against it. A dark translation does not count: the dark
  phase carries the MR in its darkest levels, in the MR's order, and is judged as dark.
* ``dark``: the dark phase. The translation's in-body median lies closer to air (-1) than to the
  real CTs' in-body median (the sample's CT slices): the brain rendered near black. The training
  CTs' in-head median is grey 132 (96-255 over the 73 slices), which puts the line near 66; the
  dark phases measured on the real scans reached head median errors of -88 to -103.
* ``hidden_code``: the dark phase's cycle closes through a low-amplitude code (Chu et al. 2017).
  Gaussian noise n of sigma ``CODE_NOISE_SIGMA`` is added to G(mr) before F; the rise of the cycle
  error |F(G(mr) + n) - mr| over |F(G(mr)) - mr| is divided by E|n| = sigma * sqrt(2 / pi). By the
  triangle inequality this "noise gain" is at most F's own gain on the noise: a decoder that passes
  noise through unchanged gives at most 1, a trained convolutional F that ignores pixel noise
  almost 0, and a code hidden in the last grey levels amplifies it. Fails at ``CODE_GAIN`` or more.
  Two-sided models only (those with a "ct2mr" generator).
* ``off_ct_values``: the translation puts the body at values the CTs rarely take, such as a brain
  rendered between soft tissue and bone. The range [-1, 1] is cut into ``VALUE_BINS`` bins; a bin
  is rare when it holds less than ``RARE_SHARE`` of a uniform share of the sample's CT voxels
  inside the body, and the check fails when ``OFF_CT_FRACTION`` or more of the translation's
  in-body voxels fall in rare bins. The fraction compares where the values lie, not how many
  voxels each tissue has, so a sample of skull-base slices judged against vertex CTs still passes.
  With the true CT of the MR slices as the translation (4 slices against 4 other CT slices, as the
  sample draws them; ``python -m experiments.health_values``) the fraction was 0.05 at the median
  and at most 0.36 over 2,000 draws on the 73 AANLIB slices of the validation protocol's training
  patients, and 0.03 (at most 0.35 over 500) on the demo's phantoms; the same phantom CTs with the
  soft tissue raised by 210 HU, as `make demo`'s 400-step CycleGAN renders the brain, gave
  0.81 (0.40 at the least, below 0.47 in 1 % of the draws). A dark
  translation is judged dark.
* ``discriminators_at_chance``: the mean logged discriminator loss over the recent steps sits at
  or above ``CHANCE_FRACTION`` of the loss of a discriminator that cannot tell real from fake
  (:data:`CHANCE`). Plain unpaired models only: an L1 term to paired CTs steers the generator
  whatever the discriminators do (the semi-supervised runs on the real scans reached the CT's
  contrast with their discriminators at chance), and the R1 penalty keeps them near chance by
  design.

The thresholds come from measurements on training slices and from the few runs docs/RESULTS.md
describes, not from a validation. The validation sets each run's last verdict (``python -m
synthct.eval.health RUN_DIR ...`` lists them) against its validation-fold outcome.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage, stats
from torch import Tensor, nn

from synthct.errors import SynthctError

# Discriminator loss 0.5 * (L(D(real), real) + L(D(fake), fake)) at the best constant answer,
# that of a discriminator that has learnt nothing that tells the domains apart:
#   lsgan:   D = 0.5 everywhere, 0.5 * (0.5^2 + 0.5^2) = 0.25;
#   vanilla: logit 0 (probability 0.5), 0.5 * (ln 2 + ln 2) = ln 2;
#   hinge:   any D in [-1, 1], 0.5 * (relu(1 - D) + relu(1 + D)) = 1.
CHANCE = {"lsgan": 0.25, "vanilla": math.log(2.0), "hinge": 1.0}
# 0.8 of chance is the LSGAN threshold 0.20 placed on the real-scan hours' outcomes over steps
# 51-100 (docs/RESULTS.md): 5 of the 6 below it ended at head SSIM 0.20 or more, none of the 7 at
# 0.22-0.27 did. It warns; it does not condemn a start under restarts (the brain preset's runs that
# reached the CT's contrast were at chance at their first checks too).
CHANCE_FRACTION = 0.8
# The discriminator signal's steps: at most the last 50.
DISCRIMINATOR_WINDOW = 50
MR_ORDER_RHO = 0.1
CODE_NOISE_SIGMA = 0.1
# The hidden code measured on the real scans raised the cycle error by 23.5 grey levels with sigma
# 0.1 (gain 2.3); runs without one moved it by at most 0.6 (gain 0.06).
CODE_GAIN = 1.5
VALUE_BINS = 50
RARE_SHARE = 0.2
OFF_CT_FRACTION = 0.45
NOISE_SEED = 0
SAMPLE_SLICES = 4
SAMPLE_SEED = 0
# Without stored body masks: the body is what lies above air plus a margin, holes filled.
AIR_MARGIN = 0.1
HEALTH_FILE = "health.json"
FAILURE_TEXT = {"mr_order": "keeps the MR's contrast order", "dark": "dark phase",
                "hidden_code": "cycle closes through a hidden code",
                "off_ct_values": "in-body values the CTs rarely take",
                "discriminators_at_chance": "discriminators at chance"}


@dataclass
class HealthSample:
    """Training slices (N, C, H, W) in [-1, 1] and their body masks (N, C, H, W), 1 inside."""

    mr: Tensor
    ct: Tensor
    mr_body: Tensor
    ct_body: Tensor


@dataclass
class Verdict:
    step: int
    failures: list[str]
    evidence: dict[str, dict] = field(default_factory=dict)  # per signal: its values and threshold
    # A verdict before the run's last step says "failing so far": runs have left a failure later
    # (docs/RESULTS.md: two confirmation runs sat at chance for 1,250 and 1,750 steps, then reached
    # the CT's contrast). The last step's verdict is the one validated against outcomes.
    final: bool = True

    @property
    def healthy(self) -> bool:
        return not self.failures

    def line(self) -> str:
        """The verdict and its evidence in one line."""
        failed = "FAILED: " if self.final else "failing so far: "
        said = "healthy" if self.healthy else failed + ", ".join(FAILURE_TEXT[f] for f in self.failures)
        return f"health at step {self.step}: {said} ({'; '.join(_evidence_text(self.evidence))})"

    def to_dict(self) -> dict:
        return {"verdict": "healthy" if self.healthy else "failed"} | asdict(self)


def _evidence_text(evidence: dict[str, dict]) -> list[str]:
    texts = {
        "mr_order": lambda e: f"MR rank correlation {e['rho']:+.2f} (MR's order at >= {e['threshold']:g})",
        "dark": lambda e: f"in-body median {e['median']:+.2f}, CT {e['ct_median']:+.2f} (dark below "
                          f"{e['threshold']:+.2f})",
        "off_ct_values": lambda e: f"{e['fraction']:.0%} of the body at values rare in the CTs (off at >= "
                                   f"{e['threshold']:.0%})",
        "hidden_code": lambda e: f"|F(G(mr)) - mr| {e['cycle_error']:.3f} -> {e['noisy_cycle_error']:.3f} with "
                                 f"noise {e['sigma']:g}, gain {e['gain']:.2f} (code at >= {e['threshold']:g})",
        "discriminators_at_chance": lambda e: f"discriminator loss {e['loss']:.3f} over steps {e['window']} "
                                              f"(chance {e['chance']:.3f}, at chance >= {e['threshold']:.3f})",
    }
    return [texts[name](values) for name, values in evidence.items()]


def body_from_image(images: Tensor) -> Tensor:
    """Body masks (1 inside) of images in [-1, 1]: above air plus AIR_MARGIN, holes filled."""
    above = (images > -1.0 + AIR_MARGIN).cpu().numpy()
    filled = np.stack([[ndimage.binary_fill_holes(channel) for channel in image] for image in above])
    return torch.from_numpy(filled).to(images.device, torch.float32)


def _centre(x: Tensor) -> Tensor:
    return x[:, x.shape[1] // 2]


def _inside(images: Tensor, bodies: Tensor) -> list[np.ndarray]:
    """Each slice's centre-channel values inside its body, as float64 arrays."""
    return [image[body > 0.5].double().cpu().numpy() for image, body in zip(_centre(images), _centre(bodies))]


def rank_correlation(source: Tensor, translation: Tensor, bodies: Tensor) -> float:
    """Median over slices of Spearman's rho between source and translation inside the body; a
    constant translation (no order at all) counts 0."""
    rhos = []
    for a, b in zip(_inside(source, bodies), _inside(translation, bodies)):
        rho = stats.spearmanr(a, b).statistic if a.size > 2 else math.nan
        rhos.append(0.0 if not math.isfinite(rho) else float(rho))
    return float(np.median(rhos))


def body_median(images: Tensor, bodies: Tensor) -> float:
    return float(np.median(np.concatenate(_inside(images, bodies))))


def rare_value_fraction(translation: np.ndarray, ct: np.ndarray, bins: int = VALUE_BINS,
                        rare_share: float = RARE_SHARE) -> float:
    """The fraction of ``translation``'s values that fall in bins of [-1, 1] holding less than
    ``rare_share`` of a uniform share of ``ct``'s values."""
    edges = np.linspace(-1.0, 1.0, bins + 1)
    ct_share = np.histogram(np.clip(ct, -1.0, 1.0), edges)[0] / max(ct.size, 1)
    where = np.clip(np.searchsorted(edges, translation, side="right") - 1, 0, bins - 1)
    return float((ct_share[where] < rare_share / bins).mean())


def cycle_errors(translation: Tensor, back: nn.Module, source: Tensor, bodies: Tensor, air_outside: bool,
                 sigma: float = CODE_NOISE_SIGMA) -> tuple[float, float]:
    """Mean |F(G(mr)) - mr| inside the body, without and with Gaussian noise (fixed seed) on G(mr)."""
    noise = torch.randn(translation.shape, generator=torch.Generator().manual_seed(NOISE_SEED))
    errors = []
    for seen in (translation, translation + sigma * noise.to(translation.device)):
        rebuilt = _air_outside(back(seen), bodies) if air_outside else back(seen)
        difference = (_centre(rebuilt) - _centre(source)).abs()
        errors.append(float(difference[_centre(bodies) > 0.5].mean()))
    return errors[0], errors[1]


def _air_outside(images: Tensor, bodies: Tensor) -> Tensor:
    return images.masked_fill(bodies <= 0.5, -1.0)


def discriminator_loss(losses: Mapping[str, float | str]) -> float | None:
    """A step's mean discriminator loss, from its losses or its log.csv row: every model that has
    discriminators names their terms D_<domain>. None when the step logged none."""
    terms = [float(value) for name, value in losses.items() if name.startswith("D_") and value != ""]
    return sum(terms) / len(terms) if terms else None


def discriminator_window(step: int, window: int = DISCRIMINATOR_WINDOW) -> range:
    """The steps whose discriminator losses the check at ``step`` judges: the later half of the
    steps taken, at most the last ``window``."""
    return range(step - max(1, min(window, step // 2)) + 1, step + 1)


def recent_discriminator_loss(losses: Sequence[tuple[int, float]], step: int,
                              window: int = DISCRIMINATOR_WINDOW) -> tuple[float, str] | None:
    """The mean of the (step, discriminator loss) pairs in :func:`discriminator_window` and those
    steps as "first-last"; None when none fall there."""
    steps = discriminator_window(step, window)
    recent = [(s, loss) for s, loss in losses if s in steps]
    if not recent:
        return None
    return sum(loss for _, loss in recent) / len(recent), f"{recent[0][0]}-{recent[-1][0]}"


def discriminator_evidence(loss: float, gan_mode: str, window: str, threshold: float | None = None) -> dict:
    """The discriminator signal's evidence; ``threshold`` defaults to CHANCE_FRACTION of chance."""
    chance = CHANCE[gan_mode]
    threshold = CHANCE_FRACTION * chance if threshold is None else threshold
    return {"failed": loss >= threshold, "loss": loss, "window": window, "chance": chance, "threshold": threshold}


@torch.no_grad()
def check_health(generators: dict[str, nn.Module], sample: HealthSample, step: int, air_outside: bool = False,
                 discriminators: dict | None = None, final: bool = True) -> Verdict:
    """The verdict on ``generators`` (by direction, as TranslationModel.generators() gives them) over
    ``sample``; ``discriminators`` is :func:`discriminator_evidence`'s, for models that have some.
    ``air_outside``: the model sets translations to air outside the body (model.body_masked);
    ``final``: ``step`` is the run's last."""
    modes = {net: net.training for net in generators.values()}
    for net in modes:
        net.eval()
    try:
        evidence = _image_evidence(generators, sample, air_outside)
    finally:
        for net, training in modes.items():
            net.train(training)
    if discriminators is not None:
        evidence["discriminators_at_chance"] = discriminators
    return Verdict(step, [name for name, values in evidence.items() if values["failed"]], evidence, final)


def _image_evidence(generators: dict[str, nn.Module], sample: HealthSample, air_outside: bool) -> dict[str, dict]:
    device = next(generators["mr2ct"].parameters()).device
    mr, ct = sample.mr.to(device, torch.float32), sample.ct.to(device, torch.float32)
    mr_body, ct_body = sample.mr_body.to(device), sample.ct_body.to(device)
    translation = generators["mr2ct"](mr).float()
    if air_outside:
        translation = _air_outside(translation, mr_body)
    rho = rank_correlation(mr, translation, mr_body)
    median, ct_median = body_median(translation, mr_body), body_median(ct, ct_body)
    dark_below = (-1.0 + ct_median) / 2
    dark = median < dark_below
    off = rare_value_fraction(np.concatenate(_inside(translation, mr_body)), np.concatenate(_inside(ct, ct_body)))
    evidence = {
        "mr_order": {"failed": rho >= MR_ORDER_RHO and not dark, "rho": rho, "threshold": MR_ORDER_RHO},
        "dark": {"failed": dark, "median": median, "ct_median": ct_median, "threshold": dark_below},
        "off_ct_values": {"failed": off >= OFF_CT_FRACTION and not dark, "fraction": off,
                          "threshold": OFF_CT_FRACTION},
    }
    if "ct2mr" in generators:
        clean, noisy = cycle_errors(translation, generators["ct2mr"], mr, mr_body, air_outside)
        gain = (noisy - clean) / (CODE_NOISE_SIGMA * math.sqrt(2 / math.pi))
        evidence["hidden_code"] = {"failed": gain >= CODE_GAIN, "cycle_error": clean, "noisy_cycle_error": noisy,
                                   "sigma": CODE_NOISE_SIGMA, "gain": gain, "threshold": CODE_GAIN}
    return evidence


def read_health(run_dir: str | Path) -> dict | None:
    """RUN_DIR/health.json ({"checks": [verdict, ...]}), or None when the run has none."""
    path = Path(run_dir) / HEALTH_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SynthctError("not a readable health record (JSON)", path) from None
    if not isinstance(record, dict) or not isinstance(record.get("checks"), list):
        raise SynthctError("not a health record (expected an object with 'checks')", path)
    return record


def main(argv: list[str] | None = None) -> int:
    """Each run folder's last verdict, tab-separated: the runs' column for validating the check."""
    parser = argparse.ArgumentParser(prog="python -m synthct.eval.health", description=main.__doc__)
    parser.add_argument("runs", nargs="+", help="training run folders (with health.json)")
    print("run\tstep\tverdict\tfailures")
    for run in parser.parse_args(argv).runs:
        try:
            record = read_health(run)
        except SynthctError as exc:
            print(f"synthct: error: {exc}", file=sys.stderr)
            return 2
        latest = record["checks"][-1] if record and record["checks"] else None
        if latest is None:
            print(f"{run}\t\tnot checked\t")
            continue
        so_far = "" if latest.get("final", True) else " so far"  # a run that goes on later
        print(f"{run}\t{latest['step']}\t{latest['verdict']}{so_far}\t{','.join(latest['failures'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
