"""Shared fixtures: tiny recipes and data so every test runs in seconds on 2 CPU cores."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture()
def cli(monkeypatch):
    """Run the CLI in-process; returns (exit_code, stdout, stderr)."""
    from deploymtl.cli.main import main

    def run(*args: str, capsys=None):
        return main(list(args))

    return run
