"""Building blocks of the generators and the discriminator.

Each block is a small named module so that the networks read like the papers' notation
(c7s1-k, dk, Rk, uk; Ck for the PatchGAN) and so that the blocks can be tuned for
channels_last + bfloat16 on CPU without touching the network definitions.

Normalisation is InstanceNorm without affine parameters or running statistics, and convolutions
keep their bias, exactly as the reference CycleGAN/pix2pix code does with ``--norm instance``:

    y = (x - mu) / sqrt(sigma^2 + eps),  mu, sigma^2 = mean, biased variance of x over (H, W).

Why not nn.InstanceNorm2d / nn.ReflectionPad2d: under CPU autocast the stock instance norm
returns a contiguous (NCHW) tensor and reflection padding runs in fp32, so every bf16
channels_last activation was converted to fp32, back, and between memory layouts around each
convolution (about a third of a training step in ``aten::copy_``). Here both keep the input's
dtype and memory layout; the norm runs on aten's channels_last batch-norm kernels (statistics
accumulated in fp32), folds the activation that follows it into its own forward and backward,
and keeps only its input for the backward where the stock pair kept input and output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS = 1e-5  # nn.InstanceNorm2d's default


def _norm_coefficients(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-(sample, channel) scale 1/sigma and shift -mu/sigma, shape (N, C, 1, 1), for tracing."""
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    scale = (var + eps).rsqrt()
    return scale, -mean * scale


