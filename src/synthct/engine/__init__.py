"""Training engine: loop, checkpoints, precision, data parallelism, logging.

Presets: ``--config NAME`` reads ``NAME.yaml`` from the package's ``synthct/configs/`` (the
repository's ``configs/`` points there); anything that is an existing file is read as a YAML
config. Importing this package does not import torch.
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

from synthct.config import RunConfig, config_from_yaml
from synthct.errors import SynthctError


def load_config(path: str | Path) -> RunConfig:
    """The config in a YAML file; any problem is a one-line SynthctError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SynthctError("config file not found", path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SynthctError("not valid YAML (not UTF-8 text)", path) from None
    try:
        return config_from_yaml(text)
    except SynthctError as exc:
        raise SynthctError(exc.problem, path) from None


def _preset_folders() -> list[Path]:
    packaged = importlib.resources.files("synthct") / "configs"
    return [Path(str(packaged))] if packaged.is_dir() else []


def preset_names() -> list[str]:
    return sorted({p.stem for folder in _preset_folders() for p in folder.glob("*.yaml")})


def resolve_config(ref: str | Path) -> Path:
    """A config file path, or a preset name (default, fast_cpu, pix2pix, tiny, ...)."""
    path = Path(ref)
    if path.is_file():
        return path
    name = str(ref)[:-5] if str(ref).endswith(".yaml") else str(ref)
    if re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        for folder in _preset_folders():
            if (folder / f"{name}.yaml").is_file():
                return folder / f"{name}.yaml"
        known = ", ".join(preset_names()) or "none found"
        raise SynthctError(f"no such config file or preset (presets: {known})", ref)
    raise SynthctError("config file not found", ref)


def load_run_config(ref: str | Path) -> RunConfig:
    return load_config(resolve_config(ref))
