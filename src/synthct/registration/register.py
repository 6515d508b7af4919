"""Cross-modal registration of a CT onto an MR with SimpleITK: Mattes mutual information, an
affine stage, then a B-spline stage, each multi-resolution.

The MR is the fixed image, so the registered CT lands on the MR's grid. The affine stage starts
from CenteredTransformInitializer on the two body masks: moments of intensities mean little for
a CT whose air is -1000 HU. Metric sampling is random with a fixed seed, and a registration runs
on the threads it is given (one by default), so its result does not depend on the machine.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from synthct.io.volume import Volume

# Few bins: with 32, phantom slices found an optimum that matched the CT's air to the MR's scalp.
HISTOGRAM_BINS = 16
# Each level's metric draws about this many random points of the MR's grid (the ones in its body
# region count): enough for a stable MI, few enough that the cost does not grow with the volume.
METRIC_SAMPLES = 10000
# The MI that compares stages and candidates reads every voxel of grids up to this size and a
# fixed seeded sample of this many points of larger ones: the same points for every moving image.
COMPARISON_SAMPLES = 200000
# Multi-resolution shrink factors, coarse to fine, as long as the coarsest level keeps this many
# pixels across the smaller in-plane side (MI on fewer is too noisy to steer an affine).
SHRINK_FACTORS = (4, 2, 1)
COARSEST_PIXELS = 24
AFFINE_ITERATIONS = 100
# B-spline control points about this far apart (mm): head-sized shape differences, not texture.
BSPLINE_NODE_SPACING_MM = 40.0
BSPLINE_SAMPLES = 5000  # the B-spline metric's cost grows with its samples times its support
BSPLINE_ITERATIONS = 20
BSPLINE_EVALUATIONS = 40  # per level: L-BFGS-B's line searches may spend no more
# The metric looks at the MR's body and this margin of air around it, where the outline lies.
MASK_MARGIN_MM = 8.0


@dataclass
class Registered:
    """A CT resampled onto an MR's grid after registration, and how well it fits."""

    array: np.ndarray  # (z, y, x) float32 on the MR's grid; ``air`` outside the CT's field of view
    mutual_information: float  # Mattes MI with the MR in its body region (higher: better)
    stage: str  # the last stage kept: "centred", "affine" or "deformable"


def to_image(vol: Volume, array: np.ndarray | None = None) -> sitk.Image:
    """``vol`` (or ``array`` on its grid) as a float32 SimpleITK image, 2D for pictures."""
    source = vol if array is None else vol.with_array(np.asarray(array, np.float32))
    return source.to_sitk(np.float32)


def body_region(mask: sitk.Image) -> sitk.Image:
    """The body mask grown by ``MASK_MARGIN_MM``: where the metric samples."""
    radius = [max(1, int(round(MASK_MARGIN_MM / s))) for s in mask.GetSpacing()]
    return sitk.BinaryDilate(sitk.Cast(mask, sitk.sitkUInt8), radius)


