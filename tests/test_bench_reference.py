"""benchmarks/bench_reference.py without the reference checkout and without timing anything: it
skips with a clear message when no checkout is given, alternates the codes round by round, and
runs end to end on a tiny stand-in for the reference's model package."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_reference.py"
_spec = importlib.util.spec_from_file_location("bench_reference", SCRIPT)
bench_reference = importlib.util.module_from_spec(_spec)
sys.modules["bench_reference"] = bench_reference  # dataclasses look their module up there
_spec.loader.exec_module(bench_reference)

# The reference's layout and interface (models/ and util/ as top-level packages, CycleGANModel with
# modify_commandline_options, set_input and optimize_parameters); the step only records its calls.
FAKE_MODEL = '''
import torch
from util.image_pool import ImagePool

CALLS = []


class CycleGANModel:
    @staticmethod
    def modify_commandline_options(parser, is_train=True):
        parser.set_defaults(no_dropout=True)
        parser.add_argument("--lambda_A", type=float, default=10.0)
        parser.add_argument("--lambda_B", type=float, default=10.0)
        parser.add_argument("--lambda_identity", type=float, default=0.5)
        return parser

    def __init__(self, opt):
        self.opt = opt
        self.pool = ImagePool(opt.pool_size)
        print("initialize network with", opt.init_type)

    def set_input(self, data):
        self.real_A, self.real_B = data["A"], data["B"]

    def optimize_parameters(self):
        CALLS.append((tuple(self.real_A.shape), tuple(self.real_B.shape)))
'''


@pytest.fixture
def fake_reference(tmp_path, monkeypatch):
    root = tmp_path / "pytorch-CycleGAN-and-pix2pix"
    (root / "models").mkdir(parents=True)
    (root / "util").mkdir()
    (root / "models" / "__init__.py").write_text("")
    (root / "models" / "cycle_gan_model.py").write_text(textwrap.dedent(FAKE_MODEL))
    (root / "util" / "__init__.py").write_text("")
    (root / "util" / "image_pool.py").write_text("class ImagePool:\n    def __init__(self, size):\n"
                                                 "        self.size = size\n")
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_reference prepends the checkout
    for name in ("models", "models.cycle_gan_model", "util", "util.image_pool"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield root
    for name in ("models", "models.cycle_gan_model", "util", "util.image_pool"):
        sys.modules.pop(name, None)


def test_without_a_checkout_it_skips_and_says_how_to_get_one(capsys):
    assert bench_reference.main([]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("skipped: no reference checkout given")
    assert "git clone https://github.com/junyanz/pytorch-CycleGAN-and-pix2pix" in out and "--reference" in out


def test_a_folder_that_is_not_the_reference_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="not a checkout"):
        bench_reference.load_reference(tmp_path)


def test_rounds_alternate_the_codes_after_uncounted_warmup():
    order = []
    ticks = iter(range(1000))
    seconds = bench_reference.alternate({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                        pairs=3, warmup=2, clock=lambda: next(ticks))
    assert order == ["a", "b"] * 5
    assert seconds == {"a": [1, 1, 1], "b": [1, 1, 1]}


def test_reference_options_are_its_cyclegan_defaults(fake_reference):
    model_class = bench_reference.load_reference(fake_reference)
    opt = bench_reference.reference_options(model_class, size=256, ngf=64)
    assert (opt.netG, opt.netD, opt.n_layers_D, opt.ngf, opt.ndf) == ("resnet_9blocks", "basic", 3, 64, 64)
    assert (opt.norm, opt.no_dropout, opt.gan_mode, opt.pool_size) == ("instance", True, "lsgan", 50)
    assert (opt.lambda_A, opt.lambda_B, opt.lambda_identity) == (10.0, 10.0, 0.5)
    assert (opt.input_nc, opt.output_nc, opt.batch_size, opt.lr, opt.beta1) == (1, 1, 1, 0.0002, 0.5)


def test_tiny_side_by_side_runs_both_codes_alternately(fake_reference, monkeypatch, one_thread):
    monkeypatch.setattr(bench_reference, "matmul_rate", lambda dtype, device, repeats: 0.1)
    rows, rates = bench_reference.measure(fake_reference, size=32, ngf=2, pairs=2, warmup=1, with_bf16=True,
                                          floors=True)
    calls = sys.modules["models.cycle_gan_model"].CALLS
    assert len(calls) == 1 + 2 + 1 and set(calls) == {((1, 1, 32, 32), (1, 1, 32, 32))}  # warm-up, rounds, FLOPs
    assert [(row.label, row.precision) for row in rows] == [("reference", "fp32"), ("synthct", "fp32"),
                                                            ("synthct", "bf16")]
    assert all(len(row.seconds) == 2 for row in rows)
    assert rows[0].flops == 0 and rows[1].flops > 0 and rates == {"fp32": 0.1, "bf16": 0.1}
    rows[0].flops = rows[1].flops  # the stand-in does no arithmetic; a floor needs FLOPs
    table = bench_reference.markdown(rows, rates)
    assert table.splitlines()[2].startswith("| reference | fp32 |") and "| 1.00x | 1.00x |" in table.splitlines()[2]
    assert "| synthct | bf16 |" in table


def test_same_round_ratio_pairs_each_round():
    # synthct twice as fast in two rounds; in the third the load rose in the middle of the round
    reference = bench_reference.Timed("reference", "fp32", [10.0, 40.0, 30.0])
    synthct = bench_reference.Timed("synthct", "fp32", [5.0, 20.0, 60.0])
    assert bench_reference.paired_ratio(reference, synthct) == 2.0
    assert reference.median / synthct.median == 1.5
