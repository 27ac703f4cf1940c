"""The default (symmetric, TensorRT-ready) int8 Q/DQ graph must run its convolutions as int8 kernels on ONNX
Runtime CPU: every activation Q feeds exactly one DQ with a zero point of its own, so ORT's S8->U8 rewrite and
QLinearConv fusion apply to residual-block inputs as well (`deploymtl.export.quantize._private_qdq_pairs`)."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from deploymtl.export import quantize
from deploymtl.export.onnx import export_onnx
from deploymtl.export.trt.lint import errors, lint_onnx
from deploymtl.ir import StaticModel
from deploymtl.onnxkit.qdq import check_scheme
from deploymtl.surgery.builder import GraphBuilder

ort = pytest.importorskip("onnxruntime")
H, W, C = 32, 32, 16


def _conv(b: GraphBuilder, name: str, x: str, cin: int, cout: int, k: int = 3, stride: int = 1) -> str:
    c = nn.Conv2d(cin, cout, k, stride, k // 2)
    return b.conv(name, x, c.weight, c.bias, stride=stride, padding=k // 2)


def _resnet() -> tuple[StaticModel, int]:
    """Stem, two residual blocks (the second with a strided 1x1 downsample), a 1x1 output conv: 7 convolutions,
    three tensors read by several nodes (each block input, the last block output)."""
    torch.manual_seed(0)
    b = GraphBuilder()
    x = b.relu("stem_relu", _conv(b, "stem", "image", 3, C))
    y = _conv(b, "b0_conv2", b.relu("b0_relu1", _conv(b, "b0_conv1", x, C, 11)), 11, C)
    x = b.relu("b0_relu", b.add("b0_add", x, y))
    y = _conv(b, "b1_conv2", b.relu("b1_relu1", _conv(b, "b1_conv1", x, C, 13, stride=2)), 13, 2 * C)
    x = b.relu("b1_relu", b.add("b1_add", _conv(b, "b1_ds", x, C, 2 * C, k=1, stride=2), y))
    b.output("out", _conv(b, "out", x, 2 * C, 5, k=1))
    b.output("feat", x)  # a graph output that is also read by a conv
    return b.build(), 7


def _calibration() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((4, 3, H, W)).astype(np.float32) for _ in range(2)]


def _optimized_ops(model: onnx.ModelProto, tmp_path: Path) -> collections.Counter:
    """Operator counts of the graph ONNX Runtime CPU actually runs (ORT_ENABLE_ALL, the default level)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)


def _run(model: onnx.ModelProto, x: np.ndarray, level) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = level
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": x})


@pytest.fixture(scope="module")
def fp32() -> onnx.ModelProto:
    model, _ = _resnet()
    return export_onnx(model.eval(), channels=3, height=H, width=W, outputs=["out", "feat"])


def test_every_activation_q_has_one_dq_and_a_private_zero_point(fp32: onnx.ModelProto) -> None:
    q8 = quantize.quantize_int8(fp32, _calibration())
    g = q8.graph
    inits = {i.name for i in g.initializer}
    readers = collections.Counter(name for n in g.node for name in n.input)
    act_q = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert act_q
    for q in act_q:
        assert readers[q.output[0]] == 1, q.name
        assert readers[q.input[2]] == 2, f"{q.name}: zero point {q.input[2]} shared beyond its own Q/DQ pair"
    dq_of_act = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] not in inits]
    outputs = {o.name for o in g.output}
    assert all(readers[d.output[0]] + (d.output[0] in outputs) == 1 for d in dq_of_act)
    assert check_scheme(q8) == []
    assert errors(lint_onnx(q8)) == []
    assert len(quantize.quantized_ops(q8)) == 7


def test_graph_outputs_stay_float(fp32: onnx.ModelProto) -> None:
    """No Q->DQ rounding on the task outputs; `float_output_layers` keeps the layer writing one in fp32."""
    assert quantize.output_layers(fp32) == ["layers.out/Conv"]
    q8 = quantize.quantize_int8(fp32, _calibration(), float_output_layers=True)
    producer = {o: n for n in q8.graph.node for o in n.output}
    assert {o.name: producer[o.name].op_type for o in q8.graph.output} == {"out": "Conv", "feat": "Relu"}
    conv = producer["out"]
    assert conv.input[1] in {i.name for i in q8.graph.initializer} and conv.input[0] == "feat"
    assert len(quantize.quantized_ops(q8)) == 6
    kept = quantize.quantize_int8(fp32, _calibration())  # default: the output layer runs int8, writes float
    conv = next(n for n in kept.graph.node if n.name == "layers.out/Conv")
    assert conv.output[0] == "out" and "out" in {o.name for o in kept.graph.output}
    assert len(quantize.quantized_ops(kept)) == 7
    # "feat" is read only by the fp32 output layer and as a graph output: no Q->DQ pair left on it
    assert [n.name for n in q8.graph.node if "feat" in n.input] == ["layers.out/Conv"]


