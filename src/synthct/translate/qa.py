"""Cycle-consistency QA: how far the opposite generator F of the same run is from undoing G.

The translator runs F on G(x) and reports |F(G(x)) - x|. The error is measured in model range
and mapped to source units with the source mapping's linear scale (HU for CT, the input's own
MR units for MR, grey levels for 8-bit): values the window clips (e.g. above 3000 HU) count as
the window edge. A high error marks what F cannot undo, a symptom of invented anatomy; a low one
is no proof of a faithful translation (a generator that inverts contrast can be cycle-consistent;
on real brain slices the error ranked slices by CT error weakly or inversely, docs/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from synthct.data.intensity import CTWindow, EightBit, Mapping
from synthct.io.volume import Volume

# QA flags slices whose mean cycle error exceeds mean + QA_SIGMAS * std over slices.
QA_SIGMAS = 3.0


@dataclass
class QASummary:
    units: str
    mean_error_in_body: float | None
    per_slice_mean_error: list[float | None]
    threshold: float | None
    flagged_slices: list[int]
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**self.extra, "units": self.units, "mean_error_in_body": self.mean_error_in_body,
                "threshold": self.threshold, "flagged_slices": self.flagged_slices,
                "per_slice_mean_error": self.per_slice_mean_error}


@dataclass
class QAResult:
    synthetic: Volume
    cycle_error: Volume
    summary: QASummary


def qa_summary(error: np.ndarray, body: np.ndarray, axis: int, threshold: float | None, mapping: Mapping,
               extra: dict) -> QASummary:
    """Mean cycle error in the body, per slice along ``axis``, and the slices above ``threshold``
    (mean + ``QA_SIGMAS`` std over slices when None); ``extra`` describes the model."""
    err = np.moveaxis(error, axis, 0)
    inside = np.moveaxis(body, axis, 0)
    per_slice: list[float | None] = []
    for e, m in zip(err, inside):
        per_slice.append(float(e[m].mean()) if m.any() else None)
    valid = np.array([v for v in per_slice if v is not None], np.float64)
    mean_in_body = float(error[body].mean()) if body.any() else None
    if threshold is None and valid.size:
        threshold = float(valid.mean() + QA_SIGMAS * valid.std())
    flagged = [i for i, v in enumerate(per_slice) if v is not None and threshold is not None and v > threshold]
    units = "HU" if isinstance(mapping, CTWindow) else ("grey level" if isinstance(mapping, EightBit)
                                                         else "input MR units")
    return QASummary(units, mean_in_body, per_slice, threshold, flagged, extra)
