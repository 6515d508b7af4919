"""Training slices: every volume is decoded, normalised and resized once, then served from a cache.

The cache is one float32 array per modality of shape (N, H, W) holding each volume's slices
along ``data.axis`` (in memory, or a ``np.memmap`` file with ``data.cache: mmap``); an item
only gathers rows of it and augments them, so epochs after the first never touch the files.

2.5D (``data.slices = k``): an item is the k neighbouring slices of the same volume as
channels, centred on the item's slice. Beyond the first/last slice of a volume the edge slice
is repeated (slice 0 with k=3 gives slices [0, 0, 1]).

Augmentation depends only on (seed, epoch, index), so a resumed run sees the same batches.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from synthct.data.intensity import CTWindow, EightBit, MRPercentile, is_eight_bit, mapping_for
from synthct.data.mask import body_mask
from synthct.errors import SynthctError
from synthct.io.image import read_image

RESIZE_MODES = ("fit", "crop", "none")
CACHE_MODES = ("memory", "mmap")
INTENSITY_MODES = ("auto", "hu", "8bit")


def fit_layout(shape_hw: tuple[int, int], spacing_hw: tuple[float, float], size: int) -> tuple[int, int, int, int]:
    """``fit`` resizing of an H x W slice: (new_h, new_w, pad_top, pad_left) on a size x size canvas.

    The longest physical side becomes ``size`` pixels, keeping the aspect ratio in mm, so
    anisotropic pixels come out square. The translator uses this to undo the resizing.
    """
    h_mm, w_mm = shape_hw[0] * spacing_hw[0], shape_hw[1] * spacing_hw[1]
    scale = size / max(h_mm, w_mm)
    new_h = min(size, max(1, round(h_mm * scale)))
    new_w = min(size, max(1, round(w_mm * scale)))
    return new_h, new_w, (size - new_h) // 2, (size - new_w) // 2


def fit_to_square(slices: torch.Tensor, size: int, spacing_hw=(1.0, 1.0)) -> torch.Tensor:
    """(N, H, W) slices in [-1, 1] -> (N, size, size): bilinear (antialiased) resize, padded with -1."""
    new_h, new_w, top, left = fit_layout(tuple(slices.shape[-2:]), spacing_hw, size)
    resized = F.interpolate(slices[:, None], size=(new_h, new_w), mode="bilinear", antialias=True,
                            align_corners=False)[:, 0]
    out = torch.full((slices.shape[0], size, size), -1.0, dtype=slices.dtype)
    out[:, top:top + new_h, left:left + new_w] = resized.clamp_(-1.0, 1.0)
    return out


def center_to_square(slices: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) -> (N, size, size) at native resolution: centre crop, or pad with -1."""
    return _pad_to(_center_crop(slices, size, size), size, size)


