"""`deploymtl run RECIPE`: train -> prune -> export -> verify -> profile, skipping stages that are up to date.

Each stage writes `stage.json` into its folder: a fingerprint of its inputs (the recipe section it uses and the sha256
of the artifact it consumes) and the sha256 of what it produced. A stage whose fingerprint and outputs still match is
skipped; anything else re-runs it and every stage after it. A failing stage raises its one-line error with its exit
code; the artifacts of the stages before it stay on disk.

Each stage folder is an output set (`deploymtl.outdir`): the stage's command replaces it as a whole, then the
stamp is added by a second swap. Between the two the folder holds the new outputs beside the previous stamp, which
names the previous outputs' sha256 and so marks the stage as out of date, never as done.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Recipe
from .errors import DeploymtlError, VerificationError
from .io import ensure_dir, read_json, sha256_file, sha256_json, write_json
from .outdir import check_output_dir, output_set

STAGES = ("train", "prune", "export", "profile")


@dataclass
class StageResult:
    name: str
    skipped: bool
    seconds: float
    outputs: dict[str, Path]
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineResult:
    recipe: Recipe
    out_dir: Path
    stages: list[StageResult]

    def stage(self, name: str) -> StageResult | None:
        return next((s for s in self.stages if s.name == name), None)


def _rel(path: Path, root: Path) -> str:
    return os.path.relpath(Path(path).resolve(), root.resolve())


def _fingerprint(**parts: Any) -> str:
    return sha256_json(parts)


def _up_to_date(stamp_path: Path, fingerprint: str, root: Path) -> bool:
    if not stamp_path.is_file():
        return False
    try:
        stamp = read_json(stamp_path, "stage stamp")
    except DeploymtlError:
        return False
    if stamp.get("fingerprint") != fingerprint:
        return False
    for path, digest in stamp.get("outputs", {}).items():
        p = root / path
        if not p.is_file() or sha256_file(p) != digest:
            return False
    return True


def _run_stage(name: str, root: Path, folder: Path, fingerprint: str,
               fn: Callable[[], tuple[dict[str, Path], dict]], force: bool, log: Callable[[str], None]) -> StageResult:
    """Run `fn` unless its stamp matches; stamps name outputs relative to the run's root so a run folder can move."""
    stamp = folder / "stage.json"
    if not force and _up_to_date(stamp, fingerprint, root):
        data = read_json(stamp, "stage stamp")
        log(f"[{name}] up to date, skipped")
        return StageResult(name, True, 0.0, {k: root / v for k, v in data.get("named_outputs", {}).items()},
                           data.get("summary", {}))
    log(f"[{name}] running")
    t0 = time.perf_counter()
    outputs, summary = fn()
    seconds = time.perf_counter() - t0
    with output_set(folder, owned=(stamp.name,)) as stage:
        write_json(stage / stamp.name, {"stage": name, "fingerprint": fingerprint, "seconds": round(seconds, 2),
                                        "outputs": {_rel(p, root): sha256_file(p) for p in outputs.values()},
                                        "named_outputs": {k: _rel(p, root) for k, p in outputs.items()},
                                        "summary": summary})
    log(f"[{name}] done in {seconds:.1f} s")
    return StageResult(name, False, seconds, outputs, summary)


