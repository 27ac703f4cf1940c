"""`deploymtl lint MODEL.onnx`: TensorRT compatibility of an ONNX graph, without TensorRT or a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def lint(
    model: Path = typer.Argument(..., help="ONNX model, e.g. artifacts/export/NAME/model.onnx"),
    as_json: bool = typer.Option(False, "--json", help="Print the issues as JSON."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 on warnings too."),
) -> None:
    """Check MODEL.onnx against TensorRT 10/11's ONNX parser (operators, attributes, dtypes, Q/DQ, dynamic shapes).

    Exit 0 when TensorRT should accept it, 1 when it has errors (or warnings with --strict), 2 for a bad file.
    """
    from ..errors import VerificationError
    from ..export.trt.lint import ERROR, lint_onnx

    issues = lint_onnx(model)
    n_err = sum(i.severity == ERROR for i in issues)
    n_warn = len(issues) - n_err
    if as_json:
        typer.echo(json.dumps({"model": str(model), "errors": n_err, "warnings": n_warn,
                               "issues": [i.to_dict() for i in issues]}, indent=2))
    else:
        for issue in issues:
            typer.echo(str(issue))
        typer.echo(f"{model}: {n_err} error(s), {n_warn} warning(s) for TensorRT 10/11")
    if n_err or (strict and n_warn):
        raise VerificationError(f"{model} has {n_err} TensorRT compatibility error(s) and {n_warn} warning(s)",
                                hint="fix the graph or re-export it; see docs/tensorrt.md")


def register(app: typer.Typer) -> None:
    app.command("lint")(lint)
