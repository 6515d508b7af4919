"""Translating a slice in overlapping tiles blended with a raised-cosine window, without seams.

Tiles overlap by a quarter of their size; the outer quarter of every overlap gets zero weight,
so pixels near a tile's artificial border (which see its padding) never reach the output and a
network with a receptive field under that margin gives exactly the untiled result. Generators
with instance norm see per-tile statistics, which large tiles keep close to the whole slice's;
the smooth blend hides what difference remains.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# The smallest tile whose blended overlap (a quarter, at least 8 pixels) leaves a step between tiles.
MIN_TILE = 16


def raised_cosine_ramp(overlap: int) -> np.ndarray:
    """Blend weights over ``overlap`` pixels from a tile edge inward: 0 for the outer quarter
    (the pixels that see the tile's border padding), then a raised cosine up to 1."""
    margin = overlap // 4
    d = np.arange(overlap, dtype=np.float64)
    r = np.clip((d - margin + 0.5) / max(overlap - 2 * margin, 1), 0.0, 1.0)
    return (0.5 - 0.5 * np.cos(np.pi * r)).astype(np.float32)


def _tile_starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def _axis_window(length: int, start: int, tile: int, overlap: int) -> np.ndarray:
    w = np.ones(min(tile, length), np.float32)
    ramp = raised_cosine_ramp(overlap)
    if start > 0:  # a neighbouring tile covers the low side
        w[:overlap] = np.minimum(w[:overlap], ramp)
    if start + tile < length:
        w[-overlap:] = np.minimum(w[-overlap:], ramp[::-1])
    return w


def run_tiled(batch: np.ndarray, runner: Callable[[np.ndarray], np.ndarray], tile: int) -> np.ndarray:
    """``runner`` over overlapping ``tile`` x ``tile`` tiles of ``batch`` (N, C, H, W), blended
    with raised-cosine weights normalised by their sum. ``batch`` and ``tile`` are already
    multiples of the network's stride."""
    h, w = batch.shape[-2:]
    overlap = max(8, tile // 4)
    step = tile - overlap
    acc: np.ndarray | None = None
    weight = np.zeros((h, w), np.float32)
    for y0 in _tile_starts(h, tile, step):
        wy = _axis_window(h, y0, tile, overlap)
        for x0 in _tile_starts(w, tile, step):
            wx = _axis_window(w, x0, tile, overlap)
            piece = runner(np.ascontiguousarray(batch[..., y0:y0 + tile, x0:x0 + tile]))
            if acc is None:
                acc = np.zeros((*piece.shape[:2], h, w), np.float32)
            win = wy[:, None] * wx[None, :]
            acc[..., y0:y0 + tile, x0:x0 + tile] += piece * win
            weight[y0:y0 + tile, x0:x0 + tile] += win
    return acc / weight
