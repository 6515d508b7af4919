"""experiments.aanlib fields: a RegGAN run's displacement fields on its training pairs."""

import numpy as np
import pytest
import torch
from torch import nn

from synthct.errors import SynthctError
from synthct.models.registration import Registration, warp

from experiments.aanlib.fields import field_statistics, run_fields


class ConstantField(nn.Module):
    def forward(self, moving, fixed):
        phi = torch.zeros(moving.shape[0], 2, *moving.shape[2:])
        phi[:, 0], phi[:, 1] = 3.0, 4.0  # x then y, in pixels: a 5-pixel shift everywhere
        return phi


class Stub(nn.Module):
    def __init__(self):
        super().__init__()
        self.G = nn.Identity()
        self.registration = Registration(1, lambda_corr=20.0, lambda_smooth=10.0)
        self.registration.R = ConstantField()


def test_field_lengths_and_the_two_l1_terms_are_measured_inside_the_head():
    yy, xx = np.mgrid[:32, :32]
    ct = np.where((yy - 16) ** 2 + (xx - 16) ** 2 < 100, 0.5, -1.0).astype(np.float32)  # a disc
    rows = field_statistics(Stub(), [(ct, ct)])  # G is the identity and MR = CT: G(mr) is the CT
    assert rows[0]["field_mean_px"] == pytest.approx(5.0) and rows[0]["field_p95_px"] == pytest.approx(5.0)
    assert rows[0]["shift_x_px"] == pytest.approx(3.0) and rows[0]["shift_y_px"] == pytest.approx(4.0)
    assert rows[0]["l1_to_ct"] == 0.0
    assert rows[0]["l1_to_warped_ct"] > 10.0  # the shifted disc misses the disc
    plain = Stub()
    plain.registration = None  # pix2pix, regression: the L1 to the CT alone
    assert field_statistics(plain, [(ct, ct)]) == [{"l1_to_ct": 0.0}]


class DrawsOffByTheField(nn.Module):
    """A generator that copies the MR but draws it where the constant field moves the CT to."""

    def forward(self, mr):
        return warp(mr, ConstantField()(mr, mr))


def test_moving_the_translation_back_by_the_field_undoes_a_shifted_generator():
    yy, xx = np.mgrid[:32, :32]
    ct = np.where((yy - 16) ** 2 + (xx - 16) ** 2 < 100, 0.5, -1.0).astype(np.float32)
    model = Stub()
    model.G = DrawsOffByTheField()
    row = field_statistics(model, [(ct, ct)])[0]
    assert row["l1_to_warped_ct"] == pytest.approx(0.0, abs=1e-4)  # R follows the generator's drift
    assert row["l1_to_ct"] > 10.0
    assert row["field_beyond_shift_px"] == pytest.approx(0.0, abs=1e-6)  # the field is one shift
    assert row["l1_shifted_back"] == pytest.approx(0.0, abs=1e-4)
    assert row["l1_warped_back"] == pytest.approx(0.0, abs=1e-4)


def test_only_reggan_runs_are_read(tmp_path):
    from synthct.config import RunConfig, config_to_yaml

    with pytest.raises(SynthctError, match="--every must be at least 1"):
        run_fields(tmp_path, tmp_path, every=0)
    with pytest.raises(SynthctError, match="no config.yaml"):
        run_fields(tmp_path, tmp_path)
    (tmp_path / "config.yaml").write_text(config_to_yaml(RunConfig()))
    with pytest.raises(SynthctError, match="a paired run .* this one trained cyclegan"):
        run_fields(tmp_path, tmp_path)
