"""PyTorch static model -> ONNX with one `image` input (NCHW), one output per task and a symbolic batch axis.

Exporter choice: torch 2.13's default, the `torch.export`-based exporter (`torch.onnx.export(..., dynamo=True)`).
- The batch axis is declared as a `torch.export.Dim`; torch.export *proves* the graph is valid for every batch
  size (it raises if the model specialises on the batch), instead of the TorchScript tracer's approach of
  recording one run and relabelling the axis afterwards.
- Spatial sizes stay constants: the TorchScript exporter turned the bilinear resize's output H/W into symbolic
  dims (`Resizeseg_dim_1`), which serving stacks and TensorRT profiles then have to guess.
- Initializers keep the parameters' names (`layers.<node>.weight`) and every ONNX node carries its module scope
  (`pkg.torch.onnx.name_scopes`), which we turn into node names `layers.<node>/<Op>` so a mismatch can be named
  as an ONNX node *and* a PyTorch module path, and removed parts can be looked for by name.
- It emits opset 18 natively (its onnxscript library targets 18); down-conversion to 17 fails on ReduceMean's
  axes input, so we export at max(requested, 18), which satisfies the ">= 17" contract.

The exporter's own graph optimiser is off (`optimize=False`): it deduplicates equal initializers (two zero biases
become one tensor) and folds parameters into unnamed constants, which breaks the one-to-one mapping between
initializers and static-model parameters that the removed-parts check relies on, and it is not re-verified.
Every cleanup instead happens in `export.simplify`, one onnxslim pass at a time, each checked against PyTorch.

The example input has batch 2 (never 1): torch.export specialises size-1 dimensions in some versions, and the
symbolic dims of the result are checked anyway (`check_structure`).
"""

from __future__ import annotations

import ast
import contextlib
import logging
import re
import warnings
from collections.abc import Iterator

import onnx
import torch
from torch import nn

from ..errors import DeploymtlError
from ..formats.onnx_metadata import BATCH_DIM, INPUT_NAME, node_scope
from ..ir import static_nodes

NATIVE_OPSET = 18
MIN_OPSET = 17
_SCOPE_KEY = "pkg.torch.onnx.name_scopes"
# The scope torch.export gives nodes no module made: the graph's symbolic batch size read off the input
# (Shape(image) -> Squeeze), which the reshapes of token sequences use. Such a node keeps its own name.
_NO_MODULE_SCOPE = "_empty_nn_module_stack_from_metadata_hook"


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs progress and library warnings (torchvision absent, pytree deprecations) on every call."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(_Null()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class _Null:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass


def export_onnx(model: nn.Module, *, channels: int, height: int, width: int, outputs: list[str],
                opset: int = MIN_OPSET, dtype: str = "float32") -> onnx.ModelProto:
    """Export `model` (forward(image) -> {task: tensor}) to an ONNX ModelProto.

    Input `image` (batch, channels, height, width) of `dtype` (float32, or uint8 for a graph that normalises raw
    pixels itself); outputs named by task, in `outputs` order, each with
    the symbolic leading dim `batch`. Nodes are renamed `<module path>/<Op>[_k]`. Raises DeploymtlError naming the
    unsupported operator and module path when the exporter cannot translate the model.
    """
    if opset < MIN_OPSET:
        raise DeploymtlError(f"opset {opset} is too old", hint=f"expected >= {MIN_OPSET}")
    model = model.eval()
    example = torch.zeros(2, channels, height, width, dtype=getattr(torch, dtype))
    dynamic = {INPUT_NAME: {0: torch.export.Dim(BATCH_DIM, min=1)}}
    target = max(opset, NATIVE_OPSET)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME], output_names=list(outputs),
                                        dynamic_shapes=dynamic, opset_version=target, dynamo=True, verbose=False,
                                        optimize=False)
    except Exception as exc:  # noqa: BLE001 - any exporter failure becomes one line naming op and module
        raise _explain_failure(model, example, dynamic, exc) from None
    proto = program.model_proto
    _rename_nodes(proto, model)
    _rename_batch_dims(proto)
    _name_derived_initializers(proto, model)
    return proto


def _explain_failure(model: nn.Module, example: torch.Tensor, dynamic: dict, exc: Exception) -> DeploymtlError:
    """Name the operator the exporter could not translate and the module that calls it."""
    text = str(exc)
    ops = re.findall(r"target=torch\.ops\.([\w.]+)", text) + \
        [f"{op}.{ov}" for op, ov in re.findall(r"OpOverload\(op='([\w.]+)', overload='(\w+)'\)", text)]
    try:
        with _quiet_exporter():
            program = torch.export.export(model, (example,), dynamic_shapes=dynamic, strict=False)
    except Exception as inner:  # noqa: BLE001 - torch.export itself failed: its first line names the cause
        first = next((ln.strip() for ln in str(inner).splitlines() if ln.strip()), type(inner).__name__)
        return DeploymtlError(f"ONNX export failed while tracing the model with torch.export: {first[:240]}",
                              hint="the static model must be traceable without data-dependent control flow")
    for node in program.graph.nodes:
        if node.op == "call_function" and str(node.target) in ops:
            stack = node.meta.get("nn_module_stack") or {}
            path, mtype = list(stack.values())[-1] if stack else ("<top level>", type(model).__name__)
            return DeploymtlError(
                f"ONNX export failed: operator {node.target} in module {path} ({str(mtype).rsplit('.', 1)[-1]}) "
                "has no ONNX translation", hint="replace the layer or register an ONNX translation for the operator")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return DeploymtlError(f"ONNX export failed: {first[:240]}", hint="rerun with DEPLOYMTL_DEBUG=1 for the traceback")


