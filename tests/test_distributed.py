"""Data-parallel training under torchrun (gloo on CPU): two ranks train in lockstep and rank 0 writes the files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from deploymtl.models.checkpoint import load_supernet
from deploymtl.train.distributed import DistContext, sync_gradients

RECIPE = Path(__file__).parent / "data" / "minimal_adashare.yaml"


def test_single_process_context_is_a_no_op() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    sync_gradients([p], DistContext())
    assert torch.equal(p.grad, torch.full((3,), 2.0))


def test_torchrun_two_ranks_train_one_model(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "deploymtl.cli.main", "train", str(RECIPE), "--max-steps", "2", "-o", str(out), "-q"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
    report = json.loads((out / "train_report.json").read_text())
    assert report["world_size"] == 2 and report["rank"] == 0
    model, ckpt = load_supernet(out / "supernet.pt")
    assert set(ckpt["metrics"]["final"]) == {"seg", "depth"}
