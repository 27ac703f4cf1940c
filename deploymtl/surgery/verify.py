"""Verification of a static model against the supernet it was cut from: numeric parity and the proof of removal.

Parity (per task, on real batches of the recipe's validation data): the static model against the supernet in
deployed mode, through the comparison core every export check uses (`deploymtl.verify.compare.Accumulator`, batch
by batch): an element passes when |static - ref| <= atol + rtol * |ref| (numpy's `allclose` rule) and no NaN/Inf
appears that the supernet does not have; `max_abs`, `mean_abs` and `max_rel` (over the elements with |ref| > atol)
mean what they mean in `export_report.json`.

Proof of removal: three checks, all on the supernet itself, so that they say something the parity numbers cannot.

1. *Count*: the static model holds exactly `expected_params` parameters, the number the family derives from the
   plan alone (independently of the graph builder).
2. *Kept set*: the elements of supernet weights the static model was built from (its "kept set" K) are found by
   automatic differentiation through the surgeon: the graph builder runs with every weight and BatchNorm statistic
   requiring grad and `Tensor.detach` made the identity, so each static weight is a differentiable function of the
   supernet tensors it was folded from; a vector-Jacobian product with a random cotangent marks K (zero only where
   the static model does not depend on the element). Static weights the builder made outside autograd (e.g. under
   `no_grad`, or from a copied module) are attributed by probing: each supernet tensor autograd did not attribute
   is perturbed in turn, the graph rebuilt, and a tensor that changes them is kept whole. Then the gradient of the
   kept outputs of the supernet in deployed mode (random cotangent, real images) must vanish outside K: every
   element that influences a kept output to first order is something the static model kept.
3. *Perturbation*: every element outside K (the removed set R) is replaced by a random value of the tensor's scale
   (BatchNorm variances stay positive) and the supernet's kept outputs in deployed mode must stay bit-identical.
   This is exact (no tolerance) and non-local (large perturbations), so a removed part with a small but non-zero
   influence (e.g. an Aux-NAS link at 1e-9) fails it.

Scope: weights (`Supernet.weight_parameters()`) and BatchNorm running statistics. Decision parameters (policy
logits, gate alphas/betas, link alphas) and other buffers are the plan itself; what the static model needs of them
is frozen into the plan or folded into its weights, and parity covers them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import InternalError
from ..verify.compare import Accumulator, Tolerance
from .builder import GraphBuilder


# -- parity -----------------------------------------------------------------------------------------------------
@dataclass
class TaskParity:
    max_abs: float
    max_rel: float
    mean_abs: float
    passed: bool
    elements: int


@dataclass
class ParityResult:
    """Per-task parity; truthy when every task passed, and still carrying its statistics."""

    tasks: dict[str, TaskParity]
    atol: float
    rtol: float
    samples: int

    def __bool__(self) -> bool:
        return all(t.passed for t in self.tasks.values())

    @property
    def failed(self) -> list[str]:
        return [name for name, t in self.tasks.items() if not t.passed]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(t) for name, t in self.tasks.items()}


class _ParityAccumulator:
    """Per task, the comparison core's streaming statistics over the parity batches."""

    def __init__(self, atol: float, rtol: float) -> None:
        self.atol, self.rtol = atol, rtol
        self.tasks: dict[str, Accumulator] = {}

    def update(self, task: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
        if ours.shape != ref.shape:
            raise InternalError(f"static output {task} has shape {tuple(ours.shape)}, supernet {tuple(ref.shape)}")
        acc = self.tasks.setdefault(task, Accumulator(task, Tolerance(atol=self.atol, rtol=self.rtol)))
        acc.add(ours.detach().cpu().double().numpy(), ref.detach().cpu().double().numpy())

    def result(self, samples: int) -> ParityResult:
        results = {t: (acc.result(), acc.elements) for t, acc in self.tasks.items()}
        tasks = {t: TaskParity(max_abs=r.max_abs, max_rel=r.max_rel, mean_abs=r.mean_abs, passed=r.passed, elements=n)
                 for t, (r, n) in results.items()}
        return ParityResult(tasks, self.atol, self.rtol, samples)


@torch.no_grad()
def check_parity(ours: Callable[[torch.Tensor], dict[str, torch.Tensor]],
                 reference: Callable[[torch.Tensor], dict[str, torch.Tensor]], images: torch.Tensor,
                 tasks: list[str], *, atol: float, rtol: float, batch_size: int = 8) -> ParityResult:
    """Compare `ours(images)` with `reference(images)` per task, in batches of `batch_size`."""
    acc = _ParityAccumulator(atol, rtol)
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size]
        a, b = ours(x), reference(x)
        for task in tasks:
            acc.update(task, a[task], b[task])
    return acc.result(int(images.shape[0]))


