"""The output head's CPU convolution (matrix products and shifted sums, layers._FewOutputConv)
computes nn.Conv2d's maths: forward and every gradient against the stock layers, in both memory
layouts, float64 gradcheck, and the stock path for exporters."""

import pytest
import torch
import torch.nn.functional as F

from synthct.models.layers import OutputHead, _FewOutputConv


def stock_head(head: OutputHead, x: torch.Tensor) -> torch.Tensor:
    conv = head[1]
    return torch.tanh(F.conv2d(F.pad(x, (3, 3, 3, 3), mode="reflect"), conv.weight, conv.bias))


@pytest.mark.parametrize("channels_last", [False, True])
def test_head_matches_the_stock_layers_forward_and_backward(channels_last):
    torch.manual_seed(0)
    head = OutputHead(8, 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 8, 20, 17).contiguous(memory_format=fmt).requires_grad_()
    y, y_ref = head(x), stock_head(head, x)
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum(), (x, head[1].weight, head[1].bias))
    grads_ref = torch.autograd.grad((y_ref * weights).sum(), (x, head[1].weight, head[1].bias))
    assert torch.allclose(y, y_ref, atol=1e-5)
    for grad, grad_ref in zip(grads, grads_ref):
        assert torch.allclose(grad, grad_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("out_channels, kernel", [(1, 7), (2, 3)])
def test_few_output_conv_gradcheck(out_channels, kernel):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(out_channels, 3, kernel, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(out_channels, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(_FewOutputConv.apply(x, weight, bias), F.conv2d(x, weight, bias))
    assert torch.autograd.gradcheck(_FewOutputConv.apply, (x, weight, bias))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_head_under_bf16_autocast_stays_fp32_and_traces_to_the_stock_convolution():
    torch.manual_seed(0)
    head = OutputHead(4, 1)
    x = torch.randn(1, 4, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = head(x.bfloat16())
    assert y.dtype == torch.float32
    traced = torch.jit.trace(head, x)
    assert "aten::_convolution" in str(traced.inlined_graph)  # the stock convolution, not the Function
    assert torch.allclose(traced(x), stock_head(head, x), atol=1e-6)
