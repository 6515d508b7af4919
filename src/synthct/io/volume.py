"""A grayscale image or volume with its physical geometry, and its conversion from SimpleITK.

Arrays are ``(z, y, x)`` float32 as SimpleITK returns them; geometry uses SimpleITK's
convention (spacing and origin in x, y, z order, direction cosines row-major, LPS physical space).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk

from synthct.errors import SynthctError

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
    check_finite(vol.array, path)
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


def check_finite(array: np.ndarray, path) -> None:
    if not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise SynthctError(f"{bad} voxels are NaN or Inf", path)
