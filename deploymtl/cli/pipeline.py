"""`deploymtl run RECIPE` and `deploymtl demo`."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import OutDir, Quiet, default_out


def run(
    recipe: Path = typer.Argument(..., help="YAML recipe, or a supernet.pt to start from (e.g. imported)."),
    out: Path | None = OutDir,
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Cap optimizer steps per training stage."),
    force: bool = typer.Option(False, "--force", help="Re-run every stage even if up to date."),
    quiet: bool = Quiet,
) -> None:
    """Run the whole pipeline for one recipe: train -> prune -> export -> verify -> profile (from a supernet.pt:
    prune -> export -> verify -> profile, with its embedded recipe)."""
    from ..config import load_recipe
    from ..pipeline import check_passed, run_pipeline
    from .summary import print_pipeline_summary

    supernet = recipe if recipe.suffix == ".pt" else None
    if supernet is not None:
        from ..formats.supernet import read_supernet

        rec = read_supernet(supernet)[1]
    else:
        rec = load_recipe(recipe)
    out_dir = out or default_out("run", rec.name)
    result = run_pipeline(rec, out_dir, max_steps=max_steps, force=force, progress=not quiet,
                          log=lambda m: typer.echo(m, err=True), supernet=supernet)
    print_pipeline_summary(result)
    check_passed(result)


def demo(
    out: Path = typer.Option(Path("artifacts/demo"), "-o", "--out", help="Output directory."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Cap optimizer steps (quick look)."),
    family: list[str] = typer.Option([], "--family", help="Only these families (adashare, gated, auxnas)."),
    force: bool = typer.Option(False, "--force", help="Re-run every stage even if up to date."),
    quiet: bool = Quiet,
) -> None:
    """Run the tiny recipe of every family end to end and write artifacts/demo/summary.{md,html}."""
    from ..demo import run_demo
    from ..errors import DeploymtlError

    summary = run_demo(out, max_steps=max_steps, families=family or None, force=force, progress=not quiet,
                       log=lambda m: typer.echo(m, err=True))
    typer.echo(f"wrote {out / 'summary.md'} and {out / 'summary.html'}")
    for fam in summary["families"]:
        p, f = fam["params"], fam["flops"]
        typer.echo(f"  {fam['family']:9s} params {p['before']:>9,} -> {p['after']:>9,}   "
                   f"FLOPs {f['before']:>12,} -> {f['after']:>12,} ({f['after'] / f['before']:.2f}x)")
    if summary["failed"]:
        worst = max(f["exit_code"] for f in summary["failed"])
        err = DeploymtlError(f"demo: {len(summary['failed'])} famil{'y' if len(summary['failed']) == 1 else 'ies'} "
                             f"failed: {', '.join(f['recipe'] for f in summary['failed'])}", hint="see summary.md")
        err.exit_code = worst
        raise err


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)
