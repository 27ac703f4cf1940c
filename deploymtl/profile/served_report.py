"""Write a served profile (`deploymtl profile --url`): `profile.json`, `profile.md` and two PNG plots.

    served_latency_vs_concurrency.png   p50 latency (bar to p99) and throughput per concurrency level, served and
                                        in-process
    served_rate_cdf.png                 CDF of per-frame latency in the request-rate mode, with the deadline

Written as one output set like every profile (report.py's helpers); the set also owns the batch-profile file
names, so a directory never mixes a served profile.json with plots of another profile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_write_text, write_json
from ..outdir import output_set
from .report import FILES, fmt, pyplot, save_figure, table

SERVED_FILES = ("profile.json", "profile.md", "served_latency_vs_concurrency.png", "served_rate_cdf.png")


def write_served_report(out_dir: str | Path, profile: dict[str, Any]) -> dict[str, Path]:
    out = Path(out_dir)
    with output_set(out, owned=set(FILES) | set(SERVED_FILES)) as stage:
        write_json(stage / "profile.json", profile)
        atomic_write_text(stage / "profile.md", render_served_markdown(profile))
        _plot_sweep(stage / SERVED_FILES[2], profile)
        _plot_rate(stage / SERVED_FILES[3], profile)
    return {name: out / name for name in SERVED_FILES}


def _sides(profile: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    sides = [("served", profile["served"])]
    if profile.get("in_process"):
        sides.append(("in-process", profile["in_process"]))
    return sides


def render_served_markdown(profile: dict[str, Any]) -> str:
    s, o = profile["server"], profile["options"]
    b = s["batching"]
    lines = ["# deploymtl profile: served model", "",
             f"Model `{s['model']}` on {s['url']} ({s['protocol']}); input `{s['input']['name']}` "
             f"{s['input']['datatype']} {s['input']['dims']}, one image per request. Server batching: "
             f"max_batch_size {b['max_batch_size']}, "
             f"preferred {b['preferred']}, queue delay {b['max_queue_delay_us'] / 1000:g} ms. Windows of "
             f"{o['duration_s']:g} s until two consecutive medians agree within {o['tolerance']:.0%}.", ""]
    if profile.get("in_process"):
        ip = profile["in_process"]
        lines += [f"In-process: `{ip['artifact']}` ({ip['backend']}, {ip['threads']} thread(s)) behind deploymtl's "
                  f"Batcher with the same batching.", ""]
    lines += ["## Concurrency sweep (latency in ms)", ""]
    rows = []
    for label, side in _sides(profile):
        for r in side["sweep"]:
            lat, srv = r["latency_ms"], r.get("server") or {}
            rows.append([label, r["concurrency"], r["throughput_ips"], lat["p50_ms"], lat["p90_ms"], lat["p95_ms"],
                         lat["p99_ms"], srv.get("queue_ms"), srv.get("compute_per_execution_ms"), srv.get("avg_batch"),
                         r["errors"], "yes" if r["stable"] else f"no (cv {r['cv']:.1%})"])
    lines += table(["side", "concurrency", "images/s", "p50", "p90", "p95", "p99", "server queue",
                    "compute/exec", "mean batch", "errors", "stable"], rows)
    cmp = profile["comparison"]
    if any(r["in_process_ips"] is not None for r in cmp["rows"]):
        lines += ["", "## Served vs in-process", ""]
        lines += table(["concurrency", "served images/s", "in-process images/s", "ratio", "served p99 ms",
                        "in-process p99 ms"],
                       [[r["concurrency"], r["served_ips"], r["in_process_ips"], r["throughput_ratio"],
                         r["served_p99_ms"], r["in_process_p99_ms"]] for r in cmp["rows"]])
    rate_rows = [(label, side["rate"]) for label, side in _sides(profile) if side.get("rate")]
    if rate_rows:
        scn = rate_rows[0][1]["scenario"]
        lines += ["", "## Request-rate mode", "",
                  f"{scn['streams']} streams x {scn['fps']:g} fps ({scn['arrival']}), {scn['duration_s']:g} s, "
                  f"deadline {scn['deadline_ms']:.3g} ms.", ""]
        lines += table(["side", "frames", "p50 ms", "p99 ms", "frames/s", "missed", "failed/dropped", "mean batch"],
                       [[label, e["frames"], e["latency_ms"]["p50_ms"], e["latency_ms"]["p99_ms"], e["throughput_fps"],
                         f"{e['deadline_missed']}/{e['frames']}", e["dropped"], e["mean_batch"]]
                        for label, e in rate_rows])
    if profile["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in profile["warnings"]]
    lines += ["", f"![latency vs concurrency]({SERVED_FILES[2]})", "", f"![request-rate CDF]({SERVED_FILES[3]})", ""]
    return "\n".join(lines)


def summary_lines(profile: dict[str, Any]) -> list[str]:
    """What the CLI prints: one line per concurrency level and one per rate mode."""
    lines = []
    for r in profile["comparison"]["rows"]:
        line = (f"concurrency {r['concurrency']}: served {fmt(r['served_ips'])} images/s, "
                f"p99 {fmt(r['served_p99_ms'])} ms")
        if r["in_process_ips"] is not None:
            line += (f"; in-process {fmt(r['in_process_ips'])} images/s, p99 {fmt(r['in_process_p99_ms'])} ms "
                     f"(served/in-process {r['throughput_ratio']:.0%})")
        lines.append(line)
    for label, e in profile["comparison"]["rate"].items():
        lines.append(f"rate mode {label.replace('_', '-')}: p99 {fmt(e['p99_ms'])} ms, {e['deadline_missed']}/"
                     f"{e['frames']} frames late, {fmt(e['throughput_fps'])} frames/s")
    return lines


def _plot_sweep(path: Path, profile: dict[str, Any]) -> None:
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for label, side in _sides(profile):
        c = [r["concurrency"] for r in side["sweep"]]
        p50 = [r["latency_ms"]["p50_ms"] for r in side["sweep"]]
        up = [r["latency_ms"]["p99_ms"] - p for p, r in zip(p50, side["sweep"], strict=True)]
        ax.errorbar(c, p50, yerr=[[0.0] * len(up), up], marker="o", capsize=3, label=label)
        ax2.plot(c, [r["throughput_ips"] for r in side["sweep"]], marker="o", label=label)
    ax.set(xlabel="concurrent clients", ylabel="latency ms (p50, bar to p99)", title="Latency vs concurrency")
    ax2.set(xlabel="concurrent clients", ylabel="images / s", title="Throughput vs concurrency")
    for x in (ax, ax2):
        x.set_xscale("log", base=2)
        x.grid(alpha=0.3)
        x.legend(fontsize=8)
    save_figure(fig, path)


def _plot_rate(path: Path, profile: dict[str, Any]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    rates = [(label, side["rate"]) for label, side in _sides(profile) if side.get("rate")]
    for label, e in rates:
        cdf = e["cdf_ms"]
        ax.plot(cdf, [i / (len(cdf) - 1) for i in range(len(cdf))], label=label)
    if rates:
        e = rates[0][1]
        ax.axvline(e["deadline_ms"], color="red", ls="--", lw=1, label="deadline")
        s = e["scenario"]
        ax.set_title(f"{s['streams']} streams x {s['fps']:g} fps", fontsize=9)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "request-rate mode not run (--no-edge)", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="per-frame latency ms (arrival to answer)", ylabel="fraction of frames")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
