"""Data-parallel training under `torchrun` (one process per GPU, or per CPU core with gloo).

`torchrun --nproc_per_node N -m deploymtl.cli.main train RECIPE` sets RANK/WORLD_SIZE/LOCAL_RANK; each process
trains the same supernet on its own shard of every batch stream. Gradients are averaged explicitly after each
backward (one flattened all-reduce over the phase's parameters, zeros where a parameter got no gradient) rather
than through DistributedDataParallel's hooks: the searches run custom losses on the bare supernet, and AdaShare's
Gumbel samples execute different blocks on different ranks, which DDP's reducer cannot match. BatchNorm running
statistics are broadcast from rank 0 after each epoch; rank 0 alone validates and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import DeploymtlError


@dataclass(frozen=True)
class DistContext:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env() -> DistContext:
    """The torchrun context, initialising the process group on first use (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    ctx = DistContext(world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(ctx.local_rank)
        try:
            dist.init_process_group(backend=backend)
        except (RuntimeError, ValueError) as exc:
            raise DeploymtlError(f"cannot join the torchrun process group ({str(exc).splitlines()[0][:160]})",
                                 hint="launch with torchrun --nproc_per_node N") from None
    return ctx


def device_for(ctx: DistContext, requested: torch.device) -> torch.device:
    """Under torchrun each process owns the GPU of its local rank."""
    if ctx.enabled and requested.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return requested


def sync_gradients(params: list[nn.Parameter], ctx: DistContext) -> None:
    """Average gradients over ranks; a parameter without a gradient on some rank contributes zeros there."""
    if not ctx.enabled or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def broadcast_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Rank 0's BatchNorm statistics (and other buffers) everywhere, so every rank deploys the same model."""
    if ctx.enabled:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def check_in_sync(model: nn.Module, ctx: DistContext) -> None:
    """Every rank must end with identical weights; a mismatch is our bug, reported loudly."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
        gathered = [torch.zeros_like(checksum) for _ in range(ctx.world_size)]
        dist.all_gather(gathered, checksum)
    values = [float(g) for g in gathered]
    if max(values) - min(values) > 1e-6 * max(1.0, abs(values[0])):
        raise RuntimeError(f"data-parallel ranks diverged: parameter checksums {values}")
