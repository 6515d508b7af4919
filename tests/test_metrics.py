import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.util import crop

from synthct.errors import SynthctError
from synthct.eval.metrics import bone_agreement, eight_bit_metrics, head_mask_8bit, hu_metrics


def test_mae_me_psnr_by_hand_on_tiny_arrays():
    ref = np.zeros((1, 8, 8), np.float32)
    pred = ref.copy()
    pred[0, 2, 2] = 100.0
    pred[0, 3, 3] = -50.0
    mask = np.zeros_like(ref, bool)
    mask[0, 2:4, 2:4] = True  # 4 voxels: errors 100, 0, 0, -50
    m = hu_metrics(pred, ref, mask)
    assert m["mae"] == pytest.approx(150 / 4)
    assert m["me"] == pytest.approx(50 / 4)
    mse = (100**2 + 50**2) / 4
    assert m["psnr"] == pytest.approx(10 * np.log10(4024**2 / mse))


def test_mae_is_unclipped_but_psnr_clips_to_population_range():
    ref = np.full((1, 8, 8), 3000.0)
    pred = np.full((1, 8, 8), 5000.0)
    pred[0, 0, 0] = 3001.0
    mask = np.ones_like(ref, bool)
    m = hu_metrics(pred, ref, mask)
    assert m["mae"] == pytest.approx((63 * 2000 + 1) / 64)
    assert m["psnr"] == np.inf  # both clip to 3000 HU


def test_voxels_outside_mask_do_not_change_mae_psnr_me():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 300, (8, 16, 16))
    pred = ref + rng.normal(0, 40, ref.shape)
    mask = np.zeros(ref.shape, bool)
    mask[2:6, 4:12, 4:12] = True
    first = hu_metrics(pred, ref, mask)
    pred2 = pred.copy()
    pred2[~mask] = 2500.0
    second = hu_metrics(pred2, ref, mask)
    for name in ("mae", "me", "psnr"):
        assert first[name] == pytest.approx(second[name])
    # SSIM windows straddle the mask edge, but outside voxels are set to -1024 first.
    assert first["ssim"] == pytest.approx(second["ssim"])


def test_ssim_follows_synthrad_recipe_on_random_volume():
    rng = np.random.default_rng(1)
    ref = rng.uniform(-1500, 3500, (10, 20, 20))
    pred = ref + rng.normal(0, 200, ref.shape)
    mask = np.zeros(ref.shape, bool)
    mask[1:9, 2:18, 3:17] = True
    clipped_ref = np.where(mask, np.clip(ref, -1024, 3000), -1024) + 1024
    clipped_pred = np.where(mask, np.clip(pred, -1024, 3000), -1024) + 1024
    _, full = structural_similarity(clipped_ref, clipped_pred, data_range=4024, full=True)
    expected = crop(full, 3)[crop(mask, 3)].mean()
    assert hu_metrics(pred, ref, mask)["ssim"] == pytest.approx(expected, rel=1e-9)
    # With a full mask this is exactly skimage's own mean SSIM.
    whole = np.ones_like(mask)
    plain = structural_similarity(np.clip(ref, -1024, 3000) + 1024, np.clip(pred, -1024, 3000) + 1024, data_range=4024)
    assert hu_metrics(pred, ref, whole)["ssim"] == pytest.approx(plain, rel=1e-9)


def test_single_slice_uses_2d_ssim():
    rng = np.random.default_rng(2)
    ref = rng.uniform(-1000, 2000, (1, 24, 24))
    pred = ref + rng.normal(0, 100, ref.shape)
    mask = np.ones(ref.shape, bool)
    expected = structural_similarity(ref[0] + 1024, np.clip(pred[0], -1024, 3000) + 1024, data_range=4024)
    assert hu_metrics(pred, ref, mask)["ssim"] == pytest.approx(expected, rel=1e-9)
    assert hu_metrics(pred[0], ref[0], mask[0])["ssim"] == pytest.approx(expected, rel=1e-9)


def test_empty_mask_and_shape_mismatch_are_user_errors():
    ref = np.zeros((1, 8, 8))
    with pytest.raises(SynthctError, match="empty"):
        hu_metrics(ref, ref, np.zeros_like(ref, bool))
    with pytest.raises(SynthctError, match="shapes"):
        hu_metrics(np.zeros((1, 8, 9)), ref, np.ones_like(ref, bool))


def test_eight_bit_metrics_against_skimage_and_by_hand():
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 256, (1, 32, 32)).astype(np.float64)
    pred = np.clip(ref + rng.integers(-20, 21, ref.shape), 0, 255)
    mask = np.zeros(ref.shape, bool)
    mask[0, 8:24, 8:24] = True
    m = eight_bit_metrics(pred, ref, mask)
    assert set(m) == {"mae", "psnr", "ssim", "head_mae", "head_psnr", "head_ssim", "head_me"}
    assert m["mae"] == pytest.approx(np.abs(pred - ref).mean())
    assert m["psnr"] == pytest.approx(peak_signal_noise_ratio(ref, pred, data_range=255))
    ssim, full = structural_similarity(ref[0], pred[0], data_range=255, full=True)
    assert m["ssim"] == pytest.approx(ssim)
    assert m["head_ssim"] == pytest.approx(full[mask[0]].mean())
    assert m["head_mae"] == pytest.approx(np.abs(pred - ref)[mask].mean())
    assert m["head_me"] == pytest.approx(np.median((pred - ref)[mask]))
    assert m["head_psnr"] == pytest.approx(peak_signal_noise_ratio(ref[mask], pred[mask], data_range=255))


