"""`deploymtl export MODEL` and `deploymtl verify ARTIFACT`: shells over `deploymtl.export.exporter` and
`deploymtl.verify.parity`; given a supernet, `export` composes the surgeon and the exporter (`export_checkpoint`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..errors import DeploymtlError, VerificationError
from .common import OutDir, Quiet, default_out

if TYPE_CHECKING:
    from ..export.options import ExportOptions
    from ..export.report import ExportReport


EXPORT_HELP = ("Export MODEL to ONNX or TensorRT, simplify, verify against PyTorch, write export_report.json; or "
               "package it as a Triton model repository (--target triton -o REPO).")


def export(
    model: Path = typer.Argument(..., help="pruned.pt (static model) or supernet.pt (pruned on the way); for "
                                 "--target triton also an exported model.onnx / model.plan."),
    target: str = typer.Option("onnx", "--target", help="onnx, trt (TensorRT engine, needs a GPU) or triton (a "
                               "Triton model repository)."),
    runtime: str | None = typer.Option(None, "--for", help="The runtime the ONNX file is shaped for: ort-cpu "
                                       "(default for --target onnx: ONNX Runtime CPU, Triton's onnxruntime backend), "
                                       "trt (TensorRT-ready symmetric Q/DQ; implied by --target trt) or generic "
                                       "(recipe: export.runtime)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16, int8 (static Q/DQ; groups reverted to "
                                  "float until every task keeps its budget) or auto (per group the faster of int8 "
                                  "and float on the target, every budget kept)."),
    batch: str | None = typer.Option(None, "--batch", help="MIN:OPT:MAX dynamic batch (default: recipe)."),
    out: Path | None = OutDir,
    atol: float | None = typer.Option(None, "--atol", help="Absolute tolerance for every output."),
    rtol: float | None = typer.Option(None, "--rtol", help="Relative tolerance for every output."),
    tol: list[str] | None = typer.Option(None, "--tol", help="Per-output tolerance TASK=ATOL[:RTOL], repeatable."),
    no_simplify: bool = typer.Option(False, "--no-simplify", help="Skip the onnxslim passes."),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset (>= 17; the exporter emits >= 18)."),
    calibration_samples: int | None = typer.Option(None, "--calibration-samples",
                                                   help="int8 calibration samples (default: recipe)."),
    max_metric_drop: str | None = typer.Option(None, "--max-metric-drop",
                                               help="Each task's allowed loss of its primary metric for fp16/int8/"
                                                    "auto: 0.01 or 1% (relative), abs:0.002 (absolute), or per task "
                                                    "seg=0.5%,depth=abs:0.002 (default: recipe)."),
    accuracy_control: bool = typer.Option(True, "--accuracy-control/--no-accuracy-control",
                                          help="int8/auto: revert quantised groups to float until every task keeps "
                                               "its budget (off: all-int8 or fail the metric gate)."),
    workspace_mb: int = typer.Option(1024, "--workspace-mb", min=1, help="TensorRT builder workspace."),
    timing_cache: Path | None = typer.Option(None, "--timing-cache", help="TensorRT timing cache file."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="ONNX Runtime/torch threads."),
    int8_activations: str = typer.Option("symmetric", "--int8-activations",
                                         help="symmetric (TensorRT-ready) or asymmetric (ONNX Runtime CPU only, "
                                              "faster on x86)."),
    int8_output_layers: str = typer.Option("fp32", "--int8-output-layers",
                                           help="fp32 (default: each task head's last layer stays fp32, the "
                                                "accuracy-sensitive one) or int8 (every layer quantised)."),
    bake_preprocessing: bool | None = typer.Option(
        None, "--bake-preprocessing/--no-bake-preprocessing",
        help="The graph takes raw uint8 pixels (N, C, H, W) in the model's channel order and normalises them "
             "itself (default: recipe export.bake_preprocessing; set by 'deploymtl import ... --bake-preprocessing')."),
    quiet: bool = Quiet,
    # --target triton only (deploymtl.serve.repository)
    name: str | None = typer.Option(None, "--name", help="triton: model name (default: the recipe's)."),
    instance_kind: str | None = typer.Option(None, "--instance-kind", help="triton: cpu or gpu instances."),
    instances: int = typer.Option(1, "--instances", min=1, help="triton: instance count."),
    ort_trt: str | None = typer.Option(None, "--ort-trt", help="triton: ONNX Runtime TensorRT accelerator, fp16 "
                                       "or fp32 (GPU instances)."),
    profile: Path | None = typer.Option(None, "--profile", help="triton: profile.json with the batcher setting."),
) -> None:
    """`deploymtl export` (help: `EXPORT_HELP`). One parameter per flag: typer builds the command from this
    signature, which is also most of the function's length."""
    if target == "triton":  # a Triton model repository: cli/serve.py composes export and packaging
        from .serve import export_repository

        export_repository(model, out, name=name, instance_kind=instance_kind, instances=instances, ort_trt=ort_trt,
                          profile=profile, threads=threads, precision=precision, batch=batch, quiet=quiet,
                          runtime=runtime)
        return
    from ..export.exporter import export_model
    from ..export.options import ExportOptions
    from ..formats.supernet import SUPERNET_FORMAT
    from ..verify.compare import parse_output_tolerance

    per_output = dict(parse_output_tolerance(t) for t in tol or [])
    options = ExportOptions.parse({
        "target": target, "precision": precision, "batch": batch, "atol": atol, "rtol": rtol,
        "per_output": per_output, "simplify": not no_simplify, "opset": opset,
        "calibration_samples": calibration_samples, "max_metric_drop": max_metric_drop, "workspace_mb": workspace_mb,
        "timing_cache": timing_cache, "threads": threads, "int8_activations": int8_activations,
        "int8_output_layers": int8_output_layers, "bake_preprocessing": bake_preprocessing, "runtime": runtime,
        "accuracy_control": accuracy_control,
    })
    out_dir = out or default_out("export", f"{model.stem}-{target}-{precision}")
    log = (lambda _: None) if quiet else typer.echo
    report = export_checkpoint(model, out_dir, options, log) if _format_of(model) == SUPERNET_FORMAT \
        else export_model(model, out_dir, options, log=log)
    typer.echo(f"wrote {out_dir / report.artifact} and {out_dir / 'export_report.json'}")


