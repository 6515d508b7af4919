"""The interface between a model and the training engine.

A model owns its networks and its whole objective; the engine (synthct.engine.trainer) only
optimises it, through :class:`TranslationModel` alone. One training step is::

    loss_G, terms, cache = model.generator_loss(batch)      # backward into generator_parameters()
    loss_D, terms_D = model.discriminator_loss(batch, cache)  # backward into discriminator_parameters()
    Adam on the generators, Adam on the discriminators

``batch`` is {"mr": (N, C, H, W), "ct": (N, C, H, W)} in [-1, 1] (plus "mr_body" / "ct_body"
masks with model.body_masked); ``cache`` carries what the discriminator step and the sample
grids need from the generator step (detached translations). A model without discriminators
(a supervised regression, say) yields no discriminator parameters, and the engine then skips
the discriminator step. Extra trained networks (CUT's projection heads, a registration network)
belong to generator_parameters(); only :meth:`generators` are exported for translation.

Each model also says what it needs of the configuration and data: ``options`` names the
ModelConfig fields it reads (check_model_config refuses the others when set), and
``needs_pairs`` that it trains on co-registered MR/CT pairs, ``uses_pairs`` that it reads extra
paired slices beside unpaired data (``data.pairs``; the batch then holds "mr_pair" and "ct_pair").
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import ClassVar

from torch import Tensor, nn

# Option groups models compose their ``options`` from.
GENERATOR_OPTIONS = ("generator", "ngf", "blocks", "unet_downs")
# pool_size belongs to every GAN's options since the reference treats the history buffer as a
# general training option that pix2pix and CUT leave unused.
DISCRIMINATOR_OPTIONS = ("ndf", "d_layers", "gan_mode", "pool_size")


class TranslationModel(nn.Module, abc.ABC):
    """An MR <-> CT translation model as the training engine sees it (see module docstring)."""

    options: ClassVar[tuple[str, ...]] = ()  # ModelConfig fields this model reads ("name" aside)
    needs_pairs: ClassVar[bool] = False  # trains on co-registered MR/CT pairs only
    uses_pairs: ClassVar[bool] = False  # reads extra paired slices (batch "mr_pair", "ct_pair") with data.pairs

    @abc.abstractmethod
    def generators(self) -> dict[str, nn.Module]:
        """The translators, by direction ("mr2ct", "ct2mr"): what training exports."""

    @abc.abstractmethod
    def generator_parameters(self) -> Iterator[nn.Parameter]:
        """Everything the generator optimiser trains."""

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """Everything the discriminator optimiser trains; none for a model without one."""
        return iter(())

    @abc.abstractmethod
    def generator_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], dict]:
        """(total loss, detached named terms for the log, cache for the discriminator step)."""

    def discriminator_loss(self, batch: dict[str, Tensor], cache: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """(total loss, detached named terms); called only when there are discriminator parameters."""
        raise NotImplementedError(f"{type(self).__name__} has no discriminator")

    @abc.abstractmethod
    def samples(self, cache: dict, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Named centre slices (N, 1, H, W) for a training sample grid."""

    @property
    def chance_means_failure(self) -> bool:
        """Whether discriminator losses at chance mean a failed game, the training health check's
        discriminator signal. Not for a model trained on pairs: an L1 term ties its generator to
        the real CT, and discriminators at chance no longer say the translation is wrong."""
        return not self.needs_pairs

    def pools_state_dict(self) -> dict[str, Tensor]:
        """State outside the networks that exact resume needs (CycleGAN's image pools)."""
        return {}

    def load_pools_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no image pool, got pool state {sorted(state)}")
