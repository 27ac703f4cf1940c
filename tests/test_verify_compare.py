"""Per-output comparison statistics, tolerance presets/overrides and the metric gate's arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deploymtl.errors import DeploymtlError, InternalError
from deploymtl.tasks import TaskSpec
from deploymtl.verify.compare import (
    PRESETS,
    Accumulator,
    Tolerance,
    compare_arrays,
    compare_outputs,
    parse_output_tolerance,
    resolve_tolerances,
)
from deploymtl.verify.metrics_gate import metric_gate, relative_drop


def test_identical_outputs_pass_with_zero_error():
    ref = np.linspace(-2, 2, 60, dtype=np.float32).reshape(3, 4, 5)
    r = compare_arrays("seg", ref.copy(), ref, PRESETS["fp32"])
    assert r and r.passed
    assert (r.max_abs, r.mean_abs, r.max_rel, r.nan_inf, r.atol_needed) == (0.0, 0.0, 0.0, 0, 0.0)
    assert r.cosine == pytest.approx(1.0)


def test_statistics_and_atol_needed_are_exact():
    ref = np.array([[1.0, -2.0, 4.0, 0.0]], dtype=np.float32)
    out = ref + np.array([[0.01, 0.0, -0.02, 0.003]], dtype=np.float32)
    tol = Tolerance(atol=1e-3, rtol=1e-3)
    r = compare_arrays("x", out, ref, tol)
    assert not r
    assert r.max_abs == pytest.approx(0.02, rel=1e-5)
    assert r.mean_abs == pytest.approx((0.01 + 0.02 + 0.003) / 4, rel=1e-5)
    assert r.max_rel == pytest.approx(0.01, rel=1e-4)  # 0.01/1 beats 0.02/4; the zero reference is skipped
    # element 0 needs 0.01 - 1e-3*1 = 0.009, element 2 needs 0.02 - 1e-3*4 = 0.016, element 3 needs 0.003
    assert r.atol_needed == pytest.approx(0.016, rel=1e-4)
    assert "exceeds atol" in r.reason
    assert compare_arrays("x", out, ref, Tolerance(atol=0.0161, rtol=1e-3))  # the reported atol does pass


def test_max_rel_is_taken_above_the_tolerances_absolute_floor():
    """max_rel divides only where |ref| > atol + range_rel * max|ref| (where the relative bound decides): an int8
    output's near-zero elements, off by a quantisation step, no longer read as errors of 100x."""
    ref = np.array([100.0, 1e-5, 50.0, -20.0], dtype=np.float64)
    out = ref + np.array([1.0, 1e-3, 0.5, 0.0])
    int8_like = compare_arrays("q", out, ref, Tolerance(atol=1e-3, rtol=0.0, range_rel=0.1))  # floor 10.001
    assert int8_like.max_rel == pytest.approx(0.01) and int8_like.passed
    fp32_like = compare_arrays("q", out, ref, Tolerance(atol=1e-6, rtol=0.0))  # floor 1e-6: 1e-5 counts
    assert fp32_like.max_rel == pytest.approx(100.0) and not fp32_like.passed


def test_streamed_chunks_give_the_one_shot_statistics():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((9, 3, 4))
    out = ref + rng.normal(0, 1e-3, ref.shape)
    out[4, 1, 2] = np.nan
    tol = Tolerance(atol=1e-3, rtol=1e-2)
    acc = Accumulator("x", tol)
    for k in range(0, 9, 4):  # chunks of 4, 4, 1 samples
        acc.add(out[k:k + 4], ref[k:k + 4])
    streamed, whole = acc.result(), compare_arrays("x", out, ref, tol)
    assert streamed.shape == whole.shape == (9, 3, 4) and acc.elements == 108
    assert (streamed.max_abs, streamed.max_rel, streamed.nan_inf, streamed.passed, streamed.reason) == (
        whole.max_abs, whole.max_rel, whole.nan_inf, whole.passed, whole.reason) and whole.nan_inf == 1
    for field in ("mean_abs", "cosine", "atol_needed"):
        assert getattr(streamed, field) == pytest.approx(getattr(whole, field), rel=1e-12)
    acc.add(out[:2, :2], ref[:2, :2])
    assert not acc.result() and "does not continue (9, 3, 4)" in acc.result().reason
    ranged = Accumulator("x", Tolerance(atol=0.0, rtol=0.0, range_rel=0.1))
    ranged.add(out[:4], ref[:4])
    with pytest.raises(InternalError, match="range-relative tolerance"):
        ranged.add(out[4:], ref[4:])


