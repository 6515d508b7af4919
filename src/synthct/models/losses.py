"""Objectives: adversarial losses, the R1 gradient penalty, structure-consistency losses between
an image and its translation (MIND, NGF), and PatchNCE for contrastive unpaired translation.

All losses compute in float32 whatever the autocast dtype of their inputs: the sums and
exponentials here are where bfloat16 would lose the signal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GAN_MODES = ("lsgan", "vanilla", "hinge")


class GANLoss(nn.Module):
    """Adversarial loss on discriminator outputs (logits / scores, any shape).

    lsgan (Mao et al. 2017):   mean((D - t)^2), t = 1 for real, 0 for fake.
    vanilla (Goodfellow 2014): binary cross-entropy with logits against t (non-saturating for G).
    hinge (Lim & Ye 2017):     D: mean(relu(1 - D(real))) + mean(relu(1 + D(fake)));
                               G: -mean(D(fake)).
    """

    def __init__(self, mode: str = "lsgan"):
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"unknown GAN mode '{mode}' ({' | '.join(GAN_MODES)})")
        self.mode = mode

    def forward(self, prediction: Tensor, target_is_real: bool, for_discriminator: bool,
                weight: Tensor | None = None) -> Tensor:
        """``weight``: optional (N, 1, h, w) weights of the prediction map's positions (e.g. the
        fraction of each patch inside the body); the mean becomes a weighted mean."""
        prediction = prediction.float()
        if self.mode == "hinge":
            if not for_discriminator:
                if not target_is_real:
                    raise ValueError("the hinge generator loss is defined for target_is_real=True only")
                return _weighted_mean(-prediction, weight)
            margin = 1 - prediction if target_is_real else 1 + prediction
            return _weighted_mean(F.relu(margin), weight)
        target = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
        if self.mode == "lsgan":
            return _weighted_mean(F.mse_loss(prediction, target, reduction="none"), weight)
        return _weighted_mean(F.binary_cross_entropy_with_logits(prediction, target, reduction="none"), weight)


def _weighted_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    if weight is None:
        return values.mean()
    weight = weight.float().expand_as(values)
    return (values * weight).sum() / weight.sum().clamp_min(1e-6)


def r1_penalty(prediction: Tensor, inputs: Tensor, weight: Tensor | None = None) -> Tensor:
    """R1 (Mescheder et al. 2018, "Which Training Methods for GANs do actually Converge?"):
    E |grad_x D(x)|^2 on real inputs x, differentiable in D's parameters (its gradient is what
    the discriminator step minimises), in float32.

    ``prediction`` = D(``inputs``), computed from ``inputs`` that require grad. A PatchGAN's
    (N, 1, h, w) map holds P = h * w discriminators of overlapping patches, and its loss is
    their mean, so its R1 is the mean over images and patches of each patch's penalty,
    ``weight``-ed like GANLoss (body fractions with model.body_masked):

        R1 = sum_{n,p} w_np |grad_x D_np(x_n)|^2 / sum_{n,p} w_np.

    Each patch's own gradient would take one backward pass per patch; one pass with a random
    sign e_np = +-1 per patch gives an unbiased estimate (Hutchinson's trick:
    E_e |sum_p e_p sqrt(w_p) g_p|^2 = sum_p w_p |g_p|^2 as E[e_p e_q] = 0 for p != q), exact
    when the map has one position (a scalar D, the paper's case) or patches do not overlap.
    (Summing the map first would add the products of overlapping patches' gradients and scale
    R1 with the map's size: 49 times the patch mean for a newly initialised 128 px, ndf 32
    PatchGAN on noise, whose 14 x 14 map gives this estimate a spread of about 2 % per draw.)
    The signs come from torch's global generator, which checkpoints restore."""
    signs = torch.randint(0, 2, prediction.shape, device=prediction.device).float() * 2 - 1
    if weight is not None:
        weight = weight.float().expand_as(signs)
        signs = signs * weight.sqrt()
    total = weight.sum().clamp_min(1e-6) if weight is not None else prediction.numel()
    # Under autocast the prediction is bf16 (fp16): the backward runs in D's dtype, and the
    # gradient comes back in the inputs' dtype (float32 for float32 images), squared in float32.
    (grad,) = torch.autograd.grad(prediction, inputs, grad_outputs=signs.to(prediction.dtype), create_graph=True)
    return grad.float().square().sum() / total


def _gaussian_kernel(sigma: float, device, dtype) -> Tensor:
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    return kernel / kernel.sum()


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian filter per channel, replicate-padded so the output keeps its size."""
    channels = x.shape[1]
    kernel = _gaussian_kernel(sigma, x.device, x.dtype)
    radius = kernel.numel() // 2
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _shift(x: Tensor, dy: int, dx: int) -> Tensor:
    """x(p + (dy, dx)), replicate-padded at the border."""
    r = max(abs(dy), abs(dx))
    padded = F.pad(x, (r, r, r, r), mode="replicate")
    height, width = x.shape[-2:]
    return padded[..., r + dy: r + dy + height, r + dx: r + dx + width]


def mind_descriptor(x: Tensor, radius: int = 1, patch_sigma: float = 1.0, eps: float = 1e-6) -> Tensor:
    """MIND (Heinrich et al. 2012), 2D: the 3D six-neighbourhood becomes the four in-plane
    neighbours at distance ``radius``. For each neighbour r,

        D_p(I, x, x + r) = G_sigma * (I - I(. + r))^2          (Gaussian-weighted patch distance)
        V(I, x)          = mean_r D_p(I, x, x + r)             (local variance estimate)
        MIND(I, x, r)    = exp(-D_p / V) / max_r exp(-D_p / V)

    V is clamped to [1e-3, 1e3] x its image mean so flat regions and edges stay bounded.
    Computed per channel: (N, C, H, W) -> (N, 4C, H, W).
    """
    x = x.float()
    offsets = [(0, radius), (0, -radius), (radius, 0), (-radius, 0)]
    distances = torch.stack([_gaussian_blur((x - _shift(x, dy, dx)) ** 2, patch_sigma)
                             for dy, dx in offsets], dim=1)  # (N, 4, C, H, W)
    variance = distances.mean(dim=1, keepdim=True)
    image_mean = variance.mean(dim=(-2, -1), keepdim=True) + eps
    variance = torch.maximum(torch.minimum(variance, 1e3 * image_mean), 1e-3 * image_mean)
    descriptor = torch.exp(-distances / variance)
    descriptor = descriptor / descriptor.amax(dim=1, keepdim=True)
    return descriptor.flatten(1, 2)


class MINDLoss(nn.Module):
    """L1 distance between the MIND descriptors of two images: small when the images show the
    same structures, whatever the intensity mapping between them (MR vs CT contrast)."""

    def __init__(self, radius: int = 1, patch_sigma: float = 1.0):
        super().__init__()
        self.radius = radius
        self.patch_sigma = patch_sigma

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return (mind_descriptor(x, self.radius, self.patch_sigma)
                - mind_descriptor(y, self.radius, self.patch_sigma)).abs().mean()


def normalised_gradient(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """n(I) = grad I / sqrt(|grad I|^2 + eps^2), forward differences on the (H-1, W-1) grid."""
    x = x.float()
    gy = x[..., 1:, :-1] - x[..., :-1, :-1]
    gx = x[..., :-1, 1:] - x[..., :-1, :-1]
    norm = torch.sqrt(gx ** 2 + gy ** 2 + eps ** 2)
    return gx / norm, gy / norm


class NGFLoss(nn.Module):
    """Normalised gradient fields (Haber & Modersitzki 2006): mean(1 - <n(x), n(y)>^2).

    Zero where edges are parallel (either polarity, so contrast inversion costs nothing), one
    where they are orthogonal or absent. ``eps`` is the edge-vs-noise scale in intensity per
    pixel (images in [-1, 1]); gradients much weaker than eps count as no edge.
    """

    def __init__(self, eps: float = 0.01):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        nx_x, ny_x = normalised_gradient(x, self.eps)
        nx_y, ny_y = normalised_gradient(y, self.eps)
        return (1 - (nx_x * nx_y + ny_x * ny_y) ** 2).mean()


class PatchNCELoss(nn.Module):
    """PatchNCE (Park et al. 2020): each query patch of the translation must pick the feature of
    the same location in the source (positive) out of the other sampled patches of the same
    source image (negatives). InfoNCE with temperature tau:

        l = -log( exp(q.k+ / tau) / (exp(q.k+ / tau) + sum_n exp(q.k-_n / tau)) )

    ``query`` and ``key`` are L2-normalised features (N, P, D); keys get no gradient. The loss
    is averaged over all patches, or per image (N,) with ``reduction="none"``.
    """

    def __init__(self, temperature: float = 0.07):
        super().__init__()
        self.temperature = temperature

    def forward(self, query: Tensor, key: Tensor, reduction: str = "mean") -> Tensor:
        if reduction not in ("mean", "none"):
            raise ValueError(f"unknown reduction '{reduction}' (mean | none)")
        query, key = query.float(), key.detach().float()
        patches = query.shape[1]
        positive = (query * key).sum(dim=-1, keepdim=True)  # (N, P, 1)
        negatives = query @ key.transpose(1, 2)  # (N, P, P); the diagonal holds the positives
        # As the reference: a -10 cosine (before 1/tau) removes the positive from the negatives.
        same = torch.eye(patches, dtype=torch.bool, device=query.device)
        negatives = negatives.masked_fill(same, -10.0)
        logits = torch.cat([positive, negatives], dim=-1).flatten(0, 1) / self.temperature
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=query.device)
        per_patch = F.cross_entropy(logits, target, reduction="none").view(query.shape[:2])
        return per_patch.mean() if reduction == "mean" else per_patch.mean(dim=1)


def build_structure_loss(name: str) -> nn.Module:
    if name == "mind":
        return MINDLoss()
    if name == "ngf":
        return NGFLoss()
    raise ValueError(f"unknown structure loss '{name}' (mind | ngf)")
