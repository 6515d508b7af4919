"""The training health check: hand-built generators whose failure is known by construction, its
place in a training run (log line, health.json, resume), the report section and the runs table."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from synthct.cli import main
from synthct.errors import SynthctError
from synthct.eval import health
from synthct.eval.health import (HealthSample, check_health, discriminator_evidence, discriminator_loss,
                                 discriminator_window, recent_discriminator_loss)
from synthct.models.losses import GANLoss
from synthct.models.shared import discriminator_objective


class Pixelwise(nn.Module):
    """A generator that maps every pixel through ``function`` (tensor -> tensor)."""

    def __init__(self, function):
        super().__init__()
        self.function = function
        self.anchor = nn.Parameter(torch.zeros(()))  # the check finds the device through a parameter

    def forward(self, x):
        return self.function(x)


def _sample(seed: int = 0, size: int = 32) -> HealthSample:
    """Heads: a disk of random tissue values; the CT's tissue darker on the whole than the MR's."""
    rng = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    body = (((y - size / 2) ** 2 + (x - size / 2) ** 2) <= (size / 2 - 3) ** 2).float().expand(4, 1, size, size)
    mr = torch.where(body > 0, torch.rand(4, 1, size, size, generator=rng) * 1.6 - 0.7, torch.tensor(-1.0))
    ct = torch.where(body > 0, torch.rand(4, 1, size, size, generator=rng) * 1.2 - 0.6, torch.tensor(-1.0))
    return HealthSample(mr, ct, body.clone(), body.clone())


def _quantile_map(sample: HealthSample, order: int):
    """MR (order 1) or inverted MR (order -1) quantile-mapped onto the CT's in-body histogram: an
    increasing (or decreasing) function of the MR with the CT's distribution."""
    ct_values = np.sort(sample.ct[sample.ct_body > 0.5].numpy())
    mr_values = np.sort((order * sample.mr[sample.mr_body > 0.5]).numpy())
    quantiles = np.linspace(0, 1, mr_values.size)

    def mapping(x):
        q = np.interp(order * x.numpy(), mr_values, quantiles)
        return torch.from_numpy(np.quantile(ct_values, q.ravel()).reshape(q.shape)).float()

    return mapping


def test_a_translation_in_the_mrs_order_fails_on_the_order_alone():
    sample = _sample()
    generators = {"mr2ct": Pixelwise(_quantile_map(sample, 1)), "ct2mr": Pixelwise(lambda y: y)}
    verdict = check_health(generators, sample, step=10)
    assert verdict.failures == ["mr_order"]
    assert verdict.evidence["mr_order"]["rho"] == pytest.approx(1.0)
    # It has the CT's grey levels: not dark.
    assert verdict.evidence["dark"]["median"] == pytest.approx(verdict.evidence["dark"]["ct_median"], abs=0.05)


def test_a_translation_that_inverts_the_mrs_order_passes():
    sample = _sample()
    generators = {"mr2ct": Pixelwise(_quantile_map(sample, -1)), "ct2mr": Pixelwise(lambda y: -y)}
    verdict = check_health(generators, sample, step=10)
    assert verdict.evidence["mr_order"]["rho"] == pytest.approx(-1.0)
    assert verdict.healthy and verdict.failures == []


def test_a_dark_translation_with_the_mr_hidden_in_its_last_grey_levels():
    # G keeps the MR in the darkest 1% of the range; F decodes it exactly, until noise hits the code.
    amplitude = 0.01
    generators = {"mr2ct": Pixelwise(lambda x: -1 + amplitude * (x + 1)),
                  "ct2mr": Pixelwise(lambda y: ((y + 1) / amplitude - 1).clamp(-1, 1))}
    verdict = check_health(generators, _sample(), step=10)
    code = verdict.evidence["hidden_code"]
    assert code["cycle_error"] < 1e-4 and code["noisy_cycle_error"] > 0.3 and code["gain"] > 10
    # Its grey levels rise with the MR's, but a dark translation is judged dark, not in the MR's order.
    assert verdict.failures == ["dark", "hidden_code"] and verdict.evidence["mr_order"]["rho"] == pytest.approx(1.0)
    assert verdict.evidence["dark"]["median"] < -0.98 < verdict.evidence["dark"]["threshold"]
    assert "FAILED: " in verdict.line() and "dark phase" in verdict.line() and "hidden code" in verdict.line()
    # Before the run's last step the same verdict is provisional, and says so.
    early = check_health(generators, _sample(), step=10, final=False)
    assert early.failures == verdict.failures and not early.to_dict()["final"]
    assert "FAILED" not in early.line() and "health at step 10: failing so far: dark phase" in early.line()


