"""Networks and objectives. Every model (CycleGAN, Pix2Pix, CUT) offers the interface the
training engine uses: generator_parameters(), discriminator_parameters(), generator_loss(batch),
discriminator_loss(batch, cache), generators(), samples(cache, batch), pools_state_dict() and
load_pools_state_dict(state). Batches are {"mr": (N, C, H, W), "ct": (N, C, H, W)} in [-1, 1]."""

from __future__ import annotations

from torch import nn

from synthct.config import ModelConfig
from synthct.errors import SynthctError
from synthct.models.common import centre_channel, init_weights, set_requires_grad
from synthct.models.cut import CUT
from synthct.models.cyclegan import CycleGAN
from synthct.models.discriminator import MultiScaleDiscriminator, PatchDiscriminator, receptive_field
from synthct.models.generators import ResnetGenerator, UnetGenerator
from synthct.models.layers import UPSAMPLERS
from synthct.models.losses import GAN_MODES, GANLoss, MINDLoss, NGFLoss, PatchNCELoss
from synthct.models.pix2pix import Pix2Pix
from synthct.models.pool import ImagePool

MODELS = {"cyclegan": CycleGAN, "pix2pix": Pix2Pix, "cut": CUT}


def _check_choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise SynthctError(f"model.{key}: unknown value '{value}' (choose {', '.join(choices)})")


def check_model_config(cfg: ModelConfig) -> None:
    """Configuration mistakes as SynthctError, before anything is built or written."""
    _check_choice("name", cfg.name, tuple(MODELS))
    _check_choice("generator", cfg.generator, ("resnet", "unet"))
    _check_choice("gan_mode", cfg.gan_mode, GAN_MODES)
    _check_choice("struct_loss", cfg.struct_loss, ("mind", "ngf"))
    _check_choice("warmup_target", cfg.warmup_target, ("restore", "inverted"))
    _check_choice("d_norm", cfg.d_norm, ("instance", "none"))
    _check_choice("upsample", cfg.upsample, tuple(UPSAMPLERS))
    if cfg.upsample != "transpose" and cfg.generator != "resnet":
        raise SynthctError(f"model.upsample: only the resnet generator has it, not {cfg.generator}")
    for key in ("ngf", "ndf", "blocks", "d_layers", "d_scales", "unet_downs"):
        if getattr(cfg, key) < 1:
            raise SynthctError(f"model.{key}: must be at least 1, got {getattr(cfg, key)}")
    for key in ("lambda_cycle", "lambda_identity", "lambda_l1", "lambda_struct", "lambda_nce", "lambda_source_fake",
                "cycle_noise"):
        if getattr(cfg, key) < 0:
            raise SynthctError(f"model.{key}: must be 0 (off) or positive, got {getattr(cfg, key)}")
    if cfg.pool_size < 0:
        raise SynthctError(f"model.pool_size: must be 0 (off) or more, got {cfg.pool_size}")
    cyclegan_only = {"body_masked": cfg.body_masked, "d_scales": cfg.d_scales > 1,
                     "lambda_source_fake": cfg.lambda_source_fake > 0, "cycle_noise": cfg.cycle_noise > 0}
    for key, used in cyclegan_only.items():
        if used and cfg.name != "cyclegan":
            raise SynthctError(f"model.{key}: only the cyclegan model has it, not {cfg.name}")


def build_model(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    """The model named by ``cfg.name``; in/out channels are the MR and CT channel counts (k for
    2.5D). Configuration mistakes become SynthctError."""
    check_model_config(cfg)
    try:
        return MODELS[cfg.name](cfg, in_channels, out_channels)
    except ValueError as exc:
        raise SynthctError(f"model: {exc}") from None


__all__ = [
    "CUT", "CycleGAN", "GANLoss", "ImagePool", "MINDLoss", "MultiScaleDiscriminator", "NGFLoss",
    "PatchDiscriminator", "PatchNCELoss", "Pix2Pix", "ResnetGenerator", "UnetGenerator", "build_model",
    "centre_channel", "check_model_config", "init_weights", "receptive_field", "set_requires_grad",
]
