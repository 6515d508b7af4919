"""Weights and training state on disk: safetensors for tensors, JSON for everything else.

Nothing here ever unpickles. A trained generator ships as ``<stem>.safetensors`` plus a
``<stem>.json`` sidecar that says how to rebuild the network and how to map intensities, and
holds the sha256 of the weights so a truncated or corrupted download is caught before use.

The full training state (weights, optimisers, schedulers, image pools, RNG states) is one nested
structure split by :func:`pack` into a tensor dictionary (safetensors) and a JSON skeleton that
refers to those tensors by name, so resuming restores every bit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from synthct import __version__
from synthct.errors import SynthctError
from synthct.io.atomic import atomic_path, atomic_write_text

GENERATOR_FORMAT = "synthct-generator"
GENERATOR_FORMAT_VERSION = 1
STATE_FORMAT = "synthct-train-state"
DIRECTIONS = ("mr2ct", "ct2mr")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".tar", ".bin")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_failed(exc: OSError, path: Path) -> SynthctError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return SynthctError(f"could not write checkpoint ({reason}); the previous checkpoint is kept", path)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` that a killed writer left behind (io.atomic names them
    ``.<name>.*.tmp``); one writer per run folder, so none of them is still being written."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> str:
    """Write ``tensors`` atomically; return the sha256 of the file written."""
    _remove_stale_temporaries(path)
    seen: set[int] = set()
    plain = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        # safetensors refuses tensors sharing memory; copy the (rare) aliases.
        if tensor.numel() and tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        if tensor.numel():
            seen.add(tensor.untyped_storage().data_ptr())
        plain[name] = tensor
    try:
        with atomic_path(path) as tmp:
            save_file(plain, str(tmp))
            digest = sha256_of(tmp)
    except OSError as exc:
        raise _write_failed(exc, path) from None
    return digest


def _looks_pickled(path: Path) -> bool:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    # Protocol-2+ pickles start with 0x80; torch.save writes a zip archive ("PK").
    return head[:1] == b"\x80" or head[:2] == b"PK"


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SynthctError(f"{what} not found", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise SynthctError(f"{what} is not valid JSON (corrupted or truncated)", path) from None
    if not isinstance(data, dict):
        raise SynthctError(f"{what} is not a JSON object", path)
    return data


def _load_verified(path: Path, expected_sha: str | None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SynthctError("weights file not found", path)
    if expected_sha is None or sha256_of(path) != expected_sha:
        raise SynthctError("checksum mismatch: the file is corrupted or truncated", path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        raise SynthctError("not a readable safetensors file (corrupted or truncated)", path) from None


# --------------------------------------------------------------------------- generators


def save_generator(module: torch.nn.Module, path_stem: Path, meta: dict) -> Path:
    """Write ``<stem>.safetensors`` and the ``<stem>.json`` sidecar; return the weights path.

    ``meta`` holds direction, architecture, mappings, step, ...; the format tag, version and
    checksum are filled in here. The sidecar is written last, so a sidecar always describes a
    complete weights file.
    """
    path_stem = Path(path_stem)
    weights = path_stem.with_name(path_stem.name + ".safetensors")
    sidecar = path_stem.with_name(path_stem.name + ".json")
    digest = _save_tensors(dict(module.state_dict()), weights)
    info = {"format": GENERATOR_FORMAT, "version": GENERATOR_FORMAT_VERSION, "synthct_version": __version__}
    info.update({k: v for k, v in meta.items() if k not in ("format", "version", "sha256")})
    info["sha256"] = digest
    _remove_stale_temporaries(sidecar)
    try:
        atomic_write_text(sidecar, json.dumps(info, indent=2) + "\n")
    except OSError as exc:
        raise _write_failed(exc, sidecar) from None
    return weights


def _resolve_generator(model_ref: str | Path, direction: str | None) -> tuple[Path, Path]:
    ref = Path(model_ref)
    if direction is not None and direction not in DIRECTIONS:
        raise SynthctError(f"unknown direction '{direction}' (use {' or '.join(DIRECTIONS)})")
    if ref.is_dir():
        wanted = direction or "mr2ct"
        weights = ref / f"generator_{wanted}.safetensors"
        if not weights.is_file():
            present = [d for d in DIRECTIONS if (ref / f"generator_{d}.safetensors").is_file()]
            if present:
                raise SynthctError(f"no {wanted} generator here: this model translates {present[0]} only", ref)
            pickles = sorted(p.name for p in ref.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
            if pickles:
                raise SynthctError(f"refusing to load pickled file: {pickles[0]} (synthct loads safetensors only)", ref)
            raise SynthctError("no synthct generator (generator_<direction>.safetensors) in this folder", ref)
        return weights, weights.with_suffix(".json")
    if not ref.exists():
        raise SynthctError("model not found", ref)
    if ref.suffix.lower() == ".json":
        return ref.with_suffix(".safetensors"), ref
    if ref.suffix.lower() == ".safetensors":
        return ref, ref.with_suffix(".json")
    if _looks_pickled(ref):
        raise SynthctError(f"refusing to load pickled file: {ref.name} (synthct loads safetensors only)", ref)
    raise SynthctError("not a synthct generator (expected a run folder, .safetensors or .json)", ref)


def generator_architecture(module: torch.nn.Module, kind: str, channels: int, ngf: int, blocks: int) -> dict:
    """The sidecar's "architecture" section for a generator built by models.generators."""
    arch = {"generator": kind, "in_channels": channels, "out_channels": channels, "ngf": ngf}
    if kind == "unet":
        arch["num_downs"] = int(module.num_downs)
    else:
        arch["blocks"] = blocks
        arch["upsample"] = module.upsample
    return arch


