"""Image-similarity metrics for synthetic CT.

``hu_metrics`` follows the SynthRAD2023 challenge evaluation (SynthRAD2023/metrics,
``functions/image_metrics.py``; Huijben et al., Med. Image Anal. 2024) step by step, so
numbers are comparable with the challenge leaderboard:

* MAE  = sum(|CT - sCT| * m) / sum(m) over the mask, on the *unclipped* HU values
  (the challenge clips only for PSNR and SSIM).
* ME   = mean signed error (sCT - CT) over the mask, unclipped. Not a challenge metric; it shows
  a systematic HU offset that MAE hides.
* PSNR = 10 log10(4024^2 / MSE) over the mask voxels after clipping both images to
  [-1024, 3000] HU (the challenge's "population range").
* SSIM: both images clipped to [-1024, 3000], set to -1024 outside the mask, shifted by +1024,
  ``skimage.metrics.structural_similarity(..., data_range=4024, full=True)`` on the 3D volume,
  then the mean of the SSIM map over mask voxels after cropping (7 - 1) // 2 = 3 voxels from
  every border, as skimage crops for its own mean.

``eight_bit_metrics`` is for 8-bit picture pairs (values 0..255), the protocol of our real-data
experiments: whole-image and inside-the-head MAE, PSNR and SSIM, plus the median signed error
inside the head.

``bone_agreement`` asks where the bone is rather than how bright: Dice of the two bone masks, and
the shares of bone that one image has and the other lacks beyond a tolerance. ``synthct evaluate``
reports it for CT in HU beside the SynthRAD2023 metrics: bone is ``>= BONE_HU`` inside the mask,
and ``BONE_TOLERANCE_MM`` absorbs the residual misregistration of real sCT/CT pairs.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.util import crop

from synthct.errors import SynthctError

HU_RANGE = (-1024.0, 3000.0)
HU_DATA_RANGE = HU_RANGE[1] - HU_RANGE[0]
EIGHT_BIT_RANGE = 255.0
SSIM_WINDOW = 7
SSIM_BORDER = (SSIM_WINDOW - 1) // 2

HU_METRICS = ("mae", "me", "psnr", "ssim")
BONE_METRICS = ("bone_dice", "bone_invented", "bone_missed")
# Cortical and dense trabecular bone lie above ~250 HU, soft tissue and contrast-free organs
# below ~100 HU: a threshold between them that does not hinge on the exact bone density.
BONE_HU = 250.0
BONE_TOLERANCE_MM = 2.0
EIGHT_BIT_METRICS = ("mae", "psnr", "ssim", "head_mae", "head_psnr", "head_ssim", "head_me")


def _as_volumes(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray):
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    mask = np.asarray(mask) > 0
    if pred.ndim == 2:
        pred, ref, mask = pred[None], ref[None], mask[None]
    if not (pred.shape == ref.shape == mask.shape) or pred.ndim != 3:
        raise SynthctError(
            f"shapes differ or are not (z, y, x): prediction {pred.shape}, reference {ref.shape}, mask {mask.shape}"
        )
    if not mask.any():
        raise SynthctError("mask is empty; no voxel to evaluate")
    return pred, ref, mask


def _psnr(ref: np.ndarray, pred: np.ndarray, data_range: float) -> float:
    """skimage's PSNR; +inf for identical inputs (without skimage's divide-by-zero warning)."""
    if np.array_equal(ref, pred):
        return float("inf")
    return float(peak_signal_noise_ratio(ref, pred, data_range=data_range))


def _ssim_map(
    ref: np.ndarray, pred: np.ndarray, data_range: float, slice_by_slice: bool = False
) -> tuple[np.ndarray, bool]:
    """SSIM map of a (z, y, x) pair and whether the z axis took part in the window.

    A volume thinner than the 7-voxel window (a single picture, a thin slab) has no 3D SSIM;
    its slices are then compared in 2D and only y and x are cropped.
    """
    if min(ref.shape[1:]) < SSIM_WINDOW:
        raise SynthctError(f"image is {ref.shape[2]} x {ref.shape[1]} pixels; SSIM needs at least {SSIM_WINDOW} x {SSIM_WINDOW}")
    if ref.shape[0] >= SSIM_WINDOW and not slice_by_slice:
        _, full = structural_similarity(ref, pred, data_range=data_range, full=True)
        return full, True
    maps = [structural_similarity(r, p, data_range=data_range, full=True)[1] for r, p in zip(ref, pred)]
    return np.stack(maps), False


def _crop_border(array: np.ndarray, with_z: bool) -> np.ndarray:
    pad = SSIM_BORDER
    return crop(array, ((pad, pad) if with_z else (0, 0), (pad, pad), (pad, pad)))


def hu_metrics(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """SynthRAD2023 MAE, ME, PSNR and SSIM of a synthetic CT ``pred`` against CT ``ref`` (HU).

    Arrays are (z, y, x) (a picture is (1, y, x) or (y, x)); ``mask`` > 0 marks the voxels scored.
    """
    pred, ref, mask = _as_volumes(pred, ref, mask)
    error = pred[mask] - ref[mask]
    mae = float(np.abs(error).mean())
    me = float(error.mean())

    low, high = HU_RANGE
    ref_clipped = np.clip(ref, low, high)
    pred_clipped = np.clip(pred, low, high)
    psnr = _psnr(ref_clipped[mask], pred_clipped[mask], HU_DATA_RANGE)

    ref_ssim = np.where(mask, ref_clipped, low) - low
    pred_ssim = np.where(mask, pred_clipped, low) - low
    ssim_map, with_z = _ssim_map(ref_ssim, pred_ssim, HU_DATA_RANGE)
    inside = _crop_border(mask, with_z)
    if not inside.any():
        raise SynthctError(f"mask lies entirely within {SSIM_BORDER} voxels of the border; SSIM is undefined")
    ssim = float(_crop_border(ssim_map, with_z)[inside].mean(dtype=np.float64))
    return {"mae": mae, "me": me, "psnr": psnr, "ssim": ssim}


def eight_bit_metrics(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Whole-image and in-head metrics of an 8-bit synthetic picture against its reference.

    SSIM is computed per slice in 2D (data range 255); ``ssim`` is skimage's mean (border of 3
    cropped, averaged over slices) and ``head_ssim`` the mean of the uncropped SSIM map inside
    the head mask. ``head_me`` is the median of (pred - ref) inside the mask.
    """
    pred, ref, mask = _as_volumes(pred, ref, mask)
    error = pred - ref
    ssim_map, _ = _ssim_map(ref, pred, EIGHT_BIT_RANGE, slice_by_slice=True)
    return {
        "mae": float(np.abs(error).mean()),
        "psnr": _psnr(ref, pred, EIGHT_BIT_RANGE),
        "ssim": float(_crop_border(ssim_map, with_z=False).mean(dtype=np.float64)),
        "head_mae": float(np.abs(error[mask]).mean()),
        "head_psnr": _psnr(ref[mask], pred[mask], EIGHT_BIT_RANGE),
        "head_ssim": float(ssim_map[mask].mean(dtype=np.float64)),
        "head_me": float(np.median(error[mask])),
    }