def test_a_healthy_translation_with_learning_discriminators_passes_and_says_so():
    sample = _sample()
    generators = {"mr2ct": Pixelwise(_quantile_map(sample, -1)), "ct2mr": Pixelwise(lambda y: -y)}
    learning = discriminator_evidence(0.12, "lsgan", "51-100")
    verdict = check_health(generators, sample, step=100, discriminators=learning)
    assert verdict.healthy
    line = verdict.line()
    assert line.startswith("health at step 100: healthy (") and "discriminator loss 0.120 over steps 51-100" in line
    assert verdict.to_dict()["verdict"] == "healthy"


def test_a_translation_between_the_cts_values_fails_on_them_alone():
    # The CT's body takes two values; a translation that keeps the inverted MR's order but lands
    # between them is neither dark nor in the MR's order, and far from any CT.
    sample = _sample()
    sample.ct = torch.where(sample.ct_body > 0, torch.where(sample.ct > 0, 0.6, -0.5), torch.tensor(-1.0))
    verdict = check_health({"mr2ct": Pixelwise(lambda x: 0.05 - 0.05 * x)}, sample, step=10)
    assert verdict.failures == ["off_ct_values"]
    assert verdict.evidence["off_ct_values"]["fraction"] == pytest.approx(1.0)
    assert "in-body values the CTs rarely take" in verdict.line() and "100% of the body" in verdict.line()


class Oracle(nn.Module):
    """A generator that answers each sample slice with ``answers`` (its true CT, say)."""

    def __init__(self, answers: torch.Tensor):
        super().__init__()
        self.answers = answers
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.answers


def _phantom_slices(case, z_slices, name) -> torch.Tensor:
    from synthct.data.intensity import CTWindow, MRPercentile
    from synthct.io.image import read_image

    array = read_image(case / name).array
    body = read_image(case / "mask.nii.gz").array > 0
    mapping = MRPercentile().fit(array, body) if name == "mr.nii.gz" else CTWindow()
    return torch.from_numpy(mapping.forward(array[z_slices]))[:, None], torch.from_numpy(body[z_slices])[:, None].float()


@pytest.mark.parametrize("seed", [0, 5])
def test_on_phantoms_the_true_ct_passes_and_the_soft_tissue_raised_by_200_hu_is_off_the_cts(tmp_path, seed):
    from synthct.data.phantom import write_phantoms

    # The demo's grid (2.4 mm pixels); MR slices of one case judged against CT slices of another,
    # as a run's sample mixes cases.
    cases = write_phantoms(2, tmp_path, seed=seed, size=(80, 80, 12), spacing=(2.4, 2.4, 4.0))
    z = [4, 6, 8, 10]
    mr, mr_body = _phantom_slices(cases[0], z, "mr.nii.gz")
    truth, _ = _phantom_slices(cases[0], z, "ct.nii.gz")
    ct, ct_body = _phantom_slices(cases[1], z, "ct.nii.gz")
    sample = HealthSample(mr, ct, mr_body, ct_body)
    good = check_health({"mr2ct": Oracle(truth)}, sample, step=1)
    assert "off_ct_values" not in good.failures and good.evidence["off_ct_values"]["fraction"] < 0.2
    soft = (truth > -0.54) & (truth < -0.44)  # -100 to 100 HU: fat, fluid, brain, skin
    raised = torch.where(soft, truth + 200 / 2012, truth)  # the brain rendered at about 240 HU
    bad = check_health({"mr2ct": Oracle(raised)}, sample, step=1)
    assert "off_ct_values" in bad.failures and bad.evidence["off_ct_values"]["fraction"] > 0.5, bad.evidence


