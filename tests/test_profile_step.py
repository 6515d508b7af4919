"""benchmarks/profile_step.py's grouping of profiled ops into rows, on made-up profiler events:
nothing is timed or profiled here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_step.py"
_spec = importlib.util.spec_from_file_location("profile_step", SCRIPT)
profile_step = importlib.util.module_from_spec(_spec)
sys.modules["profile_step"] = profile_step
_spec.loader.exec_module(profile_step)

Op = profile_step.Op


def conv(weight, stride=1, transposed=False, backward=False):
    """aten::convolution(input, weight, bias, stride, padding, dilation, transposed, ...) or
    aten::convolution_backward(grad, input, weight, bias_sizes, stride, ...), as the profiler
    records their shapes and scalar arguments."""
    args = [[stride, stride], [1, 1], [1, 1], transposed, [0, 0], 1]
    if backward:
        return Op("aten::convolution_backward", [[1], [1], list(weight), []], [None, None, None, None] + args)
    return Op("aten::convolution", [[1], list(weight), []], [None, None, None] + args)


def test_convolutions_are_told_apart_by_weight_stride_and_transposition():
    kind = profile_step.categorise
    leaf = Op("aten::mkldnn_convolution", [], [])
    assert kind([leaf, conv((128, 128, 3, 3))]) == profile_step.RESIDUAL
    # a stride-2 down convolution and a transposed up one with the same 64 x 32 x 3 x 3 weight
    assert kind([leaf, conv((64, 32, 3, 3), stride=2)]) == profile_step.DOWN
    assert kind([conv((64, 32, 3, 3), stride=2, transposed=True, backward=True)]) == profile_step.UP
    assert kind([conv((32, 1, 7, 7), backward=True)]) == profile_step.STEM
    assert kind([conv((1, 32, 7, 7))]) == profile_step.HEAD
    assert kind([conv((256, 128, 4, 4), stride=1, backward=True)]) == profile_step.PATCHGAN


def test_an_op_belongs_to_the_innermost_layer_around_it():
    kind = profile_step.categorise
    copy, mul = Op("aten::copy_", [], []), Op("aten::mul", [], [])
    conv2d = Op("aten::conv2d", [], [])
    assert kind([copy, conv((128, 128, 3, 3)), conv2d]) == profile_step.RESIDUAL
    assert kind([copy, Op("aten::to", [], []), conv2d]) == profile_step.COPY  # autocast's weight cast
    assert kind([mul, Op("_InstanceNormActBackward", [], [])]) == profile_step.NORM
    assert kind([Op("aten::mm", [], []), Op("_FewOutputConv", [], [])]) == profile_step.HEAD
    assert kind([Op("aten::_fused_adam_", [], []), Op("Optimizer.step#Adam.step", [], [])]) == profile_step.ADAM
    assert kind([mul]) == profile_step.ELEMENTWISE
    assert kind([Op("aten::empty", [], [])]) == profile_step.OTHER


def event(name, self_us=0.0, parent=None, seq=-1, op=None):
    return SimpleNamespace(name=name, self_cpu_time_total=self_us, cpu_parent=parent, sequence_nr=seq,
                           input_shapes=op.shapes if op else [], concrete_inputs=op.args if op else [])


def test_r1_gets_its_range_and_the_backward_of_the_nodes_made_there():
    engine = profile_step.ENGINE
    d_conv = conv((32, 1, 4, 4), stride=2)
    forward = event("aten::convolution", 5.0, seq=7, op=d_conv)  # D's forward makes node 7
    r1 = event(profile_step.R1_RANGE, 1.0)
    # the input gradient walks back through node 7 and makes node 9 (its double backward)
    walk = event(engine + "ConvolutionBackward0", 0.0, parent=r1, seq=7)
    grad = event("aten::convolution_backward", 2.0, parent=walk, seq=9,
                 op=conv((32, 1, 4, 4), stride=2, backward=True))
    # the discriminator's loss.backward(): node 9 (R1's) and node 7 (D's own backward)
    double = event(engine + "ConvolutionBackwardBackward0", 0.0, seq=9)
    double_op = event("aten::convolution", 3.0, parent=double, op=d_conv)
    own = event(engine + "ConvolutionBackward0", 0.0, seq=7)
    own_op = event("aten::convolution_backward", 4.0, parent=own, op=conv((32, 1, 4, 4), stride=2, backward=True))
    events = [forward, r1, walk, grad, double, double_op, own, own_op]

    assert profile_step.r1_nodes(events) == {9}
    totals, weights = profile_step.group(events)
    assert totals[profile_step.R1] == 1.0 + 2.0 + 3.0
    assert totals[profile_step.PATCHGAN] == 5.0 + 4.0
    assert weights[profile_step.PATCHGAN] == {"32 x 1 x 4 x 4"}