def shrink_factors(image: sitk.Image) -> list[int]:
    """The multi-resolution shrink factors for ``image``, coarse to fine."""
    side = min(image.GetSize()[:2])
    return [f for f in SHRINK_FACTORS if f == 1 or side // f >= COARSEST_PIXELS]


@contextmanager
def sitk_threads(count: int):
    """Run SimpleITK on ``count`` threads inside the block. The registration metric's threads
    follow this global default, not the method's own setting, and with more than one thread
    its sums (and so the result) depend on the scheduling."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def _method(region: sitk.Image, seed: int, shrink: list[int], samples: int | None) -> sitk.ImageRegistrationMethod:
    """A Mattes MI registration method drawing about ``samples`` points per level (``None``:
    every voxel), of which those in ``region`` count."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricFixedMask(region)
    # Gradients at the sampled points only: a gradient filter over a whole 256 x 256 x 150
    # volume costs seconds at every level and every evaluation.
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    if samples is None:
        method.SetMetricSamplingStrategy(method.NONE)
    else:
        voxels = float(np.prod(region.GetSize()))
        dim = region.GetDimension()
        method.SetMetricSamplingStrategy(method.RANDOM)
        # SimpleITK reads a seed of 0 as "seed from the wall clock", so seeds here start at 1.
        method.SetMetricSamplingPercentagePerLevel([min(1.0, samples * f**dim / voxels) for f in shrink], seed + 1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(shrink)
    # Smoothing by half the shrink factor (voxels) keeps coarse levels from aliasing.
    method.SetSmoothingSigmasPerLevel([f / 2 if f > 1 else 0.0 for f in shrink])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def _centred(fixed_mask, moving_mask) -> sitk.Transform:
    """The affine transform that moves the CT's body centre of mass onto the MR's."""
    return sitk.CenteredTransformInitializer(sitk.Cast(fixed_mask, sitk.sitkFloat32),
                                             sitk.Cast(moving_mask, sitk.sitkFloat32),
                                             sitk.AffineTransform(fixed_mask.GetDimension()),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)


def _affine(fixed, moving, start, region, seed) -> sitk.Transform:
    transform = sitk.AffineTransform(start)
    method = _method(region, seed, shrink_factors(fixed), METRIC_SAMPLES)
    # Steps of at most 1 mm of physical shift, halved whenever the metric gets worse: plain
    # gradient descent overshoots into a shrunken CT on small images.
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3,
                                                    numberOfIterations=AFFINE_ITERATIONS, relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    return transform


def _bspline(fixed, moving, affine, region, seed) -> sitk.Transform:
    extent = [n * s for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
    mesh = [max(1, int(round(e / BSPLINE_NODE_SPACING_MM))) for e in extent]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh)
    method = _method(region, seed, shrink_factors(fixed)[-2:], BSPLINE_SAMPLES)
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=BSPLINE_ITERATIONS,
                                maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=BSPLINE_EVALUATIONS)
    method.SetMovingInitialTransform(affine)
    method.SetInitialTransform(bspline, inPlace=True)
    method.Execute(fixed, moving)
    # A CompositeTransform applies its last transform first: the B-spline, then the affine.
    return sitk.CompositeTransform([affine, bspline])


def mutual_information(fixed: sitk.Image, moving: sitk.Image, region: sitk.Image,
                       transform: sitk.Transform | None = None) -> float:
    """Mattes MI of ``moving`` (through ``transform``) with ``fixed`` in ``region`` at full
    resolution, on points that do not depend on the moving image (higher is better)."""
    samples = None if np.prod(fixed.GetSize()) <= COMPARISON_SAMPLES else COMPARISON_SAMPLES
    method = _method(region, 0, [1], samples)
    method.SetInitialTransform(transform or sitk.Transform(fixed.GetDimension(), sitk.sitkIdentity))
    return -float(method.MetricEvaluate(fixed, moving))


def register_ct(mr: Volume, ct: Volume, mr_mask: np.ndarray, ct_mask: np.ndarray, air: float,
                seed: int = 0, threads: int = 1) -> Registered:
    """Register ``ct`` onto ``mr`` (centred, affine, then B-spline) and resample it on the MR's
    grid, ``air`` outside the CT's field of view. The masks are the images' body masks.

    Each stage optimises the MI of a random sample; it is kept only when it raises the MI of
    :func:`mutual_information`, so a stage lost in a sample's local optimum undoes nothing.
    """
    with sitk_threads(threads):
        fixed, moving = to_image(mr), to_image(ct)
        region = body_region(to_image(mr, mr_mask))
        centred = _centred(to_image(mr, mr_mask), to_image(ct, ct_mask))
        best = ("centred", centred, mutual_information(fixed, moving, region, centred))
        affine = _affine(fixed, moving, centred, region, seed)
        affine_mi = mutual_information(fixed, moving, region, affine)
        if affine_mi > best[2]:
            best = ("affine", affine, affine_mi)
        deformed = _bspline(fixed, moving, best[1], region, seed)
        deformed_mi = mutual_information(fixed, moving, region, deformed)
        if deformed_mi > best[2]:
            best = ("deformable", deformed, deformed_mi)
        stage, transform, mi = best
        resampled = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, float(air), sitk.sitkFloat32)
    return Registered(sitk.GetArrayFromImage(resampled).reshape(mr.shape), mi, stage)
