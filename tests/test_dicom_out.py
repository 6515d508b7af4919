"""DICOM CT series output: HU and geometry survive a read-back by SimpleITK and pydicom, the
source study is kept, and dciodvfy finds no errors."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from pydicom.data import get_testdata_file

from synthct.cli import main
from synthct.data.intensity import CTWindow, MRPercentile
from synthct.models.saved import generator_architecture, save_generator
from synthct.errors import SynthctError
from synthct.io.dicom_out import CT_IMAGE_STORAGE, write_ct_series
from synthct.io.image import read_image
from synthct.io.volume import Volume
from synthct.models.generators import build_generator

OBLIQUE = tuple(sitk.VersorRigid3DTransform((0.1, -0.2, 0.3, 0.927)).GetMatrix())


def sct_volume() -> Volume:
    array = np.random.default_rng(0).uniform(-1024, 3000, (4, 10, 12)).astype(np.float32)
    return Volume(array=array, spacing=(0.7, 1.3, 3.1), origin=(-12.5, 40.25, 7.0), direction=OBLIQUE)


def test_series_reads_back_with_same_hu_and_geometry(tmp_path):
    vol = sct_volume()
    folder = write_ct_series(vol, tmp_path / "sct")
    back = read_image(folder)
    assert back.same_geometry(vol, tol=1e-4)
    assert np.abs(back.array - vol.array).max() <= 0.5
    files = sorted(folder.iterdir())
    assert len(files) == 4
    d = np.asarray(OBLIQUE).reshape(3, 3)
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == CT_IMAGE_STORAGE and ds.Modality == "CT"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 1)
        assert [float(v) for v in ds.PixelSpacing] == [1.3, 0.7]  # row spacing, then column spacing
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient],
                                   np.asarray(vol.origin) + d[:, 2] * k * 3.1, atol=1e-6)
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], [*d[:, 0], *d[:, 1]], atol=1e-8)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.abs(hu - vol.array[ds.InstanceNumber - 1]).max() <= 0.5
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and "synthetic" in ds.SeriesDescription


def test_dicom_source_keeps_patient_study_and_frame_of_reference(tmp_path):
    source = read_image(get_testdata_file("CT_small.dcm"))
    folder = write_ct_series(sct_volume(), tmp_path / "sct", source)
    ds = pydicom.dcmread(sorted(folder.iterdir())[0])
    assert ds.PatientID == source.dicom["PatientID"]
    assert ds.StudyInstanceUID == source.dicom["StudyInstanceUID"]
    assert ds.FrameOfReferenceUID == source.dicom["FrameOfReferenceUID"]
    assert ds.SeriesInstanceUID != source.dicom["SeriesInstanceUID"]
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in folder.iterdir()}
    assert len(uids) == 4


def test_without_source_a_new_study_is_made(tmp_path):
    a = pydicom.dcmread(sorted(write_ct_series(sct_volume(), tmp_path / "a").iterdir())[0])
    b = pydicom.dcmread(sorted(write_ct_series(sct_volume(), tmp_path / "b").iterdir())[0])
    assert a.StudyInstanceUID != b.StudyInstanceUID and a.FrameOfReferenceUID != b.FrameOfReferenceUID


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("with_source", [False, True])
def test_dciodvfy_reports_no_errors(tmp_path, with_source):
    source = read_image(get_testdata_file("CT_small.dcm")) if with_source else None
    folder = write_ct_series(sct_volume(), tmp_path / "sct", source)
    report = subprocess.run(["dciodvfy", str(sorted(folder.iterdir())[1])], capture_output=True, text=True)
    lines = (report.stdout + report.stderr).splitlines()
    assert not [line for line in lines if line.startswith("Error")], lines


def test_existing_series_needs_overwrite_and_is_replaced_whole(tmp_path):
    folder = write_ct_series(sct_volume(), tmp_path / "sct")
    with pytest.raises(SynthctError, match="already exists"):
        write_ct_series(sct_volume(), folder)
    smaller = Volume(array=np.zeros((2, 8, 8), np.float32))
    write_ct_series(smaller, folder, overwrite=True)
    assert len(list(folder.iterdir())) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["sct"]  # no temporary folders left


def test_translate_dicom_out_from_dicom_mr(tmp_path):
    torch.manual_seed(0)
    g = build_generator("resnet", 1, 1, ngf=4, n_blocks=1)
    meta = {"direction": "mr2ct", "source": "mr", "target": "ct", "model": "cyclegan",
            "architecture": generator_architecture(g, "resnet", 1, 4, 1), "slices": 1, "size": 128, "axis": 0,
            "resize": "fit", "intensity_mode": "hu", "input_mapping": MRPercentile().to_dict(),
            "output_mapping": CTWindow().to_dict(), "step": 1, "epoch": 1}
    save_generator(g, tmp_path / "run" / "generator_mr2ct", meta)
    ct_small = get_testdata_file("CT_small.dcm")
    rc = main(["translate", "--model", str(tmp_path / "run"), "--direction", "mr2ct", ct_small, "--out",
               str(tmp_path / "out"), "--dicom-out", str(tmp_path / "dicom"), "--device", "cpu"])
    assert rc == 0
    nifti = read_image(tmp_path / "out" / "CT_small_sct.nii.gz")
    series = read_image(tmp_path / "dicom" / "CT_small_sct")
    assert series.same_geometry(nifti, tol=1e-4)
    np.testing.assert_allclose(series.array, nifti.array, atol=1)
    ds = pydicom.dcmread(next((tmp_path / "dicom" / "CT_small_sct").iterdir()))
    assert ds.StudyInstanceUID == pydicom.dcmread(ct_small).StudyInstanceUID
