"""Intensity mappings between stored units and the model range [-1, 1].

Every mapping has ``forward`` (stored units -> float32 in [-1, 1]), an exact ``inverse``
inside its range, and ``to_dict`` / :func:`mapping_from_dict` so the mapping travels with a
trained generator and its outputs can be mapped back to HU or grey levels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from synthct.errors import SynthctError


def _linear_forward(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    x = np.clip(np.asarray(x, dtype=np.float64), lo, hi)
    return (2.0 * (x - lo) / (hi - lo) - 1.0).astype(np.float32)


def _linear_inverse(y: np.ndarray, lo: float, hi: float) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    return ((y + 1.0) * 0.5 * (hi - lo) + lo).astype(np.float32)


@dataclass(frozen=True)
class CTWindow:
    """CT in Hounsfield units: clip to [lo, hi] HU, then map linearly to [-1, 1]."""

    lo: float = -1024.0
    hi: float = 3000.0

    def __post_init__(self):
        if not self.hi > self.lo:
            raise SynthctError(f"CT window must have hi > lo, got ({self.lo}, {self.hi})")

    def forward(self, hu: np.ndarray) -> np.ndarray:
        return _linear_forward(hu, self.lo, self.hi)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return _linear_inverse(y, self.lo, self.hi)

    def to_dict(self) -> dict:
        return {"kind": "ct_window", "lo": float(self.lo), "hi": float(self.hi)}


@dataclass(frozen=True)
class MRPercentile:
    """MR has no absolute units: map the ``p_lo``/``p_hi`` percentiles inside the body to -1/+1.

    ``fit`` measures ``lo``/``hi`` on one volume. Values beyond those percentiles saturate
    at -1/+1 (the brightest 0.5 % of the body, e.g. fat and vessels, are clipped), so
    ``inverse`` is exact only between ``lo`` and ``hi``.
    """

    p_lo: float = 0.5
    p_hi: float = 99.5
    lo: float | None = None
    hi: float | None = None

    def __post_init__(self):
        if not 0.0 <= self.p_lo < self.p_hi <= 100.0:
            raise SynthctError(f"MR percentiles must satisfy 0 <= lo < hi <= 100, got ({self.p_lo}, {self.p_hi})")

    @property
    def fitted(self) -> bool:
        return self.lo is not None and self.hi is not None

    def fit(self, array: np.ndarray, mask: np.ndarray | None = None) -> "MRPercentile":
        """A copy with lo/hi measured inside ``mask`` (the body mask of ``array`` when None)."""
        from synthct.data.mask import body_mask

        array = np.asarray(array)
        if mask is None:
            mask = body_mask(array, "mr")
        values = array[mask] if mask.any() else array.ravel()
        lo, hi = np.percentile(values, [self.p_lo, self.p_hi])
        if not hi > lo:  # a constant image: keep the mapping invertible
            hi = lo + 1.0
        return replace(self, lo=float(lo), hi=float(hi))

    def _bounds(self) -> tuple[float, float]:
        if not self.fitted:
            raise SynthctError("MR percentile mapping is not fitted (no lo/hi); call fit() on an MR volume first")
        return self.lo, self.hi  # type: ignore[return-value]

    def forward(self, x: np.ndarray) -> np.ndarray:
        return _linear_forward(x, *self._bounds())

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return _linear_inverse(y, *self._bounds())

    def to_dict(self) -> dict:
        return {"kind": "mr_percentile", "p_lo": float(self.p_lo), "p_hi": float(self.p_hi),
                "lo": None if self.lo is None else float(self.lo),
                "hi": None if self.hi is None else float(self.hi)}


@dataclass(frozen=True)
class EightBit:
    """8-bit pictures: grey levels 0..255 <-> [-1, 1]."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        return _linear_forward(x, 0.0, 255.0)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return _linear_inverse(y, 0.0, 255.0)

    def to_dict(self) -> dict:
        return {"kind": "eight_bit"}


Mapping = CTWindow | MRPercentile | EightBit


def mapping_from_dict(d: dict) -> Mapping:
    """Rebuild a mapping saved with ``to_dict`` (e.g. from a generator's JSON sidecar)."""
    if not isinstance(d, dict) or "kind" not in d:
        raise SynthctError(f"intensity mapping must be a mapping with a 'kind', got {d!r}")
    kind = d["kind"]
    fields = {k: v for k, v in d.items() if k != "kind"}
    try:
        if kind == "ct_window":
            return CTWindow(float(fields["lo"]), float(fields["hi"]))
        if kind == "mr_percentile":
            lo, hi = fields.get("lo"), fields.get("hi")
            return MRPercentile(float(fields.get("p_lo", 0.5)), float(fields.get("p_hi", 99.5)),
                                None if lo is None else float(lo), None if hi is None else float(hi))
        if kind == "eight_bit":
            return EightBit()
    except (KeyError, TypeError, ValueError) as exc:
        raise SynthctError(f"bad '{kind}' intensity mapping {d!r} ({exc})") from None
    raise SynthctError(f"unknown intensity mapping kind '{kind}' (expected ct_window, mr_percentile or eight_bit)")


def is_eight_bit(vol) -> bool:
    """A picture (PNG/JPEG) or a uint8 volume: grey levels 0..255, not HU or scanner units."""
    return vol.format in ("png", "jpeg") or vol.source_dtype == "uint8"


def mapping_for(modality: str, cfg, eight_bit: bool) -> Mapping:
    """The configured mapping of ``modality`` ("mr" or "ct") for a :class:`DataConfig`.

    The MR mapping comes back unfitted: each MR volume is fitted on its own.
    """
    if eight_bit:
        return EightBit()
    if modality == "ct":
        return CTWindow(*cfg.ct_window)
    if modality == "mr":
        return MRPercentile(*cfg.mr_percentiles)
    raise SynthctError(f"unknown modality '{modality}' (expected mr or ct)")