def run_pipeline(recipe: Recipe, out_dir: str | Path, *, max_steps: int | None = None, force: bool = False,
                 stages: tuple[str, ...] = STAGES, progress: bool = True,
                 log: Callable[[str], None] = print) -> PipelineResult:
    """Run the recipe's pipeline into `out_dir` (train/, prune/, export/<precision>/, profile/)."""
    out = ensure_dir(check_output_dir(out_dir))  # a folder of stage folders, itself never swapped
    results: list[StageResult] = []
    rec = recipe.resolved()
    forced = force

    # -- train ------------------------------------------------------------------------------------
    train_dir = out / "train"

    def do_train() -> tuple[dict[str, Path], dict]:
        from .train.trainer import Trainer

        report = Trainer(recipe, train_dir, max_steps=max_steps, progress=progress).run()
        return ({"supernet": train_dir / "supernet.pt", "report": train_dir / "train_report.json"},
                {"metrics": report["metrics"]["final"], "decisions": report["decisions_summary"],
                 "delta_mtl": report.get("delta_mtl")})

    fp = _fingerprint(stage="train", recipe={k: rec[k] for k in ("family", "seed", "tasks", "data", "model", "search",
                                                                  "train")}, max_steps=max_steps)
    res = _run_stage("train", out, train_dir, fp, do_train, forced, log)
    results.append(res)
    forced = forced or not res.skipped
    supernet = res.outputs["supernet"]
    if "prune" not in stages:
        return PipelineResult(recipe, out, results)

    # -- prune ------------------------------------------------------------------------------------
    prune_dir = out / "prune"

    def do_prune() -> tuple[dict[str, Path], dict]:
        from .surgery.prune import prune_checkpoint

        p = recipe.prune
        _, report = prune_checkpoint(supernet, prune_dir, tasks=p.tasks, round_channels=p.round_channels,
                                     accept_approximation=p.accept_approximation, atol=p.atol, rtol=p.rtol,
                                     verify_samples=p.verify_samples)
        return ({"pruned": prune_dir / "pruned.pt", "plan": prune_dir / "plan.json",
                 "report": prune_dir / "prune_report.json"}, {"passed": report.get("passed")})

    fp = _fingerprint(stage="prune", supernet=sha256_file(supernet), prune=rec["prune"])
    res = _run_stage("prune", out, prune_dir, fp, do_prune, forced, log)
    results.append(res)
    forced = forced or not res.skipped
    pruned = res.outputs["pruned"]
    if "export" not in stages:
        return PipelineResult(recipe, out, results)

    # -- export + verify (one folder per target and precision) -------------------------------------
    from .export.exporter import export_model

    # The masked supernet (deployed mode, removed parts still computed) is the profile's reference, so latency
    # ratios sit beside FLOPs ratios: a pruned model that is not faster shows at once.
    artifacts: list[Path] = [supernet, pruned]
    for target in recipe.export.targets:
        for precision in recipe.export.precisions:
            exp_dir = out / "export" / (precision if target == "onnx" else f"{target}-{precision}")

            def do_export(target: str = target, precision: str = precision, exp_dir: Path = exp_dir
                          ) -> tuple[dict[str, Path], dict]:
                report = export_model(pruned, exp_dir, target=target, precision=precision,
                                      batch=recipe.export.batch, opset=recipe.export.opset,
                                      calibration_samples=recipe.export.calibration_samples,
                                      max_metric_drop=recipe.export.max_metric_drop)
                artifact = exp_dir / report["artifact"]
                return ({"artifact": artifact, "report": exp_dir / "export_report.json"},
                        {"passed": report.get("passed")})

            fp = _fingerprint(stage="export", pruned=sha256_file(pruned), export=rec["export"], target=target,
                              precision=precision)
            res = _run_stage(f"export:{target}:{precision}", out, exp_dir, fp, do_export, forced, log)
            results.append(res)
            artifacts.append(res.outputs["artifact"])
    if "profile" not in stages:
        return PipelineResult(recipe, out, results)

    # -- profile ----------------------------------------------------------------------------------
    prof_dir = out / "profile"

    def do_profile() -> tuple[dict[str, Path], dict]:
        from .profile.profiler import ProfileOptions, profile_artifacts
        from .profile.report import write_report

        options = ProfileOptions.parse(recipe.profile.model_dump())
        profile = profile_artifacts(artifacts, options, log=log)
        write_report(prof_dir, profile)
        return {"report": prof_dir / "profile.json"}, {"artifacts": [str(a) for a in artifacts],
                                                       "warnings": profile.get("warnings", [])}

    fp = _fingerprint(stage="profile", artifacts=[sha256_file(a) for a in artifacts], profile=rec["profile"])
    results.append(_run_stage("profile", out, prof_dir, fp, do_profile, forced or force, log))
    return PipelineResult(recipe, out, results)


def check_passed(result: PipelineResult) -> None:
    """Raise VerificationError if any stage's report says it did not pass."""
    failed = [s.name for s in result.stages if s.report.get("passed") is False]
    if failed:
        raise VerificationError(f"{result.recipe.name}: verification failed in {', '.join(failed)}",
                                hint=f"see the reports under {result.out_dir}")
