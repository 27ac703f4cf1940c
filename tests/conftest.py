"""Shared fixtures: tiny recipes and data so every test runs in seconds on 2 CPU cores."""

from __future__ import annotations

import pytest
import torch

# Tiny models: one intra-op thread is as fast and does not oversubscribe a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture()
def cli(monkeypatch):
    """Run the CLI in-process; returns (exit_code, stdout, stderr)."""
    from deploymtl.cli.main import main

    def run(*args: str, capsys=None):
        return main(list(args))

    return run


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module, restored after it (CLI commands and the trainer set their own):
    tiny models gain nothing from a second thread and lose much when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """A verified export (batch 1:2:4) of the tiny test model, shared by the serving tests (read-only)."""
    from serve_fixtures import exported_tiny

    return exported_tiny(tmp_path_factory.mktemp("tiny_onnx"))
