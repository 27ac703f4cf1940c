"""`deploymtl demo`: the whole promise in one command on a laptop.

Runs `deploymtl run` on the tiny recipe of each family on the built-in synthetic data (TensorRT too when it is
installed and a GPU is present) and writes `summary.json`, `summary.md` and `summary.html` (PNG plots embedded) with,
per family: the searched decisions picture, params and FLOPs dense / masked / static, task metrics of the supernet, the
static model and the exported models, the parity tables, the precision mix `auto` chose and the latency tables.
Every figure is read from the run's own
reports or measured here, never written by hand.
"""

from __future__ import annotations

import base64
import html
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .config import load_recipe, parse_recipe
from .errors import DeploymtlError
from .io import atomic_write_text, ensure_dir, read_json, write_json
from .outdir import check_output_dir, output_set
from .pipeline import PipelineResult, run_pipeline

DEMO_RECIPES = ("adashare_tiny", "gated_tiny", "auxnas_tiny")
SUMMARY_FILES = ("summary.json", "summary.md", "summary.html")


def recipes_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "recipes"


def tensorrt_usable() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch

    return torch.cuda.is_available()


def evaluate_artifact(path: Path, recipe_dict: dict[str, Any], max_samples: int | None = None) -> dict[str, dict]:
    """Task metrics of any artifact (pruned.pt, .onnx, .plan) on the recipe's validation split, through its runner."""
    from .backends.load import open_runner
    from .data import build_datasets
    from .metrics import TaskMeter

    recipe = parse_recipe(recipe_dict, f"{path} (embedded recipe)")
    val = build_datasets(recipe.data, recipe.tasks)["val"]
    runner = open_runner(path)
    tasks = [t for t in recipe.tasks if t.name in runner.output_names]
    meters = {t.name: TaskMeter(t) for t in tasks}
    limit = runner.input_spec.max_batch or 8
    n = len(val) if max_samples is None else min(len(val), max_samples)
    import torch

    for start in range(0, n, limit):
        batch = val.batch(min(limit, n - start), offset=start)
        out = runner.infer(batch["image"].numpy().astype(np.float32))
        for t in tasks:
            meters[t.name].update(torch.from_numpy(out[t.name]), batch[t.name])
    runner.close()
    return {name: m.compute() for name, m in meters.items()}


def _family_summary(res: PipelineResult) -> dict[str, Any]:
    out = res.out_dir
    train = read_json(out / "train" / "train_report.json", "train report")
    prune = read_json(out / "prune" / "prune_report.json", "prune report")
    fam: dict[str, Any] = {
        "family": res.recipe.family, "recipe": res.recipe.name, "dir": str(out),
        "decisions": train.get("decisions_summary", {}), "delta_mtl": train.get("delta_mtl"),
        "params": {k: prune["params"][k]["total"] for k in ("before", "masked", "after")},
        "flops": {k: prune["flops"][k]["total"] for k in ("before", "masked", "after")},
        "prune_parity": prune.get("parity", {}),
        "metrics": {"untrained": train["metrics"]["untrained"], "supernet": train["metrics"]["final"]},
        "exports": {}, "pictures": [], "stages": [{"name": s.name, "skipped": s.skipped, "seconds": round(s.seconds, 2)}
                                                  for s in res.stages],
    }
    pruned = out / "prune" / "pruned.pt"
    fam["metrics"]["static"] = evaluate_artifact(pruned, res.recipe.resolved())
    for exp_report in sorted((out / "export").glob("*/export_report.json")):
        rep = read_json(exp_report, "export report")
        key = exp_report.parent.name
        artifact = exp_report.parent / rep["artifact"]
        fam["exports"][key] = {"passed": rep.get("passed"), "outputs": rep.get("outputs", {}),
                               "artifact": str(artifact), "precision": rep.get("precision"),
                               "requested_precision": rep.get("requested_precision"),
                               "precision_mix": rep.get("precision_mix")}
        if artifact.suffix == ".onnx":
            fam["metrics"][f"onnx-{key}"] = evaluate_artifact(artifact, res.recipe.resolved())
    prof = out / "profile" / "profile.json"
    fam["profile"] = read_json(prof, "profile report") if prof.is_file() else {}
    fam["pictures"] = [str(p) for p in sorted((out / "prune").glob("*.png")) + sorted((out / "profile").glob("*.png"))]
    return fam


