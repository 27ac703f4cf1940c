"""Write a profile: `profile.json` (stable keys), `profile.md`, and three PNG plots (matplotlib, Agg).

    latency_vs_batch.png   p50 latency per batch size (bars up to p99) and throughput, per artifact
    edge_latency_cdf.png   CDF of end-to-end latency in the edge scenario, with the deadline and the budget
    flops_vs_latency.png   FLOPs ratio against latency ratio (batch 1 and the largest batch), y = x dashed

The files are written as one set (`deploymtl.outdir.output_set`: the directory holds the previous profile or this
one, never a mix); the set is the same whatever was measured (a plot without data says so), so pipelines can link
to them unconditionally.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_write_text, write_json
from ..outdir import output_set

FILES = ("profile.json", "profile.md", "latency_vs_batch.png", "edge_latency_cdf.png", "flops_vs_latency.png")


def write_report(out_dir: str | Path, profile: dict[str, Any]) -> dict[str, Path]:
    """Write every file of FILES under `out_dir`; returns {file name: path}."""
    out = Path(out_dir)
    with output_set(out, owned=FILES) as stage:
        write_json(stage / "profile.json", profile)
        atomic_write_text(stage / "profile.md", render_markdown(profile))
        _plot_latency(stage / "latency_vs_batch.png", profile)
        _plot_cdf(stage / "edge_latency_cdf.png", profile)
        _plot_ratios(stage / "flops_vs_latency.png", profile)
    return {name: out / name for name in FILES}


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]


def render_markdown(profile: dict[str, Any]) -> str:
    o = profile["options"]
    env = profile["environment"]
    arts = profile["artifacts"]
    lines = ["# deploymtl profile", "",
             f"{len(arts)} artifact(s); provider {o['provider']}, {o['threads']} thread(s); measurement windows of "
             f"{o['duration_s']:g} s until two consecutive medians agree within {o['tolerance']:.0%}; "
             f"{env['cpu_count']} CPUs, {env['platform']}.", "", "## Artifacts", ""]
    lines += table(["artifact", "kind", "backend", "tasks", "params", "GFLOPs/img", "size MB", "peak MB", "cost from"],
                    [[a["name"], a["kind"], a["backend"], ", ".join(a["tasks"]), a["cost"].get("params"),
                      a["cost"]["flops"] / 1e9 if a["cost"].get("flops") else None, a["size_bytes"] / 2**20,
                      (a.get("memory") or {}).get("model_peak_mb"), a["cost"].get("source")] for a in arts])
    lines += ["", "## Batch sweep (latency in ms)", ""]
    rows = []
    for a in arts:
        for r in a["sweep"]:
            lat = r["latency_ms"]
            rows.append([a["name"], r["batch"], lat["min_ms"], lat["mean_ms"], lat["p50_ms"], lat["p90_ms"],
                         lat["p95_ms"], lat["p99_ms"], r["throughput_ips"], "yes" if r["stable"] else
                         f"no (cv {r['cv']:.1%})"])
    lines += table(["artifact", "batch", "min", "mean", "p50", "p90", "p95", "p99", "images/s", "stable"], rows)
    edge = [a for a in arts if "edge" in a]
    if edge:
        s = edge[0]["edge"]["scenario"]
        lines += ["", "## Edge scenario", "",
                  f"{s['streams']} streams x {s['fps']:g} fps ({s['arrival']}, jitter {s['jitter_ms']:g} ms), "
                  f"{s['duration_s']:g} s simulated; batcher max batch {s['max_batch']}, max delay "
                  f"{s['max_delay_ms']:g} ms, queue {s['max_queue']} images; deadline {s['deadline_ms']:.3g} ms. "
                  f"{edge[0]['edge']['mode'].capitalize()}.", ""]
        lines += table(["artifact", "p50 ms", "p90 ms", "p99 ms", "frames/s", "missed", "dropped", "busy",
                         "mean batch", "batch histogram"],
                        [[a["name"], e["latency_ms"]["p50_ms"], e["latency_ms"]["p90_ms"], e["latency_ms"]["p99_ms"],
                          e["throughput_fps"], f"{e['deadline_missed']}/{e['frames']}", e["dropped"],
                          f"{e['utilization']:.0%}", e["mean_batch"],
                          " ".join(f"{k}:{v}" for k, v in e["batch_histogram"].items())]
                         for a in edge for e in [a["edge"]["result"]]])
        lines += ["", f"Best batcher setting under a p99 budget of {edge[0]['edge']['settings']['budget_ms']:.3g} ms "
                  f"({edge[0]['edge']['settings']['rule']}):", ""]
        best_rows = []
        for a in edge:
            st = a["edge"]["settings"]
            b = st["best"] or st["closest"]
            best_rows.append([a["name"], "yes" if st["best"] else "no (closest shown)", b["max_batch"],
                              b["max_delay_ms"], b["p99_ms"], f"{b['utilization']:.0%}", b["mean_batch"]])
        lines += table(["artifact", "fits budget", "max batch", "max delay ms", "p99 ms", "busy", "mean batch"],
                        best_rows)
    lines += _comparison_md(profile["comparison"])
    if profile["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in profile["warnings"]]
    lines += ["", "![latency vs batch](latency_vs_batch.png)", "", "![edge latency CDF](edge_latency_cdf.png)", "",
              "![FLOPs ratio vs latency ratio](flops_vs_latency.png)", ""]
    return "\n".join(lines)


def _comparison_md(cmp: dict[str, Any]) -> list[str]:
    if len(cmp["rows"]) < 2:
        return []
    batches = sorted({b for r in cmp["rows"] for b in r["latency_ratio"]})
    lines = ["", f"## Comparison (reference: {cmp['reference']})", "",
             "latency ratio = p50 latency / reference p50 at that batch; latency/FLOPs = 1 when the FLOPs saving "
             "is realised as time.", ""]
    header = ["artifact", "tasks", "FLOPs ratio", "params ratio"]
    header += [f"latency ratio b={b}" for b in batches] + [f"latency/FLOPs b={b}" for b in batches]
    lines += table(header, [[r["name"], ", ".join(r["tasks"]), r["flops_ratio"], r["params_ratio"]]
                             + [r["latency_ratio"].get(b) for b in batches]
                             + [r["latency_over_flops"].get(b) for b in batches] for r in cmp["rows"]])
    if cmp.get("per_task"):
        lines += ["", f"Per-task cost of {cmp['reference']} (alone: a model for that task only; marginal: what "
                  "dropping it saves):", ""]
        lines += table(["task", "GFLOPs alone", "GFLOPs marginal", "params alone", "params marginal"],
                        [[t, c["alone"]["flops"] / 1e9, c["marginal"]["flops"] / 1e9, c["alone"]["params"],
                          c["marginal"]["params"]] for t, c in cmp["per_task"].items()])
    return lines


def pyplot():  # noqa: ANN202 - matplotlib types
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    plt = pyplot()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)  # into the output set's stage
    plt.close(fig)


def _plot_latency(path: Path, profile: dict[str, Any]) -> None:
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for a in profile["artifacts"]:
        b = [r["batch"] for r in a["sweep"]]
        p50 = [r["latency_ms"]["p50_ms"] for r in a["sweep"]]
        up = [r["latency_ms"]["p99_ms"] - p for p, r in zip(p50, a["sweep"], strict=True)]
        ax.errorbar(b, p50, yerr=[[0.0] * len(up), up], marker="o", capsize=3, label=a["name"])
        ax2.plot(b, [r["throughput_ips"] for r in a["sweep"]], marker="o", label=a["name"])
    ax.set(xlabel="batch size", ylabel="latency ms (p50, bar to p99)", title="Latency vs batch")
    ax2.set(xlabel="batch size", ylabel="images / s", title="Throughput vs batch")
    for x in (ax, ax2):
        x.set_xscale("log", base=2)
        x.grid(alpha=0.3)
        x.legend(fontsize=8)
    save_figure(fig, path)


def _plot_cdf(path: Path, profile: dict[str, Any]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    edge = [a for a in profile["artifacts"] if "edge" in a]
    for a in edge:
        cdf = a["edge"]["result"]["cdf_ms"]
        ax.plot(cdf, [i / (len(cdf) - 1) for i in range(len(cdf))], label=a["name"])
    if edge:
        e = edge[0]["edge"]
        ax.axvline(e["result"]["deadline_ms"], color="red", ls="--", lw=1, label="deadline")
        ax.axvline(e["settings"]["budget_ms"], color="gray", ls=":", lw=1, label="budget (p99)")
        s = e["scenario"]
        ax.set_title(f"Edge: {s['streams']} streams x {s['fps']:g} fps, max batch {s['max_batch']}, "
                     f"delay {s['max_delay_ms']:g} ms", fontsize=9)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "edge scenario not run (--no-edge)", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="end-to-end latency ms (queueing + compute)", ylabel="fraction of frames")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def _plot_ratios(path: Path, profile: dict[str, Any]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    rows = [r for r in profile["comparison"]["rows"] if r["flops_ratio"] is not None and r["latency_ratio"]]
    for r in rows:
        batches = sorted(r["latency_ratio"], key=int)
        for b, marker in ((batches[0], "o"), (batches[-1], "s")):
            ax.scatter(r["flops_ratio"], r["latency_ratio"][b], marker=marker, label=f"{r['name']} b={b}")
    top = max([1.0] + [v for r in rows for v in r["latency_ratio"].values()]) * 1.05
    ax.plot([0, top], [0, top], ls="--", color="gray", lw=1, label="latency ratio = FLOPs ratio")
    if len(rows) < 2:
        ax.text(0.5, 0.15, "compare needs two artifacts with FLOPs", ha="center", transform=ax.transAxes)
    ax.set(xlabel="FLOPs ratio (vs reference)", ylabel="latency ratio (p50, vs reference)",
           title=f"Reference: {profile['comparison']['reference']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)
