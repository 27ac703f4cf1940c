"""The CLI shell: --version, --help listing every command, usage errors exit 2, the installed entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploymtl import __version__
from deploymtl.cli.main import app, main


def _commands() -> list[str]:
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    names += [g.name for g in app.registered_groups if g.name]
    return names


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"deploymtl {__version__}\n"


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: deploymtl [OPTIONS] COMMAND" in out and "--version" in out
    commands = _commands()
    assert "train" in commands
    for name in commands:
        assert f" {name} " in out, f"command {name} missing from --help"


def test_no_arguments_shows_help(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([])
    captured = capsys.readouterr()
    assert rc in (0, 2)  # click < 8.2 exits 0, newer versions 2
    assert "Usage: deploymtl" in captured.out + captured.err and "train" in captured.out + captured.err


def test_train_help_shows_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--out", "--max-steps", "--resume", "--device", "--quiet"):
        assert option in out


@pytest.mark.parametrize("command,module,constant", [
    ("export", "deploymtl.cli.export", "EXPORT_HELP"),
    ("profile", "deploymtl.cli.profile", "PROFILE_HELP"),
    ("prune", "deploymtl.cli.prune", "PRUNE_HELP"),
    ("serve", "deploymtl.cli.serve", "SERVE_HELP"),
])
def test_help_text_is_not_the_docstring(capsys: pytest.CaptureFixture[str], command: str, module: str,
                                        constant: str) -> None:
    """Commands whose docstring says why they take more than eight parameters show their help text instead."""
    import importlib

    help_text = getattr(importlib.import_module(module), constant)
    assert main([command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps the description to the terminal width
    assert help_text in out
    assert "more than eight" not in out and "typer" not in out and "signature" not in out


@pytest.mark.parametrize("argv,message", [
    (["frobnicate"], "No such command 'frobnicate'"),
    (["train"], "Missing argument 'RECIPE'"),
    (["train", "r.yaml", "--max-steps", "0"], "Invalid value for '--max-steps'"),
    (["--no-such-option"], "No such option: --no-such-option"),
])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.lower() in err.lower() and "Traceback" not in err


def test_missing_recipe_file_exits_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                     tmp_path: Path) -> None:
    monkeypatch.delenv("DEPLOYMTL_DEBUG", raising=False)
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: recipe not found: {tmp_path / 'missing.yaml'}") and err.count("\n") == 1


def test_installed_entry_point_and_lazy_imports() -> None:
    """The console script runs, unknown commands exit 2, and --help does not import torch (stays fast)."""
    code = ("import sys; from deploymtl.cli.main import main; rc = main(['--help']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "NO-TORCH 0", done.stdout + done.stderr
    done = subprocess.run([sys.executable, "-m", "deploymtl.cli.main", "nope"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "No such command 'nope'" in done.stderr
    script = Path(sys.executable).parent / "deploymtl"  # installed by `pip install -e .` (pyproject scripts)
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == f"deploymtl {__version__}\n"
