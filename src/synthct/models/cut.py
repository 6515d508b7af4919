"""CUT: contrastive unpaired translation (Park et al. 2020), one-sided MR -> CT.

L = L_GAN(G, D_ct) + lambda_nce * L_PatchNCE(G, H, mr)  [+ lambda_nce * L_PatchNCE(G, H, ct) for
the identity term, averaged with the first; without it this is FastCUT].

PatchNCE compares encoder features of the translation with those of its source at the same
locations. The reference takes layers 0, 4, 8, 12, 16 of its ResNet layer list (input, both
downsampling convs, residual blocks 1 and 5); here the features are the outputs of c7s1, of both
downsampling steps, and of residual blocks 1 and 5 (or the last one in shallower generators).
The projection heads H (one 2-layer MLP per layer) are built eagerly and trained with G.
Like the reference, CUT keeps no image pool, so ``cfg.pool_size`` is ignored.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain

import torch
from torch import Tensor, nn

from synthct.config import ModelConfig
from synthct.models.base import DISCRIMINATOR_OPTIONS, GENERATOR_OPTIONS, TranslationModel
from synthct.models.common import centre_channel, init_weights, set_requires_grad
from synthct.models.discriminator import PatchDiscriminator
from synthct.models.generators import ResnetGenerator
from synthct.models.losses import GANLoss, PatchNCELoss
from synthct.models.shared import batched, discriminator_objective


class PatchSampleMLP(nn.Module):
    """H: for each feature layer, take ``num_patches`` random locations (the same for every image
    of the batch and, through ``patch_ids``, for source and translation), project each feature
    vector with Linear-ReLU-Linear and L2-normalise it. Returns (N, P, units) per layer."""

    def __init__(self, channels: Sequence[int], units: int = 256):
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(c, units), nn.ReLU(inplace=True), nn.Linear(units, units))
            for c in channels)

    def forward(self, feats: Sequence[Tensor], num_patches: int,
                patch_ids: Sequence[Tensor] | None = None) -> tuple[list[Tensor], list[Tensor]]:
        samples, ids = [], []
        for index, (feat, mlp) in enumerate(zip(feats, self.mlps)):
            locations = feat.flatten(2).transpose(1, 2)  # (N, H*W, C)
            if patch_ids is None:
                chosen = torch.randperm(locations.shape[1], device=feat.device)[:num_patches]
            else:
                chosen = patch_ids[index]
            projected = mlp(locations[:, chosen])
            samples.append(nn.functional.normalize(projected.float(), dim=-1))
            ids.append(chosen)
        return samples, ids


class CUT(TranslationModel):
    options = GENERATOR_OPTIONS + DISCRIMINATOR_OPTIONS + ("lambda_nce", "nce_idt")

    def __init__(self, cfg: ModelConfig, in_channels: int, out_channels: int,
                 num_patches: int = 256, temperature: float = 0.07):
        super().__init__()
        if cfg.generator != "resnet":
            raise ValueError(f"CUT needs the resnet generator (PatchNCE uses its encoder), got '{cfg.generator}'")
        if cfg.nce_idt and in_channels != out_channels:
            raise ValueError("the identity NCE term needs MR and CT with the same number of channels, "
                             f"got {in_channels} and {out_channels}")
        self.G = ResnetGenerator(in_channels, out_channels, ngf=cfg.ngf, n_blocks=cfg.blocks)
        self.nce_blocks = sorted({0, min(4, cfg.blocks - 1)})
        self.H = PatchSampleMLP(self.G.feature_channels(self.nce_blocks))
        self.D_ct = PatchDiscriminator(out_channels, cfg.ndf, cfg.d_layers)
        for net in (self.G, self.H, self.D_ct):
            init_weights(net, 0.02)
        self.gan = GANLoss(cfg.gan_mode)
        self.nce = PatchNCELoss(temperature)
        self.lambda_nce = cfg.lambda_nce
        self.nce_idt = cfg.nce_idt
        self.num_patches = num_patches

    def generators(self) -> dict[str, nn.Module]:
        return {"mr2ct": self.G}

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        return chain(self.G.parameters(), self.H.parameters())

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        return self.D_ct.parameters()

    def patch_nce(self, sources: Tensor, translations: Tensor) -> Tensor:
        """lambda_nce * PatchNCE per image (N,), averaged over the feature layers. The source
        features are keys, which get no gradient, so they are computed without a graph."""
        with torch.no_grad():
            keys, patch_ids = self.H(self.G.features(sources, self.nce_blocks), self.num_patches)
        queries, _ = self.H(self.G.features(translations, self.nce_blocks), self.num_patches, patch_ids)
        per_layer = [self.nce(q, k, reduction="none") for q, k in zip(queries, keys)]
        return self.lambda_nce * torch.stack(per_layer).mean(dim=0)

    def generator_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], dict]:
        real_mr, real_ct = batch["mr"], batch["ct"]
        set_requires_grad(self.D_ct, False)
        cache = {}
        if self.nce_idt:
            fake_ct, idt_ct = batched(self.G, real_mr, real_ct)
            nce_mr, nce_ct = self.patch_nce(torch.cat([real_mr, real_ct]),
                                            torch.cat([fake_ct, idt_ct])).split([len(real_mr), len(real_ct)])
            terms = {"G_gan": self.gan(self.D_ct(fake_ct), True, for_discriminator=False),
                     "nce": 0.5 * nce_mr.mean(), "nce_idt": 0.5 * nce_ct.mean()}
            cache["idt_ct"] = idt_ct.detach()
        else:
            fake_ct = self.G(real_mr)
            terms = {"G_gan": self.gan(self.D_ct(fake_ct), True, for_discriminator=False),
                     "nce": self.patch_nce(real_mr, fake_ct).mean()}
        cache["fake_ct"] = fake_ct.detach()
        total = sum(terms.values())
        return total, {name: value.detach() for name, value in terms.items()}, cache

    def discriminator_loss(self, batch: dict[str, Tensor], cache: dict) -> tuple[Tensor, dict[str, Tensor]]:
        set_requires_grad(self.D_ct, True)
        loss = discriminator_objective(self.gan, self.D_ct, batch["ct"], cache["fake_ct"])
        return loss, {"D_ct": loss.detach()}

    def samples(self, cache: dict, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        images = {"real_mr": batch["mr"], "fake_ct": cache["fake_ct"], "real_ct": batch["ct"]}
        if "idt_ct" in cache:
            images["idt_ct"] = cache["idt_ct"]
        return {name: centre_channel(image.detach()) for name, image in images.items()}
