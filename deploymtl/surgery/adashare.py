"""The AdaShare surgeon: a fixed per-task policy becomes one static tree-shaped graph (shared/METHODS.md).

The public code runs the backbone once per task and computes both branches of every block. Here:
- a skipped block disappears; a skipped first-of-segment block keeps only its `ds` shortcut (x' = ds(x));
- tasks whose policies agree on blocks 0..d-1 receive the same input at block d, so they share every node up
  to there: the graph is a tree rooted at the stem, branching where policies first differ, and ALL the
  requested tasks come out of ONE pass; a block no task runs is never emitted;
- at a branching block, the shortcut `ds(x)` is computed once for both branches;
- a block run by several groups (on different tensors) is several conv nodes sharing ONE set of weights
  (GraphBuilder's `shares`), so the static model never holds more parameters than the supernet;
- BatchNorm is folded into the convolutions, dropout is gone (GraphBuilder.conv_module).

Interface used by the prune orchestration (`decisions` is `model.decisions()`, possibly edited):
validate_plan, apply_plan, build_graph, expected_params, summary, draw.
Options: {"share_prefix": bool (default True)}; False gives every task its own chain (skipping only, no
sharing), for comparing against the tree. Other keys belong to other stages and are ignored here.
"""

from __future__ import annotations

from typing import Any

from ..errors import DeploymtlError
from ..ir import INPUT
from ..models.adashare import AdaShareBlock, AdaShareSupernet, check_decisions, shared_prefix
from ..tasks import TaskSpec
from .builder import GraphBuilder
from .registry import emit, register

ASPP_BRANCHES = 4  # DeepLab-v2 rates 6/12/18/24 (shared/METHODS.md)


@register(AdaShareBlock)
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


def _model(model: Any) -> AdaShareSupernet:
    if not isinstance(model, AdaShareSupernet):
        raise DeploymtlError(f"AdaShare surgeon given a {type(model).__name__} supernet",
                             hint="expected a checkpoint of family adashare")
    return model


def validate_plan(model: Any, decisions: dict[str, Any], tasks: list[str]) -> None:
    """One-line DeploymtlError for unknown tasks/blocks, missing tasks, wrong lengths, non-0/1 values."""
    m = _model(model)
    for t in tasks:
        if t not in m.task_names:
            raise DeploymtlError(f"AdaShare prune: unknown task '{t}'",
                                 hint=f"expected one of {', '.join(m.task_names)}")
    if not tasks:
        raise DeploymtlError("AdaShare prune: no tasks selected", hint=f"expected some of {', '.join(m.task_names)}")
    check_decisions(decisions, m.task_names, m.block_names, required=list(tasks))


def apply_plan(model: Any, decisions: dict[str, Any]) -> None:
    """Make the supernet's deployed mode follow the plan (its reference for parity checks)."""
    _model(model).set_decisions(decisions)


def _policies(decisions: dict[str, Any], tasks: list[str]) -> dict[str, list[int]]:
    return {t: [int(v) for v in decisions["policy"][t]] for t in tasks}


def build_graph(model: Any, decisions: dict[str, Any], tasks: list[str], options: dict[str, Any]) -> GraphBuilder:
    """The static tree for `tasks` (outputs in that order). Node names: `stem_*`, `b{l}_t{i}_*` for block l of
    the group whose first task is tasks[i], `head_{task}_*`."""
    m = _model(model)
    validate_plan(m, decisions, tasks)
    policy = _policies(decisions, tasks)
    share = bool(options.get("share_prefix", True))
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

    for group in ([tasks] if share else [[t] for t in tasks]):
        grow(group, stem, 0)
    for t in tasks:
        b.output(t, emit(b, m.heads[t], features[t], f"head_{t}"))
    return b


def _head_params(task: TaskSpec, cin: int, kind: str, hidden: int) -> int:
    """Parameters of a head after surgery (conv biases; BN folded into bias; dropout has none)."""
    c = task.out_channels
    if task.kind == "classification":
        return cin * c + c
    if kind == "aspp":
        return ASPP_BRANCHES * (hidden * cin * 9 + hidden + hidden * hidden + hidden + c * hidden + c)
    return hidden * cin * 9 + hidden + c * hidden + c


