"""`deploymtl` entry point: builds the typer app and maps exceptions to one-line messages in one place.

Exit codes: 0 success, 1 verification failed, 2 bad input or usage, 3 internal error (a deploymtl bug), 130
interrupted (Ctrl-C; the message says which output directory kept its previous files).
`DEPLOYMTL_DEBUG=1` re-raises so the traceback shows.
"""

from __future__ import annotations

import sys

import typer

from .. import __version__
from ..env import debug_enabled
from ..errors import EXIT_INTERNAL, EXIT_USAGE, DeploymtlError, InternalError
from ..outdir import interrupted_message

EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="deploymtl", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Deploy searched multi-task vision models: train -> prune -> export -> verify -> profile.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"deploymtl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """deploymtl: searched multi-task models to fast, verified deployment artifacts."""


def _register() -> None:
    from . import export, imports, lint, pipeline, profile, prune, serve, train

    for module in (train, prune, export, profile, serve, pipeline, lint, imports):
        module.register(app)


_register()


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:
        if isinstance(link, KeyboardInterrupt):
            return link
        chain.append(link)
        link = link.__cause__ or link.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, prog_name="deploymtl", standalone_mode=True)
    except SystemExit as exc:
        interrupt = _interrupt_behind(exc)
        if interrupt is not None:  # typer turns Ctrl-C into a silent exit 130
            typer.echo(f"error: {interrupted_message(interrupt)}", err=True)
            return EXIT_INTERRUPTED
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    except InternalError as exc:
        if debug_enabled():
            raise
        typer.echo(f"internal error: {exc.one_line()} (a deploymtl bug; rerun with DEPLOYMTL_DEBUG=1 for the "
                   "traceback)", err=True)
        return exc.exit_code
    except DeploymtlError as exc:
        if debug_enabled():
            raise
        typer.echo(f"error: {exc.one_line()}", err=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        typer.echo(f"error: {interrupted_message(exc)}", err=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place that turns our bugs into a clean line
        if debug_enabled():
            raise
        typer.echo(f"internal error: {type(exc).__name__}: {exc} (a deploymtl bug; rerun with "
                   "DEPLOYMTL_DEBUG=1 for the traceback)", err=True)
        return EXIT_INTERNAL
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
