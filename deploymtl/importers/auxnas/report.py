"""`import_report.json` / `import_report.md` of `deploymtl import auxnas`: what was read and ignored, the links and
what cutting them removes (`cost.py`), and with `--keep-links` how far the cut model is from the kept one."""

from __future__ import annotations

from typing import Any

REPORT_FORMAT = "deploymtl.import_report/1"


def _g(flops: int) -> str:
    return f"{flops / 1e9:.3f} G"


def _m(params: int) -> str:
    return f"{params / 1e6:.3f} M ({params:,})"


def _cost_lines(c: dict[str, Any], primary: str) -> list[str]:
    p, f = c["params"], c["flops"]
    if "evaluation" not in f:
        return [f"- deployed: {_g(f['deployed']['total'])} FLOPs, {_m(p['deployed'])} parameters "
                f"(checkpoint: {_m(p['checkpoint'])}); a single-task network: nothing to cut"]
    return [
        "| | supernet at the public evaluation | deployed | ratio |", "|---|---|---|---|",
        f"| FLOPs (batch 1, 224x224) | {_g(f['evaluation']['total'])} | {_g(f['deployed']['total'])} | "
        f"{c['flops_ratio']:.3f} |",
        f"| FLOPs the `{primary}` output depends on | {_g(f['evaluation'][primary])} | {_g(f['deployed'][primary])} | "
        f"{f['deployed'][primary] / f['evaluation'][primary]:.3f} |",
        f"| parameters computed with | {_m(p['evaluation'])} | {_m(p['deployed'])} | {c['params_ratio']:.3f} |",
        "", f"The checkpoint holds {_m(p['checkpoint'])} parameters (both networks with timm's unused final norm and "
        "ImageNet head, the fusion convolutions, the alphas). The public evaluation computes everything above, "
        "including the auxiliary network, whose links into the primary it multiplies by 0."]


def _links_lines(report: dict[str, Any]) -> list[str]:
    s = report["links"]
    if not s:
        return ["No links: the checkpoint is a single network."]
    out = ["| direction | links | kept | sigmoid(alpha) min | max | alpha min | max |", "|---|---|---|---|---|---|---|"]
    out += [f"| {d} | {v['links']} | {v['kept']} | {v['weight_min']:.3g} | {v['weight_max']:.3g} | "
            f"{v['alpha_min']:.3g} | {v['alpha_max']:.3g} |" for d, v in s.items()]
    return out + ["", "Every link with its alpha is in plan.json (`decisions.links`)."]


def _kept_lines(k: dict[str, Any] | None) -> list[str]:
    if not k:
        return []
    r = k["primary"]
    verdict = "within" if r["passed"] else "outside"
    return ["", "## Cut model vs the supernet with its links (`--keep-links`)", "",
            f"On {k['samples']} {k['images']}, the primary output of the cut model (links at 0, the public "
            f"evaluation) against the deployed supernet (links at sigmoid(alpha)): max_abs {r['max_abs']:.3g}, "
            f"max_rel {r['max_rel']:.3g}, mean_abs {r['mean_abs']:.3g}, cosine {r['cosine']:.6f}, peak "
            f"|output| {k['peak']:.3g}: {verdict} the fp32 tolerance (atol {r['tolerance']['atol']:g}, rtol "
            f"{r['tolerance']['rtol']:g})."]


def render_markdown(report: dict[str, Any]) -> str:
    a = report["architecture"]
    lines = [
        f"# Import report: Aux-NAS ViT release -> {report['artifact']}", "",
        f"Checkpoint `{report['source']['checkpoint']['path']}` ({report['checkpoint_kind']}), config "
        f"`{a['source']}`; deployed: {report['deployed']}.", "",
        "## Architecture", "",
        f"- {a['timm_model']}: patch {a['patch']}, width {a['width']}, {a['depth']} blocks, {a['heads']} heads; "
        f"decoder width {a['resample']}, features after blocks {a['hooks']}",
        f"- primary task `{a['primary']['name']}` ({a['primary']['kind']}, {a['primary']['channels']} channels), "
        f"auxiliary `{a['auxiliary']['name']}` ({a['auxiliary']['kind']}, {a['auxiliary']['channels']} channels)",
        f"- input 224x224 RGB, pixels x 1/255, mean {a['input']['mean']}, std {a['input']['std']}", "",
        "## Read", "", *[f"- {r}" for r in report["read"]], "",
        "## Ignored", "", *[f"- {i['what']}: {i['why']}" for i in report["ignored"]], "",
        f"## Links (rule `{report['rule']}`)", "", *_links_lines(report), "",
        "## What the cut removes", "", *_cost_lines(report["cost"], a["primary"]["name"]),
        *_kept_lines(report.get("keep_links")),
        "", "## Next", "", f"`{report['next']}`",
    ]
    return "\n".join(lines) + "\n"
