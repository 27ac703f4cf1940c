"""Bad input, every command and the runtime API: a one-line error naming what was wrong, exit 2 (never 3), nothing
written, no pickle ever executed.

Each case: the command line (run in-process through `deploymtl.cli.main.main`) or the API call, the exit code or
exception type, and words the message must contain. Every case also checks that a pre-populated output directory
and the good input files are byte-for-byte unchanged (names, sizes, mtimes), and that the marker file a malicious
pickle would create does not exist. Inputs are built from tiny real artifacts (`reliability_inputs_fixtures.py`).
"""

from __future__ import annotations

import io
import pickle
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from adashare_public import public_state, source_supernet, write_checkpoint, write_policy
from reliability_inputs_fixtures import Inputs, RunsCommand, good_output_dir, node, set_attr, set_key, snapshot

from deploymtl.cli.main import main
from deploymtl.errors import DeploymtlError
from deploymtl.runtime import load

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@dataclass(frozen=True)
class Case:
    kind: str  # the class of input
    cmd: str  # CLI command or API entry point
    name: str
    run: Callable[..., Any]  # CLI: (inputs, out) -> argv; API: (inputs) -> call
    words: tuple[str, ...]
    code: int = 2
    exc: type[Exception] = DeploymtlError

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.cmd}-{self.name}"


def cli(kind: str, name: str, run: Callable[[Inputs, str], list[str]], *words: str, code: int = 2) -> Case:
    return Case(kind, "", name, run, words, code)


def api(kind: str, cmd: str, name: str, run: Callable[[Inputs], Any], *words: str) -> Case:
    return Case(kind, cmd, name, run, words)


def _pop(*keys: str) -> Callable[[dict], None]:
    return lambda d: [d.pop(k) for k in keys]


def _drop_weight(d: dict) -> None:
    d["state_dict"].pop("layers.seg_conv.bias")


def _sd(key: str, value: Any) -> Callable[[dict], None]:
    return lambda d: d["state_dict"].__setitem__(key, value)


def _meta(key: str, value: Any) -> Callable[[dict, dict], None]:
    return lambda arrays, meta: meta.__setitem__(key, value)


def _engine(i: Inputs, name: str, manifest: str) -> str:
    """A `.plan` with the manifest text beside it (read and checked before TensorRT is imported)."""
    i.file(f"{name}.plan.json", manifest)
    return i.file(f"{name}.plan", b"engine")


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _public_ckpt(i: Inputs) -> str:
    """A checkpoint in the public AdaShare layout (ResNet-18, seg:5, sn:3; tests/adashare_public.py)."""
    model = source_supernet("resnet18", [("seg", 5), ("sn", 3)])
    return i._once("public.pth.tar", lambda p: write_checkpoint(p, public_state(model, "resnet18")))


def _import(i: Inputs, o: str, ckpt: str, policy: str, tasks: str = "seg:5,sn:3") -> list[str]:
    return ["import", "adashare", ckpt, "--policy", policy, "--backbone", "resnet18", "--tasks", tasks, "-o", o]


def _evil_policy(i: Inputs) -> str:
    return i.file("evil_policy.pickle", pickle.dumps({"task1_policy": RunsCommand(i.marker)}))


