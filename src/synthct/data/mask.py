"""Body (foreground) masks: threshold, keep the large 3D components, fill holes, close gaps."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from synthct.errors import SynthctError

CT_BODY_HU = -500.0
EIGHT_BIT_BODY_LEVEL = 10.0
# Parts apart from the largest component are body too when at least this share of its size: an
# arm beside the trunk (a few per cent of it) stays, noise specks and small ghosts go.
BODY_PART_SHARE = 0.01


def mr_threshold(array: np.ndarray) -> float:
    """Otsu's threshold, kept below a tenth of the 99th percentile.

    Otsu alone can settle between dark and bright tissue when there is little background
    or a strong bias field; the head's darkest tissue (CSF, bone) is filled as holes later,
    but the scalp must pass, and a tenth of a bright-tissue level stays above Rician noise.
    """
    from skimage.filters import threshold_otsu

    sample = array[::2, ::2, ::2] if array.shape[0] > 1 else array[:, ::2, ::2]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0 or sample.min() == sample.max():
        return float(sample.min()) if sample.size else 0.0
    otsu = float(threshold_otsu(sample))
    bright = float(np.percentile(sample, 99.0))
    return min(otsu, 0.1 * bright) if bright > 0 else otsu


def body_mask(array: np.ndarray, modality: str = "ct", threshold: float | None = None) -> np.ndarray:
    """Boolean body mask with the shape of ``array`` ((1, y, x) pictures or (z, y, x) volumes).

    ``modality``: "ct" (threshold -500 HU), "mr" (see :func:`mr_threshold`) or "8bit"
    (grey level 10). ``threshold`` overrides the default.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
        squeeze = True
    else:
        squeeze = False
    if array.ndim != 3:
        raise ValueError(f"body_mask expects (y, x) or (z, y, x), got shape {array.shape}")
    if threshold is None:
        if modality == "ct":
            threshold = CT_BODY_HU
        elif modality == "8bit":
            threshold = EIGHT_BIT_BODY_LEVEL
        elif modality == "mr":
            threshold = mr_threshold(array)
        else:
            raise SynthctError(f"unknown modality '{modality}' for a body mask (expected ct, mr or 8bit)")
    mask = array > threshold
    if not mask.any():
        return mask[0] if squeeze else mask
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = np.isin(labels, np.flatnonzero(sizes >= BODY_PART_SHARE * sizes.max()))
    # Close small gaps in-plane only (slices can be far apart along z); the padding keeps a
    # body that touches the image edge from being eroded there.
    padded = np.pad(mask, ((0, 0), (2, 2), (2, 2)), mode="edge")
    mask = ndimage.binary_closing(padded, structure=np.ones((1, 3, 3), bool), iterations=2)[:, 2:-2, 2:-2]
    for z in range(mask.shape[0]):
        mask[z] = ndimage.binary_fill_holes(mask[z])
    return mask[0] if squeeze else mask
