"""One-screen summary of a pipeline run (rich table)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..pipeline import PipelineResult


def print_pipeline_summary(result: PipelineResult) -> None:
    table = Table(title=f"{result.recipe.name} ({result.recipe.family}) -> {result.out_dir}")
    for col in ("stage", "status", "seconds", "artifact"):
        table.add_column(col)
    for s in result.stages:
        status = "skipped (up to date)" if s.skipped else "ran"
        if s.report.get("passed") is False:
            status += ", FAILED"
        main = next(iter(s.outputs.values()), None)
        table.add_row(s.name, status, f"{s.seconds:.1f}", str(main) if main else "")
    Console().print(table)
