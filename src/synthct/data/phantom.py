"""Synthetic paired head phantoms (SYNTHETIC data, for demos and tests only).

One tissue label map per case drives both modalities, so the MR and CT of a case are
co-registered by construction. Anatomy is random per case (head size and shape, scalp and
skull thickness, ventricles, sinuses, lesions) and deterministic per seed. Partial-volume
edges come from Gaussian-blurred tissue probability maps; the MR gets a smooth
multiplicative bias field and Rician noise, the CT Gaussian noise in HU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from synthct.errors import SynthctError

AIR, SKIN, FAT, CORTICAL, MARROW, CSF, GREY, WHITE, MUSCLE, SINUS, BLEED, HYPODENSE = range(12)
TISSUES = ("air", "skin", "fat", "cortical_bone", "marrow", "csf", "grey_matter", "white_matter",
           "muscle", "sinus_air", "haemorrhage", "hypodense_lesion")

# HU ranges a case draws its tissue means from (cortical bone and marrow as in adult skulls).
CT_HU_RANGES = {
    AIR: (-1000, -1000), SKIN: (30, 60), FAT: (-110, -90), CORTICAL: (1000, 1300), MARROW: (350, 450),
    CSF: (4, 10), GREY: (35, 42), WHITE: (24, 30), MUSCLE: (40, 55), SINUS: (-1000, -1000),
    BLEED: (55, 68), HYPODENSE: (8, 16),
}
# MR signal (arbitrary scanner units) relative ordering of T1- and T2-weighted spin echo.
MR_LEVELS = {
    "t1": {AIR: 0, SKIN: 420, FAT: 950, CORTICAL: 25, MARROW: 620, CSF: 130, GREY: 520, WHITE: 780,
           MUSCLE: 380, SINUS: 0, BLEED: 880, HYPODENSE: 260},
    "t2": {AIR: 0, SKIN: 380, FAT: 620, CORTICAL: 25, MARROW: 420, CSF: 1000, GREY: 640, WHITE: 440,
           MUSCLE: 230, SINUS: 0, BLEED: 210, HYPODENSE: 860},
}
CT_NOISE_HU = 8.0
MR_NOISE = 0.025  # Rician sigma as a fraction of the white-matter signal
PARTIAL_VOLUME_SIGMA_MM = 0.9


def _ellipsoid(coords, centre, semi_axes) -> np.ndarray:
    z, y, x = coords
    (cx, cy, cz), (ax, ay, az) = centre, semi_axes
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2


def _smooth_field(rng, shape, sigma_vox, amplitude) -> np.ndarray:
    """Random low-frequency field with standard deviation ``amplitude``."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return field * (amplitude / (field.std() + 1e-8))


def phantom_labels(seed: int, size=(128, 128, 64), spacing=(1.5, 1.5, 2.5)) -> np.ndarray:
    """The (z, y, x) uint8 tissue label map of case ``seed`` (see ``TISSUES``)."""
    anatomy_rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    return _anatomy(anatomy_rng, size, spacing)


@dataclass(frozen=True)
class _Head:
    """One case's head: the grid's physical coordinates (mm, centred on the grid), the head
    ellipsoid and the thicknesses (mm) of the layers nested inside it."""

    coords: tuple[np.ndarray, np.ndarray, np.ndarray]
    size: tuple[int, int, int]  # (x, y, z) voxels
    spacing: tuple[float, float, float]  # (x, y, z) mm
    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    scalp: float
    cortex_outer: float
    diploe: float
    cortex_inner: float
    subarachnoid: float
    cortex_band: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.size[2], self.size[1], self.size[0]

    def inside(self, depth: float, wobble=None) -> np.ndarray:
        """The head ellipsoid shrunk by ``depth`` mm (its surface displaced by ``wobble``)."""
        ax, ay, az = self.axes
        r = _ellipsoid(self.coords, self.centre, (ax - depth, ay - depth, az - depth))
        return r <= 1.0 if wobble is None else r <= 1.0 + wobble