def _module_scope(node: onnx.NodeProto) -> str | None:
    props = {p.key: p.value for p in node.metadata_props}
    if _SCOPE_KEY not in props:
        return None
    try:
        scopes = ast.literal_eval(props[_SCOPE_KEY])
    except (ValueError, SyntaxError):
        return None
    # ['', 'layers.b0_conv', 'conv2d_1']: the module path is the innermost scope except the op itself
    mods = [s for s in scopes[:-1] if s and s != _NO_MODULE_SCOPE]
    return mods[-1] if mods else None


def _rename_nodes(proto: onnx.ModelProto, model: nn.Module) -> None:
    """`node_conv2d_3` -> `layers.<static node>/Conv`; drop the exporter's per-node metadata (stack traces, local
    paths): the name carries the one fact we need.

    A layer shared by several static nodes (`shares`) appears under one module scope; its ONNX nodes are split
    between those static nodes in execution order (the exported node list follows the traced execution order and
    every call of a layer emits the same number of ONNX nodes)."""
    scopes = [_module_scope(n) for n in proto.graph.node]
    order = static_nodes(model)
    calls: dict[str, list[str]] = {}
    for node, layer in order:
        calls.setdefault(f"layers.{layer}", []).append(node)
    emitted: dict[str, int] = {}
    for scope in scopes:
        if scope:
            emitted[scope] = emitted.get(scope, 0) + 1
    used: dict[str, int] = {}
    seen: dict[str, int] = {}
    for node, scope in zip(proto.graph.node, scopes, strict=True):
        if scope:
            owner = scope
            if scope in calls and len(calls[scope]) > 1:
                per_call = max(1, emitted[scope] // len(calls[scope]))
                k = min(used.get(scope, 0) // per_call, len(calls[scope]) - 1)
                owner = f"layers.{calls[scope][k]}"
            used[scope] = used.get(scope, 0) + 1
            base = f"{owner}/{node.op_type}"
            k = seen.get(base, 0)
            seen[base] = k + 1
            node.name = base if k == 0 else f"{base}_{k}"
        del node.metadata_props[:]


def _rename_batch_dims(proto: onnx.ModelProto) -> None:
    """Name the symbolic batch dim `batch` on the input and every output (serving configs read it by name)."""
    graph = proto.graph
    sym = graph.input[0].type.tensor_type.shape.dim[0].dim_param
    if not sym:
        return
    for value in [*graph.input, *graph.output, *graph.value_info]:
        dims = value.type.tensor_type.shape.dim
        for d in dims:
            if d.dim_param == sym:
                d.dim_param = BATCH_DIM


def _name_derived_initializers(proto: onnx.ModelProto, model: nn.Module) -> None:
    """Name constants the exporter folded out of a parameter after it: `scale.view(1, -1, 1, 1)` -> the
    parameter's name, `weight[i].view(...)` -> `<parameter>.<i>`, when the one module reading the constant owns a
    parameter with exactly those values (so names map onto static-model module paths, `verify.removed`)."""
    from onnx import numpy_helper

    params = {k: v.detach().cpu().numpy() for k, v in model.named_parameters()}
    layer_of = {f"layers.{n}": f"layers.{layer}" for n, layer in static_nodes(model)}
    taken = {i.name for i in proto.graph.initializer}
    readers: dict[str, set[str | None]] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node_scope(node))
    renames = {}
    for init in proto.graph.initializer:
        scopes = readers.get(init.name, set())
        if init.name in params or len(scopes) != 1 or None in scopes:
            continue
        (scope,) = scopes
        scope = layer_of.get(scope, scope)
        value = numpy_helper.to_array(init).ravel()
        for key, param in params.items():
            if not key.startswith(scope + ".") or param.dtype != value.dtype:
                continue
            rows = [param.ravel()] if param.size == value.size else \
                list(param.reshape(param.shape[0], -1)) if param.ndim > 1 and param[0].size == value.size else []
            hits = [r for r, row in enumerate(rows) if (row == value).all()]
            name = key if len(rows) == 1 else f"{key}.{hits[0]}" if hits else None
            if hits and name not in taken:
                renames[init.name] = name
                taken.add(name)
                break
    for init in proto.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in proto.graph.node:
        for k, name in enumerate(node.input):
            if name in renames:
                node.input[k] = renames[name]


def opset_of(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def check_structure(proto: onnx.ModelProto, *, outputs: list[str], channels: int, height: int, width: int,
                    full_check: bool = True) -> list[str]:
    """Problems with the graph's interface (empty list = fine): one input `image` (batch, C, H, W), outputs named
    by task with a symbolic leading batch dim, opset >= 17, and `onnx.checker` clean."""
    problems = []
    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if [i.name for i in inputs] != [INPUT_NAME]:
        problems.append(f"inputs are {[i.name for i in inputs]}, expected ['{INPUT_NAME}']")
    else:
        dims = _dims(inputs[0])
        if len(dims) != 4 or not isinstance(dims[0], str) or dims[1:] != [channels, height, width]:
            problems.append(f"input '{INPUT_NAME}' has dims {dims}, expected [batch, {channels}, {height}, {width}]")
    names = [o.name for o in graph.output]
    if names != list(outputs):
        problems.append(f"outputs are {names}, expected {list(outputs)}")
    for out in graph.output:
        dims = _dims(out)
        if not dims or not isinstance(dims[0], str):
            problems.append(f"output '{out.name}' has dims {dims}: the batch axis is not symbolic")
    if opset_of(proto) < MIN_OPSET:
        problems.append(f"opset {opset_of(proto)} < {MIN_OPSET}")
    try:
        onnx.checker.check_model(proto, full_check=full_check)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        problems.append(f"onnx.checker: {str(exc).splitlines()[0][:200]}")
    return problems
