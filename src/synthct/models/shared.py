"""Building blocks of the adversarial objectives that several models share."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.functional import adaptive_avg_pool2d

from synthct.models.common import centre_channel
from synthct.models.losses import GANLoss


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
    pred_real, pred_fake = batched(D, real, fake.detach())
    return 0.5 * (adversarial(gan, pred_real, True, True, real_body)
                  + adversarial(gan, pred_fake, False, True, fake_body))


def new_pool_seed() -> int:
    """Pools draw their seed from the global RNG, so a seeded run seeds its pools."""
    return int(torch.randint(0, 2 ** 62, ()))