def run_demo(out_dir: str | Path = "artifacts/demo", *, max_steps: int | None = None, families: list[str] | None = None,
             force: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    out = ensure_dir(check_output_dir(out_dir))
    names = [f"{f}_tiny" for f in families] if families else list(DEMO_RECIPES)
    summary: dict[str, Any] = {"families": [], "failed": [], "tensorrt": tensorrt_usable()}
    for name in names:
        path = recipes_dir() / f"{name}.yaml"
        recipe = load_recipe(path)
        if summary["tensorrt"] and "trt" not in recipe.export.targets:
            recipe = recipe.model_copy(update={"export": recipe.export.model_copy(
                update={"targets": [*recipe.export.targets, "trt"]})})
        log(f"== {recipe.name} ({recipe.family}) ==")
        try:
            res = run_pipeline(recipe, out / recipe.family, max_steps=max_steps, force=force, progress=progress,
                               log=log)
        except DeploymtlError as exc:
            log(f"[{recipe.name}] failed: {exc.one_line()}")
            summary["failed"].append({"recipe": recipe.name, "error": exc.one_line(), "exit_code": exc.exit_code})
            continue
        summary["families"].append(_family_summary(res))
    # The summary files are one set with the family folders: the swap carries those as hard links (no copy).
    with output_set(out, owned=SUMMARY_FILES) as stage:
        write_json(stage / "summary.json", summary)
        atomic_write_text(stage / "summary.md", render_markdown(summary))
        atomic_write_text(stage / "summary.html", render_html(summary))
    return summary


# -- rendering ------------------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "-"
    return str(v)


def decisions_line(decisions: dict[str, Any]) -> str:
    """The decision summary in one readable line: scalars and small per-task maps; long per-layer lists skipped."""
    parts = []
    for key, value in decisions.items():
        if isinstance(value, dict) and all(not isinstance(v, (dict, list)) for v in value.values()):
            value = ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
        elif isinstance(value, (dict, list)):
            continue
        parts.append(f"{key.replace('_', ' ')}: {_fmt(value)}")
    return "; ".join(parts)


def _metrics_rows(fam: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    models = list(fam["metrics"])
    header = ["task", "metric", *models]
    rows = []
    for task, metrics in fam["metrics"]["supernet"].items():
        for metric in metrics:
            rows.append([task, metric, *[_fmt(fam["metrics"][m].get(task, {}).get(metric)) for m in models]])
    return header, rows


def _cost_rows(fam: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["", "dense (public code)", "masked (deployed mode)", "static (pruned)", "static / dense"]
    rows = []
    for key in ("params", "flops"):
        d = fam[key]
        ratio = d["after"] / d["before"] if d["before"] else float("nan")
        rows.append([key, _fmt(d["before"]), _fmt(d["masked"]), _fmt(d["after"]), f"{ratio:.2f}"])
    return header, rows


def _parity_rows(fam: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["artifact", "output", "max_abs", "max_rel", "passed"]
    rows = [["static vs supernet", t, _fmt(p.get("max_abs")), _fmt(p.get("max_rel")), _fmt(p.get("passed"))]
            for t, p in fam["prune_parity"].items()]
    for key, exp in fam["exports"].items():
        for t, p in exp["outputs"].items():
            rows.append([key, t, _fmt(p.get("max_abs")), _fmt(p.get("max_rel")), _fmt(p.get("passed"))])
    return header, rows


def _latency_rows(fam: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["artifact", "batch", "p50 ms", "p99 ms", "throughput /s"]
    rows = []
    for art in fam["profile"].get("artifacts", []):
        for row in art.get("sweep", []):
            lat = row.get("latency_ms", {})
            rows.append([str(art.get("name", "?")), _fmt(row.get("batch")), _fmt(lat.get("p50_ms")),
                         _fmt(lat.get("p99_ms")), _fmt(row.get("throughput_ips"))])
    return header, rows


def _mix_rows(fam: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per export that mixed precisions (`--precision int8` / `auto`): what it chose, the candidates' measured time
    against fp32 (auto), how many quantised groups run in int8 and in float, and each task against its budget."""
    header = ["export", "chosen", "time vs fp32 (fp32 / int8 / mix)", "int8 groups", "float groups", "tasks"]
    rows = []
    for key, exp in fam["exports"].items():
        mix = exp.get("precision_mix")
        if not mix:
            continue
        costs = {k: c["cost_vs_fp32"] for k, c in mix.get("candidates", {}).items()}
        cost = " / ".join(_fmt(costs.get(k)) for k in ("fp32", "int8", "mix")) if costs else "-"
        final = mix.get("final_metrics") or {}
        tasks = ", ".join(f"{t} {v['metric']} {_fmt(v['value'])} (budget {v['budget']['text']}: "
                          f"{'ok' if v['passed'] else 'over'})" for t, v in final.items()) or "-"
        rows.append([key, f"{exp.get('precision')} ({mix.get('chosen', mix.get('mode'))})", cost,
                     _fmt(mix.get("int8_groups")), _fmt(mix.get("float_groups")), tasks])
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(summary: dict[str, Any]) -> str:
    parts = ["# deploymtl demo", "",
             "Searched multi-task models, physically pruned, exported, verified and profiled on the built-in "
             "synthetic data. Every number below comes from this run's reports.", ""]
    for fam in summary["families"]:
        parts += [f"## {fam['family']} ({fam['recipe']})", "", f"Decisions: {decisions_line(fam['decisions'])}", ""]
        if fam.get("delta_mtl") is not None:
            parts += [f"Delta_MTL against single-task baselines: {fam['delta_mtl']:+.2f}%", ""]
        for title, fn in (("Cost", _cost_rows), ("Task metrics", _metrics_rows), ("Parity", _parity_rows),
                          ("Precision mix", _mix_rows), ("Latency", _latency_rows)):
            parts += [f"### {title}", "", _md_table(*fn(fam)), ""]
        parts += [f"![{Path(p).stem}]({Path(p).relative_to(Path(fam['dir']).parent)})" for p in fam["pictures"]]
        parts.append("")
    for f in summary["failed"]:
        parts += [f"## {f['recipe']}: FAILED", "", f"`{f['error']}` (exit {f['exit_code']})", ""]
    return "\n".join(parts)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(summary: dict[str, Any]) -> str:
    css = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;margin:8px 0}"
           "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:520px;margin:4px}")
    parts = [f"<html><head><meta charset='utf-8'><title>deploymtl demo</title><style>{css}</style></head><body>",
             "<h1>deploymtl demo</h1><p>Every number below comes from this run's reports.</p>"]
    for fam in summary["families"]:
        parts.append(f"<h2>{html.escape(fam['family'])} ({html.escape(fam['recipe'])})</h2>")
        parts.append(f"<p>Decisions: {html.escape(decisions_line(fam['decisions']))}</p>")
        for title, fn in (("Cost", _cost_rows), ("Task metrics", _metrics_rows), ("Parity", _parity_rows),
                          ("Precision mix", _mix_rows), ("Latency", _latency_rows)):
            parts.append(f"<h3>{title}</h3>" + _html_table(*fn(fam)))
        for pic in fam["pictures"]:
            data = base64.b64encode(Path(pic).read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(Path(pic).stem)}' src='data:image/png;base64,{data}'>")
    for f in summary["failed"]:
        parts.append(f"<h2>{html.escape(f['recipe'])}: FAILED</h2><p><code>{html.escape(f['error'])}</code></p>")
    parts.append("</body></html>")
    return "\n".join(parts)
