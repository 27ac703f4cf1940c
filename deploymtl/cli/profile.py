"""`deploymtl profile ARTIFACT...`: batch sweeps, the edge batching scenario, comparison, report and plots."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import DeploymtlError
from ..outdir import check_output_dir, untouched
from .common import OutDir, Quiet, default_out


def _int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DeploymtlError(f"{option}: '{text}' is not a comma-separated list of integers",
                             hint="e.g. 1,2,4,8") from None
    if not values or min(values) < 1:
        raise DeploymtlError(f"{option}: '{text}' needs integers >= 1", hint="e.g. 1,2,4,8")
    return values


def profile(
    artifacts: list[Path] | None = typer.Argument(None, help="pruned.pt, supernet.pt, .onnx or .plan files of one "
                                                  "model (with --url: the served artifact, run in-process beside it)."),
    out: Path | None = OutDir,
    batch_sizes: str | None = typer.Option(None, "--batch-sizes", help="Batch sweep, e.g. 1,2,4,8."),
    threads: int | None = typer.Option(None, "--threads", help="Intra-op threads (mimic an edge CPU); default 2."),
    duration: float | None = typer.Option(None, "--duration", help="Seconds per measurement window; default 1."),
    streams: int | None = typer.Option(None, "--streams", help="Edge scenario: camera streams; default 4."),
    fps: float | None = typer.Option(None, "--fps", help="Frames per second per stream; default 30."),
    max_batch: int | None = typer.Option(None, "--max-batch", help="Batcher max batch; default 4."),
    max_delay_ms: float | None = typer.Option(None, "--max-delay-ms", help="Batcher max queueing delay; default 5."),
    budget_ms: float | None = typer.Option(None, "--budget-ms", help="p99 latency budget for the batcher-setting "
                                           "sweep; default the deadline."),
    deadline_ms: float | None = typer.Option(None, "--deadline-ms", help="Frame deadline; default the frame period."),
    arrival: str | None = typer.Option(None, "--arrival", help="periodic (with jitter) or poisson."),
    jitter_ms: float | None = typer.Option(None, "--jitter-ms", help="Periodic arrivals: capture jitter; default 2."),
    preferred: str | None = typer.Option(None, "--preferred", help="Batcher preferred batch sizes, e.g. 4,8."),
    edge_duration: float | None = typer.Option(None, "--edge-duration", help="Simulated seconds; default 10."),
    provider: str | None = typer.Option(None, "--provider", help="cpu, cuda or trt (ONNX Runtime provider; torch "
                                        "artifacts run on the CUDA device for cuda/trt)."),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="Measure peak memory in a child process."),
    edge: bool = typer.Option(True, "--edge/--no-edge", help="Run the edge scenario."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed of inputs and arrivals."),
    quiet: bool = Quiet,
    # a served model (deploymtl.profile.served)
    url: str | None = typer.Option(None, "--url", help="Load-test a model on Triton: http://HOST:PORT or "
                                   "grpc://HOST:PORT."),
    model: str | None = typer.Option(None, "--model", help="With --url: the model name."),
    concurrency: str | None = typer.Option(None, "--concurrency", help="With --url: client counts, default "
                                           "1,2,4,8,16."),
    header: list[str] | None = typer.Option(None, "--header", help="With --url: KEY=VALUE sent with every "
                                            "request (an access token), repeatable."),
) -> None:
    """Measure latency and throughput per batch size, simulate camera streams through the dynamic batcher,
    compare artifacts (FLOPs vs latency), and write profile.json, profile.md and PNG plots. With --url: load-test
    a model on a Triton server (concurrency sweep, request-rate mode), beside the artifact in-process."""
    from ..profile.profiler import ProfileOptions, profile_artifacts
    from ..profile.report import write_report

    options = ProfileOptions.parse({
        "batch_sizes": _int_list(batch_sizes, "--batch-sizes"), "threads": threads, "duration_s": duration,
        "streams": streams, "fps": fps, "max_batch": max_batch, "max_delay_ms": max_delay_ms,
        "budget_ms": budget_ms, "deadline_ms": deadline_ms, "arrival": arrival, "jitter_ms": jitter_ms,
        "preferred_batch_sizes": _int_list(preferred, "--preferred"), "edge_duration_s": edge_duration,
        "provider": provider, "memory": memory, "edge": edge, "seed": seed,
    })
    if url is not None or model is not None:
        _served(url, model, concurrency, header, artifacts or [], options, out, quiet)
        return
    if not artifacts:
        raise DeploymtlError("no artifact to profile", hint="expected ARTIFACT..., or --url URL --model NAME")
    first = artifacts[0]
    out_dir = out or default_out("profile", first.parent.name or first.stem)
    check_output_dir(out_dir)  # before minutes of measuring
    log = (lambda _msg: None) if quiet else (lambda msg: typer.echo(msg, err=True))
    with untouched(out_dir):  # minutes of measuring before the set is written
        result = profile_artifacts(artifacts, options, log=log)
        files = write_report(out_dir, result)
    for a in result["artifacts"]:
        sweep = a["sweep"]
        line = f"{a['name']}: p50 {sweep[0]['latency_ms']['p50_ms']:.3g} ms at batch {sweep[0]['batch']}"
        if len(sweep) > 1:
            line += f", {sweep[-1]['latency_ms']['p50_ms']:.3g} ms at batch {sweep[-1]['batch']}"
        if "edge" in a:
            e, st = a["edge"]["result"], a["edge"]["settings"]
            line += (f"; edge p99 {e['latency_ms']['p99_ms']:.3g} ms, {e['deadline_missed']}/{e['frames']} late, "
                     f"{e['dropped']} dropped")
            best = st["best"]
            line += (f"; best under {st['budget_ms']:.3g} ms: max batch {best['max_batch']}, delay "
                     f"{best['max_delay_ms']:g} ms" if best else f"; no setting meets {st['budget_ms']:.3g} ms")
        typer.echo(line)
    for w in result["warnings"]:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(f"wrote {files['profile.json']}, profile.md and {len(files) - 2} plots in {out_dir}")


def _served(url: str | None, model: str | None, concurrency: str | None, header: list[str] | None,
            artifacts: list[Path], options: object, out: Path | None, quiet: bool) -> None:
    from ..profile.served import ServedOptions, profile_served
    from ..profile.served_report import summary_lines, write_served_report

    if url is None or model is None:
        raise DeploymtlError("--url and --model go together", hint="e.g. --url http://127.0.0.1:8000 --model NAME")
    if len(artifacts) > 1:
        raise DeploymtlError(f"--url takes at most one artifact (the served one), got {len(artifacts)}")
    headers = {}
    for h in header or []:
        key, sep, value = h.partition("=")
        if not sep or not key.strip():
            raise DeploymtlError(f"--header '{h}' is not KEY=VALUE", hint="e.g. --header triton-access-token=...")
        headers[key.strip()] = value
    levels = _int_list(concurrency, "--concurrency")
    served = ServedOptions(url, model, tuple(levels) if levels else ServedOptions.concurrency, headers)
    out_dir = out or default_out("profile", f"{model}-served")
    check_output_dir(out_dir)
    log = (lambda _msg: None) if quiet else (lambda msg: typer.echo(msg, err=True))
    with untouched(out_dir):
        result = profile_served(served, options, artifacts[0] if artifacts else None, log=log)
        files = write_served_report(out_dir, result)
    for line in summary_lines(result):
        typer.echo(line)
    for w in result["warnings"]:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(f"wrote {files['profile.json']}, profile.md and 2 plots in {out_dir}")


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)
