"""The tuned layers compute exactly the paper's maths: compared in fp32 (and float64 gradcheck)
with the straightforward nn.ReflectionPad2d + nn.Conv2d + nn.InstanceNorm2d formulation, and in
bf16 close to fp32."""

import pytest
import torch
from torch import nn

from synthct.models.discriminator import PatchDiscriminator
from synthct.models.generators import ResnetGenerator, UnetGenerator
from synthct.models.layers import InstanceNorm, ReflectionPad, instance_norm_act


def reference_norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ReferenceResnetGenerator(nn.Module):
    """The CycleGAN ResnetGenerator written with stock modules (Zhu et al. 2017 reference code)."""

    def __init__(self, cin: int, cout: int, ngf: int, n_blocks: int):
        super().__init__()

        def cna(i, o, k, s=1, p=0, reflect=False, relu=True):
            layers = [nn.ReflectionPad2d(p)] if reflect else []
            layers += [nn.Conv2d(i, o, k, s, 0 if reflect else p), reference_norm(o)]
            return layers + ([nn.ReLU()] if relu else [])

        self.stem = nn.Sequential(*cna(cin, ngf, 7, p=3, reflect=True))
        self.down = nn.Sequential(*cna(ngf, 2 * ngf, 3, 2, 1), *cna(2 * ngf, 4 * ngf, 3, 2, 1))
        self.blocks = nn.ModuleList(
            nn.Sequential(*cna(4 * ngf, 4 * ngf, 3, p=1, reflect=True),
                          *cna(4 * ngf, 4 * ngf, 3, p=1, reflect=True, relu=False)) for _ in range(n_blocks))
        self.up = nn.Sequential(
            nn.ConvTranspose2d(4 * ngf, 2 * ngf, 3, 2, 1, output_padding=1), reference_norm(2 * ngf), nn.ReLU(),
            nn.ConvTranspose2d(2 * ngf, ngf, 3, 2, 1, output_padding=1), reference_norm(ngf), nn.ReLU())
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, cout, 7), nn.Tanh())

    def forward(self, x):
        x = self.down(self.stem(x))
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.up(x))


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    src_convs = [m for m in src.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    dst_convs = [m for m in dst.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(src_convs) == len(dst_convs)
    for a, b in zip(src_convs, dst_convs):
        assert a.weight.shape == b.weight.shape
        b.weight.data.copy_(a.weight.data)
        b.bias.data.copy_(a.bias.data)


@pytest.mark.parametrize("slope", [None, 0.0, 0.2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_instance_norm_matches_stock_forward_and_backward(slope, channels_last):
    torch.manual_seed(0)
    x = (torch.randn(2, 5, 9, 7) * 3 + 2).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = InstanceNorm(5, negative_slope=slope)(x.contiguous(memory_format=fmt))
    y_ref = reference_norm(5)(x_ref)
    if slope is not None:
        y_ref = nn.functional.leaky_relu(y_ref, slope)
    weights = torch.randn_like(y_ref)
    (y * weights).sum().backward()
    (y_ref * weights).sum().backward()
    assert torch.allclose(y, y_ref, atol=1e-5)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
    assert y.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("slope", [None, 0.0, 0.2])
def test_instance_norm_gradcheck(slope):
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: instance_norm_act(t, slope), (x,))


def test_norm_and_pad_keep_bf16_channels_last_under_autocast():
    x = torch.randn(1, 8, 12, 12).bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ReflectionPad(1)(InstanceNorm(8, negative_slope=0.0)(x))
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16


def test_bf16_instance_norm_close_to_fp32():
    torch.manual_seed(1)
    x = torch.randn(1, 16, 32, 32) * 4 + 1
    y32 = instance_norm_act(x, 0.0)
    y16 = instance_norm_act(x.bfloat16(), 0.0).float()
    assert (y16 - y32).abs().max() < 0.05  # bf16 keeps 8 bits: 2**-8 relative of values up to ~4


def test_resnet_generator_equals_reference_formulation():
    torch.manual_seed(2)
    fast, ref = ResnetGenerator(2, 2, ngf=4, n_blocks=2), ReferenceResnetGenerator(2, 2, 4, 2)
    copy_weights(fast, ref)
    x = torch.randn(2, 2, 16, 20)
    x_ref = x.clone().requires_grad_()
    x.requires_grad_()
    y = fast(x.contiguous(memory_format=torch.channels_last))
    y_ref = ref(x_ref)
    assert torch.allclose(y, y_ref, atol=1e-5)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
    for a, b in zip([p for p in fast.parameters()], [p for p in ref.parameters()]):
        assert torch.allclose(a.grad, b.grad, atol=1e-4, rtol=1e-4)


def test_generator_output_head_is_fp32_under_autocast_and_close_to_fp32():
    torch.manual_seed(3)
    g = ResnetGenerator(1, 1, ngf=8, n_blocks=2).to(memory_format=torch.channels_last)
    x = torch.rand(1, 1, 32, 32).contiguous(memory_format=torch.channels_last) * 2 - 1
    with torch.no_grad():
        y32 = g(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = g(x)
    assert y16.dtype == torch.float32
    assert (y16 - y32).abs().max() < 0.05


def test_parameter_names_unchanged_for_saved_weights():
    names = set(dict(ResnetGenerator(1, 1, ngf=4, n_blocks=1).named_parameters()))
    assert {"stem.1.weight", "down.0.0.weight", "blocks.0.body.1.1.bias", "up.1.0.weight",
            "head.1.weight"} <= names
    d_names = set(dict(PatchDiscriminator(1, 4, 3).named_parameters()))
    assert {"model.0.0.weight", "model.1.0.weight", "model.4.weight"} <= d_names


def test_unet_and_discriminator_run_under_autocast():
    unet = UnetGenerator(1, 1, num_downs=5, ngf=4).to(memory_format=torch.channels_last)
    d = PatchDiscriminator(1, 4, 3).to(memory_format=torch.channels_last)
    x = torch.rand(2, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = unet(x)
        score = d(y)
    score.float().mean().backward()
    assert y.shape == x.shape and torch.isfinite(score).all()
    assert all(p.grad is not None for p in d.parameters())


def test_patch_discriminator_equals_reference_formulation():
    torch.manual_seed(4)
    fast = PatchDiscriminator(1, ndf=4, n_layers=3)
    ref = nn.Sequential(
        nn.Conv2d(1, 4, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(4, 8, 4, 2, 1), reference_norm(8), nn.LeakyReLU(0.2),
        nn.Conv2d(8, 16, 4, 2, 1), reference_norm(16), nn.LeakyReLU(0.2),
        nn.Conv2d(16, 32, 4, 1, 1), reference_norm(32), nn.LeakyReLU(0.2),
        nn.Conv2d(32, 1, 4, 1, 1))
    copy_weights(fast, ref)
    x = torch.randn(2, 1, 64, 64)
    x_ref = x.clone().requires_grad_()
    x.requires_grad_()
    y, y_ref = fast(x.contiguous(memory_format=torch.channels_last)), ref(x_ref)
    assert torch.allclose(y, y_ref, atol=1e-5)
    y.sum().backward()
    y_ref.sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
