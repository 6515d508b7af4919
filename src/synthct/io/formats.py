"""The image formats synthct reads and writes, told apart by file suffix."""

from __future__ import annotations

from pathlib import Path

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
SUPPORTED_SUFFIXES = VOLUME_SUFFIXES + PICTURE_SUFFIXES + DICOM_SUFFIXES + (".npy",)
WRITABLE_SUFFIXES = VOLUME_SUFFIXES + (".png", ".tif", ".tiff", ".npy")

# The format name a volume read from a file of each (non-DICOM, non-.npy) suffix carries.
FORMAT_NAMES = {
    ".nii.gz": "nifti", ".nii": "nifti", ".mha": "mha", ".mhd": "mha", ".nrrd": "nrrd", ".nhdr": "nrrd",
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff",
}


def file_suffix(path: Path) -> str:
    """The lower-case image suffix of ``path`` (``.nii.gz`` counts as one), else its last suffix."""
    name = path.name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def image_stem(name: str) -> str:
    """``name`` without its image suffix (the longest supported one it ends with, any case)."""
    lower = name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name
