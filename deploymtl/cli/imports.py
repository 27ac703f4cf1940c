"""`deploymtl import <name> ...`: checkpoints from the methods' public code -> deploymtl artifacts.

Each importer's command module (`cli/import_<name>.py`) adds one sub-command to the `import` group; listing it in
`IMPORTERS` is the only change here.
"""

from __future__ import annotations

import importlib

import typer

IMPORTERS: tuple[str, ...] = ("import_adashare", "import_auxnas")  # module names under deploymtl.cli

import_app = typer.Typer(name="import", no_args_is_help=True,
                         help="Import a checkpoint written by a method's public code as a deploymtl artifact.")


def register(app: typer.Typer) -> None:
    for name in IMPORTERS:
        importlib.import_module(f"deploymtl.cli.{name}").register(import_app)
    if IMPORTERS:
        app.add_typer(import_app, name="import")
