"""Where the training images are: two folders, a CycleGAN root or a SynthRAD root.

- ``data.mr`` + ``data.ct``: any two folders (or files) of images; unpaired unless ``data.paired``.
- CycleGAN root: ``trainA/`` (MR) and ``trainB/`` (CT), optionally ``testA/`` and ``testB/``.
- SynthRAD root: ``ROOT/<case>/mr.*``, ``ct.*`` and optionally ``mask.*`` (.nii.gz, .nii or .mha);
  cases are paired and co-registered. ``ROOT/<split>/<case>/...`` is used when it exists.
- Pairs root: ``ROOT/mr/`` and ``ROOT/ct/`` whose files pair by name (what ``synthct pair`` writes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthct.errors import SynthctError

SYNTHRAD_SUFFIXES = (".nii.gz", ".nii", ".mha")


@dataclass
class Sources:
    mr: list[Path]
    ct: list[Path]
    masks: list[Path | None] = field(default_factory=list)  # aligned with ``ct``
    cases: list[str] = field(default_factory=list)
    layout: str = "folders"  # folders | cyclegan | synthrad | pairs
    paired: bool = False


def _case_file(case: Path, stem: str) -> Path | None:
    for suffix in SYNTHRAD_SUFFIXES:
        candidate = case / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _synthrad_cases(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and _case_file(p, "mr") and _case_file(p, "ct"))


def detect_layout(root: str | Path) -> str:
    """"cyclegan" (trainA/ + trainB/), "pairs" (mr/ + ct/) or "synthrad" (<case>/{mr,ct}.*);
    SynthctError otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise SynthctError("no such folder", root)
    if (root / "trainA").is_dir() and (root / "trainB").is_dir():
        return "cyclegan"
    if (root / "mr").is_dir() and (root / "ct").is_dir():
        return "pairs"
    if _synthrad_cases(root) or any(_synthrad_cases(root / s) for s in ("train", "test", "val")
                                    if (root / s).is_dir()):
        return "synthrad"
    raise SynthctError("neither a CycleGAN layout (trainA/, trainB/), a pairs layout (mr/, ct/) nor a "
                       "SynthRAD layout (<case>/mr.nii.gz, <case>/ct.nii.gz)", root)


def _images(folder: Path) -> list[Path]:
    from synthct.io.image import list_images

    if not folder.exists():
        raise SynthctError("no such folder", folder)
    found = list_images(folder)
    if not found:
        raise SynthctError("no images found in folder", folder)
    return found


def _named_pairs(root: Path) -> Sources:
    """mr/ and ct/ files that pair by name."""
    mr = {p.name: p for p in _images(root / "mr")}
    ct = {p.name: p for p in _images(root / "ct")}
    if set(mr) != set(ct):
        unmatched = sorted(set(mr) ^ set(ct))
        raise SynthctError(f"mr/ and ct/ must hold files of the same names; unmatched: {', '.join(unmatched[:5])}",
                           root)
    names = sorted(mr)
    return Sources([mr[n] for n in names], [ct[n] for n in names], [None] * len(names), names, "pairs", True)


def _header_geometry(path: Path):
    """A Volume with the file's geometry; only the header is read for volume formats."""
    import SimpleITK as sitk

    from synthct.io.formats import VOLUME_SUFFIXES
    from synthct.io.image import read_image
    from synthct.io.volume import Volume

    if path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return read_image(path)  # gives the user-facing error
        if reader.GetDimension() == 3:
            size = reader.GetSize()
            shape = (size[2], size[1], size[0])
            return Volume(np.broadcast_to(np.float32(0), shape), tuple(reader.GetSpacing()),
                          tuple(reader.GetOrigin()), tuple(reader.GetDirection()), path=str(path))
    return read_image(path)


def check_pairs(mr: list[Path], ct: list[Path], masks: list[Path | None] | None = None) -> None:
    """Paired data: equal counts and, pair by pair, the same grid (shape, spacing, origin, direction)."""
    if len(mr) != len(ct):
        folder = Path(mr[0]).parent if mr else Path(ct[0]).parent
        raise SynthctError(f"paired data needs as many MR as CT images, found {len(mr)} MR and {len(ct)} CT", folder)
    for i, (m, c) in enumerate(zip(mr, ct)):
        ct_geometry = _header_geometry(c)
        others = [m] + ([masks[i]] if masks and masks[i] is not None else [])
        for other in others:
            geometry = _header_geometry(other)
            if not geometry.same_geometry(ct_geometry):
                raise SynthctError(
                    f"geometry differs from its paired CT {c} (shape {geometry.shape} vs {ct_geometry.shape}, "
                    f"spacing {tuple(round(s, 4) for s in geometry.spacing)} vs "
                    f"{tuple(round(s, 4) for s in ct_geometry.spacing)}, origin or direction)", other)


def collect_sources(cfg, split: str = "train") -> Sources:
    """The MR and CT images named by a :class:`DataConfig` (``cfg.mr``/``cfg.ct`` or ``cfg.root``)."""
    if cfg.mr or cfg.ct:
        if not (cfg.mr and cfg.ct):
            raise SynthctError("give both data.mr and data.ct (or data.root)")
        mr, ct = _images(Path(cfg.mr)), _images(Path(cfg.ct))
        sources = Sources(mr, ct, [None] * len(ct), [p.name for p in ct], "folders", bool(cfg.paired))
    elif cfg.root:
        root = Path(cfg.root)
        layout = detect_layout(root)
        if layout == "cyclegan":
            mr, ct = _images(root / f"{split}A"), _images(root / f"{split}B")
            sources = Sources(mr, ct, [None] * len(ct), [p.name for p in ct], layout, bool(cfg.paired))
        elif layout == "pairs":
            sources = _named_pairs(root)
        else:
            base = root / split if (root / split).is_dir() and _synthrad_cases(root / split) else root
            cases = _synthrad_cases(base)
            if not cases:
                raise SynthctError("no images found in folder (expected <case>/mr.nii.gz and <case>/ct.nii.gz)", base)
            sources = Sources([_case_file(c, "mr") for c in cases], [_case_file(c, "ct") for c in cases],
                              [_case_file(c, "mask") for c in cases], [c.name for c in cases], layout, True)
    else:
        raise SynthctError("no training data: set data.root, or data.mr and data.ct")
    if sources.paired:
        check_pairs(sources.mr, sources.ct, sources.masks)
    return sources