def block_runs(decisions: dict[str, Any], tasks: list[str], share_prefix: bool = True
               ) -> list[tuple[int, int]]:
    """Per block (executions, shortcut runs) in the static graph: a group is a distinct policy prefix (per task
    when not sharing); a block runs once per group that executes it, its ds once per group reaching it."""
    policy = _policies(decisions, tasks)
    n = len(next(iter(policy.values())))

    def key(t: str, upto: int) -> tuple:
        return tuple(policy[t][:upto]) if share_prefix else (t,)

    runs = []
    for depth in range(n):
        executed = {key(t, depth) for t in tasks if policy[t][depth] == 1}
        reaching = {key(t, depth) for t in tasks}
        runs.append((len(executed), len(reaching)))
    return runs


def expected_params(model: Any, decisions: dict[str, Any], tasks: list[str], options: dict[str, Any]) -> int:
    """Parameter count of the static model, from the plan and the layer shapes alone (not from the builder)."""
    m = _model(model)
    validate_plan(m, decisions, tasks)
    cfg = m.model_cfg
    total = cfg.width * cfg.in_channels * 49 + cfg.width  # stem conv7x7 + folded BN bias
    for slot, (execs, reach) in zip(m.slots, block_runs(decisions, tasks, bool(options.get("share_prefix", True))),
                                    strict=True):
        # A block run by several task groups (on different tensors) keeps ONE copy of its weights, as the
        # supernet does: the static graph shares the layer between the tree's branches.
        body = slot.cout * slot.cin * 9 + slot.cout + slot.cout * slot.cout * 9 + slot.cout
        total += body if execs else 0
        if slot.has_ds and reach:
            total += slot.cout * slot.cin + slot.cout
    task_specs = {t.name: t for t in m.tasks}
    for t in tasks:
        total += _head_params(task_specs[t], m.slots[-1].cout, cfg.head, cfg.head_hidden)
    return total


def summary(model: Any, decisions: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """Per task: blocks executed/skipped and the depth shared with each other task; overall: block runs in the
    static tree vs. the public code (every block, both branches, once per task)."""
    m = _model(model)
    validate_plan(m, decisions, tasks)
    policy = _policies(decisions, tasks)
    runs = block_runs(decisions, tasks)
    per_task = {}
    for t in tasks:
        per_task[t] = {
            "executed": sum(policy[t]),
            "skipped": [m.block_names[i] for i, v in enumerate(policy[t]) if v == 0],
            "shared_prefix": {o: shared_prefix([policy[t], policy[o]]) for o in tasks if o != t},
        }
    return {
        "family": "adashare",
        "rule": decisions.get("rule", "manual"),
        "blocks": list(m.block_names),
        "tasks": per_task,
        "shared_prefix_all": shared_prefix(list(policy.values())),
        "block_runs": sum(e for e, _ in runs),
        "block_runs_per_task_chains": sum(sum(p) for p in policy.values()),
        "block_runs_public": len(tasks) * m.num_blocks,
        "never_executed": [m.block_names[i] for i, (e, _) in enumerate(runs) if e == 0],
        "params": expected_params(m, decisions, tasks, {}),
    }


def draw(model: Any, decisions: dict[str, Any], tasks: list[str], ax: Any) -> None:
    """Tasks x blocks grid: colour = execute probability softmax(alpha)[0] (the hard policy where the plan
    has no probabilities), a dot where the block runs, a cross where it is skipped; '*' marks blocks with ds."""
    m = _model(model)
    validate_plan(m, decisions, tasks)
    policy = _policies(decisions, tasks)
    probs = decisions.get("probs") or {}
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
    ax.set_title(f"AdaShare policy (rule: {decisions.get('rule', 'manual')}; \u25cf run, \u2715 skip)")
    ax.figure.colorbar(image, ax=ax, label="P(execute)")