def build_generator_from_sidecar(meta: dict, where: Path) -> torch.nn.Module:
    """Rebuild the (untrained) generator network the sidecar describes."""
    from synthct.models import generators

    arch = meta.get("architecture")
    if not isinstance(arch, dict):
        raise SynthctError("sidecar has no 'architecture' section", where)
    try:
        return generators.build_generator(
            arch["generator"], int(arch["in_channels"]), int(arch["out_channels"]), ngf=int(arch["ngf"]),
            n_blocks=int(arch.get("blocks", 9)), unet_downs=int(arch.get("num_downs", 8)),
            upsample=str(arch.get("upsample", "transpose")))  # generators saved before the choice existed
    except (KeyError, TypeError, ValueError) as exc:
        raise SynthctError(f"sidecar architecture cannot be built ({exc})", where) from None


def load_generator(model_ref: str | Path, direction: str | None = None,
                   device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a trained generator (eval mode) and its sidecar from a run folder, weights or sidecar."""
    weights, sidecar = _resolve_generator(model_ref, direction)
    if not sidecar.is_file():
        raise SynthctError("sidecar JSON not found next to the weights (not a synthct generator?)", sidecar)
    meta = _read_json(sidecar, "generator sidecar")
    if meta.get("format") != GENERATOR_FORMAT:
        raise SynthctError("not a synthct generator (sidecar format is not 'synthct-generator')", sidecar)
    if int(meta.get("version", 0)) > GENERATOR_FORMAT_VERSION:
        raise SynthctError(f"generator format version {meta.get('version')} is newer than this synthct "
                           f"supports ({GENERATOR_FORMAT_VERSION}); upgrade synthct", sidecar)
    if direction is not None and meta.get("direction") != direction:
        raise SynthctError(f"this model translates {meta.get('direction')} only", sidecar)
    state = _load_verified(weights, meta.get("sha256"))
    module = build_generator_from_sidecar(meta, sidecar)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError:
        raise SynthctError("weights do not match the architecture in the sidecar", weights) from None
    return module.to(device).eval(), meta


# --------------------------------------------------------------------------- training state


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
        raise _write_failed(exc, folder) from None
    tensors: dict[str, torch.Tensor] = {}
    skeleton = pack(state, tensors)
    next_w, next_j = _state_paths(folder, "state.next")
    digest = _save_tensors(tensors, next_w)
    _remove_stale_temporaries(next_j)
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
        raise _write_failed(exc, folder) from None


STATE_NAMES = ("state", "state.next", "state.prev")


def _state_sidecar(folder: Path, name: str) -> dict:
    info = _read_json(_state_paths(folder, name)[1], "training state")
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
            return unpack(info["state"], _load_verified(own, info.get("sha256"))), name
        except SynthctError as exc:
            first_error = first_error or exc
        for other in STATE_NAMES:
            weights = _state_paths(folder, other)[0]
            if weights != own and weights.is_file() and sha256_of(weights) == info.get("sha256"):
                try:
                    return unpack(info["state"], _load_verified(weights, info.get("sha256"))), name
                except SynthctError:
                    continue
    raise first_error or SynthctError("no training state to resume from (checkpoints/state.json missing)", folder)
