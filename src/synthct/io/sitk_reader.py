"""SimpleITK reading behind checks that synthct makes itself first.

Headers are checked before SimpleITK sees them: absurd sizes are refused before anything is
allocated, MetaIO and NRRD text headers before readers that crash (segfault) on some malformed
fields and that follow data file names anywhere, and NIfTI voxel data for what ITK would
silently fill with zeros (a truncated file, NaN or Inf).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from synthct.errors import SynthctError
from synthct.io.formats import file_suffix

# Refuse headers that promise more voxels than any scan has, before anything is allocated.
MAX_VOXELS = int(os.environ.get("SYNTHCT_MAX_VOXELS", 2**30))

def check_size(size, path, components: int = 1) -> None:
    n = max(int(components), 1)
    for s in size:
        n *= int(s)
    if n > MAX_VOXELS or any(int(s) <= 0 for s in size):
        dims = " x ".join(str(int(s)) for s in size)
        per_voxel = f" x {components} components" if components > 1 else ""
        raise SynthctError(f"header claims {dims} voxels{per_voxel}; refusing to allocate "
                           f"(limit {MAX_VOXELS} voxels)", path)


# Text headers are checked in Python before SimpleITK sees them: MetaIO and NRRD readers
# crash (segfault) on some malformed fields, and both formats can name a data file anywhere.
_TEXT_HEADER_BYTES = 1 << 16
_NRRD_MAX_LINE = 512  # NrrdIO overruns a fixed buffer on lines of about 1000 characters


def _header_lines(path: Path) -> list[str]:
    try:
        with open(path, "rb") as fh:
            head = fh.read(_TEXT_HEADER_BYTES)
    except OSError as exc:
        raise SynthctError(f"cannot read ({exc.strerror})", path) from None
    return head.decode("latin-1").split("\n")


def _check_data_file_name(name: str, path: Path) -> None:
    """A detached header may only name data files in its own folder or below it."""
    parts = re.split(r"[\\/]", name)
    if name.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise SynthctError(f"header names data file '{name[:100]}' outside its folder; refusing to read it", path)


def _check_data_file_field(value: str, following: list[str], path: Path) -> None:
    value = value.strip()
    if value.split()[:1] == ["LIST"]:
        for name in following:
            if name.strip():
                _check_data_file_name(name.strip(), path)
    elif "%" in value:  # a printf pattern followed by min max step (and maybe a sub-dimension)
        _check_data_file_name(value.split()[0], path)
    elif value:
        _check_data_file_name(value, path)


def _check_metaimage_header(path: Path) -> None:
    lines = _header_lines(path)
    fields = {}
    for i, line in enumerate(lines):
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key = key.strip()
        fields.setdefault(key, value.strip())
        if key == "ElementDataFile":
            _check_data_file_field(value, lines[i + 1:], path)
            break
    ndims = fields.get("NDims", "")
    if not re.fullmatch(r"[1-4]", ndims):
        raise SynthctError(f"MetaImage header: NDims = '{ndims[:40]}'; expected 2, 3 or 4", path)
    for key in ("DimSize", "ElementSpacing"):
        values = fields.get(key, "").split()
        if key in fields and len(values) < int(ndims):
            raise SynthctError(f"MetaImage header: {key} has {len(values)} values for NDims = {ndims}", path)


def _check_nrrd_header(path: Path) -> None:
    lines = _header_lines(path)
    if not lines[0].startswith("NRRD"):
        raise SynthctError("not an NRRD file (no NRRD magic line)", path)
    for i, line in enumerate(lines):
        if line.strip() == "":
            break
        if len(line) > _NRRD_MAX_LINE:
            raise SynthctError(f"NRRD header line {i + 1} is {len(line)} characters long; refusing it", path)
        key, sep, value = line.partition(":")
        if sep and key.strip().replace(" ", "") == "datafile":
            _check_data_file_field(value.lstrip("="), lines[i + 1:], path)


def read_with_sitk(path: Path, fmt: str) -> sitk.Image:
    """The image in ``path`` after synthct's own header checks (``fmt`` names the format in errors)."""
    suffix = file_suffix(path)
    if suffix in (".mha", ".mhd"):
        _check_metaimage_header(path)
    elif suffix in (".nrrd", ".nhdr"):
        _check_nrrd_header(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise SynthctError(f"cannot read {fmt} header ({brief_error(exc)})", path) from None
    check_size(reader.GetSize(), path, reader.GetNumberOfComponents())
    if suffix in (".nii", ".nii.gz"):
        _check_nifti_length(path)
        _check_nifti_finite(path)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise SynthctError(f"cannot read {fmt} data ({brief_error(exc)})", path) from None


@dataclass(frozen=True)
class _NiftiHeader:
    order: str  # struct byte order, "<" or ">"
    dims: tuple[int, ...]
    datatype: int
    bitpix: int
    vox_offset: float


def _parse_nifti_header(header: bytes) -> _NiftiHeader | None:
    """The fields of a NIfTI-1 header synthct checks itself (None for NIfTI-2 or unparsable)."""
    import struct

    if len(header) < 348:
        return None
    for order in "<>":
        if struct.unpack(order + "i", header[:4])[0] == 348:
            return _NiftiHeader(order, struct.unpack(order + "8h", header[40:56]),
                                *struct.unpack(order + "2h", header[70:74]),
                                struct.unpack(order + "f", header[108:112])[0])
    return None


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Header + voxel bytes a NIfTI-1 header promises (None for NIfTI-2 or an unparsable header)."""
    parsed = _parse_nifti_header(header)
    if parsed is None:
        return None
    ndim = parsed.dims[0]
    if not 1 <= ndim <= 7 or parsed.bitpix <= 0 or not np.isfinite(parsed.vox_offset):
        return None
    voxels = 1
    for d in parsed.dims[1:ndim + 1]:
        voxels *= max(int(d), 0)
    return int(parsed.vox_offset) + voxels * parsed.bitpix // 8


def _check_nifti_length(path: Path) -> None:
    """Refuse a NIfTI whose voxel data is shorter than its header says: ITK would silently
    fill the missing voxels with zeros."""
    import gzip
    import zlib

    compressed = path.name.lower().endswith(".gz")
    try:
        if not compressed:
            with open(path, "rb") as fh:
                expected = _nifti_expected_bytes(fh.read(348))
            actual = path.stat().st_size
        else:
            with gzip.open(path, "rb") as fh:
                expected = _nifti_expected_bytes(fh.read(348))
            if expected is None:
                return
            with open(path, "rb") as fh:  # gzip's trailer holds the length mod 2**32: a cheap first check
                fh.seek(-4, os.SEEK_END)
                trailer = int.from_bytes(fh.read(4), "little")
            if trailer == expected % 2**32:
                return
            actual = 0
            with gzip.open(path, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    actual += len(chunk)
    except (OSError, EOFError, zlib.error):
        raise SynthctError("truncated or corrupt compressed NIfTI", path) from None
    if expected is not None and actual < expected:
        raise SynthctError(f"truncated NIfTI: header promises {expected} bytes, file holds {actual}", path)


NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI-1 datatype codes FLOAT32, FLOAT64


def _check_nifti_finite(path: Path) -> None:
    """Refuse NaN / Inf voxels in a float NIfTI as in every other format: ITK's NIfTI reader
    silently turns them into 0, which in a CT is water where the scan had no value."""
    import gzip
    import zlib

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    bad = 0
    try:
        with opener(path, "rb") as fh:
            header = _parse_nifti_header(fh.read(348))
            # NIfTI-2 and unparsable headers were already judged by ITK; integers cannot be NaN.
            if header is None or header.datatype not in NIFTI_FLOAT_TYPES or not 348 <= header.vox_offset < 2**40:
                return
            dtype = np.dtype(header.order + NIFTI_FLOAT_TYPES[header.datatype])
            fh.seek(int(header.vox_offset))
            while chunk := fh.read(dtype.itemsize << 22):
                values = np.frombuffer(chunk[: len(chunk) - len(chunk) % dtype.itemsize], dtype)
                bad += int(values.size - np.count_nonzero(np.isfinite(values)))
    except (OSError, EOFError, zlib.error):
        raise SynthctError("truncated or corrupt NIfTI voxel data", path) from None
    if bad:
        raise SynthctError(f"{bad} voxels are NaN or Inf", path)


def brief_error(exc: Exception) -> str:
    """What went wrong, in one line of at most 200 characters, for a one-line error."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages carry the source location first; the last line says what went wrong.
    text = lines[-1] if lines else type(exc).__name__
    return text[:200]
