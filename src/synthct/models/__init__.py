"""Networks and objectives. Every model (CycleGAN, Pix2Pix, CUT, RegGAN, Regression) is a
:class:`~synthct.models.base.TranslationModel`, the one interface the training engine uses.
Batches are {"mr": (N, C, H, W), "ct": (N, C, H, W)} in [-1, 1]."""

from __future__ import annotations

import dataclasses

from synthct.config import ModelConfig
from synthct.errors import SynthctError
from synthct.models.base import TranslationModel
from synthct.models.common import centre_channel, init_weights, set_requires_grad
from synthct.models.cut import CUT
from synthct.models.cyclegan import CycleGAN
from synthct.models.discriminator import PatchDiscriminator, receptive_field
from synthct.models.generators import ResnetGenerator, UnetGenerator
from synthct.models.losses import GAN_MODES, GANLoss, MINDLoss, NGFLoss, PatchNCELoss
from synthct.models.pix2pix import Pix2Pix
from synthct.models.pool import ImagePool
from synthct.models.reggan import RegGAN
from synthct.models.registration import RegistrationNet
from synthct.models.regression import Regression

MODELS: dict[str, type[TranslationModel]] = {"cyclegan": CycleGAN, "pix2pix": Pix2Pix, "cut": CUT,
                                              "reggan": RegGAN, "regression": Regression}


def model_class(name: str) -> type[TranslationModel]:
    _check_choice("name", name, tuple(MODELS))
    return MODELS[name]


def option_users(key: str) -> list[str]:
    """The models that read ModelConfig field ``key``."""
    return [name for name, cls in MODELS.items() if key in cls.options]


def _check_choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise SynthctError(f"model.{key}: unknown value '{value}' (choose {', '.join(choices)})")


def _check_options_used(cfg: ModelConfig) -> None:
    """Refuse an option switched on (away from its default, and not 0 / false) for a model that
    does not read it: it would be silently ignored."""
    defaults, used = ModelConfig(), model_class(cfg.name).options
    for f in dataclasses.fields(ModelConfig):
        value = getattr(cfg, f.name)
        if f.name == "name" or f.name in used or not value or value == getattr(defaults, f.name):
            continue
        users = option_users(f.name)
        raise SynthctError(f"model.{f.name}: only the {' and '.join(users)} model{'s have' if len(users) > 1 else ' has'} "
                           f"it, not {cfg.name}")


def check_model_config(cfg: ModelConfig) -> None:
    """Configuration mistakes as SynthctError, before anything is built or written."""
    _check_choice("name", cfg.name, tuple(MODELS))
    _check_choice("generator", cfg.generator, ("resnet", "unet"))
    _check_choice("gan_mode", cfg.gan_mode, GAN_MODES)
    _check_choice("struct_loss", cfg.struct_loss, ("mind", "ngf"))
    for key in ("ngf", "ndf", "blocks", "d_layers", "unet_downs"):
        if getattr(cfg, key) < 1:
            raise SynthctError(f"model.{key}: must be at least 1, got {getattr(cfg, key)}")
    for key in ("lambda_cycle", "lambda_identity", "lambda_l1", "lambda_struct", "lambda_nce", "lambda_corr",
                "lambda_smooth", "lambda_pair", "r1_gamma"):
        if getattr(cfg, key) < 0:
            raise SynthctError(f"model.{key}: must be 0 (off) or positive, got {getattr(cfg, key)}")
    if cfg.pool_size < 0:
        raise SynthctError(f"model.pool_size: must be 0 (off) or more, got {cfg.pool_size}")
    _check_options_used(cfg)


def build_model(cfg: ModelConfig, in_channels: int, out_channels: int) -> TranslationModel:
    """The model named by ``cfg.name``; in/out channels are the MR and CT channel counts (k for
    2.5D). Configuration mistakes become SynthctError."""
    check_model_config(cfg)
    try:
        return MODELS[cfg.name](cfg, in_channels, out_channels)
    except ValueError as exc:
        raise SynthctError(f"model: {exc}") from None


__all__ = [
    "CUT", "CycleGAN", "GANLoss", "ImagePool", "MINDLoss", "MODELS", "NGFLoss", "PatchDiscriminator",
    "PatchNCELoss", "Pix2Pix", "RegGAN", "RegistrationNet", "Regression", "ResnetGenerator", "TranslationModel", "UnetGenerator", "build_model",
    "centre_channel", "check_model_config", "init_weights", "model_class", "option_users", "receptive_field",
    "set_requires_grad",
]