def test_the_noise_gain_of_a_pass_through_decoder_stays_below_the_threshold():
    # F passes G(mr)'s noise through at slope 1: the rise is E|n| at most, a gain of at most 1.
    sample = _sample()
    generators = {"mr2ct": Pixelwise(lambda x: -x), "ct2mr": Pixelwise(lambda y: -y)}
    gain = check_health(generators, sample, step=1).evidence["hidden_code"]["gain"]
    assert 0.5 < gain <= 1.05


def test_the_check_is_deterministic_and_restores_training_mode():
    sample = _sample()
    generators = {"mr2ct": Pixelwise(lambda x: -1 + 0.01 * (x + 1)),
                  "ct2mr": Pixelwise(lambda y: ((y + 1) / 0.01 - 1).clamp(-1, 1))}
    state = torch.get_rng_state()
    first, second = (check_health(generators, sample, step=1).evidence for _ in range(2))
    assert first == second and torch.equal(torch.get_rng_state(), state)
    assert all(net.training for net in generators.values())


def test_a_one_sided_model_has_no_cycle_to_judge():
    sample = _sample()
    verdict = check_health({"mr2ct": Pixelwise(_quantile_map(sample, -1))}, sample, step=1)
    assert set(verdict.evidence) == {"mr_order", "dark", "off_ct_values"} and verdict.healthy


def test_the_discriminator_signal_is_the_later_half_of_the_steps_at_most_the_last_window():
    assert discriminator_window(100) == range(51, 101)  # the second half, at most the last 50
    assert discriminator_window(7) == range(5, 8) and discriminator_window(1) == range(1, 2)
    assert discriminator_window(3000) == range(2951, 3001)
    logged = [(step, float(step)) for step in range(1, 3001) if step != 2990]  # one step unlogged
    mean, steps = recent_discriminator_loss(logged, 3000)
    assert mean == pytest.approx((sum(range(2951, 3001)) - 2990) / 49) and steps == "2951-3000"
    assert recent_discriminator_loss(logged[:10], 3000) is None
    assert discriminator_loss({"step": "5", "G_gan": "9", "D_ct": "0.2", "D_mr": ""}) == pytest.approx(0.2)
    assert discriminator_loss({"G_gan": 9.0}) is None


@pytest.mark.parametrize("mode", ["lsgan", "vanilla", "hinge"])
def test_chance_is_the_loss_of_a_discriminator_that_answers_the_same_to_everything(mode):
    gan = GANLoss(mode)
    # A discriminator whose output says "undecided": probability 0.5 (lsgan's 0.5, a logit 0), or hinge's 0.
    undecided = {"lsgan": 0.5, "vanilla": 0.0, "hinge": 0.0}[mode]
    constant = Pixelwise(lambda x: torch.full((len(x), 1, 4, 4), undecided))
    loss = discriminator_objective(gan, constant, torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8))
    assert float(loss) == pytest.approx(health.CHANCE[mode])
    assert discriminator_evidence(health.CHANCE[mode], mode, "1-2")["failed"]
    assert not discriminator_evidence(0.5 * health.CHANCE[mode], mode, "1-2")["failed"]
    assert discriminator_evidence(0.21, "lsgan", "1-2")["threshold"] == pytest.approx(0.20)


def test_body_masks_from_images_fill_the_dark_tissue_inside_the_head():
    image = torch.full((1, 1, 16, 16), -1.0)
    image[..., 3:13, 3:13] = 0.5
    image[..., 6:10, 6:10] = -1.0  # dark fluid inside the head
    body = health.body_from_image(image)
    assert body[..., 3:13, 3:13].all() and body.sum() == 100


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from synthct.data.phantom import write_phantoms

    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(2, root, size=(32, 32, 10))
    return root


TINY = ["--config", "tiny", "--set", "train.threads=1", "--set", "train.sample_every=0", "--set",
        "train.checkpoint_every=3", "--precision", "fp32", "--device", "cpu", "--seed", "3"]


def _train(phantoms, run, *extra) -> int:
    return main(["train", "--data", str(phantoms), "--out", str(run), *TINY, *extra])


def _checks(run) -> list[dict]:
    return json.loads((run / "health.json").read_text(encoding="utf-8"))["checks"]


