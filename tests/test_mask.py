import numpy as np
import pytest
from scipy import ndimage

from synthct.data.mask import body_mask
from synthct.data.phantom import make_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(5, size=(64, 64, 24))


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_ct_body_mask_matches_phantom_mask(phantom):
    mr, ct, mask = phantom
    found = body_mask(ct, "ct")
    assert found.shape == ct.shape and found.dtype == bool
    assert dice(found, mask > 0) > 0.95


def test_mr_body_mask_survives_bias_field_and_noise(phantom):
    mr, ct, mask = phantom
    found = body_mask(mr, "mr")
    assert dice(found, mask > 0) > 0.95
    for z in range(found.shape[0]):
        assert np.array_equal(ndimage.binary_fill_holes(found[z]), found[z])


def test_mask_fills_holes_and_keeps_largest_component():
    image = np.full((1, 40, 40), -1000.0, np.float32)
    image[0, 5:35, 5:35] = 40.0
    image[0, 15:25, 15:25] = -1000.0  # air pocket inside the body
    image[0, 0:2, 38:40] = 100.0  # a speck outside
    found = body_mask(image, "ct")
    assert found.shape == (1, 40, 40)
    assert found[0, 20, 20] and not found[0, 0, 39]
    assert found.sum() == 30 * 30


def test_mask_keeps_an_arm_apart_from_the_trunk():
    # Axial CT through the abdomen with the arms at the sides: separate components, all body.
    image = np.full((4, 60, 80), -1000.0, np.float32)
    image[:, 10:50, 15:65] = 30.0  # trunk, 2000 voxels a slice
    image[:, 25:33, 2:10] = 30.0  # arm, 64 voxels a slice (3 % of the trunk)
    image[:, 55:56, 75:77] = 30.0  # a two-voxel speck (0.1 %)
    found = body_mask(image, "ct")
    assert found[:, 28, 5].all() and found[:, 30, 40].all()
    assert not found[:, 55, 75].any()
    assert found.sum() == 4 * (2000 + 64)


def test_eight_bit_threshold_and_2d_input():
    picture = np.zeros((30, 30), np.float32)
    picture[10:20, 10:20] = 11
    found = body_mask(picture, "8bit")
    assert found.shape == (30, 30) and found.sum() == 100
    assert not body_mask(np.full((1, 10, 10), 9.0), "8bit").any()