# -- proof of removal -------------------------------------------------------------------------------------------
@dataclass
class RemovalProof:
    """The three checks of the module docstring; truthy when all hold."""

    static_params: int
    expected_params: int
    tracking: str  # "autograd", "autograd+probe" or "probe"
    supernet_elements: int  # weight and BatchNorm-statistic elements in scope
    kept_elements: int
    removed_elements: int
    removed_tensors: list[str] = field(default_factory=list)  # supernet tensors removed entirely
    partial_tensors: list[str] = field(default_factory=list)  # tensors with some elements removed
    grad_elements: int = 0  # elements with a non-zero gradient of the kept outputs
    grad_outside_kept: int = 0
    grad_outside_examples: list[str] = field(default_factory=list)
    perturbed_elements: int = 0
    max_output_change: float = 0.0
    changed_outputs: list[str] = field(default_factory=list)

    @property
    def params_match(self) -> bool:
        return self.static_params == self.expected_params

    @property
    def bit_identical(self) -> bool:
        return not self.changed_outputs

    def __bool__(self) -> bool:
        return self.params_match and self.grad_outside_kept == 0 and self.bit_identical

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"params_match": self.params_match, "bit_identical": self.bit_identical,
                               "passed": bool(self)}


class _DetachIsIdentity(TorchFunctionMode):
    """Lets autograd see through the graph builder: `detach()` keeps the graph; leaving autograd on purpose
    (`numpy`, `tolist`, `item`) still works."""

    _LEAVE = {torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__float__,
              torch.Tensor.__int__, torch.Tensor.__bool__, torch.Tensor.__index__}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        kwargs = kwargs or {}
        if func is torch.Tensor.detach:
            return args[0]
        if func in self._LEAVE:
            return func(args[0].detach(), *args[1:], **kwargs)
        return func(*args, **kwargs)


def proof_tensors(model: Any) -> dict[str, torch.Tensor]:
    """The supernet tensors in the proof's scope: weights and BatchNorm running statistics, by state-dict name."""
    arch = {id(p) for p in model.arch_parameters()}
    out = {n: p for n, p in model.named_parameters() if id(p) not in arch}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
            for stat in ("running_mean", "running_var"):
                t = getattr(mod, stat)
                if t is not None:
                    out[f"{mod_name}.{stat}" if mod_name else stat] = t
    return out


