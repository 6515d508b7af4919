"""Reading and writing medical images with their geometry.

SimpleITK does the parsing (NIfTI, MetaImage, NRRD, DICOM through GDCM, PNG/JPEG/TIFF);
pydicom reads the identifying DICOM tags that SimpleITK does not expose. Arrays are
``(z, y, x)`` float32 as SimpleITK returns them; geometry uses SimpleITK's convention
(spacing and origin in x, y, z order, direction cosines row-major, LPS physical space).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from synthct.errors import SynthctError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
SUPPORTED_SUFFIXES = VOLUME_SUFFIXES + PICTURE_SUFFIXES + DICOM_SUFFIXES + (".npy",)
WRITABLE_SUFFIXES = VOLUME_SUFFIXES + (".png", ".tif", ".tiff", ".npy")

# Refuse headers that promise more voxels than any scan has, before anything is allocated.
MAX_VOXELS = int(os.environ.get("SYNTHCT_MAX_VOXELS", 2**30))

# DICOM attributes carried from a source series to derived outputs (synthetic CT series).
DICOM_CARRIED_TAGS = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "StudyDescription",
    "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID",
    "Modality", "SeriesDescription", "SeriesInstanceUID", "BodyPartExamined",
    "PatientPosition", "Manufacturer",
)

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class Volume:
    """A grayscale image or volume with its physical geometry.

    ``array`` is float32 ``(z, y, x)``; a 2D picture has ``z == 1`` and ``is_2d`` set.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = _IDENTITY
    format: str = "npy"
    path: str = ""
    is_2d: bool = False
    source_dtype: str = "float32"
    dicom: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def with_array(self, array: np.ndarray, **changes) -> "Volume":
        """The same geometry around another array (same z, y, x shape)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} != volume shape {self.array.shape}")
        return replace(self, array=array, **changes)

    def to_sitk(self, dtype=None) -> sitk.Image:
        array = self.array if dtype is None else self.array.astype(dtype)
        if self.is_2d:
            img = sitk.GetImageFromArray(array[0])
            img.SetSpacing(self.spacing[:2])
            img.SetOrigin(self.origin[:2])
            d = self.direction
            img.SetDirection((d[0], d[1], d[3], d[4]))
        else:
            img = sitk.GetImageFromArray(array)
            img.SetSpacing(self.spacing)
            img.SetOrigin(self.origin)
            img.SetDirection(self.direction)
        return img

    @property
    def orientation(self) -> str:
        """Three-letter orientation code (SimpleITK/DICOM LPS convention, e.g. 'LPS', 'RAI')."""
        return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(self.direction)

    def same_geometry(self, other: "Volume", tol: float = 1e-4) -> bool:
        return (
            self.array.shape == other.array.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )


def volume_from_sitk(img: sitk.Image, path: str = "", fmt: str = "", dicom: dict | None = None) -> Volume:
    """Wrap a SimpleITK image, normalising 2D images to a one-slice volume."""
    if img.GetNumberOfComponentsPerPixel() > 1:
        img = _rgb_to_gray(img, path)
    dim = img.GetDimension()
    if dim == 4:
        if img.GetSize()[3] != 1:
            raise SynthctError(f"4D image ({img.GetSize()[3]} time points); expected one 3D volume", path)
        img = img[:, :, :, 0]
        dim = 3
    source_dtype = np.dtype(sitk.GetArrayViewFromImage(img).dtype).name
    array = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)
    if dim == 2:
        sx, sy = img.GetSpacing()
        ox, oy = img.GetOrigin()
        d = img.GetDirection()
        vol = Volume(
            array=array[None],
            spacing=(sx, sy, 1.0),
            origin=(ox, oy, 0.0),
            direction=(d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0),
            is_2d=True,
        )
    elif dim == 3:
        vol = Volume(
            array=array,
            spacing=tuple(img.GetSpacing()),
            origin=tuple(img.GetOrigin()),
            direction=tuple(img.GetDirection()),
        )
    else:
        raise SynthctError(f"{dim}D image; expected a 2D image or a 3D volume", path)
    vol.format = fmt
    vol.path = str(path)
    vol.source_dtype = source_dtype
    vol.dicom = dict(dicom or {})
    _check_geometry(vol, path)
    _check_finite(vol.array, path)
    return vol


def _check_geometry(vol: Volume, path) -> None:
    # A corrupt header (or a series with one absurd slice position) yields Inf/NaN geometry
    # that would silently poison every resampling and every written output.
    if not all(np.isfinite(s) and s > 0 for s in vol.spacing):
        raise SynthctError(f"invalid voxel spacing {tuple(vol.spacing)} in header", path)
    if not (np.isfinite(vol.origin).all() and np.isfinite(vol.direction).all()):
        raise SynthctError("non-finite origin or direction in header", path)


def _rgb_to_gray(img: sitk.Image, path) -> sitk.Image:
    """Accept colour-encoded grayscale (all channels equal, as many PNG tools save it)."""
    channels = img.GetNumberOfComponentsPerPixel()
    if channels > 4 or img.GetDimension() != 2:
        raise SynthctError(f"{channels}-component vector image; expected one grayscale image", path)
    arr = sitk.GetArrayFromImage(img)
    if channels == 4:  # drop an alpha channel
        arr = arr[..., :3]
        channels = 3
    if channels >= 2 and not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, channels)):
        raise SynthctError(f"colour image ({channels} differing channels); expected one grayscale image", path)
    gray = sitk.GetImageFromArray(np.ascontiguousarray(arr[..., 0]))
    gray.CopyInformation(sitk.VectorIndexSelectionCast(img, 0))
    return gray


def _check_finite(array: np.ndarray, path) -> None:
    if not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise SynthctError(f"{bad} voxels are NaN or Inf", path)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in VOLUME_SUFFIXES + PICTURE_SUFFIXES + DICOM_SUFFIXES + (".npy",):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    # Scanner exports often have no suffix or a UID-like one; trust the DICM preamble.
    if _suffix(path) in VOLUME_SUFFIXES + PICTURE_SUFFIXES + (".npy",):
        return False
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_dicom_file(p))


def is_dicom_series_dir(path: Path) -> bool:
    return path.is_dir() and bool(_dicom_files(path))


def _dicom_tags(path: Path) -> dict:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - SimpleITK read the pixels; the tags are a courtesy
        return {}
    tags = {}
    for name in DICOM_CARRIED_TAGS:
        value = ds.get(name)
        if value is not None and str(value) != "":
            tags[name] = str(value)
    return tags


def _check_size(size, path, components: int = 1) -> None:
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


def _read_with_sitk(path: Path, fmt: str) -> sitk.Image:
    suffix = _suffix(path)
    if suffix in (".mha", ".mhd"):
        _check_metaimage_header(path)
    elif suffix in (".nrrd", ".nhdr"):
        _check_nrrd_header(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise SynthctError(f"cannot read {fmt} header ({_first_line(exc)})", path) from None
    _check_size(reader.GetSize(), path, reader.GetNumberOfComponents())
    if suffix in (".nii", ".nii.gz"):
        _check_nifti_length(path)
        _check_nifti_finite(path)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise SynthctError(f"cannot read {fmt} data ({_first_line(exc)})", path) from None


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


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages carry the source location first; the last line says what went wrong.
    text = lines[-1] if lines else type(exc).__name__
    return text[:200]


def read_dicom_series(folder: Path) -> Volume:
    """Read one DICOM series folder, slices ordered by position, rescale applied (CT in HU)."""
    folder = Path(folder)
    files = _dicom_files(folder)
    if not files:
        raise SynthctError("no DICOM files in folder", folder)
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise SynthctError(f"cannot scan DICOM series ({_first_line(exc)})", folder) from None
    if not series_ids:
        raise SynthctError("DICOM files present but none is a readable image series", folder)
    if len(series_ids) > 1:
        raise SynthctError(f"folder holds {len(series_ids)} DICOM series; give one series per folder", folder)
    try:
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0])
    except RuntimeError as exc:
        raise SynthctError(f"cannot scan DICOM series ({_first_line(exc)})", folder) from None
    if len(names) == 1:
        return read_dicom_file(Path(names[0]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        first = sitk.ImageFileReader()
        first.SetFileName(names[0])
        first.ReadImageInformation()
        _check_size((*first.GetSize()[:2], len(names)), folder, first.GetNumberOfComponents())
        img = reader.Execute()
    except RuntimeError as exc:
        raise SynthctError(f"cannot read DICOM series ({_first_line(exc)})", folder) from None
    vol = volume_from_sitk(img, str(folder), "dicom-series", _dicom_tags(Path(names[0])))
    vol.dicom["_files"] = len(names)
    return vol


def read_dicom_file(path: Path) -> Volume:
    img = _read_with_sitk(path, "DICOM")
    vol = volume_from_sitk(img, str(path), "dicom", _dicom_tags(path))
    if vol.array.shape[0] == 1 and img.GetDimension() == 3:
        vol.is_2d = False
    return vol


def read_npy(path: Path) -> Volume:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise SynthctError(f"not a plain numeric .npy array ({_first_line(exc)})", path) from None
    except (OSError, EOFError) as exc:
        raise SynthctError(f"cannot read .npy ({_first_line(exc)})", path) from None
    except Exception as exc:  # noqa: BLE001 - numpy parses a damaged header with Python's tokenizer
        raise SynthctError(f"damaged .npy header ({type(exc).__name__})", path) from None
    if arr.dtype.kind not in "biuf":
        raise SynthctError(f".npy holds {arr.dtype} data; expected numbers", path)
    if arr.ndim not in (2, 3):
        raise SynthctError(f".npy array has {arr.ndim} dimensions; expected 2 (y, x) or 3 (z, y, x)", path)
    _check_size(arr.shape, path)
    try:
        data = np.array(arr, dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise SynthctError(f"truncated or unreadable .npy ({exc})", path) from None
    is_2d = data.ndim == 2
    vol = Volume(array=data[None] if is_2d else data, format="npy", path=str(path), is_2d=is_2d,
                 source_dtype=arr.dtype.name)
    _check_finite(vol.array, path)
    return vol


_FORMAT_NAMES = {
    ".nii.gz": "nifti", ".nii": "nifti", ".mha": "mha", ".mhd": "mha", ".nrrd": "nrrd", ".nhdr": "nrrd",
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff",
}


def read_image(path: str | Path) -> Volume:
    """Read any supported image, volume or DICOM series folder as a float32 :class:`Volume`."""
    path = Path(path)
    if not path.exists():
        raise SynthctError("no such file or folder", path)
    if path.is_dir():
        return read_dicom_series(path)
    if path.stat().st_size == 0:
        raise SynthctError("file is empty", path)
    suffix = _suffix(path)
    if suffix == ".npy":
        return read_npy(path)
    if suffix in _FORMAT_NAMES:
        fmt = _FORMAT_NAMES[suffix]
        return volume_from_sitk(_read_with_sitk(path, fmt.upper()), str(path), fmt)
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
        if p.is_file() and (_suffix(p) in SUPPORTED_SUFFIXES and _suffix(p) not in DICOM_SUFFIXES):
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
    suffix = _suffix(path)
    if suffix not in WRITABLE_SUFFIXES:
        raise SynthctError(f"cannot write format '{suffix}' (use one of {', '.join(WRITABLE_SUFFIXES)})", path)
    if path.exists() and not overwrite:
        raise SynthctError("already exists; pass --overwrite to replace it", path)
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
        raise SynthctError(f"cannot write ({_first_line(exc)})", path) from None
    return path


def cast_for_storage(array: np.ndarray, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(array), info.min, info.max).astype(dtype)
    return array.astype(dtype)