def _normalise(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    return torch.addcmul(shift, x, scale)


def _leaky_relu_(x: Tensor, negative_slope: float) -> Tensor:
    return torch.relu_(x) if negative_slope == 0 else F.leaky_relu_(x, negative_slope)


def _batch_norm_per_sample(x: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(x_hat, mean, invstd) with (N, C) statistics, one batch-norm call per sample."""
    n, c = x.shape[:2]
    if x.device.type == "cpu":
        # Written in place: no concatenation pass. CPU kernels return bf16 statistics for bf16
        # input (accumulated in fp32); CUDA's are fp32, hence the other branch.
        y = torch.empty_like(x)
        mean, invstd = x.new_empty((n, c)), x.new_empty((n, c))
        for i in range(n):
            torch.ops.aten._native_batch_norm_legit.no_stats_out(
                x[i:i + 1], None, None, True, 0.0, eps, out=y[i:i + 1], save_mean=mean[i], save_invstd=invstd[i])
        return y, mean, invstd
    pieces = [torch.ops.aten._native_batch_norm_legit(x[i:i + 1], None, None, True, 0.0, eps) for i in range(n)]
    ys, means, invstds = zip(*pieces)
    return (ys[0] if n == 1 else torch.cat(ys)), torch.stack(means), torch.stack(invstds)


class _InstanceNormAct(torch.autograd.Function):
    """Instance norm (+ (leaky) ReLU) on aten's batch-norm kernels, one sample at a time: a
    (1, C, H, W) sample is exactly a batch-norm batch, and those kernels are vectorised for
    channels_last and accumulate bf16 in fp32 (var_mean over (H, W) of a channels_last tensor
    is about ten times slower). The backward is batch norm's closed form

        dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sigma,
        g = dy * (1 if x_hat > 0 else negative_slope)   (g = dy without activation),

    and only x and the (N, C) statistics are kept for it.
    """

    @staticmethod
    def forward(ctx, x: Tensor, negative_slope: float | None, eps: float) -> Tensor:
        y, mean, invstd = _batch_norm_per_sample(x, eps)
        if negative_slope is not None:
            _leaky_relu_(y, negative_slope)
        ctx.negative_slope, ctx.eps = negative_slope, eps
        ctx.save_for_backward(x, mean, invstd)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, mean, invstd = ctx.saved_tensors
        grad = grad.to(x.dtype)
        if ctx.negative_slope is not None:  # x_hat > 0 exactly where x > mean
            positive = x > mean[:, :, None, None]
            # (masked_fill would return a contiguous tensor and lose channels_last)
            grad = (grad * positive if ctx.negative_slope == 0
                    else torch.where(positive, grad, grad * ctx.negative_slope))
        pieces = [torch.ops.aten.native_batch_norm_backward(
            grad[i:i + 1], x[i:i + 1], None, None, None, mean[i], invstd[i], True, ctx.eps,
            [True, False, False])[0] for i in range(x.shape[0])]
        dx = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        return dx, None, None


def instance_norm_act(x: Tensor, negative_slope: float | None = None, eps: float = EPS) -> Tensor:
    """Instance norm without affine parameters, then ReLU (``negative_slope=0``), LeakyReLU
    (``negative_slope > 0``) or nothing (None); in x's dtype and memory layout."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        # Exporters trace plain aten ops; the same maths without the custom backward.
        y = _normalise(x, *_norm_coefficients(x, eps))
        return y if negative_slope is None else _leaky_relu_(y, negative_slope)
    with torch.autocast(x.device.type, enabled=False):
        return _InstanceNormAct.apply(x, negative_slope, eps)


class InstanceNorm(nn.InstanceNorm2d):
    """InstanceNorm2d(affine=False, track_running_stats=False), optionally fused with the
    activation that follows it (``negative_slope``: 0 for ReLU, 0.2 for LeakyReLU 0.2)."""

    def __init__(self, channels: int, negative_slope: float | None = None, eps: float = EPS):
        super().__init__(channels, eps=eps, affine=False, track_running_stats=False)
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        return instance_norm_act(x, self.negative_slope, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, negative_slope={self.negative_slope}"


class ReflectionPad(nn.ReflectionPad2d):
    """nn.ReflectionPad2d that keeps the input's dtype under autocast (the stock one is on
    autocast's fp32 list, which costs two conversions per padded convolution)."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.pad(x, self.padding, mode="reflect")


NEGATIVE_SLOPES = {"relu": 0.0, "lrelu": 0.2, None: None}


def activation(name: str | None) -> nn.Module:
    if name not in NEGATIVE_SLOPES:
        raise ValueError(f"unknown activation '{name}' (relu | lrelu | None)")
    if name is None:
        return nn.Identity()
    if name == "relu":
        return nn.ReLU(inplace=True)
    return nn.LeakyReLU(0.2, inplace=True)


def norm_act(channels: int, act: str | None) -> tuple[nn.Module, nn.Module]:
    """(InstanceNorm, Identity) with the activation folded into the norm. Two modules so that
    the layer indices, and with them the parameter names of saved weights, stay those of
    [conv, norm, act]."""
    activation(act)  # validates the name
    return InstanceNorm(channels, NEGATIVE_SLOPES[act]), nn.Identity()


class ConvNormAct(nn.Sequential):
    """[reflection pad] -> conv -> [InstanceNorm] -> [activation].

    ``reflect=True`` pads by ``padding`` with reflection before an unpadded convolution (the
    c7s1-k and residual convolutions); otherwise the convolution zero-pads itself.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, *, reflect: bool = False, norm: bool = True,
                 act: str | None = "relu"):
        layers: list[nn.Module] = []
        if reflect and padding:
            layers.append(ReflectionPad(padding))
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                padding=0 if reflect else padding, bias=True))
        if norm:
            layers.extend(norm_act(out_channels, act))
        else:
            layers.append(activation(act))
        super().__init__(*layers)


