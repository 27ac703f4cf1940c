"""`deploymtl import adashare CKPT --policy POLICY (--config YAML | --backbone B --tasks T) -o DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .common import OutDir, default_out

HELP = ("Import a checkpoint of the public AdaShare code (github sunxm2357/AdaShare) and its policy file as a "
        "deploymtl supernet.pt (decisions = the policy file), with import_report.json/.md.")


def _print(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    a, p, c = report["architecture"], report["policy"], report["cost"]
    tasks = ", ".join(f"{t['name']} ({t['kind']}, {t['channels']})" for t in a["tasks"])
    typer.echo(f"AdaShare {a['backbone']} {a['layers']}, width {a['width']}, ASPP hidden {a['head_hidden']}; "
               f"tasks {tasks}; input {a['input']['height']}x{a['input']['width']} {a['input']['channel_order']}")
    typer.echo(f"policy (rule {p['rule']}; # run, . skip, * has ds):")
    for line in p["picture"]:
        typer.echo("  " + line)
    for note in p["notes"]:
        typer.echo(f"note: {note}")
    table = Table(title=f"Public inference vs deployed tree (batch 1, {c['input'][2]}x{c['input'][3]})",
                  title_justify="left")
    for i, h in enumerate(["", "public", "deployed", "ratio"]):
        table.add_column(h, justify="left" if i == 0 else "right")
    pub, dep = c["flops"]["public"]["total"], c["flops"]["deployed"]["total"]
    table.add_row("GFLOPs", f"{pub / 1e9:.3f}", f"{dep / 1e9:.3f}", f"{c['flops_ratio']:.3f}")
    lat = c["latency_ms"]
    if lat:
        table.add_row(f"latency p50 ({lat['threads']} threads)", f"{lat['public']:.1f} ms", f"{lat['deployed']:.1f} ms",
                      f"{c['latency_ratio']:.3f}")
    console.print(table)


def adashare(
    checkpoint: Path = typer.Argument(..., help="The public *_model.pth.tar (zip or legacy torch format)."),
    policy: Path = typer.Option(..., "--policy", help="The public policy*.pickle (read by a restricted unpickler)."),
    config: Path | None = typer.Option(None, "--config", help="The public YAML (e.g. nyu_v2_2task.yml)."),
    backbone: str | None = typer.Option(None, "--backbone", help="resnet18 or resnet34 (instead of --config)."),
    tasks: str | None = typer.Option(None, "--tasks", help="Public tasks in order, NAME:CLASSES, e.g. seg:40,sn:3."),
    skip_layer: int = typer.Option(0, "--skip-layer", min=0, help="The config's skip_layer (with --backbone)."),
    input_size: str | None = typer.Option(None, "--input-size",
                                          help="HEIGHTxWIDTH of the deployed input (default: the dataset's test "
                                               "size, NYU_v2 480x640)."),
    bake_preprocessing: bool = typer.Option(False, "--bake-preprocessing",
                                            help="Exports of this model take raw uint8 BGR pixels (N, 3, H, W) and "
                                                 "subtract the Caffe means in the graph."),
    calibration_samples: int = typer.Option(64, "--calibration-samples", min=1,
                                            help="Synthetic images for int8 calibration (recipe export section)."),
    latency_repeats: int = typer.Option(5, "--latency-repeats", min=0,
                                        help="Interleaved timed calls of public vs deployed (0: FLOPs only)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch threads for the latency figures."),
    out: Path | None = OutDir,
) -> None:
    """`deploymtl import adashare` (help: `HELP`). One parameter per flag: typer builds the command from this
    signature."""
    import torch

    from ..importers.adashare import ImportOptions, import_adashare, parse_size
    from ..outdir import untouched

    if threads:
        torch.set_num_threads(threads)
    options = ImportOptions(config=config, backbone=backbone, tasks=tasks, skip_layer=skip_layer,
                            input_size=parse_size(input_size) if input_size else None,
                            bake_preprocessing=bake_preprocessing, calibration_samples=calibration_samples,
                            latency_repeats=latency_repeats)
    stem = checkpoint.name.removesuffix(".tar").removesuffix(".pth")
    out_dir = out or default_out("import", stem)
    with untouched(out_dir):
        report = import_adashare(checkpoint, policy, out_dir, options)
    _print(report)
    typer.echo(f"wrote {out_dir / 'supernet.pt'}, {out_dir / 'import_report.json'} and "
               f"{out_dir / 'import_report.md'}")
    typer.echo(f"next: {report['next']}")


def register(import_app: typer.Typer) -> None:
    import_app.command("adashare", help=HELP)(adashare)
