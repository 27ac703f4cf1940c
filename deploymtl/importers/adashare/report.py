"""`import_report.json` / `import_report.md`: what was read, what was ignored and why, the policy picture, and the
cost of the public code's inference against the deployed tree (`cost.py`)."""

from __future__ import annotations

from typing import Any

from ...models.adashare import AdaShareSupernet, shared_prefix

REPORT_FORMAT = "deploymtl.import_report/1"


def policy_picture(model: AdaShareSupernet) -> list[str]:
    """One line per task, one column per block: # executes, . skips; `|` between segments, `*` marks a block with a
    ds shortcut (a skipped one still applies it)."""
    names = model.task_names
    pad = max(len(n) for n in names)
    header, rows = [" " * pad + "  "], {n: [n.ljust(pad) + "  "] for n in names}
    for j, slot in enumerate(model.slots):
        sep = "|" if j and slot.segment != model.slots[j - 1].segment else ""
        header.append(sep + ("*" if slot.has_ds else " "))
        for i, n in enumerate(names):
            rows[n].append(sep + ("#" if int(model.policy[i, j]) else "."))
    return ["".join(header), *("".join(r) for r in rows.values())]


def policy_section(model: AdaShareSupernet) -> dict[str, Any]:
    """The imported decisions, their shape and the notes a person should read (tasks that execute nothing)."""
    policy = {t: [int(v) for v in model.policy[i].tolist()] for i, t in enumerate(model.task_names)}
    notes = []
    for t, row in policy.items():
        if not any(row):
            ds = [model.block_names[s.index] for s in model.slots if s.has_ds]
            notes.append(f"task {t} executes no block: it runs the stem, the shortcuts {', '.join(ds)} (a skipped "
                         "first-of-segment block keeps its ds) and its head")
    never = [model.block_names[j] for j in range(model.num_blocks) if not any(r[j] for r in policy.values())]
    return {"rule": model.rule, "blocks": list(model.block_names), "tasks": policy,
            "executed": {t: sum(r) for t, r in policy.items()}, "shared_prefix": shared_prefix(list(policy.values())),
            "never_executed": never, "picture": policy_picture(model), "notes": notes}


def _g(flops: int) -> str:
    return f"{flops / 1e9:.3f} G"


def render_markdown(report: dict[str, Any]) -> str:
    a, p, c = report["architecture"], report["policy"], report["cost"]
    lines = [
        f"# Import report: public AdaShare -> {report['artifact']}", "",
        f"Checkpoint `{report['source']['checkpoint']['path']}` ({report['source']['checkpoint']['format']} format), "
        f"policy `{report['source']['policy']['path']}`, architecture from {a['source']}.", "",
        "## Architecture", "",
        f"- backbone {a['backbone']} {a['layers']}, width {a['width']}, ASPP heads (hidden {a['head_hidden']})",
        *[f"- task{i + 1} `{t['name']}`: {t['kind']}, {t['channels']} channels, raw output at feature resolution "
          "(output stride 8, not upsampled)" for i, t in enumerate(a["tasks"])],
        f"- input {a['input']['height']}x{a['input']['width']}, {a['input']['channel_order']} pixels 0..255 "
        f"x {a['input']['scale']:g} minus mean {a['input']['mean']}, std {a['input']['std']}", "",
        f"## Policy (rule `{p['rule']}`: the policy file's hard decisions, never re-derived)", "",
        "```", *p["picture"], "```", "",
        f"`#` executes, `.` skips, `|` separates segments, `*` marks blocks with a ds shortcut. Tasks share the first "
        f"{p['shared_prefix']} block(s); never executed: {', '.join(p['never_executed']) or 'none'}.",
        *[f"\n**Note:** {n}." for n in p["notes"]], "",
        "## Read", "", *[f"- {r}" for r in report["read"]], "",
        "## Ignored", "", *[f"- {i['what']}: {i['why']}" for i in report["ignored"]], "",
        f"## Cost: public inference vs deployed tree (batch 1, {c['input'][2]}x{c['input'][3]})", "",
        "| | public (T passes, every block) | deployed tree | ratio |", "|---|---|---|---|",
        *[f"| {k} FLOPs | {_g(c['flops']['public'][k])} | {_g(c['flops']['deployed'][k])} | "
          f"{c['flops']['deployed'][k] / c['flops']['public'][k]:.3f} |" for k in c["flops"]["public"]],
    ]
    lat = c["latency_ms"]
    if lat:
        lines.append(f"| latency p50 | {lat['public']:.1f} ms | {lat['deployed']:.1f} ms | {c['latency_ratio']:.3f} |")
        lines += ["", f"Latency: median of {lat['repeats']} interleaved calls on {lat['threads']} CPU thread(s) of the "
                  "machine that imported (indicative; the ratio is what compares)."]
    else:
        lines += ["", "Latency not measured (`--latency-repeats 0`)."]
    lines += ["", "## Next", "", f"`{report['next']}`"]
    return "\n".join(lines) + "\n"
