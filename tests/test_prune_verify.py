"""The family-independent verification machinery on a hand-made two-task supernet whose removals are known exactly:
parity statistics, the proof of removal (count, gradient, perturbation), and FLOPs/params per task."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deploymtl.flops import measure, measure_stages
from deploymtl.models.base import Supernet
from deploymtl.models.layers import ConvBN
from deploymtl.surgery.builder import GraphBuilder
from deploymtl.surgery.registry import emit
from deploymtl.surgery.verify import check_parity, proof_tensors, prove_removal, removed_prefixes
from deploymtl.tasks import TaskSpec
from deploymtl.verify.compare import Tolerance, compare_arrays

H, W = 8, 8


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Toy(Supernet):
    """a = head_a(relu(branch_a(h) + leak * branch_x(h))), b = head_b(h), h = trunk(image). Deployed, branch_x is
    multiplied by `leak` (0: removable exactly); searching, by sigmoid(gate)."""

    family = "adashare"

    def __init__(self, leak: float = 0.0) -> None:
        super().__init__([TaskSpec(name="a", kind="depth"), TaskSpec(name="b", kind="depth")])
        torch.manual_seed(0)
        self.trunk = ConvBN(3, 4)
        self.branch_a = ConvBN(4, 4, relu=False)
        self.branch_x = ConvBN(4, 4, relu=False)
        self.head_a = nn.Conv2d(4, 1, 1)
        self.head_b = nn.Conv2d(4, 1, 1)
        self.gate = nn.Parameter(torch.zeros(()))
        self.leak = leak
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.normal_(1.0, 0.2)
                    m.bias.normal_(0.0, 0.2)
        self.eval()

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(image)
        w = self.leak if self.deployed else torch.sigmoid(self.gate)
        a = torch.relu(self.branch_a(h) + w * self.branch_x(h))
        return {"a": self.head_a(a), "b": self.head_b(h)}

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.gate]

    def decisions(self) -> dict:
        return {"rule": "branch_x removed"}

    def set_decisions(self, decisions: dict) -> None:
        pass


def build(model: Toy, *, drop_channel: bool = False, no_grad: bool = False) -> GraphBuilder:
    """The correct surgery (trunk, branch_a, both heads), or one that wrongly drops channel 0 of branch_a."""
    def run() -> GraphBuilder:
        b = GraphBuilder()
        h = emit(b, model.trunk, "image", "trunk")
        keep = torch.tensor([1, 2, 3]) if drop_channel else None
        a = b.relu("a_relu", emit(b, model.branch_a, h, "branch_a", out_index=keep))
        b.output("a", b.conv_module("head_a", a, model.head_a, in_index=keep))
        b.output("b", b.conv_module("head_b", h, model.head_b))
        return b

    if no_grad:  # a builder that leaves autograd: the proof must fall back to probing
        with torch.no_grad():
            return run()
    return run()


def _images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, H, W, generator=torch.Generator().manual_seed(1))


def _proof(model: Toy, **kw: bool):
    static = build(model, **kw).build()
    n = sum(p.numel() for p in static.parameters())
    expected = (4 * 3 * 9 + 4) + (4 * 4 * 9 + 4) + 2 * (4 + 1)  # folded trunk, branch_a, two heads
    if kw.get("drop_channel"):
        expected -= 4 * 9 + 1 + 1  # one filter of branch_a (weights + bias) and one input of head_a
    return static, prove_removal(model, lambda: build(model, **kw), _images(), ["a", "b"], static_params=n,
                                 expected_params=expected)


def test_exact_removal_is_proven() -> None:
    model = Toy().set_deployed(True)
    static, proof = _proof(model)
    assert proof, proof.to_dict()
    assert proof.static_params == proof.expected_params == 4 * 3 * 9 + 4 + 4 * 4 * 9 + 4 + 10
    assert proof.tracking == "autograd"
    removed = {"branch_x.conv.weight", "branch_x.bn.weight", "branch_x.bn.bias", "branch_x.bn.running_mean",
               "branch_x.bn.running_var"}
    assert set(proof.removed_tensors) == removed and proof.partial_tensors == []
    assert proof.removed_elements == 4 * 4 * 9 + 4 * 4 and proof.perturbed_elements == proof.removed_elements
    assert proof.grad_outside_kept == 0 and proof.bit_identical and proof.max_output_change == 0.0
    assert removed_prefixes(proof.removed_tensors, list(proof_tensors(model))) == ["branch_x"]
    # parity of the folded static model
    parity = check_parity(static, model, _images(8), ["a", "b"], atol=1e-5, rtol=1e-4)
    assert parity and parity.failed == [] and parity.samples == 8
    assert all(0 < t.max_abs < 1e-5 for t in parity.tasks.values())


def test_small_leak_passes_parity_but_fails_the_proof() -> None:
    """A removed part with a tiny influence (Aux-NAS's small link) is within tolerance, never bit-identical."""
    model = Toy(leak=1e-7).set_deployed(True)
    static, proof = _proof(model)
    assert check_parity(static, model, _images(), ["a", "b"], atol=1e-4, rtol=1e-3)
    assert not proof
    assert proof.params_match
    assert proof.changed_outputs == ["a"] and proof.max_output_change > 0
    assert proof.grad_outside_kept > 0 and proof.grad_outside_examples[0].startswith("branch_x.")


def test_surgery_that_drops_a_used_channel_fails_parity_and_proof() -> None:
    model = Toy().set_deployed(True)
    static, proof = _proof(model, drop_channel=True)
    parity = check_parity(static, model, _images(), ["a", "b"], atol=1e-4, rtol=1e-3)
    assert not parity and parity.failed == ["a"] and parity.tasks["b"].passed
    assert parity.tasks["a"].max_abs > 1e-3
    assert not proof
    assert "branch_a.conv.weight" in proof.partial_tensors
    assert proof.grad_outside_kept > 0 and proof.changed_outputs == ["a"]


def test_builder_outside_autograd_falls_back_to_probing() -> None:
    model = Toy().set_deployed(True)
    _, proof = _proof(model, no_grad=True)
    assert proof.tracking == "autograd+probe"
    assert proof, proof.to_dict()
    assert "branch_x.conv.weight" in proof.removed_tensors and "trunk.conv.weight" not in proof.removed_tensors


def test_parity_statistics_and_tolerance_rule() -> None:
    ref = {"t": torch.tensor([[1.0, -2.0, 0.0, 1e-6]])}
    ours = {"t": torch.tensor([[1.001, -2.0, 5e-5, 0.0]])}
    res = check_parity(lambda x: ours, lambda x: ref, torch.zeros(1, 3, 2, 2), ["t"], atol=1e-4, rtol=1e-3)
    t = res.tasks["t"]
    assert t.max_abs == pytest.approx(1e-3, rel=1e-4)
    assert t.max_rel == pytest.approx(1e-3, rel=1e-3)  # 1e-6 is below atol: excluded from the relative error
    assert t.passed and res  # |d| <= atol + rtol * |ref| everywhere
    res = check_parity(lambda x: ours, lambda x: ref, torch.zeros(1, 3, 2, 2), ["t"], atol=1e-4, rtol=1e-4)
    assert not res and res.failed == ["t"] and res.to_dict()["t"]["passed"] is False


def test_prune_parity_is_the_export_comparison_in_batches() -> None:
    """One comparison core: the surgeon's parity over batches of torch tensors reports what `compare_arrays`
    reports on the whole arrays (so `max_rel` means one thing in prune_report.json and export_report.json)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(10, 3, 4, 4, generator=gen)
    ours = lambda x: {"t": x * 1.002 + 1e-5}  # noqa: E731
    ref = lambda x: {"t": x}  # noqa: E731
    res = check_parity(ours, ref, images, ["t"], atol=1e-4, rtol=1e-3, batch_size=3)
    whole = compare_arrays("t", ours(images)["t"].double().numpy(), images.double().numpy(), Tolerance(1e-4, 1e-3))
    t = res.tasks["t"]
    assert (t.max_abs, t.max_rel, t.passed, t.elements) == (whole.max_abs, whole.max_rel, whole.passed, 480)
    assert t.mean_abs == pytest.approx(whole.mean_abs, rel=1e-12) and not t.passed  # 2e-3|x| + 1e-5 > 1e-4 + 1e-3|x|
    assert res.samples == 10


def test_flops_and_params_per_task_follow_the_dataflow() -> None:
    model = Toy().set_deployed(True)
    static = build(model).build()
    x = torch.zeros(1, 3, H, W)
    trunk, branch, head = 2 * 4 * 3 * 9 * H * W, 2 * 4 * 4 * 9 * H * W, 2 * 1 * 4 * H * W
    masked = measure(model.forward, model, x, ["a", "b"])
    # the masked supernet still computes branch_x (times 0) for task a
    assert masked.flops == {"a": trunk + 2 * branch + head, "b": trunk + head, "total": trunk + 2 * branch + 2 * head}
    bn = 8
    assert masked.params["b"] == 4 * 3 * 9 + bn + 5
    assert masked.params["a"] == 4 * 3 * 9 + bn + 2 * (4 * 4 * 9 + bn) + 5
    assert masked.params["total"] == sum(p.numel() for p in model.parameters())
    costs = measure_stages(model, static, ["a", "b"], x)
    after = {"a": trunk + branch + head, "b": trunk + head, "total": trunk + branch + 2 * head}
    assert costs["flops"]["after"] == after
    assert costs["params"]["after"] == {"a": 112 + 148 + 5, "b": 112 + 5, "total": 112 + 148 + 10}
    assert costs["flops"]["before"] == costs["flops"]["masked"] == masked.flops  # public_forward defaults to forward
