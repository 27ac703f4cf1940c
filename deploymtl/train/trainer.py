"""The generic trainer: stages of alternating phases, validation with task metrics, resumable checkpoints.

A family's schedule (`deploymtl/train/<family>.py`, function `search(trainer)`, named in `deploymtl.families`) calls
`run_stage` once per stage. A stage runs epochs; each iteration takes one batch from every phase in turn (e.g.
AdaShare's weight step on one split then policy step on the other). Completed (stage, epoch) pairs are recorded in
the checkpoint, so a resumed run skips them and continues with the same optimiser states. Mutable search state
(temperature, curriculum) must live in the supernet's buffers so that it resumes with the weights.

Files: while it trains, the state after each epoch is kept beside the output directory
(`.<name>.train_state.pt`, `resume_state_path`), so a killed run can be resumed while the directory keeps its
previous set; at the end supernet.pt, train_report.json, recipe.resolved.json and train_state.pt replace the
directory as one set (`deploymtl.outdir.output_set`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader, DistributedSampler

from .. import __version__
from ..config import Recipe
from ..data import MultiTaskDataset, build_datasets, make_loader
from ..errors import DeploymtlError
from ..families import build_supernet, family_spec
from ..formats.supernet import STATE_FORMAT, write_supernet
from ..io import save_torch, write_json
from ..metrics import TaskMeter, delta_mtl
from ..models.base import Supernet
from ..outdir import check_output_dir, link_or_copy, output_set
from ..tasks import TaskSpec, task_loss
from .distributed import (
    DistContext,
    barrier,
    broadcast_buffers,
    check_in_sync,
    context_from_env,
    device_for,
    sync_gradients,
)

STATE_NAME = "train_state.pt"
TRAIN_FILES = ("supernet.pt", "train_report.json", "recipe.resolved.json", STATE_NAME)

LossFn = Callable[[Supernet, dict[str, torch.Tensor], float], torch.Tensor]


@dataclass
class Phase:
    """One optimiser step per iteration on batches of `data`, minimising `loss` (default: task losses plus
    the supernet's regulariser)."""

    name: str
    optimizer: torch.optim.Optimizer
    data: MultiTaskDataset
    loss: LossFn | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeploymtlError(f"device '{name}' requested but CUDA is not available", hint="use device: cpu")
    return torch.device(name)


def resume_state_path(out_dir: str | Path) -> Path:
    """Where a run into `out_dir` keeps its state after each epoch until it finishes (beside the directory)."""
    out = Path(out_dir)
    return out.parent / f".{out.name}.{STATE_NAME}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def multitask_loss(model: Supernet, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    total = torch.zeros((), device=next(iter(outputs.values())).device)
    parts = {}
    for task in model.tasks:
        loss = task_loss(task, outputs[task.name], batch[task.name])
        parts[task.name] = float(loss.detach())
        total = total + task.loss_weight * loss
    return total, parts


@torch.no_grad()
def evaluate(model: torch.nn.Module, tasks: list[TaskSpec], data: MultiTaskDataset, device: torch.device,
             batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Task metrics of `model` over the whole set (eval mode; restores the previous mode)."""
    was_training = model.training
    model.eval()
    meters = {t.name: TaskMeter(t) for t in tasks}
    for batch in make_loader(data, batch_size, shuffle=False):
        out = model(batch["image"].to(device))
        for t in tasks:
            meters[t.name].update(out[t.name], batch[t.name])
    model.train(was_training)
    return {name: m.compute() for name, m in meters.items()}


class Trainer:
    def __init__(self, recipe: Recipe, out_dir: str | Path, *, max_steps: int | None = None,
                 resume: str | Path | None = None, progress: bool = True,
                 datasets: dict[str, MultiTaskDataset] | None = None) -> None:
        self.recipe = recipe
        if not recipe.data.targets:
            raise DeploymtlError(f"recipe {recipe.name}: data.targets is false (images only, e.g. an imported "
                                 "model's recipe): there is nothing to train on",
                                 hint="train with a recipe whose data has the tasks' labels")
        check_output_dir(out_dir)
        self.out_dir = Path(out_dir)
        self.max_steps = max_steps or recipe.train.max_steps
        self.dist: DistContext = context_from_env()
        self.device = device_for(self.dist, resolve_device(recipe.train.device))
        if recipe.train.threads:
            torch.set_num_threads(recipe.train.threads)
        seed_everything(recipe.seed)
        self.data = datasets or build_datasets(recipe.data, recipe.tasks, where=f"recipe {recipe.name}")
        self.model: Supernet = build_supernet(recipe.family, recipe.tasks, recipe.model, recipe.search)
        self.model.to(self.device)
        progress = progress and self.dist.is_main
        self.console = Console(stderr=True, quiet=not progress)
        self.progress = progress
        self.stages: list[dict[str, Any]] = []
        self.done: set[tuple[str, int]] = set()
        self.optim_states: dict[str, Any] = {}
        self.resume_path = Path(resume) if resume else None
        if self.resume_path:
            self._load_state(self.resume_path)

    # -- data helpers -------------------------------------------------------------------------------
    def split_train(self) -> tuple[MultiTaskDataset, MultiTaskDataset]:
        """Two disjoint halves of the training split (weights vs decisions, as AdaShare and Aux-NAS do)."""
        n = len(self.data["train"])
        return self.data["train"].subset(slice(0, n // 2)), self.data["train"].subset(slice(n // 2, n))

    def weight_optimizer(self, params: list[torch.nn.Parameter] | None = None) -> torch.optim.Optimizer:
        t = self.recipe.train
        return torch.optim.Adam(params or self.model.weight_parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def arch_optimizer(self, params: list[torch.nn.Parameter] | None = None) -> torch.optim.Optimizer:
        return torch.optim.Adam(params or self.model.arch_parameters(), lr=self.recipe.train.arch_lr,
                                weight_decay=0.0)

    # -- the loop -----------------------------------------------------------------------------------
    def run_stage(self, name: str, epochs: int, phases: list[Phase], *, deployed: bool = False,
                  on_epoch_end: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Train `epochs` epochs of `phases`; validate each epoch; checkpoint after each epoch."""
        stage = next((s for s in self.stages if s["name"] == name), None)
        if stage is None:
            stage = {"name": name, "epochs": [], "deployed": deployed}
            self.stages.append(stage)
        for ph in phases:  # restore optimiser state when resuming inside this stage
            key = f"{name}/{ph.name}"
            if key in self.optim_states:
                try:
                    ph.optimizer.load_state_dict(self.optim_states[key])
                except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # torch checks it against the optimizer
                    raise DeploymtlError(f"resume checkpoint {self.resume_path}: optimizers['{key}'] does not fit "
                                         f"this stage's optimizer ({str(exc)[:120]})",
                                         hint="resume with the recipe that wrote it") from None
        loaders = [self._train_loader(ph.data) for ph in phases]
        steps_per_epoch = min(len(ld) for ld in loaders)
        if steps_per_epoch == 0:
            raise DeploymtlError(f"stage {name}: not enough training samples for batch size "
                                 f"{self.recipe.train.batch_size}",
                                 hint="raise data.train_size or lower train.batch_size")
        if self.max_steps:
            steps_per_epoch = min(steps_per_epoch, math.ceil(self.max_steps / max(epochs, 1)))
        self.model.set_deployed(deployed)
        with self._progress() as bar:
            task_id = bar.add_task(f"{self.recipe.name}: {name}", total=epochs * steps_per_epoch)
            for epoch in range(epochs):
                if (name, epoch) in self.done:
                    bar.advance(task_id, steps_per_epoch)
                    continue
                t0 = time.perf_counter()
                for ld in loaders:
                    if isinstance(ld.sampler, DistributedSampler):
                        ld.sampler.set_epoch(epoch)
                sums: dict[str, float] = {}
                self.model.train()
                for step, batches in enumerate(zip(*loaders, strict=False)):
                    if step >= steps_per_epoch:
                        break
                    progress = (epoch + step / steps_per_epoch) / max(epochs, 1)
                    for ph, batch in zip(phases, batches, strict=True):
                        loss = self._step(ph, batch, progress)
                        sums[ph.name] = sums.get(ph.name, 0.0) + loss
                    bar.advance(task_id)
                if on_epoch_end:
                    on_epoch_end(epoch)
                broadcast_buffers(self.model, self.dist)
                record = {"epoch": epoch, "seconds": round(time.perf_counter() - t0, 3),
                          "loss": {k: v / steps_per_epoch for k, v in sums.items()}}
                if self.dist.is_main and ((epoch + 1) % self.recipe.train.eval_every == 0 or epoch == epochs - 1):
                    self.model.set_deployed(True)  # judge what would be deployed
                    record["val"] = evaluate(self.model, self.model.tasks, self.data["val"], self.device)
                    self.model.set_deployed(deployed)
                stage["epochs"].append(record)
                self.done.add((name, epoch))
                self.optim_states.update({f"{name}/{ph.name}": ph.optimizer.state_dict() for ph in phases})
                self._save_state()
        self.model.set_deployed(False)
        return stage

    def _step(self, ph: Phase, batch: dict[str, torch.Tensor], progress: float) -> float:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if ph.loss is not None:
            loss = ph.loss(self.model, batch, progress)
        else:
            out = self.model(batch["image"])
            loss = multitask_loss(self.model, out, batch)[0] + self.model.regularizer(progress)
        ph.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync_gradients([p for g in ph.optimizer.param_groups for p in g["params"]], self.dist)
        ph.optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DeploymtlError(f"training diverged in phase {ph.name} (loss {value})",
                                 hint="lower train.lr or train.arch_lr")
        return value

    def _progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=self.console, disable=not self.progress, transient=False)

    # -- checkpoints --------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return resume_state_path(self.out_dir)

    def _train_loader(self, data: MultiTaskDataset) -> torch.utils.data.DataLoader:
        """Shuffled training batches; under torchrun each rank draws its own shard."""
        bs = self.recipe.train.batch_size
        if not self.dist.enabled:
            return make_loader(data, bs, True, seed=self.recipe.seed, drop_last=True)
        sampler = DistributedSampler(data, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True,
                                     seed=self.recipe.seed, drop_last=True)
        return DataLoader(data, batch_size=bs, sampler=sampler, drop_last=True)

    def _save_state(self) -> None:
        barrier(self.dist)
        if not self.dist.is_main:
            return
        save_torch(self.state_path, {
            "format": STATE_FORMAT, "family": self.recipe.family, "recipe": self.recipe.resolved(),
            "state_dict": self.model.state_dict(), "optimizers": self.optim_states,
            "done": [list(d) for d in sorted(self.done)], "stages": self.stages,
        })

    def _load_state(self, path: Path) -> None:
        from ..formats.supernet import (  # validated envelope and weights (one-line errors)
            load_train_state,
            load_weights,
        )

        state = load_train_state(path, self.recipe.family)
        load_weights(self.model, state.state_dict, path, "the recipe's model")
        self.optim_states = state.optimizers
        self.done = {(s, int(e)) for s, e in state.done}
        self.stages = state.stages

    # -- the whole job ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the family's schedule, baselines and final evaluation; write supernet.pt and the report."""
        t0 = time.perf_counter()
        main = self.dist.is_main  # rank 0 alone evaluates and writes; every rank trains
        untrained = evaluate(build_supernet(self.recipe.family, self.recipe.tasks, self.recipe.model,
                                            self.recipe.search).to(self.device).set_deployed(True),
                             self.recipe.tasks, self.data["val"], self.device) if main else {}
        family_spec(self.recipe.family).schedule(self)
        check_in_sync(self.model, self.dist)
        self.model.set_deployed(True)
        final = evaluate(self.model, self.model.tasks, self.data["val"], self.device) if main else {}
        report: dict[str, Any] = {
            "family": self.recipe.family, "recipe": self.recipe.name, "deploymtl_version": __version__,
            "device": str(self.device), "world_size": self.dist.world_size, "rank": self.dist.rank,
            "seconds": None, "stages": self.stages,
            "decisions": self.model.decisions(), "decisions_summary": summarize(self.model),
            "metrics": {"untrained": untrained, "final": final},
        }
        if self.recipe.train.single_task_baselines:
            single = self.single_task_baselines()
            if main:
                report["metrics"]["single_task"] = single
                report["delta_mtl"] = delta_mtl(self.recipe.tasks, final, single)
        report["seconds"] = round(time.perf_counter() - t0, 2)
        if main:
            with output_set(self.out_dir, owned=TRAIN_FILES) as stage:
                self.save_supernet(report, stage)
                write_json(stage / "train_report.json", report)
                write_json(stage / "recipe.resolved.json", self.recipe.resolved())
                state = self.state_path if self.state_path.is_file() else self.resume_path  # none: nothing trained
                if state is not None and state.is_file():
                    link_or_copy(state, stage / STATE_NAME)
            self.state_path.unlink(missing_ok=True)  # now inside the set
        barrier(self.dist)
        return report

    def single_task_baselines(self) -> dict[str, dict[str, float]]:
        from ..models.backbone import SingleTaskNet

        results = {}
        mcfg = self.recipe.model_cfg()
        for task in self.recipe.tasks:
            seed_everything(self.recipe.seed)
            net = SingleTaskNet(task, mcfg).to(self.device)
            opt = self.weight_optimizer(list(net.parameters()))
            loader = self._train_loader(self.data["train"])
            steps = 0
            with self._progress() as bar:
                tid = bar.add_task(f"{self.recipe.name}: single-task {task.name}",
                                   total=self.recipe.train.baseline_epochs * len(loader))
                for epoch in range(self.recipe.train.baseline_epochs):
                    if isinstance(loader.sampler, DistributedSampler):
                        loader.sampler.set_epoch(epoch)
                    for batch in loader:
                        if self.max_steps and steps >= self.max_steps:
                            break
                        batch = {k: v.to(self.device) for k, v in batch.items()}
                        loss = task_loss(task, net(batch["image"])[task.name], batch[task.name])
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        sync_gradients(list(net.parameters()), self.dist)
                        opt.step()
                        steps += 1
                        bar.advance(tid)
            broadcast_buffers(net, self.dist)
            if self.dist.is_main:
                results[task.name] = evaluate(net, [task], self.data["val"], self.device)[task.name]
        return results

    def save_supernet(self, report: dict[str, Any], folder: Path) -> Path:
        return write_supernet(folder / "supernet.pt", self.recipe, self.model.state_dict(), self.model.decisions(),
                              report["metrics"])


def summarize(model: Supernet) -> dict[str, Any]:
    """A short human summary of the decisions (the family may provide `decision_summary()`)."""
    fn = getattr(model, "decision_summary", None)
    return fn() if callable(fn) else {}
