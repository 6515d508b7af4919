"""pix2pix (Isola et al. 2017): the paired baseline. A conditional PatchGAN judges (MR, CT)
pairs; the generator minimises L_cGAN(G, D) + lambda_l1 * |G(mr) - ct|_1.

As the reference, pix2pix keeps no image pool (the pool matters for the unconditional CycleGAN
discriminators), so ``cfg.pool_size`` is ignored here. It trains on co-registered pairs only.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.functional import l1_loss

from synthct.config import ModelConfig
from synthct.models.base import DISCRIMINATOR_OPTIONS, GENERATOR_OPTIONS, TranslationModel
from synthct.models.common import centre_channel, init_weights, set_requires_grad
from synthct.models.discriminator import PatchDiscriminator
from synthct.models.generators import build_generator
from synthct.models.losses import GANLoss
from synthct.models.shared import discriminator_objective


class Pix2Pix(TranslationModel):
    options = GENERATOR_OPTIONS + DISCRIMINATOR_OPTIONS + ("lambda_l1",)
    needs_pairs = True

    def __init__(self, cfg: ModelConfig, in_channels: int, out_channels: int):
        super().__init__()
        self.G = build_generator(cfg.generator, in_channels, out_channels, cfg.ngf, cfg.blocks, cfg.unet_downs)
        self.D = PatchDiscriminator(in_channels + out_channels, cfg.ndf, cfg.d_layers)
        init_weights(self.G, 0.02)
        init_weights(self.D, 0.02)
        self.gan = GANLoss(cfg.gan_mode)
        self.lambda_l1 = cfg.lambda_l1

    def generators(self) -> dict[str, nn.Module]:
        return {"mr2ct": self.G}

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        return self.G.parameters()

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        return self.D.parameters()

    def generator_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], dict]:
        real_mr, real_ct = batch["mr"], batch["ct"]
        set_requires_grad(self.D, False)
        fake_ct = self.G(real_mr)
        terms = {
            "G_gan": self.gan(self.D(torch.cat([real_mr, fake_ct], 1)), True, for_discriminator=False),
            "l1": self.lambda_l1 * l1_loss(fake_ct.float(), real_ct.float()),
        }
        total = terms["G_gan"] + terms["l1"]
        return total, {name: value.detach() for name, value in terms.items()}, {"fake_ct": fake_ct.detach()}

    def discriminator_loss(self, batch: dict[str, Tensor], cache: dict) -> tuple[Tensor, dict[str, Tensor]]:
        set_requires_grad(self.D, True)
        real_mr = batch["mr"]
        real_pair = torch.cat([real_mr, batch["ct"]], 1)
        fake_pair = torch.cat([real_mr, cache["fake_ct"].to(real_mr.dtype)], 1)
        loss = discriminator_objective(self.gan, self.D, real_pair, fake_pair)
        return loss, {"D_ct": loss.detach()}

    def samples(self, cache: dict, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        images = {"real_mr": batch["mr"], "fake_ct": cache["fake_ct"], "real_ct": batch["ct"]}
        return {name: centre_channel(image.detach()) for name, image in images.items()}