class UpConvNormAct(nn.Sequential):
    """u_k: 3x3 fractionally-strided convolution (stride 1/2) -> InstanceNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1,
                               output_padding=1, bias=True),
            *norm_act(out_channels, "relu"),
        )


class ResidualBlock(nn.Module):
    """R_k: x + (reflect-pad, conv3x3, IN, ReLU, reflect-pad, conv3x3, IN); no ReLU after the add."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            ConvNormAct(channels, channels, 3, padding=1, reflect=True, act="relu"),
            ConvNormAct(channels, channels, 3, padding=1, reflect=True, act=None),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class _FewOutputConv(torch.autograd.Function):
    """A stride-1 convolution without padding whose k x k x out_channels taps are few (the
    output head: 64 -> 1 channel, 7x7), as one matrix product per sample and shifted sums, on
    the CPU in fp32. oneDNN runs a one-channel output at a few GFLOP/s (about 5x slower than
    this, forward and backward, 256 x 256 on one Zen 4 core).

    With the input flattened to rows of its padded width wp, tap (di, dj) of output pixel q is
    input pixel q + di * wp + dj: z = taps @ x gives every tap's contribution at every pixel,
    and the output sums the k * k shifted slices of z (wp - wo columns per row are computed and
    dropped). The backward is the transpose: the gradient placed at each tap's shift, then two
    matrix products.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        n, cin, hp, wp = x.shape
        cout, _, k, _ = weight.shape
        ho, wo = hp - k + 1, wp - k + 1
        span = ho * wp - k + 1  # the last row's dropped columns would read past the input
        taps = weight.permute(2, 3, 0, 1).reshape(k * k * cout, cin)
        flat = x.reshape(n, cin, hp * wp)
        y = x.new_zeros(n, cout, ho * wp)
        for i in range(n):
            z = taps @ flat[i]
            for t in range(k * k):
                offset = (t // k) * wp + t % k
                y[i, :, :span] += z[t * cout:(t + 1) * cout, offset:offset + span]
        y = y.view(n, cout, ho, wp)[:, :, :, :wo]
        y = y + bias[:, None, None] if bias is not None else y.contiguous()
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        n, cin, hp, wp = x.shape
        cout, _, k, _ = weight.shape
        ho, wo = hp - k + 1, wp - k + 1
        span = ho * wp - k + 1
        want_x, want_w = ctx.needs_input_grad[:2]
        taps = weight.permute(2, 3, 0, 1).reshape(k * k * cout, cin)
        flat = x.reshape(n, cin, hp * wp)
        rows = x.new_zeros(n, cout, ho, wp)
        rows[:, :, :, :wo] = grad
        rows = rows.view(n, cout, ho * wp)
        grad_taps = torch.zeros_like(taps) if want_w else None
        grad_x = torch.empty_like(flat) if want_x else None
        for i in range(n):
            z = x.new_zeros(k * k * cout, hp * wp)
            for t in range(k * k):
                offset = (t // k) * wp + t % k
                z[t * cout:(t + 1) * cout, offset:offset + span] = rows[i, :, :span]
            if want_w:
                grad_taps.addmm_(z, flat[i].t())
            if want_x:
                torch.mm(taps.t(), z, out=grad_x[i])
        grad_weight = grad_taps.view(k, k, cout, cin).permute(2, 3, 0, 1).contiguous() if want_w else None
        grad_bias = grad.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return (grad_x.view_as(x) if want_x else None), grad_weight, grad_bias


class OutputHead(nn.Sequential):
    """c7s1-out + tanh, always in fp32: in bf16 the tanh output would be quantised to steps of
    2**-8 of the model range (about 4 HU in soft tissue), more than the generator's error. On
    the CPU its convolution runs as matrix products (``_FewOutputConv``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(ReflectionPad(3), nn.Conv2d(in_channels, out_channels, 7), nn.Tanh())

    def forward(self, x: Tensor) -> Tensor:
        pad, conv, tanh = self
        with torch.autocast(x.device.type, enabled=False):
            if x.device.type == "cpu" and not (torch.jit.is_tracing() or torch.jit.is_scripting()):
                # fp32 and NCHW in one conversion (a bf16 channels_last input would take two)
                x = pad(x.to(torch.float32, memory_format=torch.contiguous_format))
                return tanh(_FewOutputConv.apply(x, conv.weight, conv.bias))
            return tanh(conv(pad(x.float())))


class UnetDown(nn.Sequential):
    """U-Net encoder step: [LeakyReLU 0.2] -> conv4x4 stride 2 -> [InstanceNorm].

    The activation sits before the convolution (it acts on the previous step's output, which is
    also what the skip connection carries), as in the reference UnetSkipConnectionBlock.
    """

    def __init__(self, in_channels: int, out_channels: int, *, act: bool = True, norm: bool = True):
        layers: list[nn.Module] = [nn.LeakyReLU(0.2)] if act else []
        layers.append(nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=True))
        if norm:
            layers.append(InstanceNorm(out_channels))
        super().__init__(*layers)


class UnetUp(nn.Sequential):
    """U-Net decoder step: ReLU -> transposed conv4x4 stride 2 -> InstanceNorm [-> Dropout 0.5]."""

    def __init__(self, in_channels: int, out_channels: int, *, dropout: bool = False):
        layers: list[nn.Module] = [
            nn.ReLU(),
            nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=True),
            InstanceNorm(out_channels),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        super().__init__(*layers)
