"""Grey-level maps for the contrast warm-up of the generators (``CycleGAN.warmup_loss``).

``random_grey_map`` (warm-up target "restore"):

A generator trained to turn h(ct) back into ct, for random non-monotone grey-level maps h, must
read tissue from shape and context rather than from grey level: bone comes out bright whatever
grey it came in with, fluid CT-dark even when it came in bright. That is what G: MR -> CT needs
and what an unpaired adversarial game finds only sometimes within a short budget (the failure
mode of docs/RESULTS.md: T2-bright fluid left bright). The idea is domain randomisation over
contrasts, as in SynthSeg (Billot et al. 2023), applied to each domain's own images, so no
pairing is used.

``inverted_foreground`` (warm-up target "inverted"): the other domain's contrast as a fixed prior.
T2-weighted MR and brain-windowed CT order the head's main tissues roughly in reverse (fluid
bright / dark, bone dark / bright, brain in between), so each generator is first taught to
invert its input's foreground, air left dark. On the real brain slices the CPU hours that learnt
to turn fluid dark all went through an early phase of far too dark heads and none without it
did; starting a run in the reversed order this way did not make it lock in (docs/RESULTS.md,
"An eighth session").
"""

from __future__ import annotations

import torch
from torch import Tensor

BACKGROUND_MARGIN = 0.02  # greys this close to an image's minimum count as background
DARK_BACKGROUND = (-1.0, -0.7)  # background stays dark, as in both MR and CT


def random_grey_map(x: Tensor, knots: int = 12) -> Tensor:
    """Each image of ``x`` (N, C, H, W, values in [-1, 1]) through its own random piecewise-linear
    grey-level map, the same for all its C slices.

    The map's knots sit at random quantiles of the image's foreground greys, so they are dense
    where the tissue greys are (e.g. the narrow band of brain greys in a CT) and a map can pull
    apart, merge or swap tissues that differ by a few grey levels. Knot outputs are uniform in
    [-1, 1] (so maps are usually non-monotone); the background keeps a dark grey. Draws from the
    global torch RNG on the CPU: seeded runs are reproducible and resume bit for bit."""
    out = torch.empty_like(x)
    for n, image in enumerate(x):
        greys = image.detach().float().flatten()
        background = greys.min()
        foreground = greys[greys > background + BACKGROUND_MARGIN]
        levels = torch.sort(torch.rand(knots)).values
        levels[0], levels[-1] = 0.0, 1.0
        outputs = torch.rand(knots + 1) * 2 - 1
        outputs[0] = DARK_BACKGROUND[0] + torch.rand(()) * (DARK_BACKGROUND[1] - DARK_BACKGROUND[0])
        if foreground.numel() < knots:  # (almost) only background: nothing to remap
            out[n] = outputs[0].to(x.dtype)
            continue
        inputs = torch.cat([background.cpu().reshape(1), torch.quantile(foreground.cpu(), levels)])
        # Strictly increasing knots (quantiles repeat where many pixels share a grey).
        inputs = torch.cummax(inputs, 0).values + torch.arange(knots + 1) * 1e-6
        inputs, outputs = inputs.to(x.device), outputs.to(x.device)
        upper = torch.searchsorted(inputs, greys).clamp(1, knots)
        low, high = inputs[upper - 1], inputs[upper]
        t = ((greys - low) / (high - low)).clamp(0, 1)
        mapped = outputs[upper - 1] + t * (outputs[upper] - outputs[upper - 1])
        out[n] = mapped.reshape(image.shape).to(x.dtype)
    return out


def inverted_foreground(x: Tensor) -> Tensor:
    """Each image of ``x`` (N, C, H, W, values in [-1, 1]) with its foreground negated (-x) and its
    background (greys within BACKGROUND_MARGIN of the image's minimum) kept as it is."""
    background = x.detach().amin(dim=(1, 2, 3), keepdim=True)
    return torch.where(x > background + BACKGROUND_MARGIN, -x, x)
