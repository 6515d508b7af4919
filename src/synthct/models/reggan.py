"""RegGAN (Kong et al., NeurIPS 2021, "Breaking the dilemma of medical image-to-image
translation"): paired training that tolerates misregistered pairs. A registration network R
warps the real CT onto the translation before the L1 term, so the generator is not taught to
blur away the misalignment. The objective (the paper's Eq. 7, its "NC+R" mode):

    L = lambda_corr * |T(ct, R(G(mr), ct)) - G(mr)|_1      (Eq. 5, "corr")
      + lambda_smooth * |grad R(G(mr), ct)|^2                (Eq. 6, "smooth")
      + L_GAN(G, D)                                           (an unconditional PatchGAN on CT)

with the paper's weights lambda_corr = 20, lambda_smooth = 10. R trains with G (the generator
optimiser); the exported translator is G alone.

The paper's Eq. 5 warps the other way, the translation onto the CT: |ct - T(G(mr), R(G(mr), ct))|_1.
Warping the CT keeps the generator's output unresampled; either way a global shift shared by G
and R costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn

from synthct.config import ModelConfig
from synthct.models.base import DISCRIMINATOR_OPTIONS, GENERATOR_OPTIONS, TranslationModel
from synthct.models.common import centre_channel, init_weights, set_requires_grad
from synthct.models.discriminator import PatchDiscriminator
from synthct.models.generators import build_generator
from synthct.models.losses import GANLoss
from synthct.models.registration import Registration
from synthct.models.shared import discriminator_objective

REGISTRATION_OPTIONS = ("lambda_corr", "lambda_smooth")


class RegGAN(TranslationModel):
    options = GENERATOR_OPTIONS + DISCRIMINATOR_OPTIONS + REGISTRATION_OPTIONS
    needs_pairs = True

    def __init__(self, cfg: ModelConfig, in_channels: int, out_channels: int):
        super().__init__()
        self.G = build_generator(cfg.generator, in_channels, out_channels, cfg.ngf, cfg.blocks, cfg.unet_downs,
                                 unet_dropout=False)
        self.D = PatchDiscriminator(out_channels, cfg.ndf, cfg.d_layers)
        init_weights(self.G, 0.02)
        init_weights(self.D, 0.02)
        self.registration = Registration(out_channels, cfg.lambda_corr, cfg.lambda_smooth)
        self.gan = GANLoss(cfg.gan_mode)

    def generators(self) -> dict[str, nn.Module]:
        return {"mr2ct": self.G}

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.G.parameters()
        yield from self.registration.parameters()

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        return self.D.parameters()

    def generator_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], dict]:
        set_requires_grad(self.D, False)
        fake_ct = self.G(batch["mr"])
        terms, phi, warped_ct = self.registration(fake_ct, batch["ct"])
        terms["G_gan"] = self.gan(self.D(fake_ct), True, for_discriminator=False)
        total = sum(terms.values())
        cache = {"fake_ct": fake_ct.detach(), "warped_ct": warped_ct.detach(), "phi": phi.detach()}
        return total, {name: value.detach() for name, value in terms.items()}, cache

    def discriminator_loss(self, batch: dict[str, Tensor], cache: dict) -> tuple[Tensor, dict[str, Tensor]]:
        set_requires_grad(self.D, True)
        loss = discriminator_objective(self.gan, self.D, batch["ct"], cache["fake_ct"].to(batch["ct"].dtype))
        return loss, {"D_ct": loss.detach()}

    def samples(self, cache: dict, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        images = {"real_mr": batch["mr"], "fake_ct": cache["fake_ct"], "real_ct": batch["ct"],
                  "warped_ct": cache["warped_ct"]}
        return {name: centre_channel(image.detach()) for name, image in images.items()}
