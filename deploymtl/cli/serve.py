"""`deploymtl serve ARTIFACT|REPO`: a real Triton Inference Server (the tritonserver PyTriton bundles) with
deploymtl's runtime as the model, in Triton's python backend;
`--check` validates a repository offline instead. Library: `deploymtl.serve`."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import DeploymtlError
from .common import check_finite, default_out

SERVE_HELP = "Serve PATH on Triton (HTTP and gRPC, KServe v2; Prometheus metrics) until SIGINT or SIGTERM."


def _sizes(text: str | None) -> list[int] | None:
    from .profile import _int_list

    return _int_list(text, "--preferred")


def serve(
    path: Path = typer.Argument(..., help="An artifact (model.onnx, model.plan, pruned.pt) or a Triton model "
                                "repository written by deploymtl export --target triton."),
    name: str | None = typer.Option(None, "--name", help="Model name (default: the recipe's or the folder's); "
                                    "for a repository: the model to serve (default: all)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    http_port: int = typer.Option(8000, "--http-port", help="KServe v2 HTTP/REST port."),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="KServe v2 gRPC port."),
    metrics_port: int = typer.Option(8002, "--metrics-port", help="Prometheus metrics port (/metrics)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Intra-op threads per model instance."),
    provider: str = typer.Option("cpu", "--provider", help="ONNX Runtime provider: cpu, cuda or trt."),
    instances: int | None = typer.Option(None, "--instances", min=1, help="Model instances (one session each)."),
    preferred: str | None = typer.Option(None, "--preferred", help="Preferred batch sizes, e.g. 4,8 (artifacts; "
                                         "default: the profiled or recipe setting)."),
    max_delay_ms: float | None = typer.Option(None, "--max-delay-ms", help="Dynamic batcher queue delay."),
    profile: Path | None = typer.Option(None, "--profile", help="profile.json to take the batcher setting from."),
    max_batch: int | None = typer.Option(None, "--max-batch", min=1, help="Max batch of a pruned.pt (default 8)."),
    ort_spinning: bool = typer.Option(False, "--ort-spinning/--no-ort-spinning",
                                      help="Let ONNX Runtime's idle threads busy-wait between batches (off: they would "
                                           "take CPU from tritonserver and the network)."),
    log_file: Path | None = typer.Option(None, "--log-file", help="Keep tritonserver's log in this file."),
    check: bool = typer.Option(False, "--check", help="Validate REPO offline and exit, without serving."),
) -> None:
    """`deploymtl serve` (help: `SERVE_HELP`). One parameter per command-line option (typer builds the command
    from this signature), hence more than eight."""
    from ..serve.binding import ServeOptions, load_served

    if check:
        _check(path, name)
        return
    check_finite("--max-delay-ms", max_delay_ms)
    from ..serve.environment import require_serving
    from ..serve.ports import Ports, check_ports
    from ..serve.server import TritonServer, serve_until_signal

    require_serving()  # before loading models: a missing extra or numpy 2 is the first thing to say
    ports = check_ports(Ports(host, http_port, grpc_port, metrics_port))  # and a taken port the second
    options = ServeOptions(name=name, provider=provider, threads=threads,
                           instances=instances, preferred=_sizes(preferred), max_delay_ms=max_delay_ms,
                           profile=profile, max_batch=max_batch, spinning=ort_spinning)
    models = load_served(path, options)
    server = TritonServer(models, ports, log_file=log_file)

    def ready(s: TritonServer) -> None:
        for m in s.models:
            typer.echo(f"serving {m.describe()}")
        u = s.urls
        typer.echo(f"ready: http {u['http']} (health {u['http']}/v2/health/ready), grpc {u['grpc']}, metrics "
                   f"{u['metrics']}; SIGINT or SIGTERM stops", err=False)

    serve_until_signal(server, ready)
    typer.echo("stopped")


def _check(path: Path, name: str | None) -> None:
    from ..serve.validate import check_model_dir, find_model

    if not path.is_dir():
        raise DeploymtlError(f"--check validates a model repository; {path} is not a folder",
                             hint="expected REPO or REPO/NAME written by deploymtl export --target triton")
    dirs = [find_model(path, name)] if name or (path / "config.pbtxt").is_file() else \
        [d for d in sorted(path.iterdir()) if (d / "config.pbtxt").is_file()] or [find_model(path)]
    from ..serve.bundled import bundled_triton
    from ..serve.tritoncheck import triton_accepts

    for d in dirs:
        m = check_model_dir(d)
        typer.echo(f"{d}: valid ({m.config.platform}, {m.model_file.name}, max_batch_size {m.config.max_batch_size}, "
                   f"outputs {', '.join(o.name for o in m.config.output)})")
        if bundled_triton() is not None:
            backend = triton_accepts(d)
            typer.echo(f"{d}: PyTriton's tritonserver parsed and accepted the config; it stopped where it needs the "
                       f"{backend} backend, which it does not bundle (dims and dtypes: checked against the model file)")


def export_repository(model: Path, out: Path | None, *, name: str | None, instance_kind: str | None, instances: int,
                      ort_trt: str | None, profile: Path | None, threads: int | None, precision: str,
                      batch: str | None, quiet: bool, runtime: str | None = None) -> None:
    """`deploymtl export MODEL --target triton` (its flags, passed on by cli/export.py): an exported model.onnx /
    model.plan is packaged as it is; a pruned.pt is exported to ONNX into a temporary folder first, shaped for
    `runtime` (`--for`; by default for the instances that will run it: trt with the TensorRT accelerator, generic
    on GPU instances, else ort-cpu). One keyword parameter per flag that `--target triton` reads, hence more than
    eight."""
    import tempfile

    from ..outdir import check_output_dir
    from ..serve.repository import RepositoryOptions, write_repository

    repo = out or default_out("triton", "repository")
    check_output_dir(repo)  # before minutes of exporting
    options = RepositoryOptions(name=name, instance_kind=instance_kind, instances=instances, trt_accelerator=ort_trt,
                                threads=threads, profile=profile)
    log = (lambda _: None) if quiet else typer.echo
    with tempfile.TemporaryDirectory(prefix="deploymtl-triton-") as tmp:
        source = model
        if model.suffix.lower() == ".pt":
            from ..export.exporter import export_model
            from ..export.options import ExportOptions

            form = runtime or ("trt" if ort_trt else "generic" if instance_kind == "gpu" else "ort-cpu")
            options_ = ExportOptions.parse({"target": "onnx", "precision": precision, "batch": batch,
                                            "threads": threads, "runtime": form})
            export_model(model, Path(tmp) / "export", options_, log=log)
            source = Path(tmp) / "export" / "model.onnx"
        elif batch is not None or precision != "fp32" or runtime is not None:
            raise DeploymtlError(f"--batch, --precision and --for apply when exporting a pruned.pt; {model.name} is "
                                 "already exported", hint="package it as it is, or pass its pruned.pt")
        written = write_repository(source, repo, options, log=log)
    typer.echo(f"wrote {written.directory / 'config.pbtxt'}, {written.model_file} and {repo / 'README.md'}")


def register(app: typer.Typer) -> None:
    app.command("serve", help=SERVE_HELP)(serve)