def _anatomy(rng, size, spacing) -> np.ndarray:
    # The order of the random draws below fixes every seed's anatomy; keep it.
    head = _draw_head(rng, size, spacing)
    labels, intracranial = _tissue_layers(rng, head)
    base_z = _skull_base(rng, head, labels, intracranial)
    _ventricles(rng, head, labels, base_z)
    _sinuses(rng, head, labels, base_z)
    _lesions(rng, head, labels)
    return labels


def _draw_head(rng, size, spacing) -> _Head:
    nx, ny, nz = size
    sx, sy, sz = spacing
    coords = np.meshgrid((np.arange(nz) - (nz - 1) / 2) * sz, (np.arange(ny) - (ny - 1) / 2) * sy,
                         (np.arange(nx) - (nx - 1) / 2) * sx, indexing="ij", sparse=True)
    fov = np.array([nx * sx, ny * sy, nz * sz])
    # The head fills most of the in-plane field of view; y grows posteriorly (LPS), z upwards.
    ax_, ay_ = fov[0] * rng.uniform(0.33, 0.40), fov[1] * rng.uniform(0.40, 0.46)
    az_ = max(fov[2] * rng.uniform(0.55, 0.65), 0.6 * ay_)
    centre = (rng.uniform(-3, 3), rng.uniform(-3, 3), -0.30 * fov[2])
    scalp, cortex_outer, diploe, cortex_inner = (rng.uniform(4, 7), rng.uniform(1.5, 2.5),
                                                 rng.uniform(2.5, 5.0), rng.uniform(1.2, 2.0))
    subarachnoid, cortex_band = rng.uniform(1.5, 3.0), rng.uniform(3.0, 4.5)
    return _Head(tuple(coords), tuple(size), tuple(spacing), centre, (ax_, ay_, az_), scalp, cortex_outer, diploe,
                 cortex_inner, subarachnoid, cortex_band)


def _tissue_layers(rng, head: _Head) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the nested layers, skin to white matter, and the intracranial mask."""
    skin = 1.5
    labels = np.zeros(head.shape, np.uint8)
    depth = 0.0
    labels[head.inside(depth)] = SKIN
    depth += skin
    labels[head.inside(depth)] = FAT
    depth += head.scalp - skin
    labels[head.inside(depth)] = CORTICAL
    depth += head.cortex_outer
    labels[head.inside(depth)] = MARROW
    depth += head.diploe
    labels[head.inside(depth)] = CORTICAL
    depth += head.cortex_inner
    intracranial = head.inside(depth)
    labels[intracranial] = CSF
    depth += head.subarachnoid
    gyri = _smooth_field(rng, head.shape, (0.8, 1.5, 1.5), 0.06)
    labels[head.inside(depth, gyri)] = GREY
    depth += head.cortex_band
    labels[head.inside(depth, 1.6 * gyri)] = WHITE
    return labels, intracranial


def _skull_base(rng, head: _Head, labels: np.ndarray, intracranial: np.ndarray) -> float:
    """Below the skull base the head holds face and neck soft tissue, a bony floor above that;
    returns the base's height (mm)."""
    z = head.coords[0]
    base_z = head.centre[2] - 0.15 * head.axes[2] + rng.uniform(-4, 4)
    below_base = np.broadcast_to(z < base_z, head.shape)
    floor = np.broadcast_to((z >= base_z) & (z < base_z + rng.uniform(4, 7)), head.shape)
    labels[intracranial & below_base] = MUSCLE
    labels[intracranial & floor] = CORTICAL
    return base_z


def _ventricles(rng, head: _Head, labels: np.ndarray, base_z: float) -> None:
    ventricle_dy = rng.uniform(-4, 4)
    ventricle_half_gap = rng.uniform(6, 9)
    ventricle_size = (rng.uniform(5.0, 8.0), rng.uniform(20, 28), rng.uniform(11, 16))
    ventricle_z = base_z + 0.45 * (head.centre[2] + head.axes[2] - base_z)
    for side in (-1, 1):
        centre = (side * ventricle_half_gap, ventricle_dy, ventricle_z)
        ventricle = _ellipsoid(head.coords, centre, ventricle_size) <= 1
        labels[ventricle & (labels == WHITE)] = CSF


