"""Semi-supervised training data: the unpaired slices, each item carrying one paired slice too.

``data.pairs`` names a folder of paired cases (the SynthRAD layout, or ``mr/`` and ``ct/``
folders whose files pair by name). The paired slices have their own deterministic order: item
``index`` of epoch ``e`` is the unpaired stream's position ``e * len + index``, and the paired
stream walks its slices in a permutation redrawn each time it has served them all. Everything
is a pure function of (seed, epoch, index), so a resumed run sees the same pairs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from synthct.data.layouts import Sources, collect_sources
from synthct.errors import SynthctError


def pair_sources(folder: str | Path) -> Sources:
    """The paired cases of ``folder``: mr/ + ct/ pairing by file name, or a SynthRAD layout."""
    from synthct.config import DataConfig

    folder = Path(folder)
    if not folder.is_dir():
        raise SynthctError("no such folder (data.pairs)", folder)
    sources = collect_sources(DataConfig(root=str(folder)), split="train")
    if not sources.paired:
        raise SynthctError("data.pairs needs paired cases: mr/ + ct/ folders or a SynthRAD layout", folder)
    return sources


class WithPairs(Dataset):
    """Items of ``unpaired`` plus ``mr_pair`` and ``ct_pair``: one slice of ``pairs`` (a paired
    SliceDataset) per item, in the paired stream's own order (module docstring)."""

    def __init__(self, unpaired, pairs, seed: int):
        if pairs.intensity_mode != unpaired.intensity_mode:
            raise SynthctError(f"the paired cases are {pairs.intensity_mode} images but the unpaired ones "
                               f"{unpaired.intensity_mode}; give both of one kind (data.pairs)")
        self.unpaired, self.pairs, self.seed = unpaired, pairs, int(seed)
        self.epoch = 0

    @property
    def mappings(self) -> dict:
        return self.unpaired.mappings

    @property
    def intensity_mode(self) -> str:
        return self.unpaired.intensity_mode

    def __len__(self) -> int:
        return len(self.unpaired)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.unpaired.set_epoch(epoch)

    def pair_of(self, index: int) -> tuple[int, int]:
        """(paired stream's epoch, paired item) that item ``index`` of this epoch carries."""
        pair_epoch, position = divmod(self.epoch * len(self) + index, len(self.pairs))
        order = np.random.default_rng([self.seed, pair_epoch, len(self.pairs)]).permutation(len(self.pairs))
        return pair_epoch, int(order[position])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.unpaired[index]
        pair_epoch, pair_index = self.pair_of(index)
        self.pairs.set_epoch(pair_epoch)  # the pair's augmentation follows the paired stream's epoch
        pair = self.pairs[pair_index]
        return item | {"mr_pair": pair["mr"], "ct_pair": pair["ct"]}
