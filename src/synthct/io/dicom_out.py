"""Synthetic CT -> a DICOM CT Image Storage series (one file per slice), written with pydicom.

Geometry follows the volume exactly (SimpleITK/LPS convention, which is DICOM's patient
coordinate system): for slice k, ImagePositionPatient = origin + D[:, 2] * k * spacing_z;
ImageOrientationPatient = (D[:, 0], D[:, 1]), the directions of increasing column and row
index; PixelSpacing = (row spacing = spacing_y, column spacing = spacing_x). Oblique directions
go through unchanged. A volume whose slice axis points against row x column (a left-handed
direction matrix, e.g. from a flipped NIfTI) is still written at the right physical places;
DICOM readers then stack it in the opposite slice order, as they do for any such series.

Identifiers: a synthetic CT derived from a DICOM MR keeps the MR's patient identifiers, its
StudyInstanceUID (and study attributes) and its FrameOfReferenceUID, so PACS and treatment
planning systems file the sCT in the same study, registered to the MR it was computed from
(it has the MR's exact geometry). The SeriesInstanceUID and every SOPInstanceUID are new.
Without a DICOM source a new study and frame of reference are created and patient
attributes are left empty (type 2). Pixels are int16 HU with RescaleSlope 1 and
RescaleIntercept 0 (every HU value from -32768 to 32767 fits without scaling).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from synthct import __version__
from synthct.errors import SynthctError
from synthct.io.atomic import refuse_existing
from synthct.io.volume import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DEFAULT_DESCRIPTION = "synthetic CT (synthct, MR-derived)"
SERIES_NUMBER = 9001
# Soft-tissue window for display; viewers let the user change it.
WINDOW_CENTER, WINDOW_WIDTH = 40, 400


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    text = f"{value:.10g}"
    if len(text) > 16:
        text = f"{value:.6e}" if abs(value) >= 1e6 or (value and abs(value) < 1e-4) else f"{value:.8f}"[:16]
    return text


def slice_geometry(vol: Volume) -> tuple[np.ndarray, list[float], list[np.ndarray]]:
    """(direction matrix D, ImageOrientationPatient, ImagePositionPatient per slice)."""
    d = np.asarray(vol.direction, np.float64).reshape(3, 3)
    sx, sy, sz = (float(s) for s in vol.spacing)
    origin = np.asarray(vol.origin, np.float64)
    orientation = [*d[:, 0], *d[:, 1]]
    positions = [origin + d[:, 2] * k * sz for k in range(vol.shape[0])]
    return d, orientation, positions


def _hu_int16(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), -32768, 32767).astype("<i2")


def _base_dataset(vol: Volume, source: Volume | None, series_description: str, now: _dt.datetime):
    """The attributes every slice of the series shares (each slice adds its position and pixels)."""
    from pydicom.dataset import Dataset

    tags = dict(source.dicom) if source is not None and source.dicom else {}
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    _set_patient_and_study(ds, tags, date, time)
    _set_series_and_frame(ds, tags, series_description, date, time)
    _set_equipment_and_image(ds, date, time)
    _set_pixels_and_plane(ds, vol)
    return ds


def _set_patient_and_study(ds, tags: dict, date: str, time: str) -> None:
    from pydicom.uid import generate_uid

    # Patient (type 2 attributes are present, empty when unknown).
    for name in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        setattr(ds, name, tags.get(name, ""))
    if tags.get("PatientAge"):
        ds.PatientAge = tags["PatientAge"]
    # General Study: the source's study when there is one, else a new study made now.
    keep_study = bool(tags.get("StudyInstanceUID"))
    study = tags if keep_study else {}
    ds.StudyInstanceUID = tags["StudyInstanceUID"] if keep_study else generate_uid()
    ds.StudyDate = study.get("StudyDate", date)
    ds.StudyTime = study.get("StudyTime", time)
    ds.StudyID = study.get("StudyID", "") if keep_study else "SYNTHCT"
    ds.AccessionNumber = study.get("AccessionNumber", "")
    ds.ReferringPhysicianName = study.get("ReferringPhysicianName", "")
    if study.get("StudyDescription"):
        ds.StudyDescription = study["StudyDescription"]


def _set_series_and_frame(ds, tags: dict, series_description: str, date: str, time: str) -> None:
    from pydicom.uid import generate_uid

    # General Series
    ds.Modality = "CT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = series_description
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.PatientPosition = tags.get("PatientPosition", "")
    ds.Laterality = ""  # type 2C: the whole image, no paired organ singled out
    if tags.get("BodyPartExamined"):
        ds.BodyPartExamined = tags["BodyPartExamined"]
    # Frame of Reference: the source's, since the sCT has the source's geometry.
    ds.FrameOfReferenceUID = tags.get("FrameOfReferenceUID") or generate_uid()
    ds.PositionReferenceIndicator = ""


def _set_equipment_and_image(ds, date: str, time: str) -> None:
    # General Equipment
    ds.Manufacturer = "synthct"
    ds.ManufacturerModelName = "synthct"
    ds.SoftwareVersions = __version__
    # General Image / CT Image
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.DerivationDescription = f"Synthetic CT computed by synthct {__version__} (deep-learning image translation)"
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.AcquisitionNumber = 1
    ds.KVP = ""
    ds.BurnedInAnnotation = "NO"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = str(WINDOW_CENTER)
    ds.WindowWidth = str(WINDOW_WIDTH)
    ds.WindowCenterWidthExplanation = "SOFT TISSUE"


def _set_pixels_and_plane(ds, vol: Volume) -> None:
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(vol.shape[1]), int(vol.shape[2])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    # Image Plane, but for each slice's position
    sx, sy, sz = (float(s) for s in vol.spacing)
    ds.PixelSpacing = [_ds(sy), _ds(sx)]  # row spacing (between rows, along y), then column spacing
    ds.SliceThickness = _ds(sz)
    # Also for a single slice: GDCM (SimpleITK) takes a lone slice's z spacing from here.
    ds.SpacingBetweenSlices = _ds(sz)


def write_ct_series(vol_hu: Volume, out_dir: str | Path, source: Volume | None = None,
                    series_description: str = DEFAULT_DESCRIPTION, overwrite: bool = False) -> Path:
    """Write ``vol_hu`` (HU, (z, y, x)) as a CT series in ``out_dir``, one ``CT######.dcm`` per slice.

    ``source``: the volume the sCT was derived from; when it was DICOM (``source.dicom``
    holds its tags) patient, study and frame of reference are carried over (see module
    docstring). The series appears atomically: it is written in a temporary folder next to
    ``out_dir`` and renamed into place.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    out_dir = Path(out_dir)
    refuse_existing([out_dir], overwrite)
    if out_dir.exists() and not out_dir.is_dir():
        raise SynthctError("exists and is not a folder", out_dir)
    now = _dt.datetime.now()
    base = _base_dataset(vol_hu, source, series_description, now)
    d, orientation, positions = slice_geometry(vol_hu)
    normal = np.cross(d[:, 0], d[:, 1])
    pixels = _hu_int16(vol_hu.array)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        for k, position in enumerate(positions):
            ds = base.copy()
            ds.SOPInstanceUID = generate_uid()
            ds.InstanceNumber = k + 1
            ds.ImageOrientationPatient = [_ds(v) for v in orientation]
            ds.ImagePositionPatient = [_ds(v) for v in position]
            ds.SliceLocation = _ds(float(position @ normal))
            ds.SmallestImagePixelValue = int(pixels[k].min())
            ds.LargestImagePixelValue = int(pixels[k].max())
            ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.file_meta = meta
            ds.preamble = b"\0" * 128
            ds.save_as(tmp / f"CT{k + 1:06d}.dcm", enforce_file_format=True)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _replace_dir(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
    os.replace(target, old / "series")
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