def head_mask_8bit(mr: np.ndarray, threshold: float = 10) -> np.ndarray:
    """Head mask of an 8-bit picture, slice by slice: MR > threshold, binary closing (3
    iterations), holes filled, largest connected component, dilated by 5 pixels.

    Accepts (y, x) or (z, y, x) and returns a bool array of the same shape.
    """
    mr = np.asarray(mr)
    slices = mr[None] if mr.ndim == 2 else mr
    out = np.zeros(slices.shape, dtype=bool)
    for i, picture in enumerate(slices):
        head = ndimage.binary_closing(picture > threshold, iterations=3)
        head = ndimage.binary_fill_holes(head)
        labels, count = ndimage.label(head)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        head = labels == (int(np.argmax(sizes)) + 1)
        out[i] = ndimage.binary_dilation(head, iterations=5)
    return out[0] if mr.ndim == 2 else out


def adjacent_slice_difference(volume: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Slice-to-slice jitter of a (z, y, x) volume: mean |v[z+1] - v[z]| over the voxel pairs
    that lie inside ``mask`` (> 0) in both slices, or over all pairs without a mask.

    A 2D translator applied slice by slice can flicker along z; the ratio of this value for a
    synthetic CT to that of its reference measures the flicker (about 1 = as smooth as the real CT).
    """
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim != 3 or volume.shape[0] < 2:
        raise SynthctError(f"need a (z, y, x) volume with at least 2 slices, got shape {volume.shape}")
    steps = np.abs(np.diff(volume, axis=0))
    if mask is None:
        return float(steps.mean())
    mask = np.asarray(mask) > 0
    if mask.shape != volume.shape:
        raise SynthctError(f"mask shape {mask.shape} differs from volume shape {volume.shape}")
    pairs = mask[1:] & mask[:-1]
    if not pairs.any():
        raise SynthctError("mask has no voxel inside it on two adjacent slices")
    return float(steps[pairs].mean())


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Slices of the smallest box holding every True voxel of a non-empty mask."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def bone_agreement(pred: np.ndarray, ref: np.ndarray, region: np.ndarray, threshold: float,
                   tolerance: float = 0.0, spacing: tuple[float, ...] | None = None) -> dict[str, float]:
    """How well the bone of a synthetic CT lies where the real CT's does.

    Bone is ``value >= threshold`` inside ``region`` (e.g. 250 HU, or the saturated skull of
    8-bit pictures). Returns the Dice of the two bone masks and, with ``tolerance`` (in the
    units of ``spacing``, pixels without it), the fraction of synthetic bone farther than that
    from any real bone (``invented``) and of real bone farther than that from any synthetic
    bone (``missed``): a tolerance absorbs the few pixels by which approximately registered
    pairs disagree, so what is left is structure one image has and the other lacks.
    Fractions are NaN when the image in question has no bone in the region. ``spacing``: the
    voxel size along the array's axes ((z, y, x), or (y, x) for a picture).
    """
    pred, ref, region = _as_volumes(pred, ref, region)
    # Only bone inside the region counts, so the distance maps need only the region's bounding box
    # (a CT volume's full-size float64 distance map would take gigabytes).
    box = _bounding_box(region)
    pred_bone = (pred[box] >= threshold) & region[box]
    ref_bone = (ref[box] >= threshold) & region[box]
    total = pred_bone.sum() + ref_bone.sum()
    dice = 2.0 * float((pred_bone & ref_bone).sum()) / float(total) if total else float("nan")

    def farther(bone: np.ndarray, other: np.ndarray) -> float:
        if not bone.any():
            return float("nan")
        if not other.any():
            return 1.0
        if other.shape[0] == 1:  # a picture: distances in its plane
            plane = tuple(spacing[-2:]) if spacing is not None else None
            distance = ndimage.distance_transform_edt(~other[0], sampling=plane)[None]
        else:
            distance = ndimage.distance_transform_edt(~other, sampling=spacing)
        return float((distance[bone] > tolerance).mean())

    return {"bone_dice": dice, "bone_invented": farther(pred_bone, ref_bone),
            "bone_missed": farther(ref_bone, pred_bone)}