def test_symmetric_graph_fuses_every_conv_on_ort_cpu(fp32: onnx.ModelProto, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _, n_conv = _resnet()
    fused = _optimized_ops(quantize.quantize_int8(fp32, _calibration()), tmp_path)
    # all but the output conv, which writes the float graph output "out" (no Q after it, see test below)
    assert fused["QLinearConv"] == n_conv - 1 and fused["Conv"] == 1
    assert fused["QLinearAdd"] == 2 and fused["Add"] == 0
    # without the rewrite, convs reading a shared tensor (block inputs) stay fp32: what the test guards against
    monkeypatch.setattr(quantize, "_private_qdq_pairs", lambda model: 0)
    plain = _optimized_ops(quantize.quantize_int8(fp32, _calibration()), tmp_path)
    assert plain["Conv"] >= 3 and plain["QLinearConv"] <= n_conv - 3


def test_rewrite_keeps_the_computed_values(fp32: onnx.ModelProto, monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, H, W)).astype(np.float32)
    level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # reference semantics of the Q/DQ graph, no fusion
    split = quantize.quantize_int8(fp32, _calibration())
    monkeypatch.setattr(quantize, "_private_qdq_pairs", lambda model: 0)
    shared = quantize.quantize_int8(fp32, _calibration())
    for a, b in zip(_run(split, x, level), _run(shared, x, level), strict=True):
        np.testing.assert_array_equal(a, b)
    # the fused uint8 kernels agree with the reference Q/DQ semantics to within one quantisation step
    fused = _run(split, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    ref = _run(shared, x, level)
    for a, b in zip(fused, ref, strict=True):
        assert np.abs(a - b).max() <= 0.05 * np.abs(b).max()


def test_cpu_lowering_folds_the_relus_into_uint8(fp32: onnx.ModelProto, tmp_path: Path) -> None:
    """`export.lowering`: the ort-cpu form has no fp32 ReLU left for ONNX Runtime, the input graph is unchanged, and
    the values stay int8-accurate (one rounding instead of two)."""
    from deploymtl.export.lowering import shape_for_ort_cpu

    q8 = quantize.quantize_int8(fp32, _calibration())
    n_relu = sum(n.op_type == "Relu" for n in q8.graph.node)
    lowered, counts = shape_for_ort_cpu(q8, block=16)  # 11, 13 < 16: no padding here (see the padding tests)
    folded = counts["uint8_tensors"]
    # every ReLU but b1_relu, whose output "feat" is a graph output (its float value must stay exact)
    assert folded == n_relu - 1 == 4
    assert sum(n.op_type == "Relu" for n in q8.graph.node) == n_relu  # the input graph is not modified
    producer = {o: n for n in lowered.graph.node for o in n.output}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in lowered.graph.initializer}
    uint8_q = [n for n in lowered.graph.node if n.op_type == "QuantizeLinear" and inits[n.input[2]].dtype == np.uint8]
    assert sorted(producer[q.input[0]].name for q in uint8_q) == sorted(  # ReLU -> uint8 Q; MaxPool: none here
        f"layers.{r}/Relu" for r in ("stem_relu", "b0_relu1", "b0_relu", "b1_relu1"))
    assert all(producer[producer[q.input[0]].input[0]].op_type in ("Conv", "Add") for q in uint8_q)
    # the same calibrated range [0, 127 s] in 255 steps: each uint8 scale is 127/255 of the int8 one it replaces,
    # and every DQ of the tensor reads it
    q8_inits = {i.name: onnx.numpy_helper.to_array(i) for i in q8.graph.initializer}
    q8_scale = {n.input[0]: q8_inits[n.input[1]] for n in q8.graph.node if n.op_type == "QuantizeLinear"}
    for q in uint8_q:
        np.testing.assert_allclose(inits[q.input[1]], q8_scale[q.input[0]] * 127 / 255, rtol=1e-6)
        dqs = [n for n in lowered.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]]
        assert dqs and all(d.input[1:] == q.input[1:] for d in dqs)
    assert check_scheme(q8) == []
    fused = _optimized_ops(lowered, tmp_path)
    plain = _optimized_ops(q8, tmp_path)
    assert plain["Relu"] == n_relu and fused["Relu"] == 1
    assert fused["QLinearConv"] == plain["QLinearConv"] == 6
    assert fused["QuantizeLinear"] + fused["DequantizeLinear"] < plain["QuantizeLinear"] + plain["DequantizeLinear"]

    x = np.random.default_rng(1).standard_normal((3, 3, H, W)).astype(np.float32)
    ref = _run(fp32, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    err_file = [float(np.abs(a - r).max()) for a, r in zip(_run(q8, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                                                           ref, strict=True)]
    err_low = [float(np.abs(a - r).max()) for a, r in zip(_run(lowered, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                                                          ref, strict=True)]
    assert all(0 < e < 0.05 * float(np.abs(r).max()) for e, r in zip(err_low, ref, strict=True))
    assert max(err_low) <= 1.5 * max(err_file)
    mean_file, mean_low = (np.mean([float(np.abs(a - r).mean()) for a, r in zip(_run(m, x, ort.GraphOptimizationLevel.
                           ORT_ENABLE_ALL), ref, strict=True)]) for m in (q8, lowered))
    assert mean_low < mean_file  # one rounding instead of two, half the step (measured 0.00216 against 0.00242)




def test_ort_runner_runs_the_file_as_written_and_names_another_form(fp32: onnx.ModelProto, tmp_path: Path) -> None:
    """No rewriting in the session: the runner computes what a plain InferenceSession on the file computes, bit for
    bit; a symmetric (trt) int8 file on the CPU provider, or one without a recorded form, gets a one-line note."""
    from deploymtl.backends.ort_runner import OrtRunner
    from deploymtl.export.lowering import shape_for_ort_cpu
    from deploymtl.formats.onnx_metadata import set_metadata

    q8 = quantize.quantize_int8(fp32, _calibration())
    path = tmp_path / "model.onnx"
    meta = {"version": "0.1.0", "precision": "int8", "batch": {"min": 1, "opt": 2, "max": 4}}
    set_metadata(q8, meta | {"runtime": {"name": "trt", "simd_block": None}})
    onnx.save(q8, path)
    x = np.random.default_rng(2).standard_normal((2, 3, H, W)).astype(np.float32)
    runner = OrtRunner(path, threads=1)
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["out", "feat"], {"image": x})
    got = runner.infer(x)
    for name, ref in zip(("out", "feat"), plain, strict=True):
        np.testing.assert_array_equal(got[name], ref)
    assert len(runner.notes) == 1 and "shaped for trt" in runner.notes[0] and "--for ort-cpu" in runner.notes[0]
    assert "int8 ReLUs run in fp32" in runner.notes[0]
    shaped, _ = shape_for_ort_cpu(q8, block=16)
    set_metadata(shaped, meta | {"runtime": {"name": "ort-cpu", "simd_block": 16}})
    onnx.save(shaped, path)
    assert OrtRunner(path, threads=1).notes == []  # the form for this runtime, padded to AVX-512's block
    from deploymtl.onnxkit.cpu import amx_int8

    for amx in (True, False):  # shaped on a CPU with (without) AMX int8, run on this one
        del shaped.metadata_props[:]
        set_metadata(shaped, meta | {"runtime": {"name": "ort-cpu", "simd_block": 16, "int8_amx": amx}})
        onnx.save(shaped, path)
        notes = OrtRunner(path, threads=1).notes
        if amx == amx_int8():
            assert notes == []
        else:
            assert len(notes) == 1 and "AMX int8" in notes[0] and "re-export it on this machine" in notes[0]
    del shaped.metadata_props[:]
    set_metadata(shaped, meta)  # a file of an earlier deploymtl, without `deploymtl.runtime`
    onnx.save(shaped, path)
    assert "written before deploymtl shaped files" in OrtRunner(path, threads=1).notes[0]
    set_metadata(q8, meta | {"precision": "fp16"})  # fp16 files are the same in every form
    onnx.save(q8, path)
    assert OrtRunner(path, threads=1).notes == []


def test_cpu_lowering_quantizes_after_a_relu_read_in_float(tmp_path: Path) -> None:
    """A head: int8 conv -> ReLU -> fp32 output conv (`float_output_layers`). Its ReLU runs in float between a DQ
    and the float conv; the ort-cpu form moves it before the Q, as uint8 with the step 127/255 of the int8 one:
    ONNX Runtime runs no Relu, and the head's output stays as close to fp32 as the symmetric file's."""
    from deploymtl.export.lowering import shape_for_ort_cpu

    torch.manual_seed(0)
    b = GraphBuilder()
    x = b.relu("stem_relu", _conv(b, "stem", "image", 3, C))
    b.output("out", _conv(b, "head_out", b.relu("head_relu", _conv(b, "head", x, C, C)), C, 3, k=1))
    proto = export_onnx(b.build().eval(), channels=3, height=H, width=W, outputs=["out"])
    q8 = quantize.quantize_int8(proto, _calibration(), float_output_layers=True)
    lowered, counts = shape_for_ort_cpu(q8, block=16)
    assert counts["uint8_tensors"] == 2  # the stem's ReLU (read by the int8 head conv) and the head's
    assert _optimized_ops(q8, tmp_path)["Relu"] == 2 and _optimized_ops(lowered, tmp_path)["Relu"] == 0
    producer = {o: n for n in lowered.graph.node for o in n.output}
    out_conv = next(n for n in lowered.graph.node if n.name == "layers.head_out/Conv")
    dq = producer[out_conv.input[0]]
    q = producer[dq.input[0]]
    assert (dq.op_type, q.op_type, producer[q.input[0]].op_type) == ("DequantizeLinear", "QuantizeLinear", "Relu")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in lowered.graph.initializer}
    old = {i.name: onnx.numpy_helper.to_array(i) for i in q8.graph.initializer}
    old_q = next(n for n in q8.graph.node if n.op_type == "QuantizeLinear" and n.name == q.name)
    assert inits[q.input[2]].dtype == np.uint8 and not inits[q.input[2]].any()
    np.testing.assert_allclose(inits[q.input[1]], old[old_q.input[1]] * 127 / 255, rtol=1e-6)
    x = np.random.default_rng(3).standard_normal((2, 3, H, W)).astype(np.float32)
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    (ref,), (sym,), (low,) = (_run(m, x, level) for m in (proto, q8, lowered))
    assert 0 < np.abs(low - ref).mean() < np.abs(sym - ref).mean()


def test_cpu_lowering_leaves_wide_int8_convolutions_odd_where_mlas_gemm_runs_on_amx() -> None:
    """With AMX, an int8 convolution is padded only up to `INT8_AMX_MAX_WIDTH` channels (an odd-width one runs on
    MLAS's AMX GEMM instead of its ConvSym kernel); without, and in fp32, every odd width is padded. The values do
    not depend on it (zero filters)."""
    from deploymtl.export.lowering import INT8_AMX_MAX_WIDTH, shape_for_ort_cpu

    torch.manual_seed(0)
    b = GraphBuilder()
    x = b.relu("stem_relu", _conv(b, "stem", "image", 3, C))
    x = _conv(b, "narrow2", b.relu("narrow_relu", _conv(b, "narrow", x, C, 23)), 23, C)
    x = _conv(b, "wide2", b.relu("wide_relu", _conv(b, "wide", b.relu("mid_relu", x), C, 89)), 89, C)
    b.output("out", x)
    proto = export_onnx(b.build().eval(), channels=3, height=H, width=W, outputs=["out"])
    q8 = quantize.quantize_int8(proto, _calibration())
    assert 32 <= INT8_AMX_MAX_WIDTH < 96
    amx, plain = (shape_for_ort_cpu(q8, block=16, amx=a) for a in (True, False))
    assert amx[1]["padded_convs"] == 1 and plain[1]["padded_convs"] == 2
    assert shape_for_ort_cpu(proto, block=16, amx=True)[1]["padded_convs"] == 2
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in amx[0].graph.initializer}
    widths = {n.name: inits[n.input[0]].shape[0] for n in amx[0].graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4}
    assert widths["layers.narrow.weight_DequantizeLinear"] == 32 and widths["layers.wide.weight_DequantizeLinear"] == 89
    x = np.random.default_rng(6).standard_normal((2, 3, H, W)).astype(np.float32)
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    (a,), (p,) = (_run(m, x, level) for m in (amx[0], plain[0]))
    np.testing.assert_allclose(a, p, rtol=1e-5, atol=1e-5 * float(np.abs(p).max()))