def _sinuses(rng, head: _Head, labels: np.ndarray, base_z: float) -> None:
    """Air-filled sinuses inside a local bone thickening: frontal above the skull base,
    maxillary pair below it, both anterior (negative y)."""
    coords, centre = head.coords, head.centre
    front_y = centre[1] - head.axes[1]
    frontal_c = (centre[0], front_y + head.scalp + 9.0, base_z + rng.uniform(8, 14))
    frontal_axes = (rng.uniform(8, 13), rng.uniform(3.5, 5.0), rng.uniform(5, 8))
    in_head = labels > AIR
    shell = _ellipsoid(coords, frontal_c, tuple(a + 2.5 for a in frontal_axes)) <= 1
    labels[shell & in_head & (labels != FAT) & (labels != SKIN)] = CORTICAL
    # Sinuses stay at least a voxel away from the scalp: bone walls them in.
    walled = ~ndimage.binary_dilation(np.isin(labels, (AIR, SKIN, FAT)), structure=np.ones((3, 3, 3), bool))
    labels[(_ellipsoid(coords, frontal_c, frontal_axes) <= 1) & (labels == CORTICAL) & walled] = SINUS
    maxillary_axes = (rng.uniform(9, 13), rng.uniform(10, 14), rng.uniform(10, 14))
    for side in (-1, 1):
        c = (side * (maxillary_axes[0] + 4), front_y + head.scalp + maxillary_axes[1] + 8,
             base_z - maxillary_axes[2] - 4)
        shell = _ellipsoid(coords, c, tuple(a + 2.0 for a in maxillary_axes)) <= 1
        labels[shell & (labels == MUSCLE)] = CORTICAL
        labels[(_ellipsoid(coords, c, maxillary_axes) <= 1) & walled] = SINUS


def _lesions(rng, head: _Head, labels: np.ndarray) -> None:
    """Up to two haemorrhages or hypodense lesions centred in white matter."""
    nx, ny, nz = head.size
    sx, sy, sz = head.spacing
    for _ in range(rng.integers(0, 3)):
        kind = BLEED if rng.random() < 0.5 else HYPODENSE
        brain = np.argwhere(labels == WHITE)
        if len(brain) == 0:
            break
        kz, ky, kx = brain[rng.integers(len(brain))]
        c = ((kx - (nx - 1) / 2) * sx, (ky - (ny - 1) / 2) * sy, (kz - (nz - 1) / 2) * sz)
        radius = rng.uniform(4, 10)
        lesion = _ellipsoid(head.coords, c, (radius, radius * rng.uniform(0.7, 1.3), radius)) <= 1
        labels[lesion & np.isin(labels, (WHITE, GREY))] = kind


def _tissue_probabilities(labels: np.ndarray, spacing) -> np.ndarray:
    """Per-tissue probability maps (tissue, z, y, x) with blurred, partial-volume edges."""
    sigma = tuple(PARTIAL_VOLUME_SIGMA_MM / s for s in (spacing[2], spacing[1], spacing[0]))
    probs = np.empty((len(TISSUES), *labels.shape), np.float32)
    for t in range(len(TISSUES)):
        probs[t] = ndimage.gaussian_filter((labels == t).astype(np.float32), sigma, mode="nearest")
    probs /= probs.sum(axis=0, keepdims=True)
    return probs


def _mix(probs: np.ndarray, levels: dict) -> np.ndarray:
    values = np.array([levels[t] for t in range(len(TISSUES))], np.float32)
    return np.tensordot(values, probs, axes=1).astype(np.float32)


