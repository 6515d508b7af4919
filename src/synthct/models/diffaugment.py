"""Differentiable Augmentation (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient
GAN Training"): every image a discriminator judges, real or fake, in the discriminator's and in
the generators' adversarial terms, passes through the same family of random, differentiable
transformations, so the discriminator cannot memorise a small training set while the
generators still receive its gradients through the transformation.

The policy is the paper's ``color,translation,cutout`` (its choice for limited data), with the
paper's magnitudes, adapted to single-channel images in [-1, 1]:

* brightness: x + b, b ~ U(-0.5, 0.5) per image;
* contrast: (x - mean) * c + mean, c ~ U(0.5, 1.5) per image, mean over the image's channels and
  pixels (the paper's saturation changes the spread between colour channels, and a 1-channel
  image or a 2.5D stack of the same modality has none: it is left out);
* translation: by up to 1/8 of the image side in each direction (integer pixels, uniform), the
  uncovered border filled with the background;
* cutout: a square of half the image side, centred at a uniform position (clipped at the
  borders), set to the background.

Background is -1: CT air (CTWindow), MR below its 0.5th body percentile (MRPercentile), black
8-bit pixels, and the padding of data/slices.py all map to -1 in model range. (The paper pads and
cuts out with 0, the background of its zero-centred colour images; here 0 is mid-grey, about
990 HU.)

A body mask (model.body_masked) moves with its image: the translation shifts it too (outside the
image is outside the body); the intensity changes and the cutout leave it as it is.

Every random draw comes from torch's global generator on the image's device (per image, in the
order brightness, contrast, translation rows, columns, cutout rows, columns), whose state the
training checkpoints carry, so a resumed run draws what the uninterrupted run would have.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BACKGROUND = -1.0
TRANSLATION = 1 / 8  # largest shift, as a fraction of the image side (the paper's 0.125)
CUTOUT = 1 / 2  # side of the cut-out square, as a fraction of the image side (the paper's 0.5)


def _uniform(x: Tensor) -> Tensor:
    """U(0, 1) per image, shape (N, 1, 1, 1), drawn in float32 whatever x's dtype."""
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device).to(x.dtype)


def brightness(x: Tensor) -> Tensor:
    return x + (_uniform(x) - 0.5)


def contrast(x: Tensor) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x) + 0.5) + mean


def translation(x: Tensor, body: Tensor | None = None, ratio: float = TRANSLATION) -> tuple[Tensor, Tensor | None]:
    """out[i, j] = x[i + dy, j + dx] with dy, dx uniform integers in [-ratio * side, ratio * side]
    per image; pixels from outside the image are background (and outside the body)."""
    n, _, h, w = x.shape
    shift_h, shift_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-shift_h, shift_h + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-shift_w, shift_w + 1, (n, 1, 1), device=x.device)
    # Index a one-pixel background frame for everything that comes from outside the image.
    rows = (torch.arange(h, device=x.device)[None, :, None] + dy + 1).clamp_(0, h + 1)
    cols = (torch.arange(w, device=x.device)[None, None, :] + dx + 1).clamp_(0, w + 1)
    images = torch.arange(n, device=x.device)[:, None, None]

    def shifted(t: Tensor, fill: float) -> Tensor:
        framed = F.pad(t, (1, 1, 1, 1), value=fill)
        return framed.permute(0, 2, 3, 1)[images, rows, cols].permute(0, 3, 1, 2)

    return shifted(x, BACKGROUND), None if body is None else shifted(body, 0.0)


def cutout(x: Tensor, ratio: float = CUTOUT) -> Tensor:
    """A (ratio * side)-square per image set to background; its centre is uniform over the image
    (the paper's offsets), the square clipped at the borders."""
    n, _, h, w = x.shape
    cut_h, cut_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - cut_h % 2), (n, 1, 1), device=x.device) - cut_h // 2
    left = torch.randint(0, w + (1 - cut_w % 2), (n, 1, 1), device=x.device) - cut_w // 2
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + cut_h) & (cols >= left) & (cols < left + cut_w)
    return torch.where(inside[:, None], torch.tensor(BACKGROUND, dtype=x.dtype, device=x.device), x)


def diff_augment(x: Tensor, body: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """(augmented images, their body masks): brightness, contrast, translation, cutout, each
    image with its own draws; x keeps its dtype and memory layout."""
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = brightness(x)
    out = contrast(out)
    out, body = translation(out, body)
    out = cutout(out)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return out.contiguous(memory_format=layout), None if body is None else body.contiguous(memory_format=layout)