def test_cpu_lowering_of_a_graph_with_unnamed_nodes_adds_distinct_constants() -> None:
    """Node names are optional in ONNX: the constants the rewrites add are named after each node's output then, so
    two unnamed ReLUs do not both write `/uint8_scale` (ONNX Runtime would keep one of them for both)."""
    from onnx import helper

    from deploymtl.export.lowering import shape_for_ort_cpu

    rng = np.random.default_rng(7)
    inits = [onnx.numpy_helper.from_array((0.2 * rng.standard_normal(s)).astype(np.float32), n)
             for n, s in (("w0", (C, 3, 3, 3)), ("w1", (C, C, 3, 3)), ("w2", (3, C, 1, 1)))]
    nodes = [helper.make_node("Conv", ["image", "w0"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["d"]),
             helper.make_node("Conv", ["d", "w2"], ["out"])]
    graph = helper.make_graph(nodes, "unnamed", [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT,
                                                                               ["n", 3, H, W])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    q8 = quantize.quantize_int8(proto, _calibration())
    lowered, counts = shape_for_ort_cpu(q8, block=16)
    assert counts["uint8_tensors"] == 2
    names = [i.name for i in lowered.graph.initializer]
    assert len(names) == len(set(names))
    x = np.random.default_rng(8).standard_normal((2, 3, H, W)).astype(np.float32)
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    (ref,), (got,) = (_run(m, x, level) for m in (proto, lowered))
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_cpu_lowering_carries_uint8_through_maxpool(tmp_path: Path) -> None:
    """stem conv -> ReLU -> MaxPool -> conv: the MaxPool's Q/DQ become uint8 too, so ORT drops them and runs the
    pool on the quantised tensor between two QLinearConvs (no float round trip)."""
    from deploymtl.export.lowering import shape_for_ort_cpu

    torch.manual_seed(0)
    b = GraphBuilder()
    x = b.relu("stem_relu", _conv(b, "stem", "image", 3, C))
    x = b.maxpool("pool", x, nn.MaxPool2d(3, 2, 1))
    y = b.relu("relu2", _conv(b, "conv2", x, C, C))
    b.output("out", y)
    b.output("head", _conv(b, "head", y, C, 3, k=1))
    proto = export_onnx(b.build().eval(), channels=3, height=H, width=W, outputs=["out", "head"])
    q8 = quantize.quantize_int8(proto, _calibration())
    lowered, counts = shape_for_ort_cpu(q8, block=16)
    assert counts["uint8_tensors"] == 2  # the stem ReLU's tensor and the pooled one; relu2 writes a graph output: kept
    fused = _optimized_ops(lowered, tmp_path)
    assert fused["QLinearConv"] == 2 and fused["Relu"] == 1 and fused["MaxPool"] == 0
    assert _optimized_ops(q8, tmp_path)["Relu"] == 2


def test_cpu_lowering_pads_odd_channel_counts(fp32: onnx.ModelProto, tmp_path: Path) -> None:
    """fp32: the block-inner convolutions (11 and 13 filters) are padded to a SIMD block of 8 with zero filters and
    their readers with zero columns, so ORT runs them as NCHWc kernels; the outputs do not change."""
    from deploymtl.export.lowering import shape_for_ort_cpu

    lowered, counts = shape_for_ort_cpu(fp32, block=8)  # AVX2's block; 11 -> 16, 13 -> 16
    assert counts == {"padded_convs": 2, "uint8_tensors": 0, "matmul_resizes": 0, "selection_convs": 0,
                      "merged_branches": 0, "folded_selections": 0}
    shapes = {i.name: tuple(i.dims) for i in lowered.graph.initializer}
    convs = {n.name: shapes[n.input[1]] for n in lowered.graph.node if n.op_type == "Conv"}
    assert convs["layers.b0_conv1/Conv"][0] == 16 and convs["layers.b0_conv2/Conv"][1] == 16
    assert convs["layers.b1_conv1/Conv"][0] == 16 and convs["layers.b1_conv2/Conv"][1] == 16
    assert convs["layers.out/Conv"][0] == 5  # writes a graph output: left alone
    assert {tuple(i.dims) for i in fp32.graph.initializer} != set(shapes.values())  # the input is unchanged
    plain, padded = _optimized_ops(fp32, tmp_path), _optimized_ops(lowered, tmp_path)
    # an odd count leaves ORT's blocked layout (ReorderOutput back to NCHW, then the slow NCHW-input kernel)
    assert padded["ReorderOutput"] < plain["ReorderOutput"]
    x = np.random.default_rng(3).standard_normal((2, 3, H, W)).astype(np.float32)
    for a, b in zip(_run(fp32, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                    _run(lowered, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    nothing = {"padded_convs": 0, "uint8_tensors": 0, "matmul_resizes": 0, "selection_convs": 0,
               "merged_branches": 0, "folded_selections": 0}
    assert shape_for_ort_cpu(fp32, block=1) == (fp32, nothing)
    # narrower than AVX-512's block of 16: padding would add more than half the work again, so it is left alone
    assert shape_for_ort_cpu(fp32, block=16) == (fp32, nothing)


def test_cpu_lowering_pads_int8_convolutions_through_their_qdq(fp32: onnx.ModelProto, tmp_path: Path) -> None:
    """int8: the padded filters are int8 zeros with scale 1 and zero point 0 in the weight DQ, the reader's weight
    gets zero columns; activation Q/DQ pairs are per tensor and stay as they are; the values do not change."""
    from deploymtl.export.lowering import shape_for_ort_cpu

    q8 = quantize.quantize_int8(fp32, _calibration())
    plain, _ = shape_for_ort_cpu(q8, block=16)
    padded, counts = shape_for_ort_cpu(q8, block=8)
    assert counts == {"padded_convs": 2, "uint8_tensors": 4, "matmul_resizes": 0, "selection_convs": 0,
                      "merged_branches": 0, "folded_selections": 0}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in padded.graph.initializer}
    producer = {o: n for n in padded.graph.node for o in n.output}
    conv1 = next(n for n in padded.graph.node if n.name == "layers.b0_conv1/Conv")
    w_dq = producer[conv1.input[1]]
    w, scale, zp = (inits[i] for i in w_dq.input)
    assert w.dtype == np.int8 and w.shape[0] == scale.shape[0] == zp.shape[0] == 16
    assert not w[11:].any() and (scale[11:] == 1).all() and not zp[11:].any() and not inits[conv1.input[2]][11:].any()
    conv2 = next(n for n in padded.graph.node if n.name == "layers.b0_conv2/Conv")
    w2 = inits[producer[conv2.input[1]].input[0]]
    assert w2.shape[1] == 16 and not w2[:, 11:].any()
    assert _optimized_ops(padded, tmp_path)["QLinearConv"] == 6
    x = np.random.default_rng(4).standard_normal((2, 3, H, W)).astype(np.float32)
    for a, b in zip(_run(plain, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                    _run(padded, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cpu_form_runs_the_head_upsampling_as_two_matmuls(tmp_path: Path) -> None:
    """A bilinear resize of a small head output to the image size becomes MatMul(R_h, MatMul(X, R_w^T)) with
    ONNX Runtime's own interpolation weights: the same values to float rounding, no Resize left; a larger input
    (beyond `MATMUL_RESIZE_MAX`) keeps its Resize; the nodes that computed its sizes are gone."""
    from deploymtl.export.lowering import resize_as_matmul, shape_for_ort_cpu

    torch.manual_seed(0)
    b = GraphBuilder()
    x = b.relu("stem_relu", _conv(b, "stem", "image", 3, C, k=5, stride=4))  # 8 x 8 (of 32 x 32)
    b.output("out", b.resize_to_input("up", _conv(b, "head", x, C, 3, k=1)))
    proto = export_onnx(b.build().eval(), channels=3, height=H, width=W, outputs=["out"])
    shaped, counts = shape_for_ort_cpu(proto, block=16)
    assert counts["matmul_resizes"] == 1
    ops = collections.Counter(n.op_type for n in shaped.graph.node)
    assert ops["Resize"] == 0 and ops["MatMul"] == 2
    # the Shape -> Concat that computed the Resize's sizes (the batch is dynamic) goes with it: ORT would run it
    assert collections.Counter(n.op_type for n in proto.graph.node)["Shape"] == 1
    assert ops["Shape"] == ops["Concat"] == 0
    assert [n.name for n in shaped.graph.node if n.op_type == "MatMul"] == ["layers.up/Resize/MatMul",
                                                                              "layers.up/Resize/MatMul_1"]
    x = np.random.default_rng(5).standard_normal((3, 3, H, W)).astype(np.float32)
    (ref,), (got,) = (_run(m, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL) for m in (proto, shaped))
    assert got.shape == ref.shape == (3, 3, H, W)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
    assert not np.array_equal(got[:, :, :, 2], got[:, :, :, 3])  # really interpolated, not a copy
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    assert resize_as_matmul(copy, max_input=4) == 0  # the 8 x 8 input is above this limit: left alone