def make_phantom(seed: int, size=(128, 128, 64), contrast: str = "t1",
                 spacing=(1.5, 1.5, 2.5)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One SYNTHETIC head case: (mr, ct, mask) as (z, y, x) arrays, co-registered.

    ``size`` and ``spacing`` are in (x, y, z) order (SimpleITK's). CT is float32 HU,
    MR float32 in arbitrary units (``contrast`` "t1" or "t2"), mask uint8 (1 = body).
    """
    if contrast not in MR_LEVELS:
        raise SynthctError(f"unknown phantom contrast '{contrast}' (expected t1 or t2)")
    if len(size) != 3 or min(size) < 8:
        raise SynthctError(f"phantom size must be three numbers >= 8 (x, y, z), got {tuple(size)}")
    labels = phantom_labels(seed, size, spacing)
    ct_rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    mr_rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    probs = _tissue_probabilities(labels, spacing)

    hu = {t: ct_rng.uniform(lo, hi) for t, (lo, hi) in CT_HU_RANGES.items()}
    ct = _mix(probs, hu) + ct_rng.normal(0.0, CT_NOISE_HU, labels.shape).astype(np.float32)
    ct = np.clip(ct, -1024.0, 3071.0)

    levels = {t: v * mr_rng.uniform(0.93, 1.07) for t, v in MR_LEVELS[contrast].items()}
    signal = _mix(probs, levels) * mr_rng.uniform(0.8, 1.25)
    nz, ny, nx = labels.shape
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx),
                          indexing="ij", sparse=True)
    gx, gy, gz, cxy = mr_rng.uniform(-0.2, 0.2, 4)
    bias = np.exp(gx * x + gy * y + gz * z + cxy * x * y - mr_rng.uniform(0.05, 0.2) * (x**2 + y**2))
    signal = signal * bias.astype(np.float32)
    sigma = MR_NOISE * levels[WHITE if contrast == "t1" else CSF]
    real = signal + mr_rng.normal(0.0, sigma, labels.shape).astype(np.float32)
    imag = mr_rng.normal(0.0, sigma, labels.shape).astype(np.float32)
    mr = np.sqrt(real * real + imag * imag).astype(np.float32)

    mask = (labels > AIR).astype(np.uint8)
    return mr, ct.astype(np.float32), mask


README_TEXT = """These are SYNTHETIC head phantoms made by `synthct phantom`; they are not patient data.

Each case folder holds mr.nii.gz (simulated {contrast} MR, arbitrary units), ct.nii.gz (simulated
CT, int16 Hounsfield units) and mask.nii.gz (uint8 body mask), all on the same grid
(spacing {spacing} mm). Anatomy, MR contrast and noise are random per case and fixed by the
seed ({seed}), so the folder can be regenerated exactly. Use them to try synthct, never to
judge clinical performance.
"""


def write_phantoms(n: int, out_dir, seed: int = 0, size=(128, 128, 64), overwrite: bool = False,
                   contrast: str = "t1", spacing=(1.5, 1.5, 2.5)) -> list[Path]:
    """Write ``n`` cases in the SynthRAD layout: DIR/phantom_000/{mr,ct,mask}.nii.gz + DIR/README.txt.

    Case ``i`` uses seed ``seed + i``. Returns the case folders.
    """
    from synthct.io.atomic import atomic_write_text, refuse_existing
    from synthct.io.image import write_image
    from synthct.io.volume import Volume

    if n < 1:
        raise SynthctError(f"--n must be at least 1, got {n}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SynthctError("exists and is not a folder", out_dir)
    cases = [out_dir / f"phantom_{i:03d}" for i in range(n)]
    planned = [case / name for case in cases for name in ("mr.nii.gz", "ct.nii.gz", "mask.nii.gz")]
    refuse_existing(planned + [out_dir / "README.txt"], overwrite)
    spacing = tuple(float(s) for s in spacing)
    for i, case in enumerate(cases):
        mr, ct, mask = make_phantom(seed + i, size, contrast, spacing)
        # Origin so that the grid is centred on the physical origin, as a scanner would place it.
        origin = tuple(-(d - 1) / 2 * s for d, s in zip(size, spacing))
        geometry = {"spacing": spacing, "origin": origin, "format": "nifti"}
        write_image(Volume(mr, **geometry), case / "mr.nii.gz", overwrite=overwrite)
        write_image(Volume(ct, **geometry), case / "ct.nii.gz", dtype="int16", overwrite=overwrite)
        write_image(Volume(mask.astype(np.float32), **geometry), case / "mask.nii.gz", dtype="uint8",
                    overwrite=overwrite)
    atomic_write_text(out_dir / "README.txt", README_TEXT.format(contrast=contrast.upper(), spacing=spacing, seed=seed))
    return cases
