"""The AdaShare surgeon: a fixed per-task policy becomes one static tree-shaped graph (docs/methods.md, AdaShare).

The public code runs the backbone once per task and computes both branches of every block. Here:
- a skipped block disappears; a skipped first-of-segment block keeps only its `ds` shortcut (x' = ds(x));
- tasks whose policies agree on blocks 0..d-1 receive the same input at block d, so they share every node up
  to there: the graph is a tree rooted at the stem, branching where policies first differ, and ALL the
  requested tasks come out of ONE pass; a block no task runs is never emitted;
- at a branching block, the shortcut `ds(x)` is computed once for both branches;
- a block run by several groups (on different tensors) is several conv nodes sharing ONE set of weights
  (GraphBuilder's `shares`), so the static model never holds more parameters than the supernet;
- BatchNorm is folded into the convolutions, dropout is gone (GraphBuilder.conv_module).

`AdaShareSurgeon.prepare(model, plan)` validates the policies once; the `AdaShareCut` builds the tree and counts
its parameters from the policies and the layer shapes (`registry.count`). Options (`AdaShareOptions`):
`share_prefix` (default true); false gives every task its own chain (skipping only, no sharing), for comparing
against the tree.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..formats.plan import Plan, PlanOptions
from ..ir import INPUT
from ..models.adashare import AdaShareBlock, AdaShareSupernet, check_decisions, shared_prefix
from .base import Cut, Surgeon
from .builder import GraphBuilder
from .registry import conv_params, count, emit, register


class AdaShareOptions(PlanOptions):
    """`prune.options` of an AdaShare recipe (and `--option`)."""

    share_prefix: bool = Field(default=True, description="tasks share the blocks their policies agree on (a tree); "
                                                          "false: one chain per task")


def _block_params(m: AdaShareBlock, execute: bool = True, shortcut: bool = True) -> int:
    """The body's two convs where some branch executes the block, the shortcut where some branch reaches it:
    a block emitted on several branches of the tree keeps ONE copy of its weights (GraphBuilder's `shares`)."""
    body = conv_params(m.body.conv1) + conv_params(m.body.conv2) if execute else 0
    return body + (count(m.ds) if shortcut and m.ds is not None else 0)


@register(AdaShareBlock, params=_block_params)
def _adashare_block(b: GraphBuilder, m: AdaShareBlock, x: str, prefix: str, execute: bool = True,
                    residual: str | None = None) -> str:
    """Executed: relu(r + bn2(conv2(relu(bn1(conv1(x)))))) with r = ds(x) or x; skipped: r.
    `residual` passes a ds(x) node already emitted for a sibling branch."""
    if residual is None:
        residual = emit(b, m.ds, x, f"{prefix}_ds") if m.ds is not None else x
    if not execute:
        return residual
    h = b.relu(f"{prefix}_relu1", b.conv_module(f"{prefix}_conv1", x, m.body.conv1, m.body.bn1))
    h = b.conv_module(f"{prefix}_conv2", h, m.body.conv2, m.body.bn2)
    return b.relu(f"{prefix}_relu2", b.add(f"{prefix}_add", h, residual))


def _policies(decisions: dict[str, Any], tasks: list[str]) -> dict[str, list[int]]:
    return {t: [int(v) for v in decisions["policy"][t]] for t in tasks}


def block_runs(policy: dict[str, list[int]], share_prefix: bool = True) -> list[tuple[int, int]]:
    """Per block (executions, shortcut runs) in the static graph: a group is a distinct policy prefix (per task
    when not sharing); a block runs once per group that executes it, its ds once per group reaching it."""
    tasks = list(policy)
    n = len(next(iter(policy.values())))

    def key(t: str, upto: int) -> tuple:
        return tuple(policy[t][:upto]) if share_prefix else (t,)

    runs = []
    for depth in range(n):
        executed = {key(t, depth) for t in tasks if policy[t][depth] == 1}
        reaching = {key(t, depth) for t in tasks}
        runs.append((len(executed), len(reaching)))
    return runs


class AdaShareCut(Cut[AdaShareSupernet, AdaShareOptions]):
    """An AdaShare plan prepared against its supernet: the deployed tasks' policies and the block runs."""

    def __init__(self, model: AdaShareSupernet, plan: Plan) -> None:
        super().__init__(model, plan)
        check_decisions(self.decisions, model.task_names, model.block_names, required=self.tasks)
        self.share = self.options.share_prefix
        self.policy = _policies(self.decisions, self.tasks)
        self.runs = block_runs(self.policy, self.share)

    def build(self) -> GraphBuilder:
        """The static tree for the tasks (outputs in plan order). Node names: `stem_*`, `b{l}_t{i}_*` for block l of
        the group whose first task is tasks[i], `head_{task}_*`."""
        m, tasks, policy = self.model, self.tasks, self.policy
        b = GraphBuilder()
        stem = emit(b, m.stem, INPUT, "stem")
        features: dict[str, str] = {}

        def grow(group: list[str], x: str, depth: int) -> None:
            if depth == m.num_blocks:
                for t in group:
                    features[t] = x
                return
            block = m.blocks[depth]
            branches = [[t for t in group if policy[t][depth] == d] for d in (1, 0)]
            branches = [g for g in branches if g]
            residual = None
            if block.ds is not None:  # one shortcut for both branches of this group
                residual = emit(b, block.ds, x, f"b{depth}_t{tasks.index(group[0])}_ds")
            for sub in branches:
                y = emit(b, block, x, f"b{depth}_t{tasks.index(sub[0])}", execute=policy[sub[0]][depth] == 1,
                         residual=residual)
                grow(sub, y, depth + 1)

        for group in ([tasks] if self.share else [[t] for t in tasks]):
            grow(group, stem, 0)
        for t in tasks:
            b.output(t, emit(b, m.heads[t], features[t], f"head_{t}"))
        return b

    def expected_params(self) -> int:
        """The stem, each block once if any group executes (body) or reaches (shortcut) it, the deployed heads."""
        m = self.model
        total = count(m.stem)
        for block, (execs, reach) in zip(m.blocks, self.runs, strict=True):
            total += count(block, execute=execs > 0, shortcut=reach > 0)
        return total + sum(count(m.heads[t]) for t in self.tasks)

    def summary(self) -> dict[str, Any]:
        """Per task: blocks executed/skipped and the depth shared with each other task; overall: block runs in the
        static tree vs. the public code (every block, both branches, once per task)."""
        m, tasks, policy = self.model, self.tasks, self.policy
        runs = block_runs(policy)
        per_task = {}
        for t in tasks:
            per_task[t] = {
                "executed": sum(policy[t]),
                "skipped": [m.block_names[i] for i, v in enumerate(policy[t]) if v == 0],
                "shared_prefix": {o: shared_prefix([policy[t], policy[o]]) for o in tasks if o != t},
            }
        return {
            "family": "adashare",
            "rule": self.decisions.get("rule", "manual"),
            "blocks": list(m.block_names),
            "tasks": per_task,
            "shared_prefix_all": shared_prefix(list(policy.values())),
            "block_runs": sum(e for e, _ in runs),
            "block_runs_per_task_chains": sum(sum(p) for p in policy.values()),
            "block_runs_public": len(tasks) * m.num_blocks,
            "never_executed": [m.block_names[i] for i, (e, _) in enumerate(runs) if e == 0],
            "params": self.expected_params(),
        }

    def draw(self, ax: Any) -> None:
        """Tasks x blocks grid: colour = execute probability softmax(alpha)[0] (the hard policy where the plan
        has no probabilities), a dot where the block runs, a cross where it is skipped; '*' marks blocks with ds."""
        m, tasks, policy = self.model, self.tasks, self.policy
        probs = self.decisions.get("probs") or {}
        grid = [[float(probs[t][i][0]) if t in probs else float(policy[t][i]) for i in range(m.num_blocks)]
                for t in tasks]
        image = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        for r, t in enumerate(tasks):
            for c, v in enumerate(policy[t]):
                ax.text(c, r, "\u25cf" if v else "\u2715", ha="center", va="center",
                        color="white" if grid[r][c] < 0.5 else "black", fontsize=9)
        ax.set_xticks(range(m.num_blocks))
        ax.set_xticklabels([n + ("*" if s.has_ds else "") for n, s in zip(m.block_names, m.slots, strict=True)],
                           rotation=90, fontsize=8)
        ax.set_yticks(range(len(tasks)))
        ax.set_yticklabels(tasks)
        ax.set_xlabel("block (* = has ds shortcut)")
        ax.set_title(f"AdaShare policy (rule: {self.decisions.get('rule', 'manual')}; \u25cf run, \u2715 skip)")
        ax.figure.colorbar(image, ax=ax, label="P(execute)")


class AdaShareSurgeon(Surgeon):
    family = "adashare"
    supernet_cls = AdaShareSupernet
    options_model = AdaShareOptions
    cut_cls = AdaShareCut
