"""`deploymtl run RECIPE`: train -> prune -> export -> verify -> profile, skipping stages that are up to date.
`deploymtl run supernet.pt` starts from a supernet that exists already (an imported public checkpoint, or a trained
one): no train stage, the checkpoint's embedded recipe drives the others.

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
                 stages: tuple[str, ...] = STAGES, progress: bool = True, log: Callable[[str], None] = print,
                 supernet: Path | None = None) -> PipelineResult:
    """Run the recipe's pipeline into `out_dir` (train/, prune/, export/<precision>/, profile/); given `supernet`
    (whose embedded recipe `recipe` is), there is no train stage. The keyword parameters are the command's options,
    hence more than eight."""
    out = ensure_dir(check_output_dir(out_dir))  # a folder of stage folders, itself never swapped
    run = _Run(recipe, out, recipe.resolved(), force, log)
    if supernet is None:
        supernet = run.stage(_train(run, max_steps, progress))["supernet"]
    if "prune" not in stages:
        return run.result()
    pruned = run.stage(_prune(run, supernet))["pruned"]
    if "export" not in stages:
        return run.result()
    # The masked supernet (deployed mode, removed parts still computed) is the profile's reference, so latency
    # ratios sit beside FLOPs ratios: a pruned model that is not faster shows at once.
    artifacts: list[Path] = [supernet, pruned]
    for target in recipe.export.targets:
        for precision in recipe.export.precisions:
            artifacts.append(run.stage(_export(run, pruned, target, precision), chained=False)["artifact"])
    if "profile" not in stages:
        return run.result()
    run.stage(_profile(run, artifacts))
    return run.result()


# A stage to run: (name, folder, fingerprint of its inputs, the function producing its named outputs and summary).
_Stage = tuple[str, Path, str, Callable[[], tuple[dict[str, Path], dict]]]


@dataclass
class _Run:
    """A pipeline run: stages in order; once one ran, every later one runs too (its input changed)."""

    recipe: Recipe
    out: Path
    resolved: dict[str, Any]
    forced: bool
    log: Callable[[str], None]
    results: list[StageResult] = field(default_factory=list)

    def stage(self, spec: _Stage, chained: bool = True) -> dict[str, Path]:
        """Run (or skip) one stage; its named outputs. `chained=False`: a re-run does not force the next stages
        (the exports are siblings; the profile's fingerprint holds their hashes)."""
        name, folder, fingerprint, fn = spec
        res = _run_stage(name, self.out, folder, fingerprint, fn, self.forced, self.log)
        self.results.append(res)
        if chained:
            self.forced = self.forced or not res.skipped
        return res.outputs

    def result(self) -> PipelineResult:
        return PipelineResult(self.recipe, self.out, self.results)


def _train(run: _Run, max_steps: int | None, progress: bool) -> _Stage:
    folder = run.out / "train"

    def do() -> tuple[dict[str, Path], dict]:
        from .train.trainer import Trainer

        report = Trainer(run.recipe, folder, max_steps=max_steps, progress=progress).run()
        return ({"supernet": folder / "supernet.pt", "report": folder / "train_report.json"},
                {"metrics": report["metrics"]["final"], "decisions": report["decisions_summary"],
                 "delta_mtl": report.get("delta_mtl")})

    keys = ("family", "seed", "tasks", "data", "model", "search", "train")
    return "train", folder, _fingerprint(stage="train", recipe={k: run.resolved[k] for k in keys},
                                         max_steps=max_steps), do


def _prune(run: _Run, supernet: Path) -> _Stage:
    folder = run.out / "prune"

    def do() -> tuple[dict[str, Path], dict]:
        from .surgery.prune import prune_checkpoint

        p = run.recipe.prune
        _, report = prune_checkpoint(supernet, folder, tasks=p.tasks, round_channels=p.round_channels,
                                     accept_approximation=p.accept_approximation, atol=p.atol, rtol=p.rtol,
                                     verify_samples=p.verify_samples)
        return ({"pruned": folder / "pruned.pt", "plan": folder / "plan.json",
                 "report": folder / "prune_report.json"}, {"passed": report.get("passed")})

    return "prune", folder, _fingerprint(stage="prune", supernet=sha256_file(supernet), prune=run.resolved["prune"]), do


def _export(run: _Run, pruned: Path, target: str, precision: str) -> _Stage:
    """One export folder per target and precision; the options are the recipe's `export:` section."""
    folder = run.out / "export" / (precision if target == "onnx" else f"{target}-{precision}")

    def do() -> tuple[dict[str, Path], dict]:
        from .export.exporter import export_model
        from .export.options import ExportOptions

        options = ExportOptions.from_recipe(run.recipe.export, target=target, precision=precision)
        report = export_model(pruned, folder, options)
        return ({"artifact": folder / report.artifact, "report": folder / "export_report.json"},
                {"passed": report.passed})

    fingerprint = _fingerprint(stage="export", pruned=sha256_file(pruned), export=run.resolved["export"],
                               target=target, precision=precision)
    return f"export:{target}:{precision}", folder, fingerprint, do


def _profile(run: _Run, artifacts: list[Path]) -> _Stage:
    folder = run.out / "profile"

    def do() -> tuple[dict[str, Path], dict]:
        from .profile.profiler import ProfileOptions, profile_artifacts
        from .profile.report import write_report

        options = ProfileOptions.parse(run.recipe.profile.model_dump())
        profile = profile_artifacts(artifacts, options, log=run.log)
        write_report(folder, profile)
        return {"report": folder / "profile.json"}, {"artifacts": [str(a) for a in artifacts],
                                                     "warnings": profile.get("warnings", [])}

    return "profile", folder, _fingerprint(stage="profile", artifacts=[sha256_file(a) for a in artifacts],
                                           profile=run.resolved["profile"]), do


def check_passed(result: PipelineResult) -> None:
    """Raise VerificationError if any stage's report says it did not pass."""
    failed = [s.name for s in result.stages if s.report.get("passed") is False]
    if failed:
        raise VerificationError(f"{result.recipe.name}: verification failed in {', '.join(failed)}",
                                hint=f"see the reports under {result.out_dir}")