def test_head_mask_on_disc_fills_holes_keeps_largest_and_dilates():
    yy, xx = np.mgrid[:64, :64]
    picture = np.zeros((64, 64), np.uint8)
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 <= 15**2
    picture[disc] = 120
    picture[(yy - 32) ** 2 + (xx - 32) ** 2 <= 4**2] = 0  # a dark ventricle inside the head
    picture[2:4, 2:4] = 200  # a speck of noise far from the head
    mask = head_mask_8bit(picture)
    assert mask.dtype == bool and mask.shape == picture.shape
    assert mask[32, 32]  # hole filled
    assert not mask[2, 2]  # only the largest component survives
    assert mask[32, 32 + 15 + 5] and not mask[32, 32 + 15 + 7]  # dilated by 5 pixels
    stacked = head_mask_8bit(np.stack([picture, picture]))
    assert stacked.shape == (2, 64, 64) and (stacked[1] == mask).all()


def _ring(shape, centre, inner, outer):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    r = np.hypot(yy - centre[0], xx - centre[1])
    return (r >= inner) & (r < outer)


def test_bone_agreement_counts_overlap_and_bone_beyond_the_tolerance():
    region = np.ones((64, 64), bool)
    skull = _ring((64, 64), (32, 32), 20, 24)
    ref = np.where(skull, 255.0, 100.0)
    same = bone_agreement(ref, ref, region, threshold=200)
    assert same["bone_dice"] == 1.0 and same["bone_invented"] == 0.0 and same["bone_missed"] == 0.0
    # The skull shifted by 2 pixels: Dice falls, but within a 3-pixel tolerance nothing is invented.
    shifted = np.roll(ref, 2, axis=1)
    moved = bone_agreement(shifted, ref, region, threshold=200, tolerance=3)
    overlap = (np.roll(skull, 2, axis=1) & skull).sum()
    assert moved["bone_dice"] == pytest.approx(2 * overlap / (2 * skull.sum()))
    assert moved["bone_invented"] == 0.0 and moved["bone_missed"] == 0.0
    # A bright blob in the brain is invented bone: its share of the synthetic bone, exactly.
    blob = _ring((64, 64), (32, 32), 0, 4)
    with_blob = np.where(blob, 255.0, ref)
    found = bone_agreement(with_blob, ref, region, threshold=200, tolerance=3)
    assert found["bone_invented"] == pytest.approx(blob.sum() / (blob.sum() + skull.sum()))
    assert found["bone_missed"] == 0.0
    # Half of the skull gone is missed bone; with 0.5 mm pixels a 3 mm tolerance reaches twice as far.
    half = np.where(skull & (np.mgrid[:64, :64][1] < 32), 100.0, ref)
    lost = bone_agreement(half, ref, region, threshold=200, tolerance=3)
    assert 0.3 < lost["bone_missed"] < 0.6 and lost["bone_invented"] == 0.0
    assert bone_agreement(half, ref, region, 200, tolerance=3, spacing=(0.5, 0.5))["bone_missed"] < lost["bone_missed"]
    # Bone outside the region does not count; no bone at all is NaN, not a perfect score.
    outside = np.zeros((64, 64), bool)
    outside[:5, :5] = True
    assert np.isnan(bone_agreement(ref, ref, outside, 200)["bone_dice"])
    none = bone_agreement(np.full((64, 64), 100.0), ref, region, 200, tolerance=3)
    assert none["bone_dice"] == 0.0 and np.isnan(none["bone_invented"]) and none["bone_missed"] == 1.0


def test_bone_agreement_is_the_same_on_a_large_canvas_with_bone_outside_the_region():
    skull = _ring((64, 64), (32, 32), 20, 24)
    ref = np.where(skull, 255.0, 100.0)
    pred = np.where(_ring((64, 64), (32, 32), 0, 4) | np.roll(skull, 3, axis=0), 255.0, 100.0)
    region = _ring((64, 64), (32, 32), 0, 26)
    expected = bone_agreement(pred, ref, region, 200, tolerance=2)
    # The same pictures in a 3-slice volume on a canvas four times the size, with bone around them.
    canvas = lambda picture: np.pad(np.repeat(picture[None], 3, axis=0), ((0, 0), (40, 24), (8, 56)),
                                    constant_values=255.0)
    in_canvas = np.pad(np.repeat(region[None], 3, axis=0), ((0, 0), (40, 24), (8, 56)))
    found = bone_agreement(canvas(pred), canvas(ref), in_canvas, 200, tolerance=2, spacing=(9.0, 1.0, 1.0))
    assert found == pytest.approx(expected)