def _onnx(i: Inputs, name: str, inputs: list, out_shape: list, meta: dict | None = None) -> str:
    from onnx import helper

    """A one-node ONNX model with the given inputs (name, element type, shape) and one output `seg`."""
    vi = [helper.make_tensor_value_info(n, dt, s) for n, dt, s in inputs]
    nodes = [helper.make_node("Identity" if len(inputs) == 1 else "Add", [n for n, _, _ in inputs], ["seg"])]
    graph = helper.make_graph(nodes, "g", vi, [helper.make_tensor_value_info("seg", inputs[0][1], out_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (meta or {}).items():
        model.metadata_props.add(key=k, value=v)
    return i.file(f"{name}.onnx", model.SerializeToString())


F = 1  # onnx.TensorProto.FLOAT
LATIN1 = "name: caf\xe9\n".encode("latin-1")
R = lambda i, name, mutate: i.recipe(name, mutate)  # noqa: E731 - table shorthand
S = lambda i, name, mutate: i.static(name, mutate)  # noqa: E731
N = lambda i, name, mutate: i.supernet(name, mutate)  # noqa: E731

CASES: list[Case] = [
    # -- recipes (train, run) ------------------------------------------------------------------------------------
    cli("recipe", "missing", lambda i, o: ["train", f"{i.bad_dir}/none.yaml", "-o", o], "recipe not found",
        "none.yaml"),
    cli("recipe", "directory", lambda i, o: ["train", str(i.bad_dir), "-o", o], "recipe not found"),
    cli("recipe", "empty", lambda i, o: ["train", i.file("empty.yaml", ""), "-o", o], "empty.yaml",
        "mapping at the top level"),
    cli("recipe", "not-utf8", lambda i, o: ["train", i.file("latin.yaml", LATIN1), "-o", o], "latin.yaml",
        "is not UTF-8 text", "0xe9"),
    cli("recipe", "pruned-pt-as-recipe", lambda i, o: ["train", i.g("static"), "-o", o], "pruned.pt",
        "is a binary file", "expected a UTF-8 YAML recipe"),
    cli("recipe", "yaml-syntax", lambda i, o: ["train", i.file("syntax.yaml", "a: [1\n"), "-o", o],
        "syntax.yaml", "not valid YAML at line 2"),
    cli("recipe", "top-level-list", lambda i, o: ["train", i.file("list.yaml", "- 1\n"), "-o", o], "got list"),
    cli("recipe", "negative-blocks", lambda i, o: ["train", R(i, "negblocks", set_key("model.blocks", [1, -1, 1, 1])),
        "-o", o], "negblocks.yaml", "model.blocks", "depths >= 1"),
    cli("recipe", "three-blocks", lambda i, o: ["train", R(i, "blocks3", set_key("model.blocks", [1, 1, 1])), "-o", o],
        "model.blocks"),
    cli("recipe", "unknown-key", lambda i, o: ["train", R(i, "extra", set_key("train.epochs", 3)), "-o", o],
        "extra.yaml", "train.epochs", "Extra inputs are not permitted"),
    cli("recipe", "wrong-type", lambda i, o: ["train", R(i, "type", set_key("train.batch_size", "big")), "-o", o],
        "train.batch_size", "valid integer"),
    cli("recipe", "unknown-family", lambda i, o: ["train", R(i, "fam", set_key("family", "yolo")), "-o", o],
        "family", "'adashare', 'gated' or 'auxnas'"),
    cli("recipe", "unknown-task-kind", lambda i, o: ["train", R(i, "kind", lambda d: d["tasks"][0].update(
        kind="edges")), "-o", o], "tasks.0.kind", "'segmentation'"),
    cli("recipe", "repeated-task", lambda i, o: ["train", R(i, "dup", lambda d: d["tasks"].append(d["tasks"][0])),
        "-o", o], "tasks", "unique"),
    cli("recipe", "name-escapes-folder", lambda i, o: ["train", R(i, "name", set_key("name", "../../etc")), "-o", o],
        "name", "'../../etc'", "one plain folder name"),
    cli("recipe", "device", lambda i, o: ["train", R(i, "dev", set_key("train.device", "tpu")), "-o", o],
        "train.device", "'tpu' is not a device", "cuda:N"),
    cli("recipe", "export-batch", lambda i, o: ["train", R(i, "batch", set_key("export.batch", "8:4:1")), "-o", o],
        "export.batch", "1 <= MIN <= OPT <= MAX"),
    cli("recipe", "prune-tasks", lambda i, o: ["train", R(i, "ptasks", set_key("prune.tasks", ["edges"])), "-o", o],
        "prune.tasks", "['edges']", "subset of the recipe's tasks"),
    cli("recipe", "profile-batch-sizes", lambda i, o: ["train", R(i, "psizes", set_key("profile.batch_sizes", [0])),
        "-o", o], "profile.batch_sizes", "greater than 0"),
    cli("recipe", "zero-std", lambda i, o: ["train", R(i, "std", set_key("data.std", [0.2, 0.0, 0.2])), "-o", o],
        "data.std.1", "greater than 0"),
    cli("recipe", "nan-tolerance", lambda i, o: ["train", R(i, "nan", set_key("prune.rtol", float("nan"))), "-o", o],
        "prune.rtol", "finite"),
    cli("recipe", "tiny-image", lambda i, o: ["train", R(i, "h", set_key("data.height", 0)), "-o", o],
        "data.height", "greater than or equal to 8"),
    cli("recipe", "no-targets", lambda i, o: ["train", R(i, "notargets", set_key("data.targets", False)), "-o", o],
        "data.targets is false", "nothing to train on"),
    cli("recipe", "nyuv2-without-root", lambda i, o: ["train", R(i, "nyu", set_key("data.source", "nyuv2")), "-o", o],
        "data.root is required"),
    cli("recipe", "run-not-utf8", lambda i, o: ["run", i.file("latin.yaml", LATIN1), "-o", o], "is not UTF-8 text"),
    cli("recipe", "run-negative-blocks", lambda i, o: ["run", R(i, "negblocks", set_key("model.blocks", [1, -1, 1, 1])),
        "-o", o], "model.blocks"),
    # -- options -------------------------------------------------------------------------------------------------
    cli("options", "train-device", lambda i, o: ["train", i.g("recipe"), "--device", "foo", "-o", o],
        "--device", "'foo' is not a device"),
    cli("options", "train-device-index", lambda i, o: ["train", i.g("recipe"), "--device", "cuda:x", "-o", o],
        "--device", "'cuda:x'"),
    cli("options", "export-target", lambda i, o: ["export", i.g("static"), "--target", "tflite", "-o", o],
        "--target", "'tflite'", "onnx, trt"),
    cli("options", "export-precision", lambda i, o: ["export", i.g("static"), "--precision", "fp64", "-o", o],
        "--precision", "'fp64'"),
    cli("options", "export-batch-range", lambda i, o: ["export", i.g("static"), "--batch", "0:1:2", "-o", o],
        "--batch", "1 <= MIN"),
    cli("options", "export-batch-text", lambda i, o: ["export", i.g("static"), "--batch", "big", "-o", o],
        "--batch", "'big' is not a batch specification"),
    cli("options", "export-tol-syntax", lambda i, o: ["export", i.g("static"), "--tol", "seg", "-o", o],
        "--tol 'seg'", "TASK=ATOL[:RTOL]"),
    cli("options", "export-tol-task", lambda i, o: ["export", i.g("static"), "--tol", "edges=1e-3", "-o", o],
        "unknown output 'edges'"),
    cli("options", "export-atol", lambda i, o: ["export", i.g("static"), "--atol", "-1", "-o", o],
        "--atol -1.0", "finite number >= 0"),
    cli("options", "export-rtol-nan", lambda i, o: ["export", i.g("static"), "--rtol", "nan", "-o", o], "--rtol nan"),
    cli("options", "export-opset", lambda i, o: ["export", i.g("static"), "--opset", "9", "-o", o], "--opset 9"),
    cli("options", "export-calibration", lambda i, o: ["export", i.g("static"), "--precision", "int8",
        "--calibration-samples", "0", "-o", o], "--calibration-samples 0"),
    cli("options", "export-metric-drop", lambda i, o: ["export", i.g("static"), "--max-metric-drop", "-1", "-o", o],
        "--max-metric-drop"),
    cli("options", "export-int8-activations", lambda i, o: ["export", i.g("static"), "--int8-activations", "x",
        "-o", o], "--int8-activations", "'x'"),
    cli("options", "verify-backend", lambda i, o: ["verify", i.g("onnx"), "--backend", "gpu"], "--backend",
        "unknown backend 'gpu'"),
    cli("options", "verify-backend-kind", lambda i, o: ["verify", i.g("onnx"), "--backend", "torch"],
        "backend 'torch' cannot run"),
    cli("options", "verify-tol", lambda i, o: ["verify", i.g("onnx"), "--tol", "seg=x"], "--tol 'seg=x'"),
    cli("options", "prune-tasks", lambda i, o: ["prune", i.g("supernet"), "--tasks", "edges", "-o", o],
        "tasks", "unknown task 'edges'"),
    cli("options", "prune-no-task", lambda i, o: ["prune", i.g("supernet"), "--tasks", ",", "-o", o],
        "--tasks ','", "names no task"),
    cli("options", "prune-atol-zero", lambda i, o: ["prune", i.g("supernet"), "--atol", "0", "-o", o],
        "--atol 0.0", "> 0"),
    cli("options", "prune-rtol-nan", lambda i, o: ["prune", i.g("supernet"), "--rtol", "nan", "-o", o],
        "--rtol nan", "finite"),
    cli("options", "inspect-tasks", lambda i, o: ["inspect", i.g("supernet"), "--tasks", "edges", "-o", o],
        "unknown task 'edges'"),
    cli("options", "profile-batch-sizes", lambda i, o: ["profile", i.g("toy"), "--batch-sizes", "1,0", "-o", o],
        "--batch-sizes", ">= 1"),
    cli("options", "profile-batch-text", lambda i, o: ["profile", i.g("toy"), "--batch-sizes", "a", "-o", o],
        "--batch-sizes", "not a comma-separated list"),
    cli("options", "profile-threads", lambda i, o: ["profile", i.g("toy"), "--threads", "0", "-o", o],
        "threads", "greater than or equal to 1"),
    cli("options", "profile-provider", lambda i, o: ["profile", i.g("toy"), "--provider", "tpu", "-o", o],
        "provider", "'cpu', 'cuda' or 'trt'"),
    cli("options", "profile-arrival", lambda i, o: ["profile", i.g("toy"), "--arrival", "bursty", "-o", o],
        "arrival"),
    cli("options", "profile-fps", lambda i, o: ["profile", i.g("toy"), "--fps", "-30", "-o", o], "fps"),
    cli("options", "profile-duration", lambda i, o: ["profile", i.g("toy"), "--duration", "0", "-o", o],
        "duration_s"),
    # -- supernet checkpoints and training states --------------------------------------------------------------
    cli("checkpoint", "missing", lambda i, o: ["prune", f"{i.bad_dir}/none.pt", "-o", o], "not found", "none.pt"),
    cli("checkpoint", "empty", lambda i, o: ["prune", i.file("empty.pt", b""), "-o", o], "empty.pt",
        "an empty file"),
    cli("checkpoint", "text", lambda i, o: ["prune", i.file("text.pt", "hello"), "-o", o], "text.pt",
        "not a torch file"),
    cli("checkpoint", "truncated", lambda i, o: ["prune", i.file("trunc.pt", open(i.g("supernet"), "rb").read()[:4000]),
        "-o", o], "trunc.pt", "truncated, corrupt"),
    cli("checkpoint", "static-model", lambda i, o: ["prune", i.g("static"), "-o", o],
        "is not a deploymtl supernet checkpoint"),
    cli("checkpoint", "onnx-file", lambda i, o: ["inspect", i.g("onnx"), "-o", o], "model.onnx", "not a torch file"),
    cli("checkpoint", "list", lambda i, o: ["prune", i.torch_file("list.pt", [1, 2]), "-o", o],
        "is not a deploymtl supernet checkpoint"),
    cli("checkpoint", "family", lambda i, o: ["prune", N(i, "fam", set_key("family", "yolo")), "-o", o],
        "fam.pt", "unknown family 'yolo'"),
    cli("checkpoint", "no-recipe", lambda i, o: ["prune", N(i, "norecipe", _pop("recipe")), "-o", o],
        "norecipe.pt", "missing recipe"),
    cli("checkpoint", "state-list", lambda i, o: ["prune", N(i, "statelist", set_key("state_dict", [1])), "-o", o],
        "state_dict", "valid dictionary"),
    cli("checkpoint", "weight-not-tensor", lambda i, o: ["prune", N(i, "notensor", _sd("stem.conv.conv.weight", 3)),
        "-o", o], "state_dict['stem.conv.conv.weight']", "not a dense tensor"),
    cli("checkpoint", "weight-shape", lambda i, o: ["inspect", N(i, "sn_wshape", _sd("stem.conv.conv.weight",
        torch.zeros(2, 2))), "-o", o], "state_dict['stem.conv.conv.weight']", "shape [2, 2]"),
    cli("checkpoint", "weight-nan", lambda i, o: ["profile", N(i, "sn_wnan", _sd("stem.conv.conv.weight", torch.full(
        tuple(i.payload["supernet"]["state_dict"]["stem.conv.conv.weight"].shape), float("nan")))), "-o", o,
        "--no-memory", "--no-edge"], "NaN or Inf"),
    cli("checkpoint", "no-decisions", lambda i, o: ["prune", N(i, "nodec", _pop("decisions")), "-o", o],
        "missing decisions"),
    cli("checkpoint", "short-policy", lambda i, o: ["export", N(i, "policy", lambda d: d["decisions"]["policy"].update(
        seg=[1])), "-o", o], "policy.pt", "decisions", "policy of task 'seg' has 1 entries"),
    cli("checkpoint", "embedded-recipe", lambda i, o: ["inspect", N(i, "recipe", lambda d: d["recipe"]["model"].update(
        blocks=[1, 1, -1, 1])), "-o", o], "(embedded recipe)", "model.blocks"),
    cli("checkpoint", "resume-static", lambda i, o: ["train", i.g("recipe"), "--resume", i.g("static"), "-o", o],
        "resume checkpoint", "not a deploymtl training state"),
    cli("checkpoint", "resume-no-weights", lambda i, o: ["train", i.g("recipe"), "--resume",
        N(i, "nostate", _pop("state_dict")), "-o", o], "nostate.pt", "missing state_dict"),
    cli("checkpoint", "resume-other-family", lambda i, o: ["train", i.g("recipe"), "--resume", i.g("gated"), "-o", o],
        "belongs to family 'gated'"),
    cli("checkpoint", "resume-other-model", lambda i, o: ["train", R(i, "wide", set_key("model.width", 8)),
        "--resume", i.g("supernet"), "-o", o], "state_dict", "the recipe's model"),
    # -- static models (pruned.pt): envelope, graph spec, weights ---------------------------------------------------
    cli("static", "only-format", lambda i, o: ["export", i.torch_file("fmt.pt", {"format": "deploymtl.static/1"}),
        "-o", o], "fmt.pt", "missing family, tasks, graph, state_dict, input"),
    cli("static", "conv-kernel-0", lambda i, o: ["export", S(i, "k0", set_attr("stem_conv", k=0)), "-o", o],
        "k0.pt", "node 'stem_conv' (conv)", "attrs.k", "greater than or equal to 1"),
    cli("static", "conv-stride-0", lambda i, o: ["export", S(i, "s0", set_attr("b0_conv1", stride=0)), "-o", o],
        "node 'b0_conv1' (conv)", "attrs.stride"),
    cli("static", "conv-kernel-float", lambda i, o: ["export", S(i, "kf", set_attr("b0_conv1", k=3.0)), "-o", o],
        "attrs.k", "valid integer"),
    cli("static", "conv-cin", lambda i, o: ["export", S(i, "cin", set_attr("b0_conv2", cin=5)), "-o", o],
        "node 'b0_conv2' (conv)", "attrs.cin is 5 but its input has 7 channels"),
    cli("static", "conv-groups", lambda i, o: ["export", S(i, "groups", set_attr("b0_conv1", groups=5)), "-o", o],
        "groups 5 must divide cin 12 and cout 7"),
    cli("static", "kernel-too-big", lambda i, o: ["export", S(i, "k99", set_attr("seg_out", k=99, padding=0)),
        "-o", o], "node 'seg_out' (conv)", "kernel 99", "does not fit"),
    cli("static", "weight-shape", lambda i, o: ["export", S(i, "wshape", _sd("layers.stem_conv.weight",
        torch.zeros(12, 3, 5, 5))), "-o", o], "state_dict['layers.stem_conv.weight']", "shape [12, 3, 5, 5]",
        "needs [12, 3, 3, 3]"),
    cli("static", "weight-missing", lambda i, o: ["export", S(i, "wmiss", _drop_weight), "-o", o],
        "missing ['layers.seg_conv.bias']"),
    cli("static", "weight-extra", lambda i, o: ["export", S(i, "wextra", _sd("layers.ghost.weight", torch.zeros(1))),
        "-o", o], "unexpected ['layers.ghost.weight']"),
    cli("static", "weight-nan", lambda i, o: ["export", S(i, "wnan", _sd("layers.count_fc.bias",
        torch.tensor([0.0, float("inf"), 0.0, 0.0]))), "-o", o], "layers.count_fc.bias", "NaN or Inf"),
    cli("static", "weight-int", lambda i, o: ["export", S(i, "wint", _sd("layers.count_fc.bias",
        torch.zeros(4, dtype=torch.int64))), "-o", o], "dtype torch.int64", "floating-point"),
    cli("static", "task-kind", lambda i, o: ["export", S(i, "kind", lambda d: d["tasks"][0].update(kind="edges")),
        "-o", o], "kind.pt", "tasks.0.kind"),
    cli("static", "task-channels", lambda i, o: ["export", S(i, "tch", lambda d: d["tasks"][0].update(channels=7)),
        "-o", o], "outputs.seg", "gives (N, 5, 48, 64)", "needs (N, 7, 48, 64)"),
    cli("static", "tasks-vs-outputs", lambda i, o: ["export", S(i, "tmis", lambda d: d["tasks"].pop()), "-o", o],
        "outputs are ['seg', 'depth', 'count']", "tasks are ['seg', 'depth']"),
    cli("static", "select-range", lambda i, o: ["export", S(i, "sel", set_attr("seg_sel", index=[0, 12])), "-o", o],
        "node 'seg_sel' (select)", "selects channel 12"),
    cli("static", "wsum-inputs", lambda i, o: ["export", S(i, "wsum", set_attr("mix", inputs=3)), "-o", o],
        "node 'mix' (wsum)", "attrs.inputs is 3 but the node has 2 inputs"),
    cli("static", "scale-channels", lambda i, o: ["export", S(i, "scale", set_attr("b1_scale", channels=11)), "-o", o],
        "node 'b1_scale' (scale)", "attrs.channels is 11"),
    cli("static", "maxpool-padding", lambda i, o: ["export", S(i, "pool", set_attr("stem_pool", padding=2)), "-o", o],
        "node 'stem_pool' (maxpool)", "at most half the kernel"),
    cli("static", "linear-on-map", lambda i, o: ["export", S(i, "lin", lambda d: node(d, "count_fc").update(
        inputs=["b1_relu"])), "-o", o], "node 'count_fc' (linear)", "expected a vector"),
    cli("static", "add-shapes", lambda i, o: ["export", S(i, "add", lambda d: node(d, "b0_add").update(
        inputs=["stem_pool", "b0_relu1"])), "-o", o], "node 'b0_add' (add)", "one shape"),
    cli("static", "unknown-op", lambda i, o: ["export", S(i, "op", lambda d: node(d, "t_relu").update(op="mish")),
        "-o", o], "node 't_relu'", "unknown op 'mish'"),
    cli("static", "input-order", lambda i, o: ["export", S(i, "order", lambda d: node(d, "stem_relu").update(
        inputs=["t_conv"])), "-o", o], "input 't_conv' is not defined before it"),
    cli("static", "reserved-name", lambda i, o: ["export", S(i, "reserved", lambda d: d["graph"]["nodes"].append(
        {"name": "training", "op": "relu", "inputs": ["image"]})), "-o", o], "'training'", "reserved"),
    cli("static", "shares-unknown", lambda i, o: ["export", S(i, "shares", lambda d: node(d, "t_conv").update(
        shares="ghost")), "-o", o], "shares 'ghost'"),
    cli("static", "output-node", lambda i, o: ["export", S(i, "out", lambda d: d["graph"]["outputs"].update(
        depth="ghost")), "-o", o], "outputs.depth", "unknown node 'ghost'"),
    cli("static", "nodes-type", lambda i, o: ["export", S(i, "nodes", lambda d: d["graph"].update(nodes="conv")),
        "-o", o], "graph: nodes is a str"),
    cli("static", "input-size", lambda i, o: ["export", S(i, "insize", lambda d: d["input"].update(height=0)), "-o", o],
        "input.height", "greater than or equal to 1"),
    cli("static", "input-mean", lambda i, o: ["export", S(i, "mean", lambda d: d["input"].update(mean=[0.5])), "-o", o],
        "mean has 1 values for 3 channels"),
    cli("static", "verify", lambda i, o: ["verify", S(i, "k0", set_attr("stem_conv", k=0)), "--parity", i.g("parity")],
        "k0.pt", "attrs.k"),
    cli("static", "profile", lambda i, o: ["profile", S(i, "cin", set_attr("b0_conv2", cin=5)), "-o", o,
        "--no-memory", "--no-edge"], "attrs.cin"),
    api("static", "runtime.load", "conv-kernel-0", lambda i: load(S(i, "k0", set_attr("stem_conv", k=0))), "attrs.k"),
    api("static", "runtime.load", "task-kind", lambda i: load(S(i, "kind", lambda d: d["tasks"][0].update(
        kind="edges"))), "tasks.0.kind"),
    api("static", "runtime.load", "weight-shape", lambda i: load(S(i, "wshape", _sd("layers.stem_conv.weight",
        torch.zeros(12, 3, 5, 5)))), "needs [12, 3, 3, 3]"),
    api("static", "runtime.load", "only-format", lambda i: load(i.torch_file("fmt.pt", {"format":
        "deploymtl.static/1"})), "missing family"),
    # -- plans ---------------------------------------------------------------------------------------------------
    cli("plan", "missing", lambda i, o: ["prune", i.g("supernet"), "--plan", f"{i.bad_dir}/none.json", "-o", o],
        "plan not found"),
    cli("plan", "syntax", lambda i, o: ["prune", i.g("supernet"), "--plan", i.file("syn.json", '{"a": 1,,}'),
        "-o", o], "syn.json", "not valid JSON", "line 1"),
    cli("plan", "binary", lambda i, o: ["prune", i.g("supernet"), "--plan", i.g("static"), "-o", o],
        "pruned.pt", "not UTF-8 text"),
    cli("plan", "list", lambda i, o: ["inspect", i.g("supernet"), "--plan", i.file("list.json", "[]"), "-o", o],
        "a plan must be a JSON object"),
    cli("plan", "format", lambda i, o: ["prune", i.g("supernet"), "--plan", i.plan("fmt", set_key("format", "x")),
        "-o", o], "format", "is not a deploymtl plan"),
    cli("plan", "family", lambda i, o: ["prune", i.g("supernet"), "--plan", i.plan("fam", set_key("family", "gated")),
        "-o", o], "plan is for 'gated'"),
    cli("plan", "task", lambda i, o: ["prune", i.g("supernet"), "--plan", i.plan("task", set_key("tasks", ["edges"])),
        "-o", o], "unknown task 'edges'"),
    cli("plan", "policy-value", lambda i, o: ["prune", i.g("supernet"), "--plan", i.plan("val", lambda d: d[
        "decisions"]["policy"].update(seg=[2, 1, 1, 1])), "-o", o], "val.json", "decisions", "is 2"),
    cli("plan", "policy-task", lambda i, o: ["inspect", i.g("supernet"), "--plan", i.plan("ptask", lambda d: d[
        "decisions"]["policy"].pop("seg")), "-o", o], "no policy for task 'seg'"),
    cli("plan", "option-key", lambda i, o: ["prune", i.g("supernet"), "--plan", i.plan("opt", set_key("options.fast",
        True)), "-o", o], "options.fast", "Extra inputs"),
    cli("plan", "round-channels", lambda i, o: ["prune", i.g("supernet"), "--plan", i.plan("round", set_key(
        "options.round_channels", 0)), "-o", o], "options.round_channels"),
    # -- parity files (verify) ------------------------------------------------------------------------------------
    cli("parity", "missing", lambda i, o: ["verify", i.g("onnx"), "--parity", f"{i.bad_dir}/none.npz"],
        "parity data not found"),
    cli("parity", "text", lambda i, o: ["verify", i.g("onnx"), "--parity", i.file("text.npz", "hello")],
        "text.npz", "is not a deploymtl parity file"),
    cli("parity", "no-header", lambda i, o: ["verify", i.g("onnx"), "--parity", i.file("nometa.npz", _npz(
        {"image": np.zeros((1, 3, 48, 64), np.float32)}))], "no JSON header"),
    cli("parity", "format", lambda i, o: ["verify", i.g("onnx"), "--parity", i.parity("fmt", _meta("format", "x"))],
        "fmt.npz", "format", "deploymtl.parity/1"),
    cli("parity", "tolerance", lambda i, o: ["verify", i.g("onnx"), "--parity", i.parity("tol", _meta(
        "tolerances", {"seg": {"atol": -1, "rtol": 0}}))], "tolerances.seg.atol", "greater than or equal to 0"),
    cli("parity", "reference-missing", lambda i, o: ["verify", i.g("onnx"), "--parity", i.parity("noref",
        lambda a, m: a.pop("ref__depth"))], "reference output 'depth' is missing"),
    cli("parity", "image-dtype", lambda i, o: ["verify", i.g("onnx"), "--parity", i.parity("f64", lambda a, m: a.update(
        image=a["image"].astype(np.float64)))], "image is float64", "float32"),
    cli("parity", "image-size", lambda i, o: ["verify", i.g("onnx"), "--parity", i.parity("size", lambda a, m: a.update(
        image=np.zeros((4, 3, 32, 32), np.float32)))], "holds images [3, 32, 32]", "takes [3, 48, 64]"),
    # -- ONNX files --------------------------------------------------------------------------------------------------
    cli("onnx", "lint-empty", lambda i, o: ["lint", i.file("empty.onnx", b"")], "empty.onnx",
        "is not an ONNX model (an empty file)"),
    cli("onnx", "lint-text", lambda i, o: ["lint", i.file("text.onnx", "hello")], "not a readable ONNX model"),
    cli("onnx", "lint-missing", lambda i, o: ["lint", f"{i.bad_dir}/none.onnx"], "ONNX model not found"),
    cli("onnx", "verify-empty", lambda i, o: ["verify", i.file("empty.onnx", b""), "--parity", i.g("parity")],
        "cannot load ONNX model", "empty.onnx"),
    cli("onnx", "verify-txt", lambda i, o: ["verify", i.file("model.txt", "x")], "unknown artifact type '.txt'",
        "expected pruned.pt, model.onnx or model.plan"),
    cli("onnx", "profile-empty", lambda i, o: ["profile", i.file("empty.onnx", b""), "-o", o], "cannot load ONNX"),
    api("onnx", "runtime.load", "rank-2-input", lambda i: load(_onnx(i, "rank2", [("image", F, ["N", 3])],
        ["N", 3])), "input 'image' has shape ['N', 3]"),
    api("onnx", "runtime.load", "two-inputs", lambda i: load(_onnx(i, "two", [("image", F, ["N", 3, 4, 4]),
        ("b", F, ["N", 3, 4, 4])], ["N", 3, 4, 4])), "has 2 inputs"),
    api("onnx", "runtime.load", "symbolic-height", lambda i: load(_onnx(i, "symb", [("image", F, ["N", 3, "H", 4])],
        ["N", 3, "H", 4])), "has shape ['N', 3, 'H', 4]"),
    api("onnx", "runtime.load", "int-input", lambda i: load(_onnx(i, "int", [("image", 7, ["N", 3, 4, 4])],
        ["N", 3, 4, 4])), "tensor(int64)"),
    api("onnx", "runtime.load", "batch-metadata", lambda i: load(_onnx(i, "meta", [("image", F, ["N", 3, 4, 4])],
        ["N", 3, 4, 4], {"deploymtl.batch": '{"min": 0, "max": 4}'})), "metadata deploymtl.batch"),
    # -- TensorRT engines and manifests (checked before TensorRT is needed) -----------------------------------------
    api("trt", "runtime.load", "no-manifest", lambda i: load(i.file("model.plan", b"engine")),
        "engine manifest not found"),
    api("trt", "runtime.load", "manifest-list", lambda i: load(_engine(i, "m2", "[1]")),
        "is not a deploymtl engine manifest"),
    cli("trt", "verify-manifest-json", lambda i, o: ["verify", _engine(i, "m3", "{not json"), "--parity",
        i.g("parity")], "engine manifest", "not valid JSON"),
    api("trt", "runtime.load", "manifest-precision-check", lambda i: load(i.engine("pc", set_key("precision_check",
        [1]))), "pc.plan.json", "precision_check", "valid dictionary"),
    api("trt", "runtime.load", "manifest-version-type", lambda i: load(i.engine("ver", set_key("tensorrt_version",
        10))), "tensorrt_version", "valid string"),
    api("trt", "runtime.load", "manifest-profile", lambda i: load(i.engine("prof", set_key("profile", "all"))),
        "'profile' must map input names"),
    cli("trt", "profile-manifest-sha", lambda i, o: ["profile", i.engine("sha", set_key("plan_sha256", "0" * 64)),
        "-o", o], "does not match its manifest"),
    # -- the runtime API ----------------------------------------------------------------------------------------------
    api("runtime", "runtime.load", "provider", lambda i: load(i.g("onnx"), provider="tpu"), "unknown provider 'tpu'"),
    api("runtime", "runtime.load", "threads", lambda i: load(i.g("onnx"), threads=0), "threads is 0"),
    api("runtime", "runtime.load", "threads-type", lambda i: load(i.g("toy"), threads="2"), "threads is '2'"),
    api("runtime", "runtime.load", "max-batch", lambda i: load(i.g("toy"), max_batch=0), "max_batch is 0"),
    api("runtime", "runtime.load", "device", lambda i: load(i.g("toy"), device="tpu"), "unknown torch device 'tpu'"),
    api("runtime", "runtime.load", "provider-for-torch", lambda i: load(i.g("toy"), provider="cuda"),
        "applies to ONNX models"),
    api("runtime", "runtime.load", "directory", lambda i: load(i.bad_dir), "unknown artifact type"),
    api("runtime", "runtime.load", "missing", lambda i: load(f"{i.bad_dir}/none.onnx"), "artifact not found"),
    api("runtime", "session.infer", "dtype", lambda i: load(i.g("onnx")).infer(np.zeros((1, 3, 48, 64))),
        "input dtype is float64", "expected float32"),
    api("runtime", "session.infer", "shape", lambda i: load(i.g("toy")).infer(np.zeros((1, 3, 32, 64), np.float32)),
        "input has shape (1, 3, 32, 64)"),
    api("runtime", "session.infer", "list", lambda i: load(i.g("onnx")).infer([[0.0]]), "must be a numpy array"),
    api("runtime", "session.infer", "batch", lambda i: load(i.g("onnx")).infer(np.zeros((5, 3, 48, 64), np.float32)),
        "batch 5 is outside the artifact's range 1..4"),
    # -- public checkpoints (deploymtl import) ------------------------------------------------------------------------
    cli("import", "no-mtl-net", lambda i, o: _import(i, o, i.torch_file("nomtl.pth.tar", {"weights": {}}),
        i.file("p.pickle", b"")), "nomtl.pth.tar", "has no 'mtl-net' entry"),
    cli("import", "classes-vs-config", lambda i, o: _import(i, o, _public_ckpt(i), i.file("p.pickle", b""),
        tasks="seg:13,sn:3"), "does not match the architecture", "[5, 8, 1, 1], expected [13, 8, 1, 1]"),
    cli("import", "policy-rows", lambda i, o: _import(i, o, _public_ckpt(i), i._once("rows.pickle", lambda p:
        write_policy(p, [[1] * 7, [1] * 7]))), "rows.pickle", "shape [7, 2]", "needs [8, 2]"),
    cli("import", "no-architecture", lambda i, o: ["import", "adashare", _public_ckpt(i), "--policy",
        i.file("p.pickle", b""), "-o", o], "no architecture", "--config"),
    # -- malicious pickles: refused, never executed (the marker check runs for every case) -----------------------------
    cli("pickle", "train-resume", lambda i, o: ["train", i.g("recipe"), "--resume", i.evil_torch(), "-o", o],
        "evil_torch.pt", "holds pickled Python objects", "refusing"),
    cli("pickle", "train-resume-plain", lambda i, o: ["train", i.g("recipe"), "--resume", i.evil_plain(5), "-o", o],
        "a plain Python pickle", "refusing"),
    cli("pickle", "prune", lambda i, o: ["prune", i.evil_torch(), "-o", o], "holds pickled Python objects",
        "it references posix.system"),
    cli("pickle", "prune-plain", lambda i, o: ["prune", i.evil_plain(2), "-o", o], "holds pickled Python objects"),
    cli("pickle", "inspect", lambda i, o: ["inspect", i.evil_method(), "-o", o], "holds pickled Python objects"),
    cli("pickle", "export", lambda i, o: ["export", i.evil_torch(), "-o", o], "holds pickled Python objects"),
    cli("pickle", "export-module", lambda i, o: ["export", i.torch_file("module.pt", torch.nn.Linear(2, 2)), "-o", o],
        "module.pt", "holds pickled Python objects"),
    cli("pickle", "verify", lambda i, o: ["verify", i.evil_torch(), "--parity", i.g("parity")],
        "holds pickled Python objects"),
    cli("pickle", "verify-parity", lambda i, o: ["verify", i.g("onnx"), "--parity", i.evil_npz()], "evil.npz",
        "holds pickled Python objects", "refusing"),
    cli("pickle", "profile", lambda i, o: ["profile", i.evil_plain(5), "-o", o], "holds pickled Python objects"),
    cli("pickle", "train-yaml", lambda i, o: ["train", i.evil_yaml(), "-o", o], "evil.yaml", "YAML tag",
        "not plain data"),
    cli("pickle", "run-yaml", lambda i, o: ["run", i.evil_yaml(), "-o", o], "YAML tag"),
    cli("pickle", "nyuv2-array", lambda i, o: ["train", i.evil_nyuv2(), "-o", o], "cannot read NYUv2 array",
        "allow_pickle"),
    cli("pickle", "gated-init-from", lambda i, o: ["train", R(i, "init", lambda d: d.update(family="gated", search={
        "init_from": {"seg": i.evil_torch()}})), "-o", o], "search.init_from.seg", "holds pickled Python objects"),
    cli("pickle", "import-policy", lambda i, o: _import(i, o, _public_ckpt(i), _evil_policy(i)), "evil_policy.pickle",
        "refers to posix.system", "nothing it names was run"),
    cli("pickle", "import-checkpoint", lambda i, o: _import(i, o, i.evil_plain(2), _evil_policy(i)),
        "holds pickled Python objects", "refusing"),
    api("pickle", "runtime.load", "torch-zip", lambda i: load(i.evil_torch()), "holds pickled Python objects"),
    api("pickle", "runtime.load", "plain", lambda i: load(i.evil_plain(2)), "holds pickled Python objects"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    return Inputs(tmp_path_factory.mktemp("reliability"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, inputs: Inputs, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("DEPLOYMTL_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)  # a default output folder would land here, and be seen
    out = good_output_dir(inputs, tmp_path / "out")
    before = snapshot(out), snapshot(inputs.good_dir)
    if case.cmd:  # an API call (CLI cases name their command in argv)
        with pytest.raises(case.exc) as exc:
            case.run(inputs)
        message = exc.value.one_line() if isinstance(exc.value, DeploymtlError) else str(exc.value)
        assert "\n" not in message
    else:
        argv = case.run(inputs, str(out))
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith(("error:", "internal error:"))]
        assert code == case.code, err
        assert len(errors) == 1 and errors[0].startswith("error: "), err
        message = errors[0]
    for word in case.words:
        assert word in message, f"{word!r} not in {message!r}"
    assert (snapshot(out), snapshot(inputs.good_dir)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert not inputs.marker.exists(), "a pickle was executed"


def test_the_table_covers_every_command_and_class(inputs: Inputs) -> None:
    commands = Counter(c.cmd or c.run(inputs, "out")[0] for c in CASES)
    pickled = Counter(c.cmd or c.run(inputs, "out")[0] for c in CASES if c.kind == "pickle")
    kinds = Counter(c.kind for c in CASES)
    assert len(CASES) >= 60
    assert set(commands) == {"train", "run", "prune", "inspect", "export", "verify", "lint", "profile", "runtime.load",
                             "session.infer", "import"}
    assert set(pickled) == {"train", "run", "prune", "inspect", "export", "verify", "profile", "runtime.load",
                            "import"}
    assert {k for k, n in kinds.items() if n >= 3} == {"recipe", "options", "checkpoint", "static", "plan", "parity",
                                                       "onnx", "trt", "runtime", "pickle", "import"}


def test_exit_3_is_for_our_bugs(inputs: Inputs, tmp_path, capsys, monkeypatch) -> None:
    """A check of our own output that fails is an InternalError: exit 3 and a line asking for a bug report; an
    unexpected exception is exit 3 too. Neither is ever reported as the user's bad input."""
    from deploymtl.errors import InternalError
    from deploymtl.export import exporter
    from deploymtl.surgery.builder import GraphBuilder

    monkeypatch.delenv("DEPLOYMTL_DEBUG", raising=False)

    def broken(*args, **kwargs):
        raise InternalError("the exported ONNX graph of pruned.pt is malformed: outputs are []")

    monkeypatch.setattr(exporter, "export_model", broken)
    assert main(["export", inputs.g("static"), "-o", str(tmp_path / "o")]) == 3
    assert capsys.readouterr().err == ("internal error: the exported ONNX graph of pruned.pt is malformed: outputs "
                                       "are [] (a deploymtl bug; rerun with DEPLOYMTL_DEBUG=1 for the traceback)\n")
    monkeypatch.setattr(exporter, "export_model", lambda *a, **k: {}["artifact"])
    assert main(["export", inputs.g("static"), "-o", str(tmp_path / "o")]) == 3
    assert capsys.readouterr().err.startswith("internal error: KeyError: 'artifact' (a deploymtl bug;")
    b = GraphBuilder()
    b.relu("x", "image")
    with pytest.raises(InternalError, match="emitted the static node name x twice"):
        b.relu("x", "image")
