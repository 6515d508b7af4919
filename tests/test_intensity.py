import json

import numpy as np
import pytest

from synthct.config import DataConfig
from synthct.data.intensity import CTWindow, EightBit, MRPercentile, mapping_for, mapping_from_dict
from synthct.errors import SynthctError


def test_ct_window_inverts_within_half_hu_and_clips():
    window = CTWindow()
    hu = np.linspace(-1024, 3000, 100_001, dtype=np.float32)
    y = window.forward(hu)
    assert y.dtype == np.float32 and y.min() == -1.0 and y.max() == 1.0
    assert np.abs(window.inverse(y) - hu).max() < 0.5
    assert window.forward(np.array([-3000.0, 5000.0])).tolist() == [-1.0, 1.0]


def test_eight_bit_round_trips_every_grey_level():
    levels = np.arange(256, dtype=np.float32)
    mapping = EightBit()
    y = mapping.forward(levels)
    assert y[0] == -1.0 and y[-1] == 1.0
    assert np.abs(mapping.inverse(y) - levels).max() < 0.5


def test_mr_percentile_fit_maps_percentiles_to_plus_minus_one():
    rng = np.random.default_rng(0)
    volume = rng.gamma(4.0, 100.0, size=(6, 40, 40)).astype(np.float32)
    mask = np.ones(volume.shape, bool)
    fitted = MRPercentile(1.0, 99.0).fit(volume, mask)
    lo, hi = np.percentile(volume, [1.0, 99.0])
    assert fitted.lo == pytest.approx(lo) and fitted.hi == pytest.approx(hi)
    assert fitted.forward(np.array([lo, hi])) == pytest.approx([-1.0, 1.0], abs=1e-6)
    inside = volume[(volume >= lo) & (volume <= hi)]
    assert np.abs(fitted.inverse(fitted.forward(inside)) - inside).max() < 0.5
    # Beyond the percentiles values saturate.
    assert fitted.forward(np.array([hi * 10]))[0] == 1.0


def test_mr_percentile_fit_uses_the_body_mask():
    volume = np.zeros((4, 32, 32), np.float32)
    volume[:, 8:24, 8:24] = 500.0
    volume[:, 12:20, 12:20] = 1000.0
    fitted = MRPercentile(0.0, 100.0).fit(volume)
    assert fitted.lo == pytest.approx(500.0) and fitted.hi == pytest.approx(1000.0)


def test_unfitted_mr_mapping_refuses():
    with pytest.raises(SynthctError, match="not fitted"):
        MRPercentile().forward(np.zeros(3))
    with pytest.raises(SynthctError, match="not fitted"):
        MRPercentile().inverse(np.zeros(3))


@pytest.mark.parametrize("mapping", [CTWindow(-200.0, 400.0), EightBit(), MRPercentile(2.0, 98.0, 10.0, 900.0),
                                     MRPercentile()])
def test_to_dict_round_trips_through_json(mapping):
    d = json.loads(json.dumps(mapping.to_dict()))
    assert "kind" in d
    assert mapping_from_dict(d) == mapping


def test_mapping_from_dict_rejects_unknown_kind():
    with pytest.raises(SynthctError, match="unknown intensity mapping"):
        mapping_from_dict({"kind": "gamma"})


def test_mapping_for_follows_config():
    cfg = DataConfig(ct_window=(-100.0, 100.0), mr_percentiles=(1.0, 99.0))
    assert mapping_for("ct", cfg, False) == CTWindow(-100.0, 100.0)
    assert mapping_for("mr", cfg, False) == MRPercentile(1.0, 99.0)
    assert mapping_for("mr", cfg, True) == EightBit()
    with pytest.raises(SynthctError):
        mapping_for("pet", cfg, False)
