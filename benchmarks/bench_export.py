"""Export benchmark: ONNX Runtime fp32/int8 vs PyTorch eager latency, GFLOP/s against a plain conv stack, and the
export + verification time of a paper-scale Deeplab-ResNet-34. Writes one JSON document.

    python benchmarks/bench_export.py [-o FILE] [--threads 2] [--only pruned|resnet34|mix] [--quick]

(`-o` defaults to artifacts/bench/export.json, export_mix.json for `--only mix`: --precision auto and accuracy
control on the pruned model, a case where all-int8 breaks a budget, the demo's tiny models.)

Models (built from the families' own layers and surgery registry, so they are what `deploymtl prune` emits):
- *pruned*: Deeplab-ResNet-18 layout, width 32, 96x128 input, three tasks (segmentation, depth, classification) on
  the synthetic scenes; every block's inner width pruned to an odd count (~70% kept), as channel pruning leaves
  it. Trained briefly (`--train-steps`) so the task metrics used by the int8 gate mean something.
- *conv stack*: plain 3x3 convolutions + ReLU, 64 channels, sized to the pruned model's FLOPs: what ONNX Runtime
  reaches on the same hardware in the same run, the yardstick for "odd channel counts must not waste it".
- *ResNet-34*: Deeplab-ResNet-34 (width 64, output stride 8), 288x384 (NYUv2 resolution), three tasks with ASPP
  heads (rates 6/12/18/24, hidden 256), untrained; exported fp32 with simplification and full verification
  (batch 1:1:2) through `export_model`, timed end to end.

Latency: median of about `--repeats` runs per model, taken in turns (blocks of 5 timed runs after 2 untimed ones
in a fresh session, models alternating, see `latency_table`), `--threads` intra-op threads (ORT and torch), batch 1
and 8.
The files are what `deploymtl export` writes: `ort_*` the default ONNX Runtime CPU form (`--for ort-cpu`: odd
channel counts padded to the SIMD block, int8 ReLUs folded into uint8 quantisation, head resizes as MatMuls, all
in the file), `*_trt_form` the same model written `--for trt` (symmetric Q/DQ, unpadded). Each runs in a *plain*
onnxruntime session (`InferenceSession(path)` with the caller's thread count and nothing else, what a user's service
or Triton's onnxruntime backend opens); `deploymtl_*` is the same file through deploymtl's own runner (`OrtRunner`),
whose speed must equal the plain session's (`plain_vs_deploymtl_speed`, target >= 0.95). GFLOP/s count the model's
own FLOPs (torch.utils.flop_counter on the unpadded static model), so padding earns nothing there but time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from deploymtl import __version__
from deploymtl.config import DataConfig
from deploymtl.data import build_datasets
from deploymtl.errors import VerificationError
from deploymtl.export.exporter import export_model
from deploymtl.export.options import ExportOptions
from deploymtl.formats.static import StaticArtifact, save_static
from deploymtl.io import write_json
from deploymtl.ir import StaticModel
from deploymtl.models.backbone import BackboneConfig, BlockBody, block_slots, make_ds
from deploymtl.models.layers import Stem, make_head
from deploymtl.surgery.builder import GraphBuilder
from deploymtl.surgery.registry import emit
from deploymtl.tasks import TaskSpec, task_loss

TASKS = [TaskSpec(name="seg", kind="segmentation", channels=5), TaskSpec(name="depth", kind="depth"),
         TaskSpec(name="count", kind="classification", channels=4)]
PAPER_TASKS = [TaskSpec(name="seg", kind="segmentation", channels=5), TaskSpec(name="depth", kind="depth"),
               TaskSpec(name="normals", kind="normals")]


def build_resnet(cfg: BackboneConfig, tasks: list[TaskSpec], keep: float = 1.0, seed: int = 0,
                 round_to: int = 1) -> StaticModel:
    """A static Deeplab-ResNet multi-task model; each block's inner width keeps `keep` of its channels (odd), or
    that count rounded up to a multiple of `round_to` (what `prune.round_channels` does)."""
    torch.manual_seed(seed)
    b = GraphBuilder()
    alive: list[nn.Module] = []  # GraphBuilder keys layers by id(): keep every source module alive while building
    alive.append(Stem(cfg.in_channels, cfg.width).eval())
    x = emit(b, alive[-1], "image", "stem")
    for slot in block_slots(cfg):
        body = BlockBody(slot).eval()
        alive.append(body)
        p = f"b{slot.index}"
        kept = slot.cout if keep >= 1 else max(1, int(slot.cout * keep) | 1)
        kept = min(slot.cout, -(-kept // round_to) * round_to)
        idx = torch.arange(kept)
        h = b.relu(f"{p}_relu1", b.conv_module(f"{p}_conv1", x, body.conv1, body.bn1, out_index=idx))
        h = b.conv_module(f"{p}_conv2", h, body.conv2, body.bn2, in_index=idx)
        ds = make_ds(slot)
        alive.append(ds)
        res = emit(b, ds.eval(), x, f"{p}_ds") if ds is not None else x
        x = b.relu(f"{p}_relu", b.add(f"{p}_add", res, h))
    cin = block_slots(cfg)[-1].cout
    for t in tasks:
        alive.append(make_head(t, cin, cfg.head, cfg.head_hidden).eval())
        b.output(t.name, emit(b, alive[-1], x, f"{t.name}_head"))
    return b.build()


def conv_stack(flops_target: float, height: int, width: int, channels: int = 64) -> StaticModel:
    """3x3 conv + ReLU layers at (channels, height/4, width/4), as many as match `flops_target` per image."""
    torch.manual_seed(1)
    h, w = height // 4, width // 4
    per_layer = 2 * channels * channels * 9 * h * w
    depth = max(1, round(flops_target / per_layer))
    b = GraphBuilder()
    stem = nn.Conv2d(3, channels, 4, 4)
    x = b.conv("stem", "image", stem.weight, stem.bias, stride=4)
    for i in range(depth):
        c = nn.Conv2d(channels, channels, 3, 1, 1)
        x = b.relu(f"r{i}", b.conv(f"c{i}", x, c.weight * 0.5, c.bias, padding=1))
    b.output("out", x)
    return b.build()


def flops_per_image(model: nn.Module, c: int, h: int, w: int) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, c, h, w))
    return float(counter.get_total_flops())


def train(model: StaticModel, data: DataConfig, steps: int, batch: int = 8) -> dict:
    sets = build_datasets(data, TASKS)
    ds = sets["train"]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        sample = ds[torch.randint(0, len(ds), (batch,), generator=gen)]
        out = model(sample["image"])
        loss = sum(task_loss(t, out[t.name], sample[t.name]) for t in TASKS)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return {"steps": steps, "batch": batch, "seconds": round(time.perf_counter() - t0, 1),
            "final_loss": float(loss.detach())}


def model_bytes(path_or_proto) -> bytes:
    """The serialized graph of a file or a proto."""
    proto = path_or_proto if isinstance(path_or_proto, onnx.ModelProto) else onnx.load(str(path_or_proto))
    return proto.SerializeToString()


def ort_session(model: bytes, threads: int):
    """A plain CPU session, as a user's service opens one: the caller's thread count, every other option default."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def deploymtl_session(path: Path, threads: int):
    """The session deploymtl's own runner opens on the file (`OrtRunner`: verify, profile, the runtime)."""
    from deploymtl.backends.ort_runner import OrtRunner

    return OrtRunner(path, threads=threads).session


