"""The training state on disk, for exact resume: weights, optimisers, schedulers, image pools
and RNG states as one nested structure, split by :func:`pack` into a tensor dictionary
(safetensors) and a JSON skeleton that refers to those tensors by name, so resuming restores
every bit. Nothing here ever unpickles. Trained generators are synthct.models.saved's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthct import __version__
from synthct.errors import SynthctError
from synthct.io.atomic import atomic_write_text
from synthct.models.saved import (load_verified, read_json, remove_stale_temporaries, save_tensors, sha256_of,
                                  write_failed)

STATE_FORMAT = "synthct-train-state"


def pack(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """JSON skeleton of ``obj`` with every tensor / ndarray moved into ``tensors`` by name.

    Non-string dict keys (optimizer states are keyed by int) and tuples are tagged so
    :func:`unpack` returns exactly the structure that went in.
    """
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, np.ndarray):
        # safetensors has no uint32; widen losslessly and remember the dtype.
        tensors[prefix] = torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32 else obj.copy())
        return {"__ndarray__": prefix, "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") for k in obj):
            return {k: pack(v, tensors, f"{prefix}.{k}" if prefix else k) for k, v in obj.items()}
        return {"__items__": [[k, pack(v, tensors, f"{prefix}.{i}")] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [pack(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [pack(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} at '{prefix}' in a checkpoint")


def unpack(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__ndarray__" in skeleton:
            return tensors[skeleton["__ndarray__"]].numpy().astype(skeleton["dtype"])
        if "__items__" in skeleton:
            return {(tuple(k) if isinstance(k, list) else k): unpack(v, tensors) for k, v in skeleton["__items__"]}
        if "__tuple__" in skeleton:
            return tuple(unpack(v, tensors) for v in skeleton["__tuple__"])
        return {k: unpack(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unpack(v, tensors) for v in skeleton]
    return skeleton


def _state_paths(folder: Path, name: str) -> tuple[Path, Path]:
    return folder / f"{name}.safetensors", folder / f"{name}.json"


def save_state(folder: Path, state: dict) -> None:
    """Save the full training state as ``folder/state.{safetensors,json}``.

    The new state is written completely as ``state.next.*`` first; only then is the current
    one renamed to ``state.prev.*`` and the new one into place. A crash or a failing disk at
    any point leaves at least one complete, checksummed state that :func:`load_state` finds.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_failed(exc, folder) from None
    tensors: dict[str, torch.Tensor] = {}
    skeleton = pack(state, tensors)
    next_w, next_j = _state_paths(folder, "state.next")
    digest = save_tensors(tensors, next_w)
    remove_stale_temporaries(next_j)
    try:
        atomic_write_text(next_j, json.dumps({"format": STATE_FORMAT, "synthct_version": __version__,
                                              "sha256": digest, "state": skeleton}) + "\n")
        cur_w, cur_j = _state_paths(folder, "state")
        prev_w, prev_j = _state_paths(folder, "state.prev")
        if cur_j.is_file() and cur_w.is_file():
            os.replace(cur_w, prev_w)
            os.replace(cur_j, prev_j)
        os.replace(next_w, cur_w)
        os.replace(next_j, cur_j)
    except OSError as exc:
        raise write_failed(exc, folder) from None


STATE_NAMES = ("state", "state.next", "state.prev")


def _state_sidecar(folder: Path, name: str) -> dict:
    info = read_json(_state_paths(folder, name)[1], "training state")
    if info.get("format") != STATE_FORMAT:
        raise SynthctError("not a synthct training state", _state_paths(folder, name)[1])
    return info


def _state_step(info: dict) -> int:
    state = info.get("state")
    step = state.get("step") if isinstance(state, dict) else None
    return step if isinstance(step, int) else -1


def has_state(folder: Path) -> bool:
    return any(_state_paths(Path(folder), n)[1].is_file() for n in STATE_NAMES)


def load_state(folder: Path) -> tuple[dict, str]:
    """Load the newest complete training state; returns (state, which) with which the sidecar
    used: state | state.next | state.prev. Raises the first problem found if none is usable.

    A crash can cut :func:`save_state`'s renames anywhere: the newest complete state may then be
    ``state.next`` (written, not yet rotated), or its sidecar may sit beside weights that have
    already been renamed. So the sidecars are tried newest step first, and one whose own weights
    are missing or do not match may take any other weights file with exactly its checksum.
    """
    folder = Path(folder)
    first_error: SynthctError | None = None
    sidecars: list[tuple[int, int, str, dict]] = []
    for order, name in enumerate(STATE_NAMES):
        if not _state_paths(folder, name)[1].is_file():
            continue
        try:
            info = _state_sidecar(folder, name)
        except SynthctError as exc:
            first_error = first_error or exc
            continue
        sidecars.append((-_state_step(info), order, name, info))
    for _, _, name, info in sorted(sidecars, key=lambda c: c[:2]):
        own = _state_paths(folder, name)[0]
        try:
            return unpack(info["state"], load_verified(own, info.get("sha256"))), name
        except SynthctError as exc:
            first_error = first_error or exc
        for other in STATE_NAMES:
            weights = _state_paths(folder, other)[0]
            if weights != own and weights.is_file() and sha256_of(weights) == info.get("sha256"):
                try:
                    return unpack(info["state"], load_verified(weights, info.get("sha256"))), name
                except SynthctError:
                    continue
    raise first_error or SynthctError("no training state to resume from (checkpoints/state.json missing)", folder)
