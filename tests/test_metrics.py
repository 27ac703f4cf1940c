"""Task metrics and losses against hand-computed values (NYUv2 conventions, shared/METHODS.md)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deploymtl.metrics import TaskMeter, confusion_matrix, delta_mtl, normal_angles, segmentation_scores
from deploymtl.tasks import METRICS, PRIMARY_METRIC, TaskSpec, postprocess, task_loss

SEG3 = TaskSpec(name="seg", kind="segmentation", channels=3)
DEPTH = TaskSpec(name="depth", kind="depth")
NORMALS = TaskSpec(name="normal", kind="normals")
CLS = TaskSpec(name="count", kind="classification", channels=4)


def _logits(pred: torch.Tensor, classes: int) -> torch.Tensor:
    """One-hot logits (N, C, H, W) whose argmax is `pred` (N, H, W)."""
    return F.one_hot(pred, classes).permute(0, 3, 1, 2).float() * 5.0


def _rotated(angle_deg: float) -> list[float]:
    """A unit vector at `angle_deg` from +z."""
    a = math.radians(angle_deg)
    return [math.sin(a), 0.0, math.cos(a)]


# -- segmentation ----------------------------------------------------------------------------------------
# ground truth / prediction, -1 = ignore. Valid pixels: (0,0) (0,1) (1,1) (1,1) (2,2).
GT = torch.tensor([[[0, 0, 1], [1, 2, -1]]])
PRED = torch.tensor([[[0, 1, 1], [1, 2, 0]]])


def test_confusion_matrix_skips_ignore_pixels() -> None:
    conf = confusion_matrix(PRED, GT, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]  # rows = truth, columns = prediction
    assert int(conf.sum()) == 5


def test_miou_and_pixel_accuracy_by_hand() -> None:
    meter = TaskMeter(SEG3)
    meter.update(_logits(PRED, 3), GT)
    scores = meter.compute()
    # IoU: class 0 = 1/(2+1-1) = 1/2, class 1 = 2/(2+3-2) = 2/3, class 2 = 1/1; pixel acc = 4/5.
    assert scores["miou"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert scores["pixel_acc"] == pytest.approx(0.8)
    assert list(scores) == list(METRICS["segmentation"])


def test_ignore_pixels_do_not_count_whatever_the_prediction() -> None:
    worse = PRED.clone()
    worse[0, 1, 2] = 2  # the ignored pixel predicted as another class
    a, b = TaskMeter(SEG3), TaskMeter(SEG3)
    a.update(_logits(PRED, 3), GT)
    b.update(_logits(worse, 3), GT)
    assert a.compute() == b.compute()


def test_miou_skips_classes_absent_from_truth_and_prediction() -> None:
    seg5 = TaskSpec(name="seg", kind="segmentation", channels=5)
    meter = TaskMeter(seg5)
    meter.update(_logits(PRED, 5), GT)
    assert meter.compute()["miou"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    # A class predicted but never true counts with IoU 0.
    pred = torch.tensor([[[0, 4, 1], [1, 2, 0]]])
    meter = TaskMeter(seg5)
    meter.update(_logits(pred, 5), GT)
    assert meter.compute()["miou"] == pytest.approx((0.5 + 2 / 2 + 1.0 + 0.0) / 4)


def test_segmentation_accumulates_one_confusion_matrix_over_the_set() -> None:
    # Batch 1 is perfect on class 0 only, batch 2 gets 1 of 3 class-1 pixels right.
    gt1, pr1 = torch.tensor([[[0, 0]]]), torch.tensor([[[0, 0]]])
    gt2, pr2 = torch.tensor([[[1, 1, 1]]]), torch.tensor([[[1, 0, 0]]])
    meter = TaskMeter(TaskSpec(name="s", kind="segmentation", channels=2))
    meter.update(_logits(pr1, 2), gt1)
    meter.update(_logits(pr2, 2), gt2)
    scores = meter.compute()
    # Whole set: class 0 tp=2, union=2+4-2=4 -> 0.5; class 1 tp=1, union=3+1-1=3 -> 1/3. Per-batch mean would
    # be (1.0 + (0 + 1/3)/2)/2 = 0.583.
    assert scores["miou"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert scores["pixel_acc"] == pytest.approx(3 / 5)


def test_segmentation_scores_empty_is_zero() -> None:
    assert segmentation_scores(torch.zeros(3, 3, dtype=torch.int64)) == {"miou": 0.0, "pixel_acc": 0.0}


# -- depth -----------------------------------------------------------------------------------------------
def test_depth_abs_and_rel_error_on_valid_pixels_only() -> None:
    target = torch.tensor([[[[2.0, 0.0], [4.0, 1.0]]]])  # 0 = invalid
    pred = torch.tensor([[[[3.0, 50.0], [2.0, 1.0]]]])
    meter = TaskMeter(DEPTH)
    meter.update(pred, target)
    scores = meter.compute()
    assert scores["abs_err"] == pytest.approx((1 + 2 + 0) / 3)
    assert scores["rel_err"] == pytest.approx((1 / 2 + 2 / 4 + 0) / 3)


def test_depth_averages_over_pixels_not_batches() -> None:
    meter = TaskMeter(DEPTH)
    meter.update(torch.full((1, 1, 1, 3), 2.0), torch.full((1, 1, 1, 3), 1.0))  # 3 pixels, error 1
    meter.update(torch.full((1, 1, 1, 1), 5.0), torch.full((1, 1, 1, 1), 1.0))  # 1 pixel, error 4
    meter.update(torch.full((1, 1, 1, 2), 9.0), torch.zeros(1, 1, 1, 2))  # all invalid
    assert meter.compute()["abs_err"] == pytest.approx((3 * 1 + 4) / 4)
    assert meter.compute()["rel_err"] == pytest.approx((3 * 1 + 4) / 4)


# -- normals ---------------------------------------------------------------------------------------------
def test_normal_angle_statistics_by_hand() -> None:
    angles = [0.0, 10.0, 20.0, 45.0]
    pred = torch.tensor([_rotated(a) for a in angles] + [[1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 5)
    target = torch.tensor([[0.0, 0.0, 1.0]] * 4 + [[0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 5)  # last invalid
    got = normal_angles(pred * 3.0, target)  # raw (unnormalised) output: only the direction counts
    assert got.tolist() == pytest.approx(angles, abs=1e-3)
    meter = TaskMeter(NORMALS)
    meter.update(pred * 3.0, target)
    scores = meter.compute()
    assert list(scores) == list(METRICS["normals"])
    assert scores["mean_angle"] == pytest.approx(18.75, abs=1e-3)
    assert scores["median_angle"] == pytest.approx(15.0, abs=1e-3)  # np.median: mean of the middle two
    assert scores["within_11.25"] == pytest.approx(0.5)
    assert scores["within_22.5"] == pytest.approx(0.75)
    assert scores["within_30"] == pytest.approx(0.75)


def test_normals_accumulate_over_batches_and_empty_is_nan() -> None:
    meter = TaskMeter(NORMALS)
    for a in (0.0, 20.0, 40.0):
        meter.update(torch.tensor(_rotated(a)).reshape(1, 3, 1, 1), torch.tensor([0.0, 0, 1]).reshape(1, 3, 1, 1))
    scores = meter.compute()
    assert scores["mean_angle"] == pytest.approx(20.0, abs=1e-3)
    assert scores["median_angle"] == pytest.approx(20.0, abs=1e-3)
    empty = TaskMeter(NORMALS)
    empty.update(torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    assert all(math.isnan(v) for v in empty.compute().values())


def test_opposite_normal_is_180_degrees() -> None:
    t = torch.tensor([0.0, 0.0, 1.0]).reshape(1, 3, 1, 1)
    assert normal_angles(-t, t).item() == pytest.approx(180.0, abs=1e-2)


# -- classification --------------------------------------------------------------------------------------
def test_accuracy_by_hand() -> None:
    meter = TaskMeter(CLS)
    logits = F.one_hot(torch.tensor([0, 1, 2, 3]), 4).float()
    meter.update(logits, torch.tensor([0, 1, 2, 0]))
    meter.update(F.one_hot(torch.tensor([3, 3]), 4).float(), torch.tensor([3, -1]))  # -1 ignored
    assert meter.compute() == {"accuracy": pytest.approx(4 / 5)}


# -- Delta_MTL -------------------------------------------------------------------------------------------
def test_delta_mtl_sign_conventions() -> None:
    seg = TaskSpec(name="seg", kind="segmentation", channels=3)
    single = {"seg": {"miou": 0.5, "pixel_acc": 0.7}, "depth": {"abs_err": 1.0, "rel_err": 0.2}}
    multi = {"seg": {"miou": 0.55, "pixel_acc": 0.7}, "depth": {"abs_err": 0.9, "rel_err": 0.22}}
    # +10 (higher miou), 0, +10 (lower abs error is better), -10 (higher rel error is worse).
    assert delta_mtl([seg, DEPTH], multi, single) == pytest.approx((10 + 0 + 10 - 10) / 4)
    better = {"seg": {"miou": 0.6, "pixel_acc": 0.8}, "depth": {"abs_err": 0.5, "rel_err": 0.1}}
    worse = {"seg": {"miou": 0.4, "pixel_acc": 0.6}, "depth": {"abs_err": 1.5, "rel_err": 0.3}}
    assert delta_mtl([seg, DEPTH], better, single) > 0
    assert delta_mtl([seg, DEPTH], worse, single) < 0
    assert delta_mtl([seg, DEPTH], single, single) == 0.0


def test_delta_mtl_skips_zero_and_nan_references() -> None:
    single = {"count": {"accuracy": 0.0}, "depth": {"abs_err": 2.0, "rel_err": float("nan")}}
    multi = {"count": {"accuracy": 0.5}, "depth": {"abs_err": 1.0, "rel_err": 0.1}}
    assert delta_mtl([CLS, DEPTH], multi, single) == pytest.approx(50.0)
    assert math.isnan(delta_mtl([CLS], multi, single))


def test_every_kind_has_a_primary_metric_among_its_metrics() -> None:
    assert set(PRIMARY_METRIC) == set(METRICS)
    for kind, metric in PRIMARY_METRIC.items():
        assert metric in METRICS[kind]
    assert METRICS["depth"] == {"abs_err": True, "rel_err": True}
    assert METRICS["segmentation"] == {"miou": False, "pixel_acc": False}


# -- losses ----------------------------------------------------------------------------------------------
def test_losses_ignore_invalid_pixels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 3)
    expect = F.cross_entropy(logits.permute(0, 2, 3, 1).reshape(-1, 3)[:5], GT.reshape(-1)[:5])
    assert task_loss(SEG3, logits, GT).item() == pytest.approx(expect.item(), rel=1e-6)

    target = torch.tensor([[[[2.0, 0.0], [4.0, 1.0]]]])
    pred = torch.tensor([[[[3.0, 50.0], [2.0, 1.0]]]])
    assert task_loss(DEPTH, pred, target).item() == pytest.approx(1.0)

    out = torch.tensor([_rotated(60.0), [1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 2) * 4.0
    tgt = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 2)
    assert task_loss(NORMALS, out, tgt).item() == pytest.approx(0.5, abs=1e-5)  # 1 - cos 60


@pytest.mark.parametrize("task,out,target", [
    (SEG3, torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), -1)),
    (CLS, torch.randn(2, 4), torch.tensor([-1, -1])),
    (DEPTH, torch.randn(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)),
    (NORMALS, torch.randn(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)),
])
def test_all_invalid_batch_gives_a_zero_loss_with_gradient(task, out, target) -> None:
    out.requires_grad_(True)
    loss = task_loss(task, out, target)
    assert loss.item() == 0.0
    loss.backward()
    assert out.grad is not None and torch.equal(out.grad, torch.zeros_like(out))


def test_postprocess_normalises_normals_only() -> None:
    x = torch.tensor([3.0, 0.0, 4.0]).reshape(1, 3, 1, 1)
    assert postprocess(NORMALS, x).flatten().tolist() == pytest.approx([0.6, 0.0, 0.8])
    assert torch.equal(postprocess(DEPTH, x[:, :1]), x[:, :1])