def test_nan_inf_shape_and_cosine_failures():
    ref = np.ones((2, 3), dtype=np.float32)
    bad = ref.copy()
    bad[0, 1] = np.nan
    bad[1, 2] = np.inf
    r = compare_arrays("d", bad, ref, Tolerance(atol=10, rtol=0))
    assert not r and r.nan_inf == 2 and "2 NaN/Inf" in r.reason
    r = compare_arrays("d", np.ones((3, 2), np.float32), ref, PRESETS["fp32"])
    assert not r and "shape" in r.reason
    flipped = -ref
    r = compare_arrays("d", flipped, ref, Tolerance(atol=10, rtol=0, min_cosine=0.9))
    assert not r and r.cosine == pytest.approx(-1.0) and "cosine" in r.reason


def test_range_relative_tolerance_scales_with_the_output():
    ref = np.array([100.0, -50.0, 1.0], dtype=np.float32)
    out = ref + np.array([5.0, -5.0, 5.0], dtype=np.float32)
    assert compare_arrays("q", out, ref, Tolerance(atol=0.0, rtol=0.0, range_rel=0.05))  # 5 <= 0.05 * 100
    assert not compare_arrays("q", out, ref, Tolerance(atol=0.0, rtol=0.0, range_rel=0.04))


def test_report_is_truthy_only_when_every_output_passes_and_names_missing_outputs():
    ref = {"a": np.zeros(3, np.float32), "b": np.ones(3, np.float32)}
    rep = compare_outputs({"a": np.zeros(3, np.float32), "b": np.ones(3, np.float32)}, ref, PRESETS["fp32"])
    assert rep and rep.failed == []
    rep = compare_outputs({"a": np.zeros(3, np.float32)}, ref, PRESETS["fp32"])
    assert not rep and rep.failed == ["b"] and rep["b"].reason == "output missing"
    assert set(rep.to_dict()["a"]) >= {"max_abs", "max_rel", "mean_abs", "cosine", "nan_inf", "atol_needed",
                                       "passed"}


def test_tolerance_resolution_order_and_errors():
    tols = resolve_tolerances("int8", ["seg", "depth"], atol=0.5, per_output={"depth": {"rtol": 0.2}})
    assert tols["seg"] == Tolerance(0.5, PRESETS["int8"].rtol, PRESETS["int8"].range_rel, PRESETS["int8"].min_cosine)
    assert tols["depth"].atol == 0.5 and tols["depth"].rtol == 0.2
    with pytest.raises(DeploymtlError, match="unknown output 'normals'"):
        resolve_tolerances("fp32", ["seg"], per_output={"normals": {"atol": 1.0}})
    with pytest.raises(DeploymtlError, match="unknown precision 'fp8'"):
        resolve_tolerances("fp8", ["seg"])
    with pytest.raises(DeploymtlError, match="--atol -1"):
        resolve_tolerances("fp32", ["seg"], atol=-1)
    assert parse_output_tolerance("seg=1e-3:1e-2") == ("seg", {"atol": 1e-3, "rtol": 1e-2})
    assert parse_output_tolerance("depth=0.5") == ("depth", {"atol": 0.5})
    for bad in ("seg", "seg=", "seg=a", "=1", "seg=1:2:3", "seg=-1"):
        with pytest.raises(DeploymtlError, match="is not a per-output tolerance"):
            parse_output_tolerance(bad)


def test_relative_drop_direction():
    assert relative_drop(0.5, 0.45, lower_is_better=False) == pytest.approx(0.1)  # mIoU lost 10%
    assert relative_drop(0.5, 0.55, lower_is_better=False) == pytest.approx(-0.1)  # improved
    assert relative_drop(2.0, 2.2, lower_is_better=True) == pytest.approx(0.1)  # error grew 10%
    assert relative_drop(0.0, 0.01, lower_is_better=True) == pytest.approx(0.01)  # absolute at a zero reference
    assert relative_drop(1.0, math.nan, lower_is_better=True) == math.inf


def test_metric_gate_thresholds():
    tasks = [TaskSpec(name="seg", kind="segmentation", channels=5), TaskSpec(name="depth", kind="depth")]
    fp32 = {"seg": {"miou": 0.50, "pixel_acc": 0.8}, "depth": {"abs_err": 1.0, "rel_err": 0.3}}
    int8 = {"seg": {"miou": 0.495, "pixel_acc": 0.79}, "depth": {"abs_err": 0.99, "rel_err": 0.31}}
    gate = metric_gate(tasks, fp32, int8, precision="int8", budgets=0.02)
    assert gate and gate.tasks["seg"].drop == pytest.approx(0.01) and gate.tasks["depth"].drop < 0
    strict = metric_gate(tasks, fp32, int8, precision="int8", budgets=0.0)
    assert not strict and not strict.tasks["seg"].passed and strict.tasks["depth"].passed
    assert strict.to_dict()["tasks"]["seg"]["deltas"]["pixel_acc"]["drop"] == pytest.approx(0.0125)
    assert "FAILED" in strict.summary()
