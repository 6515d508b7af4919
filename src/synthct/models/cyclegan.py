"""CycleGAN (Zhu et al. 2017) for MR -> CT: generators G: MR -> CT and F: CT -> MR,
discriminators D_ct and D_mr, and the full objective in one place (``generator_loss``).

With 2.5D input both domains carry k slices as channels: G and F map k-slice stacks to k-slice
stacks, the discriminators judge all k, and inference keeps the centre channel.

Body-masked (``model.body_masked``): each translation is air (-1) outside its source's body mask,
and the discriminators judge only patches inside the body (each patch weighted by its body
fraction). A PatchGAN's small receptive field cannot tell a dark head from the black background
around it, so an unmasked generator can render the brain black and the air grey and still look
real patch by patch; judged inside the body only, a black brain is an obvious fake.

The R1 penalty (``model.r1_gamma`` = gamma > 0; Mescheder et al. 2018), off by default: each
discriminator's objective gains gamma / 2 * E|grad_x D(x)|^2 on its real inputs x, inside the
reference's halving: L_D = 0.5 * (L_real + L_fake + gamma / 2 * R1) (models/losses.r1_penalty, per
patch of the PatchGAN).
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
from synthct.models.losses import GANLoss, build_structure_loss
from synthct.models.pool import ImagePool
from synthct.models.registration import Registration
from synthct.models.shared import adversarial, batched, discriminator_terms, in_body, new_pool_seed


class CycleGAN(TranslationModel):
    options = GENERATOR_OPTIONS + DISCRIMINATOR_OPTIONS + (
        "lambda_cycle", "lambda_identity", "lambda_struct", "struct_loss", "body_masked", "lambda_pair",
        "register", "lambda_smooth", "r1_gamma")
    uses_pairs = True

    def __init__(self, cfg: ModelConfig, in_channels: int, out_channels: int):
        super().__init__()
        if cfg.lambda_identity > 0 and in_channels != out_channels:
            raise ValueError("the identity loss needs MR and CT with the same number of channels, "
                             f"got {in_channels} and {out_channels}")
        # No dropout in a U-Net here: pix2pix uses it as its noise source, CycleGAN trains without
        # (as the reference does), and the cycle loss would have to undo its noise.
        self.G = build_generator(cfg.generator, in_channels, out_channels, cfg.ngf, cfg.blocks, cfg.unet_downs,
                                 unet_dropout=False)
        self.F = build_generator(cfg.generator, out_channels, in_channels, cfg.ngf, cfg.blocks, cfg.unet_downs,
                                 unet_dropout=False)
        self.D_ct = PatchDiscriminator(out_channels, cfg.ndf, cfg.d_layers)
        self.D_mr = PatchDiscriminator(in_channels, cfg.ndf, cfg.d_layers)
        for net in (self.G, self.F, self.D_ct, self.D_mr):
            init_weights(net, 0.02)
        self.gan = GANLoss(cfg.gan_mode)
        self.structure = build_structure_loss(cfg.struct_loss) if cfg.lambda_struct > 0 else None
        self.lambda_cycle = cfg.lambda_cycle
        self.lambda_identity = cfg.lambda_identity
        self.lambda_struct = cfg.lambda_struct
        self.body_masked = cfg.body_masked
        self.r1_gamma = cfg.r1_gamma
        self.lambda_pair = cfg.lambda_pair
        self.registration = Registration(out_channels, cfg.lambda_pair, cfg.lambda_smooth) if cfg.register else None
        self.pool_ct = ImagePool(cfg.pool_size, seed=new_pool_seed())
        self.pool_mr = ImagePool(cfg.pool_size, seed=new_pool_seed())

    def generators(self) -> dict[str, nn.Module]:
        return {"mr2ct": self.G, "ct2mr": self.F}

    @property
    def chance_means_failure(self) -> bool:
        # The R1 penalty keeps the discriminators near chance by design (it penalises steep answers
        # on real images): in the screening on the real scans R1's losses stayed at 0.22-0.25
        # whether or not the run reached the CT's contrast.
        return self.r1_gamma == 0

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.G.parameters()
        yield from self.F.parameters()
        if self.registration is not None:
            yield from self.registration.parameters()

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.D_ct.parameters()
        yield from self.D_mr.parameters()

    def generator_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], dict]:
        real_mr, real_ct = batch["mr"], batch["ct"]
        mr_body, ct_body = self.bodies(batch)
        identity = self.lambda_identity > 0
        set_requires_grad([self.D_ct, self.D_mr], False)

        # Each generator runs once per input set it needs, batched along N: G on {mr, ct}, then F
        # on everything it needs that is already known ({ct, mr, G(mr)}), then G on F(ct).
        # Every image keeps the body of the image it was translated from.
        if identity:
            fake_ct, idt_ct = batched(self.G, real_mr, real_ct)
            fake_ct, idt_ct = in_body(fake_ct, mr_body), in_body(idt_ct, ct_body)
            fake_mr, idt_mr, rec_mr = batched(self.F, real_ct, real_mr, fake_ct)
            idt_mr = in_body(idt_mr, mr_body)
        else:
            fake_ct = in_body(self.G(real_mr), mr_body)
            fake_mr, rec_mr = batched(self.F, real_ct, fake_ct)
        fake_mr, rec_mr = in_body(fake_mr, ct_body), in_body(rec_mr, mr_body)
        rec_ct = in_body(self.G(fake_mr), ct_body)
        pred_ct, pred_mr = self.D_ct(fake_ct), self.D_mr(fake_mr)

        lam = self.lambda_cycle
        terms = {
            "G_gan": adversarial(self.gan, pred_ct, True, False, mr_body),  # L_GAN(G, D_ct)
            "F_gan": adversarial(self.gan, pred_mr, True, False, ct_body),  # L_GAN(F, D_mr)
            "cycle_mr": lam * l1_loss(rec_mr.float(), real_mr.float()),             # |F(G(mr)) - mr|
            "cycle_ct": lam * l1_loss(rec_ct.float(), real_ct.float()),             # |G(F(ct)) - ct|
        }
        if identity:
            terms["idt_ct"] = self.lambda_identity * lam * l1_loss(idt_ct.float(), real_ct.float())
            terms["idt_mr"] = self.lambda_identity * lam * l1_loss(idt_mr.float(), real_mr.float())
        if self.structure is not None:
            terms["struct"] = self.lambda_struct * (self.structure(real_mr, fake_ct)
                                                    + self.structure(real_ct, fake_mr))
        if "mr_pair" in batch:
            terms |= self.paired_terms(batch["mr_pair"], batch["ct_pair"])
        total = sum(terms.values())

        cache = {"fake_ct": fake_ct.detach(), "fake_mr": fake_mr.detach(),
                 "rec_mr": rec_mr.detach(), "rec_ct": rec_ct.detach(), "mr_body": mr_body, "ct_body": ct_body}
        return total, {name: value.detach() for name, value in terms.items()}, cache

    def paired_terms(self, mr_pair: Tensor, ct_pair: Tensor) -> dict[str, Tensor]:
        """lambda_pair * |G(mr_p) - ct_p|_1, or with model.register its registered form."""
        fake_ct = self.G(mr_pair)
        if self.registration is None:
            return {"pair_l1": self.lambda_pair * l1_loss(fake_ct.float(), ct_pair.float())}
        terms, _, _ = self.registration(fake_ct, ct_pair)
        return {f"pair_{name}": value for name, value in terms.items()}

    def discriminator_loss(self, batch: dict[str, Tensor], cache: dict) -> tuple[Tensor, dict[str, Tensor]]:
        set_requires_grad([self.D_ct, self.D_mr], True)
        mr_body, ct_body = self.bodies(batch)
        if not self.body_masked:
            fake_ct, fake_ct_body = self.pool_ct.query(cache["fake_ct"]), None
            fake_mr, fake_mr_body = self.pool_mr.query(cache["fake_mr"]), None
        else:  # a pooled fake keeps its source's body mask as an extra channel
            fake_ct, fake_ct_body = self._query(self.pool_ct, cache["fake_ct"], cache["mr_body"])
            fake_mr, fake_mr_body = self._query(self.pool_mr, cache["fake_mr"], cache["ct_body"])
        terms = (self._judge(self.D_ct, "ct", batch["ct"], fake_ct, ct_body, fake_ct_body)
                 | self._judge(self.D_mr, "mr", batch["mr"], fake_mr, mr_body, fake_mr_body))
        loss = terms["D_ct"] + terms["D_mr"]
        if self.r1_gamma:
            loss = loss + terms["R1_ct"] + terms["R1_mr"]
        return loss, {name: value.detach() for name, value in terms.items()}

    def _judge(self, D: nn.Module, domain: str, real: Tensor, fake: Tensor, real_body: Tensor | None,
               fake_body: Tensor | None) -> dict[str, Tensor]:
        """D_<domain>: 0.5 * (L_GAN(D(real), real) + L_GAN(D(fake), fake)); R1_<domain>:
        0.5 * gamma / 2 * E|grad D(real)|^2 with model.r1_gamma. The health check reads D_* as the
        GAN terms alone."""
        loss, r1 = discriminator_terms(self.gan, D, real, fake, real_body, fake_body, self.r1_gamma)
        return {f"D_{domain}": loss} | ({f"R1_{domain}": r1} if r1 is not None else {})

    def bodies(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None]:
        """(MR body, CT body) masks of the batch when body-masked, else (None, None)."""
        if not self.body_masked:
            return None, None
        try:
            return batch["mr_body"], batch["ct_body"]
        except KeyError:
            raise ValueError("model.body_masked needs batches with mr_body and ct_body masks") from None

    @staticmethod
    def _query(pool: ImagePool, fake: Tensor, body: Tensor) -> tuple[Tensor, Tensor]:
        stored = pool.query(torch.cat([fake, body.to(fake.dtype)], dim=1))
        return stored[:, :fake.shape[1]], stored[:, fake.shape[1]:]

    def samples(self, cache: dict, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Centre slices (N, 1, H, W) for a sample grid."""
        images = {"real_mr": batch["mr"], "fake_ct": cache["fake_ct"], "rec_mr": cache["rec_mr"],
                  "real_ct": batch["ct"], "fake_mr": cache["fake_mr"], "rec_ct": cache["rec_ct"]}
        return {name: centre_channel(image.detach()) for name, image in images.items()}

    def pools_state_dict(self) -> dict[str, Tensor]:
        return {f"{name}.{key}": value for name, pool in (("ct", self.pool_ct), ("mr", self.pool_mr))
                for key, value in pool.state_dict().items()}

    def load_pools_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, pool in (("ct", self.pool_ct), ("mr", self.pool_mr)):
            pool.load_state_dict({key: state[f"{name}.{key}"] for key in ("images", "rng_state")})
