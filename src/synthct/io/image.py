"""Reading and writing medical images with their geometry: the entry points of ``synthct.io``.

SimpleITK does the parsing (NIfTI, MetaImage, NRRD, DICOM through GDCM, PNG/JPEG/TIFF) behind
synthct's own header checks (``sitk_reader``); DICOM files and series folders are read by
``dicom_series``; ``.npy`` arrays by numpy. Every reader returns a float32 ``(z, y, x)``
:class:`~synthct.io.volume.Volume`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from synthct.errors import SynthctError
from synthct.io.atomic import refuse_existing
from synthct.io.dicom_series import is_dicom_file, is_dicom_series_dir, read_dicom_file, read_dicom_series
from synthct.io.formats import DICOM_SUFFIXES, FORMAT_NAMES, SUPPORTED_SUFFIXES, WRITABLE_SUFFIXES, file_suffix
from synthct.io.sitk_reader import brief_error, check_size, read_with_sitk
from synthct.io.volume import Volume, check_finite, volume_from_sitk


def read_npy(path: Path) -> Volume:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise SynthctError(f"not a plain numeric .npy array ({brief_error(exc)})", path) from None
    except (OSError, EOFError) as exc:
        raise SynthctError(f"cannot read .npy ({brief_error(exc)})", path) from None
    except Exception as exc:  # noqa: BLE001 - numpy parses a damaged header with Python's tokenizer
        raise SynthctError(f"damaged .npy header ({type(exc).__name__})", path) from None
    if arr.dtype.kind not in "biuf":
        raise SynthctError(f".npy holds {arr.dtype} data; expected numbers", path)
    if arr.ndim not in (2, 3):
        raise SynthctError(f".npy array has {arr.ndim} dimensions; expected 2 (y, x) or 3 (z, y, x)", path)
    check_size(arr.shape, path)
    try:
        data = np.array(arr, dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise SynthctError(f"truncated or unreadable .npy ({exc})", path) from None
    is_2d = data.ndim == 2
    vol = Volume(array=data[None] if is_2d else data, format="npy", path=str(path), is_2d=is_2d,
                 source_dtype=arr.dtype.name)
    check_finite(vol.array, path)
    return vol


def read_image(path: str | Path) -> Volume:
    """Read any supported image, volume or DICOM series folder as a float32 :class:`Volume`."""
    path = Path(path)
    if not path.exists():
        raise SynthctError("no such file or folder", path)
    if path.is_dir():
        return read_dicom_series(path)
    if path.stat().st_size == 0:
        raise SynthctError("file is empty", path)
    suffix = file_suffix(path)
    if suffix == ".npy":
        return read_npy(path)
    if suffix in FORMAT_NAMES:
        fmt = FORMAT_NAMES[suffix]
        return volume_from_sitk(read_with_sitk(path, fmt.upper()), str(path), fmt)
    if is_dicom_file(path):
        return read_dicom_file(path)
    raise SynthctError(
        f"unsupported format '{suffix or 'no extension'}' (supported: {', '.join(SUPPORTED_SUFFIXES)}, "
        "or a DICOM series folder)",
        path,
    )


def list_images(folder: str | Path) -> list[Path]:
    """Images in a folder: supported files, plus sub-folders that are DICOM series.

    A folder that is itself one DICOM series yields itself.
    """
    folder = Path(folder)
    if not folder.exists():
        raise SynthctError("no such folder", folder)
    if not folder.is_dir():
        return [folder]
    entries = sorted(folder.iterdir())
    files = [p for p in entries if p.is_file() and not p.name.startswith(".")]
    if files and all(is_dicom_file(p) for p in files):
        return [folder]
    found = []
    for p in entries:
        if p.name.startswith("."):
            continue
        if p.is_file() and (file_suffix(p) in SUPPORTED_SUFFIXES and file_suffix(p) not in DICOM_SUFFIXES):
            found.append(p)
        elif p.is_dir() and is_dicom_series_dir(p):
            found.append(p)
    if not found and any(is_dicom_file(p) for p in files):
        return [folder]
    return found


def output_suffix(vol: Volume, fmt: str | None = None) -> str:
    """File suffix for writing a result derived from ``vol`` (its own format unless ``fmt`` says)."""
    if fmt:
        fmt = fmt.lower().lstrip(".")
        table = {"nifti": ".nii.gz", "nii": ".nii", "nii.gz": ".nii.gz", "mha": ".mha", "mhd": ".mhd",
                 "nrrd": ".nrrd", "png": ".png", "tiff": ".tif", "tif": ".tif", "npy": ".npy"}
        if fmt not in table:
            raise SynthctError(f"unknown output format '{fmt}' (choose from {', '.join(sorted(table))})")
        return table[fmt]
    return {
        "nifti": ".nii.gz", "mha": ".mha", "nrrd": ".nrrd", "png": ".png", "jpeg": ".png", "tiff": ".tif",
        "npy": ".npy", "dicom": ".nii.gz", "dicom-series": ".nii.gz",
    }.get(vol.format, ".nii.gz")


def write_image(vol: Volume, path: str | Path, dtype: str | np.dtype | None = None, overwrite: bool = False) -> Path:
    """Write ``vol`` with its geometry, atomically (temporary files, then rename).

    The format follows the suffix. PNG takes one slice and 8- or 16-bit integers; other
    integer types are rounded and clipped to their range before casting.
    """
    path = Path(path)
    suffix = file_suffix(path)
    if suffix not in WRITABLE_SUFFIXES:
        raise SynthctError(f"cannot write format '{suffix}' (use one of {', '.join(WRITABLE_SUFFIXES)})", path)
    refuse_existing([path], overwrite)
    array = vol.array
    if dtype is None and suffix == ".png":
        dtype = "uint8"
    if suffix == ".png":
        if array.shape[0] != 1:
            raise SynthctError(f"PNG holds one slice; this volume has {array.shape[0]}", path)
        if np.dtype(dtype) not in (np.dtype("uint8"), np.dtype("uint16")):
            raise SynthctError("PNG needs uint8 or uint16 pixels", path)
    if dtype is not None:
        array = cast_for_storage(array, dtype)
    out = vol.with_array(array) if array.shape == vol.array.shape else vol
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
            tmp_path = Path(tmp) / path.name
            if suffix == ".npy":
                np.save(tmp_path, out.array[0] if vol.is_2d else out.array, allow_pickle=False)
            else:
                img = out.to_sitk()
                if suffix == ".png" and not vol.is_2d:
                    img = img[:, :, 0]
                sitk.WriteImage(img, str(tmp_path), useCompression=suffix in (".nii.gz", ".mha", ".nrrd"))
            produced = sorted(Path(tmp).iterdir(), key=lambda p: p.name != path.name)
            # Companion files (.raw of .mhd) first, the file users open last.
            for p in reversed(produced):
                os.replace(p, path.parent / p.name)
    except OSError as exc:
        raise SynthctError(f"cannot write ({exc.strerror or type(exc).__name__})", path) from None
    except RuntimeError as exc:
        raise SynthctError(f"cannot write ({brief_error(exc)})", path) from None
    return path


def cast_for_storage(array: np.ndarray, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(array), info.min, info.max).astype(dtype)
    return array.astype(dtype)
