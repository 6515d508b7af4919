"""The supervised regression baseline: the generator trained with L1 to the paired CT alone,
L = |G(mr) - ct|_1, no adversary (the SynthRAD2025 MR -> CT leaders are of this kind). Its
loss carries no lambda: with one term, a weight only rescales the learning rate."""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn
from torch.nn.functional import l1_loss

from synthct.config import ModelConfig
from synthct.models.base import GENERATOR_OPTIONS, TranslationModel
from synthct.models.common import centre_channel, init_weights
from synthct.models.generators import build_generator


class Regression(TranslationModel):
    options = GENERATOR_OPTIONS
    needs_pairs = True

    def __init__(self, cfg: ModelConfig, in_channels: int, out_channels: int):
        super().__init__()
        self.G = build_generator(cfg.generator, in_channels, out_channels, cfg.ngf, cfg.blocks, cfg.unet_downs,
                                 unet_dropout=False)
        init_weights(self.G, 0.02)

    def generators(self) -> dict[str, nn.Module]:
        return {"mr2ct": self.G}

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        return self.G.parameters()

    def generator_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], dict]:
        fake_ct = self.G(batch["mr"])
        l1 = l1_loss(fake_ct.float(), batch["ct"].float())
        return l1, {"l1": l1.detach()}, {"fake_ct": fake_ct.detach()}

    def samples(self, cache: dict, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        images = {"real_mr": batch["mr"], "fake_ct": cache["fake_ct"], "real_ct": batch["ct"]}
        return {name: centre_channel(image.detach()) for name, image in images.items()}
