"""Several artifacts of one model side by side: cost (params, FLOPs, size, memory) against measured latency.

The reference is the artifact with the most FLOPs (the dense or masked model when it is among them, else the
first). For each artifact: `flops_ratio` = its FLOPs / the reference's, `latency_ratio[b]` = its p50 latency /
the reference's at batch b (the median is robust to the preemption spikes of a shared CPU), and
`latency_over_flops[b]` = latency_ratio / flops_ratio: 1.0 means the saving in FLOPs is realised as time,
above 1.0 that it is not (memory-bound layers, fixed overheads, channel counts the kernels handle badly).
Artifacts built for different task subsets are grouped by task set, with the per-task cost of the reference.
"""

from __future__ import annotations

from typing import Any


def _p50(entry: dict[str, Any]) -> dict[int, float]:
    return {row["batch"]: row["latency_ms"]["p50_ms"] for row in entry.get("sweep", [])}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compare(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """entries: profile artifact entries ("name", "tasks", "cost", "sweep", "size_bytes", "memory")."""
    if not entries:
        return {"reference": None, "rows": [], "task_sets": []}
    with_flops = [e for e in entries if e["cost"].get("flops")]
    ref = max(with_flops, key=lambda e: e["cost"]["flops"]) if with_flops else entries[0]
    ref_lat = _p50(ref)
    rows = []
    for e in entries:
        lat = _p50(e)
        flops_ratio = _ratio(e["cost"].get("flops"), ref["cost"].get("flops"))
        lat_ratio = {b: lat[b] / ref_lat[b] for b in lat if b in ref_lat and ref_lat[b] > 0}
        rows.append({
            "name": e["name"], "kind": e["kind"], "tasks": e["tasks"], "params": e["cost"].get("params"),
            "flops": e["cost"].get("flops"), "size_bytes": e["size_bytes"],
            "peak_mb": (e.get("memory") or {}).get("model_peak_mb"), "p50_ms": lat,
            "flops_ratio": flops_ratio, "params_ratio": _ratio(e["cost"].get("params"), ref["cost"].get("params")),
            "latency_ratio": lat_ratio,
            "latency_over_flops": {b: r / flops_ratio for b, r in lat_ratio.items()} if flops_ratio else {},
        })
    task_sets: dict[tuple[str, ...], list[str]] = {}
    for e in entries:
        task_sets.setdefault(tuple(e["tasks"]), []).append(e["name"])
    subsets = [{"tasks": list(t), "artifacts": names,
                "flops": next(r["flops"] for r in rows if r["name"] == names[0])} for t, names in task_sets.items()]
    return {"reference": ref["name"], "rows": rows, "task_sets": subsets,
            "per_task": ref["cost"].get("per_task", {})}
