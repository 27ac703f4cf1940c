"""The compiled eager schedule of a `StaticModel`: the same node list, the same values, less per-node cost.

The pruned models of the tiny recipes run a hundred convolutions of a few channels at 12x16 pixels; on CPU their
latency is per-op overhead, not FLOPs, so an interpreter that pays more per node than the masked supernet eats
the pruning gain. `Schedule` compiles the spec once into a list of steps and runs them without `Module.__call__`:

- a ReLU whose input has no other reader (and is no output) runs in place, fused into the producing step;
- an `add` accumulates into an input that nothing else reads (inputs 0 or 1 only: a + b == b + a exactly in
  IEEE arithmetic, so the sum is bit-identical to the interpreter's left-to-right `xs[0] + xs[1] + ...`);
- an intermediate is dropped after its last reader, so the allocator reuses its memory while it is warm;
- a dilated convolution with a bias at batch 1 runs without the bias, then adds it: ATen runs such small
  batch-1 convolutions with its native kernel (`use_mkldnn` in aten/src/ATen/native/Convolution.cpp picks oneDNN
  only for batch > 1, inputs above 20480 elements, groups > 1 or kernels above 3x3), and the native dilated
  kernel (`slow_conv_dilated2d`) writes the bias one output channel at a time, several ATen calls per channel;
  measured on 2 cores, a 64-channel 3x3 dilation-4 conv at 7x9: 200 us with the bias, 100 us without + one add.
  The masked supernet's convolutions have no bias (BN follows), so it never pays this; the folded BN of the
  static model would.

Every other op runs its layer's bound `forward`. The schedule is only run where nothing can observe it, and only when
asked for: `StaticModel.infer` runs it under `torch.inference_mode` (in-place ops would break autograd), while
`StaticModel.forward` stays the node-by-node interpreter that tracing and export (torch.export names ONNX nodes after
the module calls) and forward hooks (they would see tensors a later in-place op changes) rely on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .model import StaticModel

_NATIVE_MAX_NUMEL = 20480  # ATen's batch-1 size limit below which the native kernel runs (see module docstring)


def _conv(m: nn.Conv2d, relu: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    dilated = m.dilation != (1, 1) and m.groups == 1 and min(m.kernel_size) <= 3
    stride, padding, dilation, groups = m.stride, m.padding, m.dilation, m.groups

    def run(x: torch.Tensor) -> torch.Tensor:
        w, b = m.weight, m.bias
        if dilated and b is not None and x.shape[0] == 1 and x.numel() <= _NATIVE_MAX_NUMEL and not x.is_cuda:
            y = F.conv2d(x, w, None, stride, padding, dilation, groups).add_(b.view(1, -1, 1, 1))
        else:
            y = F.conv2d(x, w, b, stride, padding, dilation, groups)
        return y.relu_() if relu else y

    return run


def _add(n: int, into: int | None, relu: bool) -> Callable[..., torch.Tensor]:
    """Left-to-right sum of `n` inputs; `into` (0 or 1) names a dead input to accumulate into."""

    def run(*xs: torch.Tensor) -> torch.Tensor:
        if into is None:
            out = xs[0] + xs[1]
        else:
            out = xs[into].add_(xs[1 - into])
        for x in xs[2:]:
            out.add_(x)  # `out` is fresh or dead by now: in place is the interpreter's `out = out + x`
        return out.relu_() if relu else out

    return run


def _with_relu(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def run(*xs: torch.Tensor) -> torch.Tensor:
        return fn(*xs).relu_()

    return run


class _Step:
    __slots__ = ("op", "layer", "inputs", "out", "relu", "into", "free")

    def __init__(self, op: str, layer: nn.Module, inputs: list[str], out: str) -> None:
        self.op, self.layer, self.inputs, self.out = op, layer, inputs, out
        self.relu, self.into, self.free = False, None, []

    def compile(self) -> Callable[..., torch.Tensor]:
        if self.op == "conv" and isinstance(self.layer, nn.Conv2d) and self.layer.padding_mode == "zeros":
            return _conv(self.layer, self.relu)
        if self.op == "add" and len(self.inputs) >= 2:
            return _add(len(self.inputs), self.into, self.relu)
        if self.op == "relu":
            return (lambda x: x.relu_()) if self.into == 0 else F.relu
        fn = self.layer.forward
        return _with_relu(fn) if self.relu else fn


class Schedule:
    """The compiled steps of one StaticModel; `run(image)` returns what `StaticModel.forward` returns."""

    def __init__(self, model: StaticModel) -> None:
        spec = model.spec
        source = spec.get("input", "image")
        outputs = set(model.outputs.values())
        readers: dict[str, int] = {}
        for node in spec["nodes"]:
            for i in node["inputs"]:
                readers[i] = readers.get(i, 0) + 1
        op_of = {n["name"]: n["op"] for n in spec["nodes"]}
        arity = {n["name"]: len(n["inputs"]) for n in spec["nodes"]}

        def dead_after(value: str) -> bool:
            """Only one reader, not an output, and a tensor of its own: the reader may overwrite it."""
            if value == source or value in outputs or readers.get(value, 0) != 1:
                return False
            if op_of[value] == "narrow":  # a view: writing it would write the tensor it views
                return False
            return not (op_of[value] == "add" and arity[value] == 1)  # a one-input add returns its input

        steps: list[_Step] = []
        producer: dict[str, _Step] = {}  # value -> the step computing it
        for name, layer, inputs in model._order:
            op = op_of[name]
            if op == "relu" and dead_after(inputs[0]) and not producer[inputs[0]].relu:
                step = producer.pop(inputs[0])  # fused: the producer applies the ReLU in place
                step.relu, step.out = True, name
                producer[name] = step
                continue
            step = _Step(op, model.layers[layer], list(inputs), name)
            if op == "relu" and dead_after(inputs[0]):
                step.into = 0
            if op == "add" and len(inputs) >= 2:
                step.into = next((i for i in (0, 1) if dead_after(inputs[i]) and inputs[0] != inputs[1]), None)
            steps.append(step)
            producer[name] = step
        last: dict[str, _Step] = {}
        for step in steps:
            for i in step.inputs:
                last[i] = step
        for value, step in last.items():
            if value not in outputs and value != source:
                step.free.append(value)
        slot = {source: 0} | {s.out: k + 1 for k, s in enumerate(steps)}
        self.size = len(steps) + 1
        self.steps: list[tuple[Callable[..., torch.Tensor], tuple[int, ...], int, tuple[int, ...]]] = [
            (s.compile(), tuple(slot[i] for i in s.inputs), slot[s.out], tuple(slot[f] for f in s.free))
            for s in steps]
        self.outputs = {task: slot[node] for task, node in model.outputs.items()}

    def run(self, image: torch.Tensor) -> dict[str, Any]:
        vals: list[Any] = [None] * self.size
        vals[0] = image
        for fn, ins, out, free in self.steps:
            vals[out] = fn(*[vals[i] for i in ins])
            for f in free:
                vals[f] = None
        return {task: vals[i] for task, i in self.outputs.items()}
