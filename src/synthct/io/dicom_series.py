"""DICOM input: telling DICOM files apart, reading one file or a series folder, and the
identifying tags (read with pydicom, as SimpleITK does not expose them) that derived outputs carry."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from synthct.errors import SynthctError
from synthct.io.formats import DICOM_SUFFIXES, PICTURE_SUFFIXES, VOLUME_SUFFIXES, file_suffix
from synthct.io.sitk_reader import brief_error, check_size, read_with_sitk
from synthct.io.volume import Volume, volume_from_sitk

# DICOM attributes carried from a source series to derived outputs (synthetic CT series).
DICOM_CARRIED_TAGS = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "StudyDescription",
    "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID",
    "Modality", "SeriesDescription", "SeriesInstanceUID", "BodyPartExamined",
    "PatientPosition", "Manufacturer",
)


def is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    # Scanner exports often have no suffix or a UID-like one; trust the DICM preamble.
    if file_suffix(path) in VOLUME_SUFFIXES + PICTURE_SUFFIXES + (".npy",):
        return False
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_dicom_file(p))


def is_dicom_series_dir(path: Path) -> bool:
    return path.is_dir() and bool(dicom_files(path))


def dicom_tags(path: Path) -> dict:
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


def read_dicom_series(folder: Path) -> Volume:
    """Read one DICOM series folder, slices ordered by position, rescale applied (CT in HU)."""
    folder = Path(folder)
    files = dicom_files(folder)
    if not files:
        raise SynthctError("no DICOM files in folder", folder)
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise SynthctError(f"cannot scan DICOM series ({brief_error(exc)})", folder) from None
    if not series_ids:
        raise SynthctError("DICOM files present but none is a readable image series", folder)
    if len(series_ids) > 1:
        raise SynthctError(f"folder holds {len(series_ids)} DICOM series; give one series per folder", folder)
    try:
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0])
    except RuntimeError as exc:
        raise SynthctError(f"cannot scan DICOM series ({brief_error(exc)})", folder) from None
    if len(names) == 1:
        return read_dicom_file(Path(names[0]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        first = sitk.ImageFileReader()
        first.SetFileName(names[0])
        first.ReadImageInformation()
        check_size((*first.GetSize()[:2], len(names)), folder, first.GetNumberOfComponents())
        img = reader.Execute()
    except RuntimeError as exc:
        raise SynthctError(f"cannot read DICOM series ({brief_error(exc)})", folder) from None
    vol = volume_from_sitk(img, str(folder), "dicom-series", dicom_tags(Path(names[0])))
    vol.dicom["_files"] = len(names)
    return vol


def read_dicom_file(path: Path) -> Volume:
    img = read_with_sitk(path, "DICOM")
    vol = volume_from_sitk(img, str(path), "dicom", dicom_tags(path))
    if vol.array.shape[0] == 1 and img.GetDimension() == 3:
        vol.is_2d = False
    return vol

