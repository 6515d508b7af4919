"""Image I/O: HU from DICOM, exact geometry round trips, and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from synthct.cli import main
from synthct.errors import SynthctError
from synthct.io.image import list_images, read_image, write_image
from synthct.io.volume import Volume

OBLIQUE = tuple(sitk.VersorRigid3DTransform((0.1, -0.2, 0.3, 0.927)).GetMatrix())


def oblique_volume() -> Volume:
    rng = np.random.default_rng(0)
    array = rng.uniform(-1000, 2000, size=(7, 9, 11)).round().astype(np.float32)
    return Volume(array=array, spacing=(0.7, 1.3, 3.1), origin=(-12.5, 40.25, 7.0), direction=OBLIQUE)


def test_ct_small_reads_as_hounsfield_units():
    vol = read_image(get_testdata_file("CT_small.dcm"))
    assert vol.array.min() == -896 and vol.array.max() == 1167
    assert vol.dicom["Modality"] == "CT"


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"])
def test_oblique_anisotropic_round_trip_is_exact(tmp_path, suffix):
    vol = oblique_volume()
    path = write_image(vol, tmp_path / f"v{suffix}", dtype="int16")
    back = read_image(path)
    assert back.same_geometry(vol, tol=1e-5)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.source_dtype == "int16"


def _write_ct_slice(path, z, hu_slice, series_uid, study_uid, for_uid):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientID = "TEST01"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
    ds.ImagePositionPatient = [-10.0, -20.0, 5.0 + 2.5 * z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.8, 0.6]  # row spacing (y), column spacing (x)
    ds.SliceThickness = 2.5
    ds.Rows, ds.Columns = hu_slice.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.InstanceNumber = z + 1
    ds.PixelData = (hu_slice + 1024).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_series_reads_in_slice_order_with_hu(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    hu = np.stack([np.full((6, 5), -1000 + 300 * z, dtype=np.int16) for z in range(5)])
    hu[:, 0, 0] = 1500
    uids = generate_uid(), generate_uid(), generate_uid()
    # File names in reverse slice order: the reader must sort by position, not by name.
    for z in range(5):
        _write_ct_slice(series / f"IM{4 - z:04d}", z, hu[z], *uids)
    vol = read_image(series)
    np.testing.assert_array_equal(vol.array, hu.astype(np.float32))
    assert vol.spacing == pytest.approx((0.6, 0.8, 2.5))
    assert vol.origin == pytest.approx((-10.0, -20.0, 5.0))
    assert vol.dicom["PatientID"] == "TEST01" and vol.dicom["FrameOfReferenceUID"] == uids[2]
    assert list_images(series) == [series]


def test_png_8_and_16_bit_and_npy(tmp_path):
    img8 = np.arange(64, dtype=np.uint8).reshape(8, 8)
    sitk.WriteImage(sitk.GetImageFromArray(img8), str(tmp_path / "a.png"))
    img16 = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    sitk.WriteImage(sitk.GetImageFromArray(img16), str(tmp_path / "b.png"))
    np.save(tmp_path / "c.npy", np.ones((3, 4, 5), dtype=np.int16))
    a, b, c = (read_image(tmp_path / n) for n in ("a.png", "b.png", "c.npy"))
    assert a.is_2d and a.shape == (1, 8, 8) and a.array.max() == 63
    assert b.array.max() == 63000 and b.source_dtype == "uint16"
    assert c.shape == (3, 4, 5) and not c.is_2d
    out = write_image(a, tmp_path / "out.png")
    np.testing.assert_array_equal(read_image(out).array, a.array)


def test_rgb_png_with_equal_channels_is_grayscale(tmp_path):
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4)
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([gray] * 3, -1), isVector=True), str(tmp_path / "g.png"))
    np.testing.assert_array_equal(read_image(tmp_path / "g.png").array[0], gray)


def test_write_refuses_to_overwrite(tmp_path):
    vol = oblique_volume()
    path = write_image(vol, tmp_path / "v.nii.gz")
    before = path.read_bytes()
    with pytest.raises(SynthctError, match="already exists"):
        write_image(vol.with_array(vol.array + 1), path)
    assert path.read_bytes() == before
    write_image(vol.with_array(vol.array + 1), path, overwrite=True)
    assert read_image(path).array[0, 0, 0] == vol.array[0, 0, 0] + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nii.gz"]  # no temporary files left


def _bad_inputs(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "corrupt.nii.gz").write_bytes(b"not a nifti at all" * 10)
    (tmp_path / "empty.mha").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.png"))
    frames = [sitk.GetImageFromArray(np.zeros((3, 4, 5), dtype=np.float32)) for _ in range(2)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(tmp_path / "4d.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), dtype=np.float32), isVector=True),
                    str(tmp_path / "vector.nrrd"))
    nan = np.zeros((3, 4, 5), dtype=np.float32)
    nan[1, 1, 1] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.mha"))
    # ITK's NIfTI reader would turn these into 0 (water, in a CT): synthct checks the voxel data itself.
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.nii"))
    inf = np.zeros((3, 4, 5), dtype=np.float64)
    inf[2, 3, 4] = -np.inf
    sitk.WriteImage(sitk.GetImageFromArray(inf), str(tmp_path / "inf.nii.gz"))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return {
        "missing.nii.gz": "no such file",
        "empty_dir": "no DICOM files",
        "corrupt.nii.gz": "cannot read",
        "empty.mha": "empty",
        "notes.txt": "unsupported format",
        "rgb.png": "colour image",
        "4d.nii.gz": "4D image",
        "vector.nrrd": "vector image",
        "nan.mha": "NaN or Inf",
        "nan.nii": "1 voxels are NaN or Inf",
        "inf.nii.gz": "1 voxels are NaN or Inf",
        "objects.npy": "not a plain numeric",
    }


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    for name, message in _bad_inputs(tmp_path).items():
        with pytest.raises(SynthctError, match=message) as info:
            read_image(tmp_path / name)
        assert name in str(info.value)
        assert main(["info", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and name in err and "Traceback" not in err


def test_absurd_header_refused_before_allocation(tmp_path):
    header = (
        "ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\n"
        "ElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    (tmp_path / "huge.mha").write_bytes(header.encode() + b"\0" * 64)
    with pytest.raises(SynthctError, match="refusing to allocate"):
        read_image(tmp_path / "huge.mha")


def test_info_reports_geometry_and_hu(tmp_path, capsys):
    assert main(["info", get_testdata_file("CT_small.dcm")]) == 0
    out = capsys.readouterr().out
    assert "min -896" in out and "max 1167" in out and "looks like HU yes" in out
    vol = oblique_volume()
    path = write_image(vol, tmp_path / "v.nrrd", dtype="int16")
    assert main(["info", "--json", str(path)]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert info["shape_xyz"] == [11, 9, 7]
    assert info["spacing_mm"] == pytest.approx([0.7, 1.3, 3.1])
    assert info["orientation"] == vol.orientation


def test_single_dicom_file_keeps_its_tags():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    vol = read_image(get_testdata_file("CT_small.dcm"))
    assert vol.dicom["PatientID"] == str(ds.PatientID)
    assert vol.spacing[:2] == pytest.approx((float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])))


def test_writing_under_a_file_is_a_clear_error_naming_the_target(tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    target = blocker / "scan.nii.gz"
    with pytest.raises(SynthctError, match="cannot write") as info:
        write_image(Volume(np.zeros((1, 4, 4), np.float32)), target)
    assert info.value.path == str(target)
    assert blocker.read_text() == "keep me"
