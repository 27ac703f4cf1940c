"""`deploymtl prune`: supernet.pt -> plan -> static model -> verified pruned.pt and its report.

Order of work: the output directory, then everything that can be wrong with the input (checkpoint, plan, task
subset, options, data) is checked before the first file is written, so bad input writes nothing (exit 2). A
verification failure (parity, proof of removal, an unaccepted Aux-NAS approximation) writes plan.json and the
report, so the per-task table can be read, but no pruned.pt (a stale one is dropped), then raises
VerificationError (exit 1).

Outputs in `out_dir`, written as one set (`deploymtl.outdir.output_set`: the directory holds the previous set or
this one, whenever the command is killed): plan.json (the resolved plan), plan.png (its picture), pruned.pt
(`formats/static.py`), prune_report.json and prune_report.md.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from .. import __version__
from ..config import Recipe, parse_recipe
from ..data import build_datasets
from ..errors import DeploymtlError, VerificationError
from ..families import family_spec
from ..flops import measure_stages, ratio
from ..formats.plan import Plan, PlanSource, load_plan, parse_plan, save_plan
from ..formats.static import StaticArtifact, save_static
from ..io import atomic_write_text, sha256_file, write_json
from ..ir import StaticModel
from ..models.base import Supernet
from ..models.checkpoint import load_supernet
from ..outdir import check_output_dir, output_set
from .base import Cut
from .builder import GraphBuilder
from .plan import check_plan, make_plan
from .verify import ParityResult, RemovalProof, check_parity, proof_tensors, prove_removal, removed_prefixes

REPORT_FORMAT = "deploymtl.prune_report/1"
PRUNE_FILES = ("plan.json", "plan.png", "pruned.pt", "prune_report.json", "prune_report.md")
PROOF_SAMPLES = 4  # images for the gradient and perturbation checks (the parity uses verify_samples)


@dataclass
class Surgery:
    """A loaded supernet with its plan prepared (`cut`) and applied: what prune and inspect work on."""

    model: Supernet
    recipe: Recipe
    plan: Plan
    cut: Cut
    checkpoint: Path
    edited: bool
    warnings: list[str] = field(default_factory=list)
    imported: dict[str, Any] | None = None  # supernet.pt's `imported` section: a model from a method's public code

    @property
    def family(self) -> str:
        return self.plan.family

    @property
    def tasks(self) -> list[str]:
        return list(self.plan.tasks)

    @property
    def options(self) -> dict[str, Any]:
        """Every surgeon option of the plan, resolved (the family's defaults filled in)."""
        return self.plan.options.model_dump(mode="json")

    def builder(self) -> GraphBuilder:
        return self.cut.build()

    def build_static(self) -> StaticModel:
        return self.builder().build()

    def expected_params(self) -> int:
        return int(self.cut.expected_params())

    def input_spec(self) -> dict[str, Any]:
        d = self.recipe.data
        channels = int(getattr(self.recipe.model_cfg(), "in_channels", 3))
        return {"channels": channels, "height": d.height, "width": d.width, "mean": list(d.mean), "std": list(d.std),
                "channel_order": d.channel_order, "scale": d.scale, "dtype": "float32"}


def _parse_tasks(tasks: list[str] | str | None) -> list[str] | None:
    if tasks is None:
        return None
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = [t.strip() for t in items if t.strip()]
    if not names:
        raise DeploymtlError(f"--tasks {tasks!r} names no task",
                             hint="expected comma-separated task names, e.g. seg,depth")
    return names


def family_options(family: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check `--option KEY=VALUE` overrides against the family's options model; values as given (strings from the
    CLI are converted by the model when the plan is made). One-line error naming the option and the choices."""
    model = family_spec(family).surgeon.options_model
    names = [n for n in model.model_fields if n != "round_channels"]
    for key, value in (options or {}).items():
        if key == "round_channels":
            raise DeploymtlError("--option round_channels: set it with --round-channels",
                                 hint="--option takes the family's other options")
        if key not in names:
            raise DeploymtlError(f"--option {key}: not an option of family {family}",
                                 hint=f"expected one of {', '.join(names)}" if names else f"{family} has none")
        try:
            model.model_validate({key: value})
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise DeploymtlError(f"--option {key}={value}: {msg}", hint=model.model_fields[key].description
                                 ) from None
    return dict(options or {})


def prepare(checkpoint: str | Path, *, plan_path: str | Path | None = None, tasks: list[str] | str | None = None,
            round_channels: int | None = None, options: Mapping[str, Any] | None = None) -> Surgery:
    """Load the checkpoint, make (or read) the plan, resolve the task subset and options, prepare the plan against
    the supernet (validated once, by the family's surgeon) and apply it. Options resolve as: argument (`options`:
    the family's options besides round_channels) > plan file > recipe's `prune:` section > the family's default."""
    ckpt_path = Path(checkpoint)
    model, ckpt = load_supernet(ckpt_path)
    recipe = parse_recipe(ckpt["recipe"], f"{ckpt_path} (embedded recipe)")
    family = str(ckpt["family"])
    source = PlanSource(checkpoint=str(ckpt_path), sha256=sha256_file(ckpt_path))
    own = model.decisions()
    subset = _parse_tasks(tasks)
    if round_channels is not None and (isinstance(round_channels, bool) or int(round_channels) < 1):
        raise DeploymtlError(f"--round-channels {round_channels}", hint="expected an integer >= 1")
    overrides = family_options(family, options)
    warnings: list[str] = []
    if plan_path is not None:
        plan = load_plan(plan_path)
        where: str | Path = plan_path
        if plan.source is not None and plan.source.sha256 != source.sha256:
            warnings.append(f"plan {plan_path} was made from another checkpoint ({plan.source.checkpoint}); "
                            "its decisions are applied to this one")
        data = plan.to_dict() | {"source": source.model_dump()}  # re-validated with the overrides (unique tasks)
        data["tasks"] = subset or data["tasks"]
        data["options"] |= overrides | ({"round_channels": int(round_channels)} if round_channels is not None else {})
        plan = parse_plan(data, plan_path)
    else:
        where = f"plan of {ckpt_path}"
        rc = int(round_channels) if round_channels is not None else recipe.prune.round_channels
        plan = make_plan(model, family, tasks=subset or recipe.prune.tasks, round_channels=rc,
                         options=recipe.prune.options | overrides, source=source)
    cut = check_plan(plan, model, family, where)
    cut.apply()
    return Surgery(model=model, recipe=recipe, plan=plan, cut=cut, checkpoint=ckpt_path,
                   edited=plan.decisions != own, warnings=warnings, imported=ckpt.get("imported"))


def verification_images(recipe: Recipe, n: int) -> torch.Tensor:
    """The first `n` images of the recipe's validation split (N,C,H,W), without materialising the training split."""
    d = recipe.data
    cap = min(d.val_size, n) if d.val_size else n
    # The training split is not needed; 1 is its smallest size (0 means "all" for NYUv2).
    cfg = d.model_copy(update={"train_size": 1, "val_size": cap})
    val = build_datasets(cfg, recipe.tasks, where=f"recipe {recipe.name}")["val"]
    if len(val) == 0:
        raise DeploymtlError(f"recipe {recipe.name}: the validation split is empty; nothing to verify against",
                             hint="set data.val_size >= 1 or add samples under data.root/val")
    return val.images[:n]


def _failure_line(parity: ParityResult, proof: RemovalProof, approx: dict[str, Any] | None, report_md: Path) -> str:
    parts = []
    for name in parity.failed:
        t = parity.tasks[name]
        parts.append(f"{name} max_abs {t.max_abs:.3g} max_rel {t.max_rel:.3g}")
    if parts:
        parts = [f"parity failed (atol {parity.atol:g}, rtol {parity.rtol:g}): " + "; ".join(parts)]
    if not proof:
        why = []
        if not proof.params_match:
            why.append(f"static model has {proof.static_params:,} parameters, the plan says {proof.expected_params:,}")
        if proof.grad_outside_kept:
            why.append(f"{proof.grad_outside_kept} removed weight elements influence kept outputs "
                       f"({', '.join(proof.grad_outside_examples[:2])})")
        if proof.changed_outputs:
            why.append(f"outputs {', '.join(proof.changed_outputs)} change when removed parts are perturbed")
        parts.append("proof of removal failed: " + "; ".join(why))
    if approx and not approx["accepted"]:
        links = ", ".join(f"{k}={v:.3g}" for k, v in approx["links"].items())
        worst = max((e["max_abs"] for e in approx["error"].values()), default=0.0)
        parts.append(f"removing links with non-zero weight ({links}) is an approximation, max abs error {worst:.3g}; "
                     "rerun with --accept-approximation to accept it")
    return "; ".join(parts) + f"; see {report_md}"


@dataclass(frozen=True)
class _Tolerances:
    """How the static model is verified: the recipe's `prune:` section, overridden by the arguments."""

    atol: float
    rtol: float
    samples: int
    accept_approximation: bool


def _tolerances(recipe: Recipe, atol: float | None, rtol: float | None, samples: int | None, accept: bool
                ) -> _Tolerances:
    cfg = recipe.prune
    tol = _Tolerances(atol=cfg.atol if atol is None else float(atol), rtol=cfg.rtol if rtol is None else float(rtol),
                      samples=cfg.verify_samples if samples is None else int(samples),
                      accept_approximation=bool(accept or cfg.accept_approximation))
    if tol.atol <= 0 or tol.rtol < 0 or tol.samples < 1:
        raise DeploymtlError(f"tolerances atol={tol.atol:g} rtol={tol.rtol:g}, verify samples {tol.samples}",
                             hint="expected atol > 0, rtol >= 0, verify samples >= 1")
    return tol


@dataclass
class _Checks:
    """What was verified of one static model: parity, the Aux-NAS approximation, the proof of removal, costs."""

    parity: ParityResult
    approx: dict[str, Any] | None
    proof: RemovalProof
    costs: dict[str, Any]
    prefixes: list[str]

    @property
    def passed(self) -> bool:
        return bool(self.parity) and bool(self.proof) and (self.approx is None or self.approx["accepted"])


def _verify(s: Surgery, static: StaticModel, images: torch.Tensor, tol: _Tolerances) -> _Checks:
    parity = check_parity(static.infer, s.model, images, s.tasks, atol=tol.atol, rtol=tol.rtol)
    approx = None
    links = s.cut.approximation_links()
    if links:
        err = check_parity(static.infer, s.cut.soft_reference, images, s.tasks, atol=tol.atol, rtol=tol.rtol)
        approx = {"links": links, "error": err.to_dict(), "within_tolerance": bool(err),
                  "accepted": tol.accept_approximation}
    static_params = sum(p.numel() for p in static.parameters())
    proof = prove_removal(s.model, s.builder, images[:PROOF_SAMPLES], s.tasks, static_params=static_params,
                          expected_params=s.expected_params())
    costs = measure_stages(s.model, static, s.tasks, images[:1])
    prefixes = removed_prefixes(proof.removed_tensors, list(proof_tensors(s.model)))
    return _Checks(parity=parity, approx=approx, proof=proof, costs=costs, prefixes=prefixes)


def _report(s: Surgery, c: _Checks, art: StaticArtifact, tol: _Tolerances, out: Path,
            plan_path: str | Path | None) -> dict[str, Any]:
    costs = c.costs
    return {
        "format": REPORT_FORMAT, "family": s.family, "tasks": s.tasks, "passed": c.passed,
        "source": s.plan.source.model_dump() if s.plan.source else None,
        "plan": {"path": str(out / "plan.json"), "hash": art.plan_hash, "rule": s.plan.rule, "edited": s.edited,
                 "from": str(plan_path) if plan_path else None},
        "options": {"tasks": s.tasks, "round_channels": s.plan.options.round_channels,
                    "accept_approximation": tol.accept_approximation, "atol": tol.atol, "rtol": tol.rtol,
                    "verify_samples": tol.samples,
                    "family_options": {k: v for k, v in s.options.items() if k != "round_channels"}},
        "input": art.input,
        "summary": s.cut.summary(),
        "params": costs["params"], "flops": costs["flops"],
        "ratios": {k: {"after/masked": ratio(costs[k]["after"]["total"], costs[k]["masked"]["total"]),
                       "after/before": ratio(costs[k]["after"]["total"], costs[k]["before"]["total"])}
                   for k in ("params", "flops")},
        "parity": c.parity.to_dict(), "parity_samples": c.parity.samples,
        "removal": c.proof.to_dict() | {"removed_prefixes": c.prefixes},
        "approximation": c.approx, "warnings": s.warnings,
        "artifact": str(out / "pruned.pt") if c.passed else None,
        "deploymtl_version": __version__, "seconds": None,
    }


def prune_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, plan_path: str | Path | None = None,
                     tasks: list[str] | str | None = None, round_channels: int | None = None,
                     accept_approximation: bool = False, atol: float | None = None, rtol: float | None = None,
                     verify_samples: int | None = None, options: Mapping[str, Any] | None = None
                     ) -> tuple[StaticArtifact, dict[str, Any]]:
    """Prune a supernet checkpoint into `out_dir`; returns (static artifact, report). See the module docstring.
    `options` overrides the family's surgeon options (`--option`). The keyword parameters are `deploymtl prune`'s
    options, one each (None: the recipe's `prune:` section decides), hence more than eight."""
    t0 = time.perf_counter()
    check_output_dir(out_dir)
    out = Path(out_dir)
    s = prepare(checkpoint, plan_path=plan_path, tasks=tasks, round_channels=round_channels, options=options)
    tol = _tolerances(s.recipe, atol, rtol, verify_samples, accept_approximation)
    images = verification_images(s.recipe, tol.samples)
    static = s.build_static()
    checks = _verify(s, static, images, tol)
    art = StaticArtifact(model=static, family=s.family, tasks=[t for n in s.tasks for t in s.recipe.tasks
                                                                 if t.name == n],
                         plan=s.plan.to_dict(), input=s.input_spec(), recipe=s.recipe.resolved(),
                         extra={"removed_prefixes": checks.prefixes, "expected_params": checks.proof.expected_params})
    report = _report(s, checks, art, tol, out, plan_path)
    from .inspect import draw_plan  # matplotlib only once the input is known to be good

    with output_set(out, owned=PRUNE_FILES) as stage:  # a failing run has no pruned.pt: an old one is dropped
        save_plan(stage / "plan.json", s.plan)
        draw_plan(s, checks.costs, stage / "plan.png")
        if checks.passed:
            save_static(stage / "pruned.pt", art)
        report["seconds"] = round(time.perf_counter() - t0, 3)
        write_json(stage / "prune_report.json", report)
        atomic_write_text(stage / "prune_report.md", render_markdown(report))
    if not checks.passed:
        err = VerificationError(_failure_line(checks.parity, checks.proof, checks.approx, out / "prune_report.md"))
        err.report = report  # type: ignore[attr-defined]  # the CLI prints the per-task table from it
        raise err
    return art, report


# -- rendering ----------------------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def cost_rows(report: dict[str, Any], key: str) -> list[list[str]]:
    """Rows (name, before, masked, after) of the params or flops table."""
    data = report[key]
    names = [*report["tasks"], "total"]
    return [[n, *(_fmt(data[stage].get(n, "")) for stage in ("before", "masked", "after"))] for n in names]


def parity_rows(report: dict[str, Any]) -> list[list[str]]:
    return [[t, _fmt(p["max_abs"]), _fmt(p["max_rel"]), "yes" if p["passed"] else "NO"]
            for t, p in report["parity"].items()]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def render_markdown(report: dict[str, Any]) -> str:
    o, r = report["options"], report["removal"]
    extra = "".join(f", {k} {v}" for k, v in o["family_options"].items())
    lines = [
        f"# Prune report: {report['family']} -> {', '.join(report['tasks'])}",
        "", f"**{'PASSED' if report['passed'] else 'FAILED'}**. Source: `{(report['source'] or {}).get('checkpoint')}`;"
        f" plan rule `{report['plan']['rule']}`{' (edited)' if report['plan']['edited'] else ''}; round_channels "
        f"{o['round_channels']}{extra}; atol {o['atol']:g}, rtol {o['rtol']:g} on {report['parity_samples']} "
        "validation images.", "",
        "## Parity: static model vs supernet in deployed mode", "",
        _md_table(["task", "max abs", "max rel", "passed"], parity_rows(report)), "",
        "## Parameters", "", _md_table(["", "before", "masked", "after"], cost_rows(report, "params")), "",
        "## FLOPs (torch.utils.flop_counter, batch 1)", "",
        _md_table(["", "before", "masked", "after"], cost_rows(report, "flops")), "",
        "## Proof of removal", "",
        f"- static parameters {r['static_params']:,}, expected from the plan {r['expected_params']:,}: "
        f"{'match' if r['params_match'] else 'MISMATCH'}",
        f"- supernet weight elements {r['supernet_elements']:,}: kept {r['kept_elements']:,}, removed "
        f"{r['removed_elements']:,} ({len(r['removed_tensors'])} tensors entirely; tracking: {r['tracking']})",
        f"- elements with non-zero gradient of the kept outputs outside the kept set: {r['grad_outside_kept']}"
        + (f" ({', '.join(r['grad_outside_examples'])})" if r["grad_outside_examples"] else ""),
        f"- kept outputs with every removed element perturbed: "
        f"{'bit-identical' if r['bit_identical'] else 'CHANGED ' + ', '.join(r['changed_outputs'])}"
        f" (max change {r['max_output_change']:.3g})",
        f"- removed module prefixes: {', '.join(r['removed_prefixes']) or 'none'}",
    ]
    approx = report.get("approximation")
    if approx:
        lines += ["", "## Approximation: removed links with non-zero weight", "",
                  ", ".join(f"`{k}` = {v:.3g}" for k, v in approx["links"].items()), "",
                  _md_table(["task", "max abs", "max rel", "within tolerance"],
                            [[t, _fmt(e["max_abs"]), _fmt(e["max_rel"]), "yes" if e["passed"] else "no"]
                             for t, e in approx["error"].items()]), "",
                  f"Accepted: {'yes' if approx['accepted'] else 'no (rerun with --accept-approximation)'}."]
    if report.get("warnings"):
        lines += ["", "## Warnings", "", *[f"- {w}" for w in report["warnings"]]]
    return "\n".join(lines) + "\n"