def _center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    top = max(0, (x.shape[-2] - h) // 2)
    left = max(0, (x.shape[-1] - w) // 2)
    return x[..., top:top + h, left:left + w]


def _pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pad (centred) with -1 up to at least h x w."""
    dh, dw = max(0, h - x.shape[-2]), max(0, w - x.shape[-1])
    if dh == 0 and dw == 0:
        return x
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), value=-1.0)


class _SliceStore:
    """Rows of one modality: appended volume by volume, then one (N, H, W) float32 array."""

    def __init__(self, canvas: tuple[int, int] | None, path: Path | None):
        self.canvas = canvas  # None: known only when every volume is in (crop mode)
        self.path = path
        self.pending: list[torch.Tensor] = []
        self.count = 0
        self._file = open(path, "wb") if path is not None and canvas is not None else None
        self.data: torch.Tensor | np.memmap | None = None

    def append(self, slices: torch.Tensor) -> int:
        first = self.count
        self.count += slices.shape[0]
        if self._file is not None:
            self._file.write(slices.contiguous().numpy().astype(np.float32, copy=False).tobytes())
        else:
            self.pending.append(slices)
        return first

    def finish(self) -> None:
        if self.canvas is None:
            self.canvas = (max(s.shape[-2] for s in self.pending), max(s.shape[-1] for s in self.pending))
            self.pending = [_pad_to(s, *self.canvas) for s in self.pending]
        if self.path is None:
            self.data = torch.cat(self.pending) if len(self.pending) > 1 else self.pending[0]
        else:
            if self._file is None:
                with open(self.path, "wb") as fh:
                    for s in self.pending:
                        fh.write(s.contiguous().numpy().astype(np.float32, copy=False).tobytes())
            else:
                self._file.close()
                self._file = None
            self.data = self._open_memmap()
        self.pending = []

    def _open_memmap(self) -> np.memmap:
        return np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.count, *self.canvas))

    def gather(self, rows: np.ndarray) -> torch.Tensor:
        if isinstance(self.data, torch.Tensor):
            return self.data[torch.from_numpy(rows)]
        return torch.from_numpy(np.array(self.data[rows]))

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.path is not None:  # workers reopen the file instead of copying it
            state["data"] = None
        state["_file"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.path is not None and self.data is None and self.count:
            self.data = self._open_memmap()


class SliceDataset(Dataset):
    """2D (or 2.5D) slices of MR and CT volumes, normalised to [-1, 1] and cached.

    ``__getitem__(i)`` returns ``{"mr": (k, S, S), "ct": (k, S, S)}`` float32 tensors, and with
    ``body_masks`` also ``"mr_body"`` and ``"ct_body"``: each image's body mask (1 inside, 0
    outside; float32, resized and augmented with its image). Unpaired,
    item i takes MR slice ``i mod n_mr`` and a CT partner drawn by a permutation that
    :meth:`set_epoch` redraws; paired, MR and CT slice i are the same slice of a case and get
    identical augmentation.
    """

    def __init__(self, sources, cfg, paired: bool = False, seed: int = 0, cache_dir: Path | None = None,
                 body_masks: bool = False):
        self.cfg = cfg
        self.body_masks = bool(body_masks)
        self.paired = bool(paired)
        self.seed = int(seed)
        self.size = int(cfg.size)
        self.k = int(cfg.slices)
        self._check_config(cfg, cache_dir)
        if self.paired and len(sources.mr) != len(sources.ct):
            raise SynthctError(f"paired data needs as many MR as CT volumes, found {len(sources.mr)} MR "
                               f"and {len(sources.ct)} CT")
        canvas = None if cfg.resize == "crop" else (self.size, self.size)
        cache_dir = Path(cache_dir) if cfg.cache == "mmap" else None
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
        stores = ("mr", "ct", "mr_body", "ct_body") if self.body_masks else ("mr", "ct")
        self._stores = {m: _SliceStore(canvas, None if cache_dir is None else cache_dir / f"slices_{m}.f32")
                        for m in stores}
        self._rows: dict[str, list[np.ndarray]] = {"mr": [], "ct": []}
        self._mr_bounds: list[tuple[float, float]] = []
        self.intensity_mode: str | None = None if cfg.intensity == "auto" else cfg.intensity
        masks = list(sources.masks) if sources.masks else [None] * len(sources.ct)

        if self.paired:
            for mr_path, ct_path, mask_path in zip(sources.mr, sources.ct, masks):
                ct_vol, ct_mask, ct_fraction = self._load(ct_path, "ct", mask_path)
                mr_vol, mr_mask, mr_fraction = self._load(mr_path, "mr", mask_path, ct_mask if mask_path else None)
                if mr_vol.array.shape != ct_vol.array.shape:
                    raise SynthctError(f"paired MR has shape {mr_vol.array.shape} but its CT {ct_path} has "
                                       f"{ct_vol.array.shape}", mr_path)
                keep = np.flatnonzero(np.minimum(mr_fraction, ct_fraction) >= cfg.min_body_fraction)
                self._add(ct_vol, "ct", keep, ct_mask)
                self._add(mr_vol, "mr", keep, mr_mask)
        else:
            for modality, paths, modality_masks in (("ct", sources.ct, masks), ("mr", sources.mr, [None] * len(sources.mr))):
                for path, mask_path in zip(paths, modality_masks):
                    vol, mask, fraction = self._load(path, modality, mask_path)
                    self._add(vol, modality, np.flatnonzero(fraction >= cfg.min_body_fraction), mask)
        for modality, paths in (("mr", sources.mr), ("ct", sources.ct)):
            if not self._rows[modality]:
                raise SynthctError(f"no {modality.upper()} slice has a body fraction of at least "
                                   f"{cfg.min_body_fraction} (data.min_body_fraction)", Path(paths[0]).parent)
            self._stores[modality].finish()
            if self.body_masks:
                self._stores[f"{modality}_body"].finish()
        self._items = {m: np.concatenate(self._rows[m]) for m in ("mr", "ct")}
        self.n_mr, self.n_ct = len(self._items["mr"]), len(self._items["ct"])
        self.epoch = 0
        self.set_epoch(0)

    @staticmethod
    def _check_config(cfg, cache_dir) -> None:
        if cfg.slices < 1 or cfg.slices % 2 == 0:
            raise SynthctError(f"data.slices must be an odd number >= 1, got {cfg.slices}")
        if cfg.resize not in RESIZE_MODES:
            raise SynthctError(f"data.resize must be one of {', '.join(RESIZE_MODES)}, got '{cfg.resize}'")
        if cfg.cache not in CACHE_MODES:
            raise SynthctError(f"data.cache must be one of {', '.join(CACHE_MODES)}, got '{cfg.cache}'")
        if cfg.intensity not in INTENSITY_MODES:
            raise SynthctError(f"data.intensity must be one of {', '.join(INTENSITY_MODES)}, got '{cfg.intensity}'")
        if cfg.axis not in (0, 1, 2):
            raise SynthctError(f"data.axis must be 0, 1 or 2, got {cfg.axis}")
        if cfg.size < 8:
            raise SynthctError(f"data.size must be at least 8, got {cfg.size}")
        if cfg.cache == "mmap" and cache_dir is None:
            raise SynthctError("data.cache=mmap needs a cache folder (the run folder)")

    def _load(self, path, modality: str, mask_path=None, given_mask=None):
        """Read, check the intensity mode, normalise. Returns (volume in [-1, 1], body mask, body fraction per slice)."""
        vol = read_image(path)
        eight_bit_file = is_eight_bit(vol)
        if self.intensity_mode is None:  # auto: the first CT decides, the others must agree
            self.intensity_mode = "8bit" if eight_bit_file else "hu"
        if self.cfg.intensity == "auto" and eight_bit_file != (self.intensity_mode == "8bit"):
            kinds = ("8-bit (PNG/JPEG or uint8)", "HU/scanner-unit")
            found, expected = (kinds[0], kinds[1]) if eight_bit_file else (kinds[1], kinds[0])
            raise SynthctError(f"{found} image among {expected} images; convert them to one kind or set "
                               "data.intensity to 8bit or hu", path)
        eight_bit = self.intensity_mode == "8bit"
        if given_mask is not None:
            mask = given_mask
        elif mask_path is not None:
            mask = read_image(mask_path).array > 0.5
            if mask.shape != vol.array.shape:
                raise SynthctError(f"mask shape {mask.shape} differs from its image {vol.array.shape}", mask_path)
        else:
            mask = body_mask(vol.array, "8bit" if eight_bit else modality)
        mapping = mapping_for(modality, self.cfg, eight_bit)
        if isinstance(mapping, MRPercentile):
            mapping = mapping.fit(vol.array, mask)
            self._mr_bounds.append((mapping.lo, mapping.hi))
        normalised = vol.with_array(mapping.forward(vol.array))
        axis = 0 if vol.is_2d else self.cfg.axis
        fraction = mask.mean(axis=tuple(a for a in range(3) if a != axis))
        return normalised, mask, fraction

    def _add(self, vol, modality: str, keep: np.ndarray, mask: np.ndarray) -> None:
        """Cache the slices of ``vol`` (and of its body mask) that items and their 2.5D neighbours use."""
        if len(keep) == 0:
            return
        axis = 0 if vol.is_2d else self.cfg.axis
        count = np.moveaxis(vol.array, axis, 0).shape[0]
        half = self.k // 2
        start, stop = max(0, int(keep[0]) - half), min(count, int(keep[-1]) + half + 1)
        spacing_zyx = (vol.spacing[2], vol.spacing[1], vol.spacing[0])
        spacing_hw = tuple(s for a, s in enumerate(spacing_zyx) if a != axis)

        def span_of(array: np.ndarray) -> torch.Tensor:
            span = torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, axis, 0)[start:stop], dtype=np.float32))
            if self.cfg.resize == "fit":
                return fit_to_square(span, self.size, spacing_hw)
            if self.cfg.resize == "none":
                return center_to_square(span, self.size)
            return _pad_to(span, self.size, self.size)

        first_row = self._stores[modality].append(span_of(vol.array))
        if self.body_masks:
            self._stores[f"{modality}_body"].append(span_of(np.reshape(mask, vol.array.shape)))
        neighbours = np.clip(keep[:, None] + np.arange(-half, half + 1)[None, :], 0, count - 1)
        self._rows[modality].append(first_row + neighbours - start)

    @property
    def mappings(self) -> dict:
        """Intensity mappings of both modalities (to_dict form) for the generator sidecar.

        MR volumes are each fitted on their own; the MR entry holds the median fitted lo/hi of
        the training MRs, the scale synthetic MR is mapped back to.
        """
        if self.intensity_mode == "8bit":
            return {"mr": EightBit().to_dict(), "ct": EightBit().to_dict()}
        lo, hi = (float(np.median([b[i] for b in self._mr_bounds])) for i in (0, 1))
        return {"mr": MRPercentile(*self.cfg.mr_percentiles, lo=lo, hi=hi).to_dict(),
                "ct": CTWindow(*self.cfg.ct_window).to_dict()}

    def __len__(self) -> int:
        return self.n_mr if self.paired else max(self.n_mr, self.n_ct)

    def set_epoch(self, epoch: int) -> None:
        """Draw the unpaired CT partners of this epoch (deterministic for (seed, epoch))."""
        self.epoch = int(epoch)
        length = len(self)
        if self.paired:
            self._ct_partner = np.arange(length)
        else:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._ct_partner = rng.permutation(length) % self.n_ct

    def partners(self, index: int) -> tuple[int, int]:
        """(MR item, CT item) that dataset item ``index`` combines this epoch."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        return index % self.n_mr, int(self._ct_partner[index])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        mr_item, ct_item = self.partners(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        mr = self._stores["mr"].gather(self._items["mr"][mr_item])
        ct = self._stores["ct"].gather(self._items["ct"][ct_item])
        mr_params = self._draw(rng, mr.shape)
        ct_params = mr_params if self.paired else self._draw(rng, ct.shape)
        item = {"mr": self._augment(mr, mr_params), "ct": self._augment(ct, ct_params)}
        if self.body_masks:  # resizing and rotation interpolate the masks: threshold them again
            for modality, row, params in (("mr", mr_item, mr_params), ("ct", ct_item, ct_params)):
                body = self._stores[f"{modality}_body"].gather(self._items[modality][row])
                item[f"{modality}_body"] = (self._augment(body, params) > 0.5).float()
        return item

    def _draw(self, rng: np.random.Generator, shape) -> dict:
        cfg = self.cfg
        h, w = shape[-2:]
        return {
            "top": int(rng.integers(0, h - self.size + 1)) if cfg.resize == "crop" else 0,
            "left": int(rng.integers(0, w - self.size + 1)) if cfg.resize == "crop" else 0,
            "flip": bool(cfg.flip) and bool(rng.random() < 0.5),
            "angle": float(rng.uniform(-cfg.affine, cfg.affine)) if cfg.affine > 0 else 0.0,
            "scale": float(rng.uniform(1 - cfg.affine / 100, 1 + cfg.affine / 100)) if cfg.affine > 0 else 1.0,
        }

    def _augment(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        if self.cfg.resize == "crop":
            x = x[:, p["top"]:p["top"] + self.size, p["left"]:p["left"] + self.size]
        if p["flip"]:
            x = torch.flip(x, dims=(-1,))
        if p["angle"] != 0.0 or p["scale"] != 1.0:
            x = _rotate_scale(x, p["angle"], p["scale"])
        return x.contiguous()


@functools.lru_cache(maxsize=4)
def _identity_grid(h: int, w: int) -> torch.Tensor:
    """(H, W, 2) sampling grid of the identity in grid_sample's (x, y) coordinates."""
    theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    return F.affine_grid(theta, [1, 1, h, w], align_corners=False)[0]


def _rotate_scale(x: torch.Tensor, degrees: float, scale: float) -> torch.Tensor:
    """Rotate and scale (k, H, W) about the centre; uncovered pixels become -1 (air)."""
    a = np.deg2rad(degrees)
    c, s = np.cos(a) / scale, np.sin(a) / scale
    # The same as F.affine_grid, but reusing the identity grid keeps an item at a few ms.
    rotation = torch.tensor([[c, s], [-s, c]], dtype=x.dtype)
    grid = (_identity_grid(*x.shape[-2:]) @ rotation)[None]
    # grid_sample fills with 0, so sample x + 1 and shift back: the fill becomes -1.
    out = F.grid_sample(x[None] + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0] - 1.0
