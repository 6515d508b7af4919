"""Saved generators: what training exports and translation loads, in one place.

A trained generator ships as ``<stem>.safetensors`` plus a ``<stem>.json`` sidecar that says how
to rebuild the network (its architecture) and how to map intensities, records the run's config,
step and epoch, and holds the sha256 of the weights so a truncated or corrupted download is
caught before use. Nothing here ever unpickles. The helpers for checksummed safetensors files
are shared with the engine's training state (synthct.engine.checkpoint).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from synthct import __version__
from synthct.config import RunConfig, config_to_dict, drop_removed_options
from synthct.errors import SynthctError
from synthct.io.atomic import atomic_path, atomic_write_text
from synthct.models.generators import build_generator

GENERATOR_FORMAT = "synthct-generator"
GENERATOR_FORMAT_VERSION = 1
DIRECTIONS = ("mr2ct", "ct2mr")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".tar", ".bin")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_failed(exc: OSError, path: Path) -> SynthctError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return SynthctError(f"could not write checkpoint ({reason}); the previous checkpoint is kept", path)


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` that a killed writer left behind (io.atomic names them
    ``.<name>.*.tmp``); one writer per run folder, so none of them is still being written."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> str:
    """Write ``tensors`` atomically; return the sha256 of the file written."""
    remove_stale_temporaries(path)
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
        raise write_failed(exc, path) from None
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


def read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SynthctError(f"{what} not found", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise SynthctError(f"{what} is not valid JSON (corrupted or truncated)", path) from None
    if not isinstance(data, dict):
        raise SynthctError(f"{what} is not a JSON object", path)
    return data


def load_verified(path: Path, expected_sha: str | None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SynthctError("weights file not found", path)
    if expected_sha is None or sha256_of(path) != expected_sha:
        raise SynthctError("checksum mismatch: the file is corrupted or truncated", path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        raise SynthctError("not a readable safetensors file (corrupted or truncated)", path) from None


def save_generator(module: torch.nn.Module, path_stem: Path, meta: dict) -> Path:
    """Write ``<stem>.safetensors`` and the ``<stem>.json`` sidecar; return the weights path.

    ``meta`` holds direction, architecture, mappings, step, ...; the format tag, version and
    checksum are filled in here. The sidecar is written last, so a sidecar always describes a
    complete weights file.
    """
    path_stem = Path(path_stem)
    weights = path_stem.with_name(path_stem.name + ".safetensors")
    sidecar = path_stem.with_name(path_stem.name + ".json")
    digest = save_tensors(dict(module.state_dict()), weights)
    info = {"format": GENERATOR_FORMAT, "version": GENERATOR_FORMAT_VERSION, "synthct_version": __version__}
    info.update({k: v for k, v in meta.items() if k not in ("format", "version", "sha256")})
    info["sha256"] = digest
    remove_stale_temporaries(sidecar)
    try:
        atomic_write_text(sidecar, json.dumps(info, indent=2) + "\n")
    except OSError as exc:
        raise write_failed(exc, sidecar) from None
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
    return arch


def build_generator_from_sidecar(meta: dict, where: Path) -> torch.nn.Module:
    """Rebuild the (untrained) generator network the sidecar describes."""
    arch = meta.get("architecture")
    if not isinstance(arch, dict):
        raise SynthctError("sidecar has no 'architecture' section", where)
    # Sidecars from before model.upsample was removed name the paper's upsampling explicitly.
    if arch.get("upsample", "transpose") != "transpose":
        raise SynthctError(f"this generator upsamples by '{arch['upsample']}', which model.upsample offered before "
                           "it was removed (it did not help; see docs/RESULTS.md); retrain it", where)
    try:
        return build_generator(
            arch["generator"], int(arch["in_channels"]), int(arch["out_channels"]), ngf=int(arch["ngf"]),
            n_blocks=int(arch.get("blocks", 9)), unet_downs=int(arch.get("num_downs", 8)))
    except (KeyError, TypeError, ValueError) as exc:
        raise SynthctError(f"sidecar architecture cannot be built ({exc})", where) from None


def load_generator(model_ref: str | Path, direction: str | None = None,
                   device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a trained generator (eval mode) and its sidecar from a run folder, weights or sidecar."""
    weights, sidecar = _resolve_generator(model_ref, direction)
    if not sidecar.is_file():
        raise SynthctError("sidecar JSON not found next to the weights (not a synthct generator?)", sidecar)
    meta = read_json(sidecar, "generator sidecar")
    if meta.get("format") != GENERATOR_FORMAT:
        raise SynthctError("not a synthct generator (sidecar format is not 'synthct-generator')", sidecar)
    if int(meta.get("version", 0)) > GENERATOR_FORMAT_VERSION:
        raise SynthctError(f"generator format version {meta.get('version')} is newer than this synthct "
                           f"supports ({GENERATOR_FORMAT_VERSION}); upgrade synthct", sidecar)
    if direction is not None and meta.get("direction") != direction:
        raise SynthctError(f"this model translates {meta.get('direction')} only", sidecar)
    _check_removed_options(meta.get("config"), sidecar)
    state = load_verified(weights, meta.get("sha256"))
    module = build_generator_from_sidecar(meta, sidecar)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError:
        raise SynthctError("weights do not match the architecture in the sidecar", weights) from None
    return module.to(device).eval(), meta


def _check_removed_options(config, sidecar: Path) -> None:
    """Refuse, in one line, a generator whose run set an option this version no longer has."""
    if not isinstance(config, dict):
        return
    for section, values in config.items():
        if isinstance(values, dict):
            try:
                drop_removed_options(section, values)
            except SynthctError as exc:
                raise SynthctError(f"the run that trained this generator set {exc.problem}", sidecar) from None


def generator_meta(cfg: RunConfig, module: nn.Module, direction: str, dataset, step: int, epoch: int) -> dict:
    """The sidecar of ``module`` trained by ``cfg`` on ``dataset`` (its intensity mappings)."""
    source, target = direction.split("2")
    mappings = dataset.mappings
    return {
        "direction": direction, "source": source, "target": target, "model": cfg.model.name,
        "architecture": generator_architecture(module, cfg.model.generator, cfg.data.slices,
                                               cfg.model.ngf, cfg.model.blocks),
        "slices": cfg.data.slices, "size": cfg.data.size, "axis": cfg.data.axis, "resize": cfg.data.resize,
        "intensity_mode": dataset.intensity_mode,
        "body_masked": cfg.model.body_masked,
        "input_mapping": mappings[source], "output_mapping": mappings[target],
        "step": step, "epoch": epoch, "config": config_to_dict(cfg),
    }


def save_generators(modules: dict[str, nn.Module], cfg: RunConfig, folder: Path, dataset, step: int,
                    epoch: int, suffix: str = "") -> dict[str, Path]:
    """``folder/generator_<direction><suffix>`` for each module; returns the weights paths."""
    return {direction: save_generator(module, folder / f"generator_{direction}{suffix}",
                                      generator_meta(cfg, module, direction, dataset, step, epoch))
            for direction, module in modules.items()}
