"""`ExportOptions`: flags validated once (one-line errors naming the flag), the recipe's `export:` section filling
what the flags leave unset, and the report's JSON keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deploymtl.config import BatchSpec, ExportConfig
from deploymtl.errors import DeploymtlError
from deploymtl.export.options import ExportOptions

RECIPE = ExportConfig(batch="1:2:4", opset=17, calibration_samples=8, max_metric_drop=0.1)


def test_flags_win_and_the_recipe_fills_the_rest() -> None:
    flags = ExportOptions.parse({"precision": "int8", "opset": 18, "batch": None, "threads": 2})
    assert (flags.batch, flags.opset, flags.calibration_samples, flags.max_metric_drop) == (None, 18, None, None)
    options = flags.with_recipe(RECIPE)
    assert options.batch == BatchSpec(1, 2, 4) and options.opset == 18  # the flag, not the recipe's 17
    assert (options.calibration_samples, options.max_metric_drop.uniform_relative(), options.threads) == (8, 0.1, 2)
    assert options.target == "onnx" and options.precision == "int8" and options.symmetric
    assert options.with_recipe(ExportConfig()) == options  # nothing left to fill
    with pytest.raises(ValidationError, match="frozen"):
        options.precision = "fp32"


def test_from_recipe_is_complete() -> None:
    options = ExportOptions.from_recipe(RECIPE, target="trt", precision="fp16")
    assert (options.target, options.precision, options.batch, options.calibration_samples) == \
        ("trt", "fp16", BatchSpec(1, 2, 4), 8)
    assert options.with_recipe(ExportConfig()) == options


@pytest.mark.parametrize(("values", "line"), [
    ({"threads": 0}, "--threads 0 (expected >= 1)"),
    ({"workspace_mb": 0}, "--workspace-mb 0 (expected >= 1)"),
    ({"opset": 16}, "--opset 16 is too old (expected >= 17)"),
    ({"max_metric_drop": float("nan")}, "--max-metric-drop nan (expected a finite number)"),
    ({"max_metric_drop": -0.5}, "--max-metric-drop -0.5 (expected a fraction >= 0, e.g. 0.01)"),
    ({"simplify": "maybe"}, "--no-simplify 'maybe'"),
    ({"target": "tflite"}, "--target: unknown target 'tflite' (expected one of onnx, trt)"),
    ({"batch": "8:4:1"}, "--batch: '8:4:1' needs 1 <= MIN <= OPT <= MAX"),
    ({"target": "trt", "int8_activations": "asymmetric"}, "--int8-activations asymmetric cannot feed TensorRT"),
    ({"precisions": ["fp32"]}, "--precisions"),  # a recipe field that is not an export option
    ({"runtime": "tflite"}, "--for: unknown runtime 'tflite' (expected one of ort-cpu, trt, generic)"),
    ({"target": "trt", "runtime": "ort-cpu"}, "--for ort-cpu cannot be combined with --target trt"),
    ({"runtime": "trt", "int8_activations": "asymmetric"}, "--int8-activations asymmetric cannot feed TensorRT"),
])
def test_one_line_errors_name_the_flag(values: dict, line: str) -> None:
    with pytest.raises(DeploymtlError) as exc:
        ExportOptions.parse(values)
    assert exc.value.exit_code == 2 and line in exc.value.one_line() and "\n" not in exc.value.one_line()


def test_the_runtime_a_file_is_shaped_for() -> None:
    """ort-cpu unless said otherwise for ONNX; trt always for a TensorRT engine; the recipe's `export.runtime`
    fills an unset `--for` of an ONNX target only, and is checked like the flag."""
    assert ExportOptions().shaped_for == "ort-cpu" and ExportOptions(target="trt").shaped_for == "trt"
    assert ExportOptions.parse({"runtime": "generic"}).shaped_for == "generic"
    recipe = ExportConfig(runtime="generic")
    assert ExportOptions().with_recipe(recipe).shaped_for == "generic"
    assert ExportOptions.parse({"runtime": "trt"}).with_recipe(recipe).shaped_for == "trt"  # the flag wins
    assert ExportOptions.parse({"target": "trt"}).with_recipe(recipe).shaped_for == "trt"
    asym = ExportOptions.parse({"int8_activations": "asymmetric"})
    with pytest.raises(DeploymtlError, match="asymmetric cannot feed TensorRT"):
        asym.with_recipe(ExportConfig(runtime="trt"))
    assert ExportOptions.from_recipe(recipe, target="onnx", precision="fp32").shaped_for == "generic"
