"""`deploymtl prune CKPT` and `deploymtl inspect CKPT`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .common import OutDir, SurgeonOption, check_finite, default_out, parse_key_values

PRUNE_HELP = "Physically remove what the search did not keep; verify the static model; write pruned.pt and its report."

def _table(title: str, header: list[str], rows: list[list[str]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    return table


def _print_costs(console: Any, report: dict[str, Any]) -> None:
    from ..surgery.prune import cost_rows

    for key, title in (("params", "Parameters"), ("flops", "FLOPs (batch 1)")):
        console.print(_table(title, ["", "before", "masked", "after"], cost_rows(report, key)))


def _print_parity(console: Any, report: dict[str, Any]) -> None:
    from ..surgery.prune import parity_rows

    o = report["options"]
    console.print(_table(f"Parity vs supernet in deployed mode (atol {o['atol']:g}, rtol {o['rtol']:g})",
                         ["task", "max abs", "max rel", "passed"], parity_rows(report)))


def _imported_line(imported: dict[str, Any]) -> str:
    """What deploying saves against the public code's own inference, as `deploymtl import` measured it."""
    c = imported.get("cost") or {}
    line = (f"imported from {imported.get('public_code', 'public code')}: 'before' is the public code's inference; "
            f"the deployed model computes {c.get('flops_ratio', float('nan')):.3f}x the FLOPs")
    lat = c.get("latency_ms")
    if lat:
        line += (f", latency {lat['deployed']:.1f} ms vs {lat['public']:.1f} ms ({c['latency_ratio']:.3f}x, batch 1, "
                 f"{lat['threads']} threads, measured at import)")
    return line


def _value(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _stem(checkpoint: Path) -> str:
    return checkpoint.parent.name if checkpoint.stem == "supernet" and checkpoint.parent.name else checkpoint.stem


def prune(
    checkpoint: Path = typer.Argument(..., help="supernet.pt written by deploymtl train"),
    out: Path | None = OutDir,
    plan: Path | None = typer.Option(None, "--plan", help="An (edited) plan.json to apply."),
    tasks: str | None = typer.Option(None, "--tasks", help="Deploy only these tasks, e.g. seg,depth."),
    round_channels: int | None = typer.Option(None, "--round-channels", min=1,
                                              help="Round kept channel counts up to a multiple (GatedMTL)."),
    accept_approximation: bool = typer.Option(False, "--accept-approximation",
                                              help="Accept removing Aux-NAS links whose weight is not exactly 0."),
    atol: float | None = typer.Option(None, "--atol", help="Absolute parity tolerance (default: recipe prune.atol)."),
    rtol: float | None = typer.Option(None, "--rtol", help="Relative parity tolerance (default: recipe prune.rtol)."),
    option: list[str] = SurgeonOption,
) -> None:
    """`deploymtl prune` (help: `PRUNE_HELP`). One parameter per command-line option (typer makes each a flag),
    hence more than eight."""
    from rich.console import Console

    from ..errors import VerificationError
    from ..outdir import untouched
    from ..surgery.prune import prune_checkpoint

    check_finite("--atol", atol, positive=True)
    check_finite("--rtol", rtol)
    options = parse_key_values("--option", option)
    console = Console()
    out_dir = out or default_out("prune", _stem(checkpoint))
    try:
        with untouched(out_dir):  # the surgeon and its checks run before the set is written
            _, report = prune_checkpoint(checkpoint, out_dir, plan_path=plan, tasks=tasks,
                                         round_channels=round_channels, accept_approximation=accept_approximation,
                                         atol=atol, rtol=rtol, options=options)
    except VerificationError as exc:
        report = getattr(exc, "report", None)
        if report:
            _print_parity(console, report)
        raise
    for w in report["warnings"]:
        console.print(f"warning: {w}")
    _print_parity(console, report)
    _print_costs(console, report)
    r = report["removal"]
    console.print(f"proof of removal: {r['static_params']:,} params = plan's {r['expected_params']:,}; "
                  f"{r['removed_elements']:,} removed weight elements, kept outputs bit-identical when they are "
                  "perturbed")
    typer.echo(f"wrote {out_dir / 'pruned.pt'}, {out_dir / 'plan.json'} and {out_dir / 'prune_report.json'}")


def inspect(
    checkpoint: Path = typer.Argument(..., help="supernet.pt written by deploymtl train"),
    out: Path | None = OutDir,
    plan: Path | None = typer.Option(None, "--plan", help="An (edited) plan.json to show instead of the checkpoint's."),
    tasks: str | None = typer.Option(None, "--tasks", help="Deploy only these tasks, comma-separated."),
    round_channels: int | None = typer.Option(None, "--round-channels", min=1, help="Channel rounding (GatedMTL)."),
    option: list[str] = SurgeonOption,
) -> None:
    """Show the checkpoint's plan (summary, params and FLOPs per task); write plan.json and plan.png."""
    from rich.console import Console
    from rich.pretty import Pretty

    from ..outdir import untouched
    from ..surgery.inspect import inspect_checkpoint

    options = parse_key_values("--option", option)
    console = Console()
    out_dir = out or default_out("inspect", _stem(checkpoint))
    with untouched(out_dir):
        result = inspect_checkpoint(checkpoint, out_dir, plan_path=plan, tasks=tasks, round_channels=round_channels,
                                    options=options)
    console.print(f"[bold]{result['family']}[/bold] plan for {', '.join(result['tasks'])} (rule: {result['rule']}"
                  f"{', edited' if result['edited'] else ''})")
    console.print("surgeon options: " + ", ".join(f"{k}={_value(v)}" for k, v in result["options"].items()))
    console.print(Pretty(result["summary"]))
    _print_costs(console, result)
    console.print(f"static model: {result['static_params']:,} parameters (plan says {result['expected_params']:,})")
    if result.get("imported"):
        typer.echo(_imported_line(result["imported"]))
    typer.echo(f"wrote {result['plan']} and {result['picture']}")


def register(app: typer.Typer) -> None:
    app.command("prune", help=PRUNE_HELP)(prune)
    app.command("inspect")(inspect)
