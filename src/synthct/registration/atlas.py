"""Multi-atlas CT synthesis: CTs of other subjects registered onto an MR, the best k fused.

For each MR the candidate CTs are ranked cheaply first (Dice of the body outlines once their
centres of mass coincide), only the best few are registered (``register.register_ct``), the
``k`` with the highest mutual information are kept and fused by a voxel-wise median. The result
is a synthetic CT on the MR's grid: a registration-only baseline, and the CT half of pseudo pairs
(``synthct pair``).

Registrations run in a process pool, each on one SimpleITK thread and seeded, so the result
does not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from synthct.data.intensity import is_eight_bit
from synthct.data.mask import body_mask
from synthct.errors import SynthctError
from synthct.io.image import read_image
from synthct.io.volume import Volume
from synthct.registration.register import (Registered, body_region, mutual_information, register_ct, sitk_threads,
                                           to_image)

# Fill value outside a CT's field of view: air, in HU or on the 8-bit scale.
AIR = {"hu": -1000.0, "8bit": 0.0}


@dataclass
class Image:
    """A read image with what pairing needs of it."""

    volume: Volume
    mask: np.ndarray  # body mask, bool (z, y, x)
    kind: str  # "hu" or "8bit" (the rule training applies: 8-bit pictures or uint8 files)


@dataclass
class Outline:
    """A body mask with its geometry and its centre of mass (mm): what the pre-selection compares."""

    mask: sitk.Image
    centroid: np.ndarray


@dataclass
class Synthesis:
    """A fused synthetic CT on an MR's grid and where it came from."""

    array: np.ndarray  # (z, y, x) float32, HU (or 8-bit grey levels for 8-bit CTs)
    cts: list[str]  # the fused CTs, best first
    cts_mutual_information: list[float]  # each one's MI with the MR after registration
    mutual_information: float  # the fused CT's MI with the MR (body region, every voxel)
    body_dice: float  # Dice of the fused CT's body mask and the MR's
    registered: int  # candidates registered (any that failed to register are left out)


def image_of(vol: Volume, modality: str) -> Image:
    """``vol`` (``modality`` "mr" or "ct") with its body mask and intensity kind."""
    kind = "8bit" if is_eight_bit(vol) else "hu"
    mask = body_mask(vol.array, "8bit" if kind == "8bit" else modality)
    if not mask.any():
        raise SynthctError(f"no body found in this {modality.upper()} (every voxel is background)", vol.path)
    return Image(vol, mask, kind)


@lru_cache(maxsize=4)
def load(path: str, modality: str) -> Image:
    """:func:`image_of` the file at ``path``; cached, as a worker often registers one MR
    against several CTs in a row."""
    return image_of(read_image(path), modality)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else 0.0


def outline(image: Image) -> Outline:
    mask = sitk.Cast(to_image(image.volume, image.mask), sitk.sitkUInt8)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    return Outline(mask, np.array(stats.GetCentroid(1)))


def outline_dice(mr: Outline, ct: Outline) -> float:
    """Dice of two body masks once the CT's centre of mass is moved onto the MR's: the cheap
    pre-selection, which favours CTs of a similar size, shape and (for slices) level."""
    shift = sitk.TranslationTransform(mr.mask.GetDimension(), (ct.centroid - mr.centroid).tolist())
    moved = sitk.Resample(ct.mask, mr.mask, shift, sitk.sitkNearestNeighbor, 0)
    return dice(sitk.GetArrayViewFromImage(mr.mask) > 0, sitk.GetArrayViewFromImage(moved) > 0)


def preselect(mr: Outline, cts: dict[str, Outline], count: int) -> list[str]:
    """The ``count`` CTs of ``cts`` (path -> outline) whose body outline best matches the MR's."""
    if len(cts) <= count:
        return sorted(cts)
    scores = {path: outline_dice(mr, ct) for path, ct in cts.items()}
    return sorted(cts, key=lambda path: (-scores[path], path))[:count]


def register_onto(mr: Image, ct: Image, seed: int) -> Registered | str:
    """``ct`` registered onto ``mr``, or why that failed."""
    try:
        return register_ct(mr.volume, ct.volume, mr.mask, ct.mask, AIR[ct.kind], seed=seed)
    except RuntimeError as exc:  # ITK's own, e.g. every metric sample fell outside the CT
        return str(exc).strip().splitlines()[-1][:200]


