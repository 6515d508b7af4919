"""Building blocks of the adversarial objectives that several models share."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.functional import adaptive_avg_pool2d

from synthct.models.common import centre_channel
from synthct.models.losses import GANLoss, r1_penalty


def batched(net: nn.Module, *inputs: Tensor) -> tuple[Tensor, ...]:
    """One forward call on inputs concatenated along N, split back. Exact for these networks:
    InstanceNorm normalises each sample on its own and nothing else mixes samples."""
    return net(torch.cat(inputs)).split([len(x) for x in inputs])


def in_body(image: Tensor, body: Tensor | None) -> Tensor:
    """The image inside the body mask, air (-1) outside; unchanged without a mask."""
    return image if body is None else image.masked_fill(body <= 0.5, -1.0)


def patch_weights(body: Tensor | None, prediction: Tensor) -> Tensor | None:
    """Each discriminator output's share of body: the centre slice's mask averaged onto the
    prediction map's grid."""
    return None if body is None else adaptive_avg_pool2d(centre_channel(body).float(), prediction.shape[-2:])


def adversarial(gan: GANLoss, prediction: Tensor, target_is_real: bool, for_discriminator: bool,
                body: Tensor | None = None) -> Tensor:
    """L_GAN of a PatchGAN's prediction map, each patch weighted by its share of body when masked."""
    return gan(prediction, target_is_real, for_discriminator, patch_weights(body, prediction))


def discriminator_objective(gan: GANLoss, D: nn.Module, real: Tensor, fake: Tensor,
                            real_body: Tensor | None = None, fake_body: Tensor | None = None) -> Tensor:
    """0.5 * (L_GAN(D(real), real) + L_GAN(D(fake), fake)); halved as in the reference so D
    learns at half the generators' rate. Real and fake share one D call (exact, see batched)."""
    return discriminator_terms(gan, D, real, fake, real_body, fake_body)[0]


def discriminator_terms(gan: GANLoss, D: nn.Module, real: Tensor, fake: Tensor, real_body: Tensor | None = None,
                        fake_body: Tensor | None = None, r1_gamma: float = 0.0) -> tuple[Tensor, Tensor | None]:
    """(the discriminator objective above, its R1 term or None): with ``r1_gamma`` > 0 the R1
    penalty on the real inputs (Mescheder et al. 2018) inside the same halving,
    0.5 * gamma / 2 * E|grad_x D(x)|^2 (losses.r1_penalty), so it keeps the paper's weight
    gamma / 2 relative to the two GAN terms (the 0.5 scales the whole objective)."""
    if r1_gamma:
        real = real.detach().requires_grad_(True)
    pred_real, pred_fake = batched(D, real, fake.detach())
    loss = 0.5 * (adversarial(gan, pred_real, True, True, real_body)
                  + adversarial(gan, pred_fake, False, True, fake_body))
    if not r1_gamma:
        return loss, None
    return loss, 0.5 * (r1_gamma / 2) * r1_penalty(pred_real, real, patch_weights(real_body, pred_real))


def new_pool_seed() -> int:
    """Pools draw their seed from the global RNG, so a seeded run seeds its pools."""
    return int(torch.randint(0, 2 ** 62, ()))