BLOCK = 5  # timed runs per model per round


def latency_table(onnx_models: dict, torch_models: dict[str, StaticModel], shape: tuple[int, int, int], threads: int,
                  repeats: int) -> dict[str, dict[str, float]]:
    """Median ms per model at batch 1 and 8. Models take turns in blocks for ceil(repeats / BLOCK) rounds, so that
    drifting background load on a shared machine hits them alike; within a block a model runs alone, as served:
    its ORT session is created for the block (2 untimed runs, then `BLOCK` timed ones) and deleted after it, since
    an idle session's spinning thread pool would steal the cores from the next. `onnx_models`: name -> (path or
    proto, "plain" | "deploymtl": the session that runs it); `torch_models`: name -> static model (its `infer`: the
    compiled eager schedule)."""
    torch.set_num_threads(threads)
    graphs = {name: model_bytes(src) for name, (src, _) in onnx_models.items()}  # load once
    rows = {}
    for batch in (1, 8):
        x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
        xt = torch.from_numpy(x)
        times: dict[str, list[float]] = {k: [] for k in [*onnx_models, *torch_models]}

        def block(name: str, fn, times: dict[str, list[float]] = times) -> None:
            fn()
            fn()
            for _ in range(BLOCK):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)

        with torch.inference_mode():
            for _ in range(-(-repeats // BLOCK)):
                for name, graph in graphs.items():
                    src, kind = onnx_models[name]
                    sess = deploymtl_session(src, threads) if kind == "deploymtl" else ort_session(graph, threads)
                    block(name, lambda s=sess, x=x: s.run(None, {"image": x}))
                    del sess
                    gc.collect()
                for name, m in torch_models.items():
                    block(name, lambda m=m, xt=xt: m.infer(xt))
        rows[f"batch_{batch}"] = {f"{k}_ms": round(statistics.median(v) * 1e3, 3) for k, v in times.items()}
    return rows


PRUNED_CFG = BackboneConfig(blocks=[2, 2, 2, 2], width=32, head="light", head_hidden=32)
PRUNED_HW = (96, 128)


def pruned_model(args: argparse.Namespace, work: Path) -> tuple[StaticModel, dict, dict]:
    """The pruned ResNet-18-layout model, trained, saved as `work/pruned.pt`: (model, data section, training)."""
    h, w = PRUNED_HW
    data = {"source": "synthetic", "height": h, "width": w, "train_size": 256, "val_size": 64, "seed": 0}
    model = build_resnet(PRUNED_CFG, TASKS, keep=0.7)
    training = train(model, DataConfig(**data), args.train_steps)
    art = StaticArtifact(model=model, family="adashare", tasks=TASKS, plan={"bench": "pruned resnet18 w32"},
                         input={"channels": 3, "height": h, "width": w, "mean": [0.5] * 3, "std": [0.25] * 3},
                         recipe={"name": "bench", "family": "adashare", "tasks": [t.model_dump() for t in TASKS],
                                 "data": data, "export": {"batch": "1:4:8", "calibration_samples": 64}})
    save_static(work / "pruned.pt", art)
    return model, data, training


def export_or_report(model: Path, out: Path, values: dict) -> dict:
    """`export_model` with these option values; a failed verification's report is kept, honestly, as written."""
    try:
        return export_model(model, out, ExportOptions.parse(values)).to_dict()
    except VerificationError:
        return json.loads((out / "export_report.json").read_text())


def bench_pruned(args: argparse.Namespace, work: Path) -> dict:
    cfg, (h, w) = PRUNED_CFG, PRUNED_HW
    model, data, training = pruned_model(args, work)
    flops = flops_per_image(model, 3, h, w)
    reports = {}
    variants = {"fp32": ("fp32", "symmetric", "ort-cpu"), "int8": ("int8", "symmetric", "ort-cpu"),
                "int8_asym": ("int8", "asymmetric", "ort-cpu"), "fp32_trt": ("fp32", "symmetric", "trt"),
                "int8_trt": ("int8", "symmetric", "trt")}
    for name, (precision, activations, runtime) in variants.items():
        # all-int8 here (no accuracy control): this part measures what int8 itself costs and gains
        reports[name] = export_or_report(work / "pruned.pt", work / name, {
            "precision": precision, "max_metric_drop": 0.01, "threads": args.threads, "int8_activations": activations,
            "runtime": runtime, "accuracy_control": False})
    stack = conv_stack(flops, h, w)
    stack_flops = flops_per_image(stack, 3, h, w)
    from deploymtl.export.onnx import export_onnx
    from deploymtl.export.quantize import quantize_int8

    stack_proto = export_onnx(stack, channels=3, height=h, width=w, outputs=["out"])
    # the yardstick's own int8 speed-up, quantised the same way (symmetric, calibrated on the same scenes)
    calib = build_datasets(DataConfig(**data), TASKS)["train"].images[:64]
    stack_int8 = quantize_int8(stack_proto, [np.asarray(calib[k:k + 8]) for k in range(0, len(calib), 8)])
    # the same pruning with kept widths rounded up to 16 (ORT's AVX-512 NCHWc block): time per *nominal* FLOP
    rounded = build_resnet(cfg, TASKS, keep=0.7, round_to=16)
    r_flops = flops_per_image(rounded, 3, h, w)
    r_proto = export_onnx(rounded, channels=3, height=h, width=w, outputs=[t.name for t in TASKS])
    # ort_*: the written ort-cpu files in plain sessions; deploymtl_*: the same files through OrtRunner;
    # *_trt_form: the files written --for trt (symmetric Q/DQ, unpadded) in plain sessions
    from deploymtl.export.lowering import shape_for_ort_cpu

    f = {name: work / name / "model.onnx" for name in variants}
    onnx_models = {"ort_fp32": (f["fp32"], "plain"), "ort_int8_symmetric": (f["int8"], "plain"),
                   "ort_int8_asymmetric_u8": (f["int8_asym"], "plain"),
                   "deploymtl_fp32": (f["fp32"], "deploymtl"), "deploymtl_int8_symmetric": (f["int8"], "deploymtl"),
                   "ort_fp32_trt_form": (f["fp32_trt"], "plain"),
                   "ort_int8_symmetric_trt_form": (f["int8_trt"], "plain"),
                   "stack_ort_fp32": (shape_for_ort_cpu(stack_proto)[0], "plain"),
                   "stack_ort_int8_symmetric": (shape_for_ort_cpu(stack_int8)[0], "plain"),
                   "rounded16_ort_fp32": (shape_for_ort_cpu(r_proto)[0], "plain")}
    table = latency_table(onnx_models, {"torch_eager_fp32": model}, (3, h, w), args.threads, args.repeats)
    lat, stack_lat, r_lat = {}, {}, {}
    for key, ms in table.items():
        batch = int(key.split("_")[1])
        mine = {k: v for k, v in ms.items() if not k.startswith(("stack_", "rounded16_"))}
        base = mine["ort_fp32_ms"]
        lat[key] = mine | {f"speedup_{k[:-3]}_vs_ort_fp32": round(base / v, 3) for k, v in mine.items()
                           if k != "ort_fp32_ms"} | {"ort_fp32_gflops_per_s": round(flops * batch / base / 1e6, 1)}
        s_fp32, s_int8 = ms["stack_ort_fp32_ms"], ms["stack_ort_int8_symmetric_ms"]
        stack_lat[key] = {"ort_fp32_ms": s_fp32, "ort_int8_symmetric_ms": s_int8,
                          "speedup_ort_int8_symmetric_vs_ort_fp32": round(s_fp32 / s_int8, 3),
                          "ort_fp32_gflops_per_s": round(stack_flops * batch / s_fp32 / 1e6, 1)}
        r_lat[key] = {"ort_fp32_ms": ms["rounded16_ort_fp32_ms"],
                      "ort_fp32_gflops_per_s": round(r_flops * batch / ms["rounded16_ort_fp32_ms"] / 1e6, 1)}
    ratio = {b: round(lat[b]["ort_fp32_gflops_per_s"] / stack_lat[b]["ort_fp32_gflops_per_s"], 3) for b in lat}
    return {
        "model": {"layout": "Deeplab-ResNet-18 [2,2,2,2], width 32, inner widths 70% kept (odd)", "input": [3, h, w],
                  "gflops_per_image": round(flops / 1e9, 3),
                  "params": sum(p.numel() for p in model.parameters()), "training": training},
        "latency": lat,
        "plain_vs_deploymtl_speed": {b: {p: round(lat[b][f"deploymtl_{p}_ms"] / lat[b][f"ort_{p}_ms"], 3)
                                         for p in ("fp32", "int8_symmetric")} for b in lat},
        "int8_vs_fp32_plain": {b: lat[b]["speedup_ort_int8_symmetric_vs_ort_fp32"] for b in lat},
        "int8_metrics": {"symmetric": reports["int8"].get("metrics"),
                         "asymmetric_u8": reports["int8_asym"].get("metrics"),
                         "symmetric_trt_form": reports["int8_trt"].get("metrics")},
        "parity": {p: reports[p]["outputs"] for p in reports},
        "runtime": {p: reports[p].get("runtime") for p in reports},
        "conv_stack": {"gflops_per_image": round(stack_flops / 1e9, 3), "latency": stack_lat},
        "static_vs_conv_stack_gflops_ratio": ratio,
        "static_trt_form_vs_conv_stack_gflops_ratio": {
            b: round(ratio[b] * lat[b]["ort_fp32_ms"] / lat[b]["ort_fp32_trt_form_ms"], 3) for b in lat},
        "rounded_to_16": {"gflops_per_image": round(r_flops / 1e9, 3), "latency": r_lat,
                          "gflops_ratio_vs_conv_stack": {
                              b: round(r_lat[b]["ort_fp32_gflops_per_s"] / stack_lat[b]["ort_fp32_gflops_per_s"], 3)
                              for b in r_lat},
                          "ms_vs_odd_widths": {b: round(r_lat[b]["ort_fp32_ms"] / lat[b]["ort_fp32_ms"], 3)
                                               for b in r_lat}},
        "export_seconds": {p: reports[p]["timings"]["total"] for p in reports},
    }


def _mix_summary(report: dict) -> dict:
    """What a precision-mix export chose, in the JSON: candidates' times, groups per precision, final metrics."""
    mix = report.get("precision_mix") or {}
    ac = mix.get("accuracy_control") or {}
    return {"precision": report.get("precision"), "passed": report.get("passed"), "failures": report.get("failures"),
            "chosen": mix.get("chosen"), "candidates": mix.get("candidates"), "int8_groups": mix.get("int8_groups"),
            "float_groups": [(g["name"], g["reason"]) for g in mix.get("groups", []) if g["precision"] == "float"],
            "reverted_by_accuracy_control": ac.get("reverted"), "accuracy_control_steps": ac.get("steps"),
            "final_metrics": mix.get("final_metrics"),
            "metric_gate": {k: {"loss": t["loss"], "budget": t["budget"]["text"], "passed": t["passed"]}
                            for k, t in ((report.get("metrics") or {}).get("tasks") or {}).items()},
            "export_seconds": report["timings"]["total"]}


def _tight_budget(int8_report: dict, budget: str) -> str:
    """Budgets all-int8 misses: the task int8 costs most gets half its measured loss (relative), the others keep
    `budget`; where int8 costs no task anything, every task gets a budget of 0."""
    losses = {k: t["loss"] for k, t in ((int8_report.get("metrics") or {}).get("tasks") or {}).items()}
    worst = max(losses, key=losses.get, default=None)
    if worst is None or losses[worst] <= 0:
        return "0%"
    return f"{budget},{worst}={losses[worst] * 50:.3g}%"


def _demo_models(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """The demo's pruned tiny models: those of `--demo-dir` (a `deploymtl demo` output) when there, else the
    tiny recipes trained and pruned here (`deploymtl run` up to prune)."""
    from deploymtl.config import load_recipe
    from deploymtl.demo import DEMO_RECIPES, recipes_dir
    from deploymtl.pipeline import run_pipeline

    found = {}
    for name in DEMO_RECIPES:
        recipe = load_recipe(recipes_dir() / f"{name}.yaml")
        existing = args.demo_dir / recipe.family / "prune" / "pruned.pt"
        if existing.is_file():
            found[name] = existing
            continue
        run_pipeline(recipe, work / "demo" / recipe.family, stages=("train", "prune"), progress=False,
                     log=lambda _: None)
        found[name] = work / "demo" / recipe.family / "prune" / "pruned.pt"
    return found


def bench_mix(args: argparse.Namespace, work: Path) -> dict:
    """`--precision auto` and accuracy control (`export.mixed`): on the pruned ResNet-18-layout model against fp32
    and all-int8 (every task's budget 1%); a case where all-int8 breaks one budget (`--tight-budget`) and accuracy
    control fixes it; the demo's tiny models, where int8 does not pay, against fp32. All files in plain sessions,
    one latency table per model set (the ratios are of one run)."""
    h, w = PRUNED_HW
    pruned_model(args, work)
    src = work / "pruned.pt"
    common = {"threads": args.threads}
    budget = "1%"
    runs = {"fp32": {"precision": "fp32", "max_metric_drop": budget},
            "int8": {"precision": "int8", "max_metric_drop": budget, "accuracy_control": False},
            "auto": {"precision": "auto", "max_metric_drop": budget}}
    reports = {k: export_or_report(src, work / "mix" / k, common | v) for k, v in runs.items()}
    tight = args.tight_budget if args.tight_budget != "auto" else _tight_budget(reports["int8"], budget)
    runs |= {"int8_tight_no_control": {"precision": "int8", "max_metric_drop": tight, "accuracy_control": False},
             "int8_tight": {"precision": "int8", "max_metric_drop": tight},
             "auto_tight": {"precision": "auto", "max_metric_drop": tight}}
    reports |= {k: export_or_report(src, work / "mix" / k, common | runs[k])
                for k in ("int8_tight_no_control", "int8_tight", "auto_tight")}
    table = latency_table({k: (work / "mix" / k / "model.onnx", "plain") for k in runs}, {}, (3, h, w), args.threads,
                          args.repeats)
    resnet = {"budgets": {"default": budget, "tight": tight}, "latency": table,
              "auto_vs_best_of_fp32_and_int8": {
                  b: round(r["auto_ms"] / min(r["fp32_ms"], r["int8_ms"]), 3) for b, r in table.items()},
              "auto_tight_vs_fp32": {b: round(r["auto_tight_ms"] / r["fp32_ms"], 3) for b, r in table.items()},
              "int8_tight_vs_fp32": {b: round(r["int8_tight_ms"] / r["fp32_ms"], 3) for b, r in table.items()},
              "int8_tight_vs_all_int8": {b: round(r["int8_tight_ms"] / r["int8_ms"], 3) for b, r in table.items()},
              "exports": {k: _mix_summary(r) for k, r in reports.items()}}
    tiny = {}
    for name, path in ({} if args.skip_tiny else _demo_models(args, work)).items():
        out = work / "tiny" / name
        rep = {k: export_or_report(path, out / k, common | {"precision": k}) for k in ("fp32", "auto")}
        art_input = json.loads((out / "fp32" / "export_report.json").read_text())["inputs"]["shape"][1:]
        lat = latency_table({k: (out / k / "model.onnx", "plain") for k in rep}, {}, tuple(art_input),
                            args.threads, args.repeats)
        tiny[name] = {"model": str(path), "latency": lat,
                      "auto_vs_fp32": {b: round(r["auto_ms"] / r["fp32_ms"], 3) for b, r in lat.items()},
                      "auto": _mix_summary(rep["auto"])}
    return {"resnet18_pruned": resnet, "tiny_demo_models": tiny}


def bench_resnet34(args: argparse.Namespace, work: Path) -> dict:
    cfg = BackboneConfig(blocks="resnet34", width=64, head="aspp", head_hidden=256)
    h, w = 288, 384
    model = build_resnet(cfg, PAPER_TASKS)
    data = {"source": "synthetic", "height": h, "width": w, "train_size": 2, "val_size": 2, "seed": 0}
    art = StaticArtifact(model=model, family="adashare", tasks=PAPER_TASKS, plan={"bench": "resnet34"},
                         input={"channels": 3, "height": h, "width": w, "mean": [0.5] * 3, "std": [0.25] * 3},
                         recipe={"name": "bench34", "family": "adashare",
                                 "tasks": [t.model_dump() for t in PAPER_TASKS], "data": data,
                                 "export": {"batch": "1:1:2"}})
    save_static(work / "resnet34.pt", art)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    options = ExportOptions.parse({"precision": "fp32", "threads": args.threads})
    report = export_model(work / "resnet34.pt", work / "resnet34", options).to_dict()
    wall = time.perf_counter() - t0
    return {"model": {"layout": "Deeplab-ResNet-34 [3,4,6,3], width 64, OS8, ASPP heads hidden 256",
                      "input": [3, h, w], "params": sum(p.numel() for p in model.parameters()),
                      "gflops_per_image": round(flops_per_image(model, 3, h, w) / 1e9, 1)},
            "export_and_verify_seconds": round(wall, 1), "timings": report["timings"],
            "passes": [(p["name"], p["accepted"], p["reason"]) for p in report["passes"]],
            "max_abs": {k: v["max_abs"] for k, v in report["outputs"].items()}, "passed": report["passed"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, default=None, help="default artifacts/bench/export.json "
                    "(export_mix.json for --only mix)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30, help="timed runs per model and batch, in blocks of 5 "
                    "(30: six rounds, which batch 1 on a shared machine needs)")
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--only", choices=("pruned", "resnet34", "mix"), help="run one part of the benchmark (mix: "
                    "--precision auto and accuracy control, written to export_mix.json unless -o is given)")
    ap.add_argument("--tight-budget", default="auto", help="mix: budgets that all-int8 misses, for accuracy "
                    "control to fix (auto: half the loss of the task int8 costs most, 1%% for the others)")
    ap.add_argument("--skip-tiny", action="store_true", help="mix: leave out the demo's tiny models")
    ap.add_argument("--demo-dir", type=Path, default=Path(__file__).resolve().parents[1] / "artifacts" / "demo",
                    help="mix: a `deploymtl demo` output whose pruned tiny models to use (else trained here)")
    ap.add_argument("--quick", action="store_true", help="few repeats and training steps (smoke run)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = Path(__file__).resolve().parents[1] / "artifacts" / "bench" / (
            "export_mix.json" if args.only == "mix" else "export.json")
    if args.quick:
        args.repeats, args.train_steps = 3, 10
    torch.set_num_threads(args.threads)
    from deploymtl.onnxkit.cpu import simd_block

    result = {"deploymtl_version": __version__, "torch": torch.__version__, "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "simd_block": simd_block(), "load_average_at_start": os.getloadavg()}
    import onnxruntime

    result["onnxruntime"] = onnxruntime.__version__
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        if args.only in (None, "pruned"):
            result["pruned"] = bench_pruned(args, Path(tmp))
        if args.only in (None, "resnet34"):
            result["resnet34"] = bench_resnet34(args, Path(tmp))
        if args.only == "mix":  # its own document: a run of its own, minutes longer
            result["mix"] = bench_mix(args, Path(tmp))
    result["load_average_at_end"] = os.getloadavg()
    write_json(args.out, result)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