def _format_of(model: Path) -> str:
    """The deploymtl format of a torch file: a static model (exported as is) or a supernet (pruned first)."""
    from ..formats.static import STATIC_FORMAT
    from ..formats.supernet import SUPERNET_FORMAT
    from ..io import load_torch

    data = load_torch(model, what="model")
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt not in (STATIC_FORMAT, SUPERNET_FORMAT):
        raise DeploymtlError(f"{model} is neither a static model nor a supernet checkpoint",
                             hint=f"expected pruned.pt ({STATIC_FORMAT}) or supernet.pt ({SUPERNET_FORMAT})")
    return str(fmt)


def export_checkpoint(model: Path, out_dir: Path, options: ExportOptions, log: Callable[[str], None]) -> ExportReport:
    """`deploymtl export supernet.pt`: the surgeon (`surgery.prune.prune_checkpoint`) prunes it into `pruned/` of the
    export's output set, then the static model it wrote is exported into the same set. A failed pruning still
    ships its report (under `pruned/`, nothing exported) and raises its VerificationError."""
    from ..export.exporter import EXPORT_FILES, begin, check_passed, run_export
    from ..export.report import Source
    from ..outdir import output_set
    from ..surgery.prune import prune_checkpoint

    started = time.perf_counter()
    out = begin(out_dir, options)
    prune_failure: VerificationError | None = None
    with output_set(out, owned=EXPORT_FILES) as staging:
        try:
            art, prune_report = prune_checkpoint(model, staging / "pruned")
        except VerificationError as exc:
            if not (staging / "pruned").is_dir():
                raise
            prune_failure = exc  # the surgeon's failing report ships for inspection
        else:
            source = Source(model=str(model), pruned=True, prune_passed=prune_report.get("passed"))
            report = run_export(art, staging, out, options, source, log=log, started=started)
    if prune_failure is not None:
        raise prune_failure
    return check_passed(report, out)


def verify(
    artifact: Path = typer.Argument(..., help="model.onnx, model.plan or pruned.pt."),
    backend: str = typer.Option("auto", "--backend",
                                help="auto, onnxruntime, ort-cuda, ort-trt, tensorrt or torch."),
    parity: Path | None = typer.Option(None, "--parity", help="Parity data (default: <stem>.parity.npz beside)."),
    atol: float | None = typer.Option(None, "--atol", help="Override the saved absolute tolerance."),
    rtol: float | None = typer.Option(None, "--rtol", help="Override the saved relative tolerance."),
    tol: list[str] | None = typer.Option(None, "--tol", help="Per-output tolerance TASK=ATOL[:RTOL], repeatable."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Backend threads."),
) -> None:
    """Re-check ARTIFACT against the inputs and reference outputs saved at export time (exit 1 on mismatch)."""
    from ..errors import VerificationError
    from ..verify.compare import parse_output_tolerance
    from ..verify.parity import check_artifact

    per_output = dict(parse_output_tolerance(t) for t in tol or [])
    result = check_artifact(artifact, backend=backend, parity=parity, atol=atol, rtol=rtol, per_output=per_output,
                            threads=threads)
    typer.echo(f"{artifact} on {result.backend}, batch sizes {result.batch_sizes}:")
    for line in result.report.summary().splitlines():
        typer.echo(f"  {line}")
    for note in result.notes:
        typer.echo(f"note: {note}")
    if not result:
        raise VerificationError(f"{artifact} does not match its parity data on {result.backend} for "
                                f"{', '.join(result.report.failed)}")
    typer.echo("verify passed")


def register(app: typer.Typer) -> None:
    app.command("export", help=EXPORT_HELP)(export)
    app.command("verify")(verify)
