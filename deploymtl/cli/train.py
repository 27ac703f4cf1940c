"""`deploymtl train RECIPE`."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import OutDir, Quiet, default_out


def train(
    recipe: Path = typer.Argument(..., help="YAML recipe, e.g. recipes/adashare_tiny.yaml"),
    out: Path | None = OutDir,
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Cap optimizer steps per stage."),
    resume: Path | None = typer.Option(None, "--resume", help="train_state.pt to continue from."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto (overrides recipe)."),
    quiet: bool = Quiet,
) -> None:
    """Run the family's search and pruning-aware training; write supernet.pt and train_report.json."""
    from ..config import check_device, load_recipe
    from ..errors import DeploymtlError
    from ..outdir import untouched
    from ..train.trainer import Trainer, resume_state_path

    if device is not None:
        try:
            check_device(device)
        except ValueError as exc:
            raise DeploymtlError(f"--device: {exc}") from None
    overrides = {"train.device": device} if device else {}
    rec = load_recipe(recipe, overrides)
    out_dir = out or default_out("train", rec.name)
    state = resume_state_path(out_dir)
    trainer = Trainer(rec, out_dir, max_steps=max_steps, resume=resume, progress=not quiet)
    main = trainer.dist.is_main
    if main and state.is_file() and (resume is None or resume.resolve() != state.resolve()):
        typer.echo(f"note: {state} holds the state of an unfinished run; this run starts over and replaces it "
                   f"after its first epoch (continue that run instead with --resume {state})", err=True)
    try:
        with untouched(out_dir):  # the set is written at the very end
            report = trainer.run()
    except DeploymtlError:
        raise
    except BaseException:  # interrupted or crashed: say where the last completed epoch is
        if main and state.is_file():
            typer.echo(f"note: the state after the last completed epoch is in {state} (continue with --resume "
                       f"{state})", err=True)
        raise
    if report.get("rank", 0) != 0:  # under torchrun, rank 0 reports
        return
    typer.echo(f"wrote {out_dir / 'supernet.pt'} and {out_dir / 'train_report.json'}")
    for task, metrics in report["metrics"]["final"].items():
        typer.echo(f"  {task}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    if "delta_mtl" in report:
        typer.echo(f"  delta_mtl vs single-task: {report['delta_mtl']:+.2f}%")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