def register_files(mr_path: str, ct_path: str, seed: int) -> Registered | str:
    """:func:`register_onto` for two files: one task of the process pool."""
    return register_onto(load(mr_path, "mr"), load(ct_path, "ct"), seed)


def fuse(mr: Image, registered: dict[str, Registered], kind: str, k: int) -> Synthesis:
    """The voxel-wise median of the ``k`` registered CTs (of intensity ``kind``) with the highest MI."""
    best = sorted(registered, key=lambda path: (-registered[path].mutual_information, path))[:k]
    fused = np.median(np.stack([registered[path].array for path in best]), axis=0).astype(np.float32)
    with sitk_threads(1):
        region = body_region(to_image(mr.volume, mr.mask))
        mi = mutual_information(to_image(mr.volume), to_image(mr.volume, fused), region)
    fused_body = body_mask(fused, "8bit" if kind == "8bit" else "ct")
    return Synthesis(fused, best, [registered[path].mutual_information for path in best], mi,
                     dice(fused_body, mr.mask), len(registered))


def _registrations(tasks: list[tuple[str, str]], seed: int, workers: int) -> Iterator[tuple[tuple[str, str], object]]:
    """(task, result of register_files) for every (mr, ct) task, in the order they finish."""
    if workers <= 1:
        for task in tasks:
            yield task, register_files(*task, seed)
        return
    # spawn, not fork: forking a process whose ITK thread pool has started can deadlock.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(register_files, *task, seed): task for task in tasks}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            for future in futures:
                future.cancel()


def synthesise(jobs: dict[str, list[str]], kind: str, k: int, seed: int = 0, workers: int = 1,
               on_registered: Callable[[], None] = lambda: None,
               on_failed: Callable[[str, str, str], None] = lambda mr, ct, why: None) -> Iterator[tuple[str, Synthesis]]:
    """Fuse a synthetic CT for every MR of ``jobs`` (MR path -> the CT paths, all of intensity
    ``kind``, to register onto it).

    Yields (MR path, Synthesis) as each MR's registrations complete. ``on_registered`` is called
    after every registration, ``on_failed(mr, ct, why)`` for one that failed.
    """
    remaining = {mr: len(cts) for mr, cts in jobs.items()}
    done: dict[str, dict[str, Registered]] = {mr: {} for mr in jobs}
    tasks = [(mr, ct) for mr, cts in jobs.items() for ct in cts]
    for (mr, ct), result in _registrations(tasks, seed, workers):
        on_registered()
        if isinstance(result, Registered):
            done[mr][ct] = result
        else:
            on_failed(mr, ct, result)
        remaining[mr] -= 1
        if remaining[mr] == 0:
            if not done[mr]:
                raise SynthctError("no candidate CT could be registered onto this MR", mr)
            yield mr, fuse(load(mr, "mr"), done.pop(mr), kind, k)


def atlas_synthesis(mr: Volume, ct_paths: list[str | Path], k: int = 3, candidates: int = 6,
                    seed: int = 0) -> Synthesis:
    """A synthetic CT for ``mr`` from the CTs of other subjects, with no network: the
    ``candidates`` CTs whose body outline matches best are registered onto the MR and the ``k``
    that fit best fused by a voxel-wise median (``Synthesis.array``, on the MR's grid)."""
    if not ct_paths:
        raise SynthctError("no candidate CTs to synthesise a CT from", mr.path or None)
    target = image_of(mr, "mr")
    cts = {str(path): load(str(path), "ct") for path in ct_paths}
    kinds = {ct.kind for ct in cts.values()}
    if len(kinds) > 1:
        raise SynthctError("the candidate CTs mix HU volumes and 8-bit pictures; give one kind")
    shortlist = preselect(outline(target), {path: outline(ct) for path, ct in cts.items()}, candidates)
    registered = {path: register_onto(target, cts[path], seed) for path in shortlist}
    registered = {path: result for path, result in registered.items() if isinstance(result, Registered)}
    if not registered:
        raise SynthctError("no candidate CT could be registered onto this MR", mr.path or None)
    return fuse(target, registered, kinds.pop(), k)