def _perturb_(name: str, t: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> None:
    noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
    if name.endswith("running_var"):
        t[mask] = (t * torch.exp(0.7 * noise.clamp(-1, 1)))[mask]  # stays positive
    else:
        scale = float(t.detach().float().std()) if t.numel() > 1 else 0.0
        t[mask] = (t + noise * max(scale, 1e-2))[mask]


def cotangent(shape: torch.Size | tuple[int, ...], gen: torch.Generator, dtype: torch.dtype = torch.float32
              ) -> torch.Tensor:
    """A random cotangent with no zero element: |c| in [0.5, 1.5), random sign. `torch.randn` draws an exact 0.0
    about once in 10^7 elements, and a paper-scale model's ASPP heads hold 10^7 weights: a zero there would mark a
    kept weight element as removed, and the proof would then fail on it."""
    magnitude = torch.rand(shape, generator=gen, dtype=dtype) + 0.5
    sign = torch.randint(0, 2, shape, generator=gen).to(dtype) * 2 - 1
    return magnitude * sign


def _static_state(build: Callable[[], GraphBuilder]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in build().state.items()}


def _leaves(t: torch.Tensor) -> set[int]:
    """ids of the autograd leaves `t` was computed from."""
    if t.grad_fn is None:
        return {id(t)} if t.requires_grad else set()
    leaves: set[int] = set()
    seen: set[int] = set()
    stack = [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        var = getattr(fn, "variable", None)  # AccumulateGrad: a leaf
        if var is not None:
            leaves.add(id(var))
        else:
            stack.extend(f for f, _ in fn.next_functions)
    return leaves


def kept_masks(tensors: dict[str, torch.Tensor], build: Callable[[], GraphBuilder], known: set[int],
               seed: int = 0) -> tuple[dict[str, torch.Tensor], str]:
    """Per supernet tensor, a boolean mask of the elements the static model was built from (see module docstring).
    `known` holds the ids of every supernet tensor (decision parameters included): a static weight reaching any
    other autograd leaf (e.g. a copied module) or none at all was made outside autograd and is probed."""
    gen = torch.Generator().manual_seed(seed)
    kept = {n: torch.zeros(t.shape, dtype=torch.bool) for n, t in tensors.items()}
    flags = {n: t.requires_grad for n, t in tensors.items()}
    watch: list[str] | None = None
    try:
        for t in tensors.values():
            t.requires_grad_(True)
        with torch.enable_grad(), _DetachIsIdentity():
            state = build().state
        tracked = {k: v for k, v in state.items() if v.requires_grad}
        watch = [k for k, v in state.items() if k not in tracked or not _leaves(v) <= known]
        if tracked:
            names = list(tensors)
            loss = sum((v * cotangent(v.shape, gen, v.dtype)).sum() for v in tracked.values())
            grads = torch.autograd.grad(loss, [tensors[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads, strict=True):
                if g is not None:
                    kept[n] |= g != 0
    except RuntimeError:  # the builder does something autograd cannot follow: attribute everything by probing
        watch = None
    finally:
        for n, t in tensors.items():
            t.requires_grad_(flags[n])
    if watch == []:
        return kept, "autograd"
    base = _static_state(build)
    probe_all = watch is None
    watch = list(base) if watch is None else watch
    with torch.no_grad():
        for n, t in tensors.items():
            # Tensors autograd already saw in the static model are not probed (one rebuild each): if one of their
            # unseen elements mattered, the perturbation check would fail, never pass wrongly.
            if bool(kept[n].all()) or (bool(kept[n].any()) and not probe_all):
                continue
            original = t.detach().clone()
            _perturb_(n, t, torch.ones_like(kept[n]), gen)
            try:
                state = _static_state(build)
            finally:
                t.copy_(original)
            if any(not torch.equal(state[k], base[k]) for k in watch):
                kept[n] |= True
    return kept, "probe" if probe_all else "autograd+probe"


def prove_removal(model: Any, build: Callable[[], GraphBuilder], images: torch.Tensor, tasks: list[str], *,
                  static_params: int, expected_params: int, seed: int = 0) -> RemovalProof:
    """Run the three checks of the module docstring. `model` is the supernet with the plan applied, `build` rebuilds
    the static graph from it, `images` (N,C,H,W) real inputs, `tasks` the kept outputs."""
    tensors = proof_tensors(model)
    known = {id(t) for t in tensors.values()} | {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}
    kept, tracking = kept_masks(tensors, build, known, seed)
    was_deployed, was_training = model.deployed, model.training
    model.eval().set_deployed(True)
    gen = torch.Generator().manual_seed(seed + 1)
    try:
        # 2. first-order influence of every weight on the kept outputs
        weights = {n: t for n, t in tensors.items() if isinstance(t, nn.Parameter)}
        with torch.enable_grad():
            out = model(images)
            loss = sum((out[t] * cotangent(out[t].shape, gen)).sum() for t in tasks)
            grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
        grad_elements, outside, examples = 0, 0, []
        for n, g in zip(weights, grads, strict=True):
            if g is None:
                continue
            nz = g != 0
            grad_elements += int(nz.sum())
            bad = int((nz & ~kept[n]).sum())
            if bad:
                outside += bad
                examples.append(f"{n} ({bad})")
        # 3. bit-identical kept outputs with every removed element perturbed
        with torch.no_grad():
            ref = {t: v.clone() for t, v in model(images).items() if t in tasks}
            originals = {n: t.detach().clone() for n, t in tensors.items() if not bool(kept[n].all())}
            try:
                for n in originals:
                    _perturb_(n, tensors[n], ~kept[n], gen)
                new = model(images)
            finally:
                for n, original in originals.items():
                    tensors[n].copy_(original)
        changed = [t for t in tasks if not torch.equal(new[t], ref[t])]
        change = max(((new[t].double() - ref[t].double()).abs().max().item() for t in tasks), default=0.0)
    finally:
        model.set_deployed(was_deployed)
        model.train(was_training)
    total = sum(t.numel() for t in tensors.values())
    n_kept = sum(int(m.sum()) for m in kept.values())
    return RemovalProof(
        static_params=static_params, expected_params=expected_params, tracking=tracking, supernet_elements=total,
        kept_elements=n_kept, removed_elements=total - n_kept,
        removed_tensors=[n for n, m in kept.items() if not bool(m.any())],
        partial_tensors=[n for n, m in kept.items() if bool(m.any()) and not bool(m.all())],
        grad_elements=grad_elements, grad_outside_kept=outside, grad_outside_examples=examples[:5],
        perturbed_elements=total - n_kept, max_output_change=float(change), changed_outputs=changed)


def removed_prefixes(removed_tensors: list[str], all_names: list[str]) -> list[str]:
    """The shortest module prefixes (e.g. `blocks.3.body`, `aux.0`) all of whose proof tensors were removed."""
    removed = set(removed_tensors)
    out = set()
    for name in removed:
        parts = name.split(".")
        best = name
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i]) + "."
            if all(n in removed for n in all_names if n.startswith(prefix)):
                best = prefix[:-1]
                break
        out.add(best)
    return sorted(out)
