"""`deploymtl import auxnas CKPT --config CONFIG.json -o DIR [--keep-links]`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .common import OutDir, default_out

HELP = ("Import a supernet checkpoint of the public Aux-NAS release (github ethanygao/Aux-NAS, ViT) and its JSON "
        "config as a deploymtl pruned.pt of the primary network alone (every aux->primary link cut, as the public "
        "evaluation does), with plan.json and import_report.json/.md.")


def _print(report: dict[str, Any]) -> None:
    a, c = report["architecture"], report["cost"]
    typer.echo(f"Aux-NAS {a['timm_model']} (width {a['width']}, {a['depth']} blocks, {a['heads']} heads, decoder "
               f"{a['resample']}); primary {a['primary']['name']}, auxiliary {a['auxiliary']['name']}; "
               f"{report['checkpoint_kind']} checkpoint")
    typer.echo(f"deployed: {report['deployed']}")
    for line in report["read"]:
        if line.startswith("note: "):
            typer.echo(line)
    f, p = c["flops"], c["params"]
    if "evaluation" in f:
        typer.echo(f"public evaluation: {f['evaluation']['total'] / 1e9:.3f} GFLOPs, {p['evaluation']:,} params; "
                   f"deployed: {f['deployed']['total'] / 1e9:.3f} GFLOPs, {p['deployed']:,} params "
                   f"(FLOPs ratio {c['flops_ratio']:.3f}; checkpoint {p['checkpoint']:,} params)")
    else:
        typer.echo(f"deployed: {f['deployed']['total'] / 1e9:.3f} GFLOPs, {p['deployed']:,} params")
    k = report.get("keep_links")
    if k:
        r = k["primary"]
        typer.echo(f"cut vs kept links ({k['samples']} images): max_abs {r['max_abs']:.3g}, max_rel "
                   f"{r['max_rel']:.3g}, peak {k['peak']:.3g}")


def auxnas(
    checkpoint: Path = typer.Argument(..., help="The release's checkpoint: torch.save({'model_state_dict': ...})."),
    config: Path = typer.Option(..., "--config", help="The release's JSON config "
                                                      "(configs/config_aux_nas_prim_normal.json)."),
    keep_links: bool = typer.Option(False, "--keep-links",
                                    help="Deploy the supernet (both networks, every link at sigmoid(alpha)) and "
                                         "report how far the cut model is from it."),
    bake_preprocessing: bool = typer.Option(False, "--bake-preprocessing",
                                            help="Exports of this model take raw uint8 RGB pixels (N, 3, 224, 224) "
                                                 "and normalise them in the graph."),
    calibration_samples: int = typer.Option(64, "--calibration-samples", min=1,
                                            help="Synthetic images for int8 calibration (recipe export section)."),
    compare_samples: int = typer.Option(4, "--compare-samples", min=1,
                                        help="Images the cut model is compared on against the kept links."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch threads."),
    out: Path | None = OutDir,
) -> None:
    """`deploymtl import auxnas` (help: `HELP`). One parameter per flag: typer builds the command from this
    signature."""
    import torch

    from ..importers.auxnas import ImportOptions, import_auxnas
    from ..outdir import untouched

    if threads:
        torch.set_num_threads(threads)
    options = ImportOptions(keep_links=keep_links, bake_preprocessing=bake_preprocessing,
                            calibration_samples=calibration_samples, compare_samples=compare_samples)
    out_dir = out or default_out("import", checkpoint.stem)
    with untouched(out_dir):
        report = import_auxnas(checkpoint, config, out_dir, options)
    _print(report)
    typer.echo(f"wrote {out_dir / 'pruned.pt'}, {out_dir / 'plan.json'}, {out_dir / 'import_report.json'} and "
               f"{out_dir / 'import_report.md'}")
    typer.echo(f"next: {report['next']}")


def register(import_app: typer.Typer) -> None:
    import_app.command("auxnas", help=HELP)(auxnas)