def test_a_run_checks_its_health_at_each_checkpoint_and_at_the_end(phantoms, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(phantoms, run, "--steps", "7") == 0
    checks = _checks(run)
    assert [c["step"] for c in checks] == [3, 6, 7]
    for check in checks:
        assert set(check["evidence"]) == {"mr_order", "dark", "off_ct_values", "hidden_code",
                                          "discriminators_at_chance"}
        assert check["failures"] == [name for name, e in check["evidence"].items() if e["failed"]]
        assert check["verdict"] == ("failed" if check["failures"] else "healthy")
    assert checks[-1]["evidence"]["discriminators_at_chance"]["window"] == "5-7"  # the later half, 3 steps
    assert [c["final"] for c in checks] == [False, False, True]  # only the last step's verdict is the run's
    err = capsys.readouterr().err
    assert err.count("synthct: health at step ") == 3 and "health at step 7: " in err
    # Stopped and resumed, the run keeps its earlier verdicts and reaches the same ones.
    split = tmp_path / "split"
    assert _train(phantoms, split, "--steps", "7", "--set", "train.stop_at_step=4") == 0
    assert [(c["step"], c["final"]) for c in _checks(split)] == [(3, False), (4, False)]
    assert main(["train", "--resume", str(split)]) == 0
    assert [c["step"] for c in _checks(split)] == [3, 4, 6, 7]
    assert [c for c in _checks(split) if c["step"] != 4] == checks
    # A time budget that ends the run at a checkpoint step makes that step's verdict the last one.
    timed = tmp_path / "timed"
    assert _train(phantoms, timed, "--steps", "7", "--minutes", "1e-9", "--set", "train.checkpoint_every=1") == 0
    assert [(c["step"], c["final"]) for c in _checks(timed)] == [(1, True)]


def test_the_report_shows_the_last_verdict_and_the_earlier_ones(tmp_path):
    from synthct.eval.report import ReportCase, write_report

    sample = _sample()
    verdicts = [check_health({"mr2ct": Pixelwise(lambda x: -1 + 0.01 * (x + 1))}, sample, step=50),
                check_health({"mr2ct": Pixelwise(_quantile_map(sample, -1))}, sample, step=100)]
    run = tmp_path / "run"
    run.mkdir()
    (run / "health.json").write_text(json.dumps({"checks": [v.to_dict() for v in verdicts]}))
    ct = np.zeros((2, 8, 8), np.float32)
    case, summary = ReportCase("case", ct, ct), {"mode": "hu", "metrics": {}}

    def report(name: str) -> str:
        return write_report(tmp_path / name / "index.html", [case], summary, [], run_dir=run).read_text()

    section = report("healthy").split('<div id="health">')[1].split("</div>")[0]
    assert '<p class="note">health at step 100: healthy' in section
    assert "earlier checks" in section and "health at step 50: FAILED: " in section and "dark phase" in section
    (run / "health.json").write_text('{"checks": [{"step": 1}]}')
    with pytest.raises(SynthctError, match="not a health record written by synthct train"):
        report("damaged")
    (run / "health.json").write_text("{")
    with pytest.raises(SynthctError, match="not a readable health record"):
        report("unreadable")
    (run / "health.json").unlink()
    assert "No training health check" in report("unchecked")


def test_the_runs_table_lists_each_runs_last_verdict(tmp_path, capsys):
    sample = _sample()
    verdict = check_health({"mr2ct": Pixelwise(lambda x: -1 + 0.01 * (x + 1))}, sample, step=3000)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "health.json").write_text(json.dumps({"checks": [verdict.to_dict()]}))
    (tmp_path / "c").mkdir()  # a run stopped before its last step
    (tmp_path / "c" / "health.json").write_text(json.dumps({"checks": [verdict.to_dict() | {"final": False}]}))
    assert health.main([str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "run\tstep\tverdict\tfailures"
    assert lines[1] == f"{tmp_path / 'a'}\t3000\tfailed\tdark"
    assert lines[2] == f"{tmp_path / 'b'}\t\tnot checked\t"
    assert lines[3] == f"{tmp_path / 'c'}\t3000\tfailed so far\tdark"
