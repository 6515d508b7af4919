"""synthct info: what a file holds, before anyone trains on it."""

from __future__ import annotations

import json

HELP = "describe an image or volume: format, shape, spacing, orientation, values, HU check"


def add_arguments(parser) -> None:
    parser.add_argument("path", nargs="+", help="image file, volume file or DICOM series folder")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def describe(path) -> dict:
    import numpy as np

    from synthct.io.image import read_image

    vol = read_image(path)
    values = vol.array
    p = np.percentile(values, [0.5, 1, 5, 50, 95, 99, 99.5])
    info = {
        "path": str(path),
        "format": vol.format,
        "shape_xyz": [int(values.shape[2]), int(values.shape[1]), int(values.shape[0])],
        "is_2d": vol.is_2d,
        "stored_dtype": vol.source_dtype,
        "spacing_mm": [round(float(s), 6) for s in vol.spacing],
        "origin_mm": [round(float(o), 4) for o in vol.origin],
        "orientation": vol.orientation,
        "direction": [round(float(d), 6) for d in vol.direction],
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "percentiles": dict(zip(["p0.5", "p1", "p5", "p50", "p95", "p99", "p99.5"], [float(x) for x in p])),
        "modality": vol.dicom.get("Modality", ""),
    }
    info["hu_check"] = hu_check(values, info["modality"])
    return info


def hu_check(values, modality: str = "") -> str:
    """A plain-words verdict on whether a volume's values look like Hounsfield units."""
    import numpy as np

    lo, hi = float(values.min()), float(values.max())
    air = float(np.mean(values < -900))
    if modality and modality != "CT":
        return f"not CT (DICOM modality {modality})"
    if lo >= 0 and hi <= 255 and float(np.mean(values == np.round(values))) == 1.0:
        return "no: 8-bit grey levels (0..255), not HU"
    if -1100 <= lo < -200 and hi <= 4000:
        if air > 0.01:
            return "yes: air near -1000 HU and a plausible range"
        return "yes: range fits HU (little air in view)"
    if lo >= 0 and hi > 1000:
        return "no: no negative values; may be raw CT numbers without RescaleIntercept (HU = value - 1024?) or MR"
    return f"no: range {lo:g}..{hi:g} is not typical of HU"


def run(args) -> int:
    for path in args.path:
        info = describe(path)
        if args.json:
            print(json.dumps(info, indent=2))
            continue
        pc = info["percentiles"]
        print(f"{info['path']}")
        print(f"  format       {info['format']}" + (f" ({info['modality']})" if info["modality"] else ""))
        print(f"  size (x,y,z) {' x '.join(map(str, info['shape_xyz']))}" + ("  (2D)" if info["is_2d"] else ""))
        print(f"  stored as    {info['stored_dtype']}")
        print(f"  spacing mm   {' x '.join(f'{s:g}' for s in info['spacing_mm'])}")
        print(f"  origin mm    {', '.join(f'{o:g}' for o in info['origin_mm'])}")
        print(f"  orientation  {info['orientation']}")
        print(f"  values       min {info['min']:g}  max {info['max']:g}  mean {info['mean']:.4g}")
        print(f"  percentiles  p1 {pc['p1']:g}  p5 {pc['p5']:g}  p50 {pc['p50']:g}  p95 {pc['p95']:g}  p99 {pc['p99']:g}")
        print(f"  looks like HU {info['hu_check']}")
    return 0
