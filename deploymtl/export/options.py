"""`ExportOptions`: every choice of one export, validated once, then read by every stage.

The CLI's flags (or a caller's values) are parsed once (`ExportOptions.parse`): target and precision are the recipe's
`config.Target`/`config.Precision`, ranges and choices are pydantic's, and a failure is one line naming the flag.
Five fields default to the model's own recipe (`export:` section: batch, opset, calibration samples, max metric
drop, bake_preprocessing): left unset (None) they are filled from it when the model is known (`with_recipe`), so the
stages always see complete options; so does `runtime` (`--for`), which may stay unset: `shaped_for` then resolves
it (ort-cpu for `--target onnx`; `--target trt` is always shaped for trt). The pipeline makes complete options from
its recipe directly (`from_recipe`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..budgets import Budgets, parse_budgets
from ..config import BatchSpec, ExportConfig, Precision, Runtime, Target, parse_batch
from ..errors import DeploymtlError, InternalError
from .onnx import MIN_OPSET

# Fields whose default is the model recipe's `export:` section (the same names there).
FROM_RECIPE = ("batch", "opset", "calibration_samples", "max_metric_drop", "bake_preprocessing")
# Wording of the one-line errors: the flag of a field where it is not `--<field with dashes>`, what a choice names,
# what an out-of-range value is and what to use instead, where the plain "--flag value (expected >= N)" says less.
_FLAGS = {"simplify": "--no-simplify", "runtime": "--for"}
_CHOICE = {"target": "target", "precision": "precision", "int8_activations": "scheme",
           "int8_output_layers": "precision", "runtime": "runtime"}
_OUT_OF_RANGE = {"opset": " is too old"}


class ExportOptions(BaseModel):
    """One export's options (module docstring). `int8_activations="asymmetric"` (uint8 activations, ONNX Runtime
    CPU only) trades TensorRT compatibility for a little speed on x86 CPUs (`export.quantize`);
    `int8_output_layers="fp32"` keeps the layer that writes each task output in fp32, "int8" quantises it too;
    `runtime` is the runtime the ONNX file is shaped for (`shaped_for`, `export.shaping`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    target: Target = "onnx"
    precision: Precision = "fp32"
    batch: BatchSpec | None = None
    opset: int | None = Field(default=None, ge=MIN_OPSET)
    calibration_samples: int | None = Field(default=None, ge=1)
    max_metric_drop: Budgets | None = None  # per task (`deploymtl.budgets`); over the recipe's in `with_recipe`
    bake_preprocessing: bool | None = None  # the graph takes raw uint8 pixels (`export.preprocess`)
    atol: float | None = None  # checked with the per-output tolerances (`verify.compare.resolve_tolerances`)
    rtol: float | None = None
    per_output: dict[str, dict[str, float]] = {}
    simplify: bool = True
    workspace_mb: int = Field(default=1024, ge=1)
    timing_cache: Path | None = None
    threads: int | None = Field(default=None, ge=1)
    int8_activations: Literal["symmetric", "asymmetric"] = "symmetric"
    int8_output_layers: Literal["fp32", "int8"] = "fp32"
    runtime: Runtime | None = None
    accuracy_control: bool = True  # int8/auto: revert groups to float until every budget holds (`export.mixed`)

    @field_validator("max_metric_drop", mode="before")
    @classmethod
    def _budgets(cls, value: Any) -> Any:
        return None if value is None else parse_budgets(value)  # a one-line error naming --max-metric-drop

    @field_validator("batch", mode="before")
    @classmethod
    def _batch(cls, value: Any) -> Any:
        return None if value is None else parse_batch(value, where="--batch")  # the one MIN:OPT:MAX parser

    @model_validator(mode="after")
    def _consistent(self) -> ExportOptions:
        _check_runtime(self.target, self.runtime, self.int8_activations)
        return self

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> ExportOptions:
        """Validate flag values (None = not given); a failure is one DeploymtlError line naming the flag."""
        try:
            return cls.model_validate({k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            raise _flag_error(exc) from None

    @classmethod
    def from_recipe(cls, recipe: ExportConfig, **values: Any) -> ExportOptions:
        """Complete options: the recipe's `export:` section, then `values` (target, precision, ...)."""
        return cls.parse({k: getattr(recipe, k) for k in FROM_RECIPE} | values).with_recipe(recipe)

    def with_recipe(self, recipe: ExportConfig) -> ExportOptions:
        """These options with every unset recipe field taken from `recipe` (already validated there)."""
        filled = {k: getattr(recipe, k) for k in FROM_RECIPE if getattr(self, k) is None}
        base = parse_budgets(recipe.max_metric_drop, where="export.max_metric_drop")
        filled["max_metric_drop"] = base if self.max_metric_drop is None else self.max_metric_drop.over(base)
        if "batch" in filled:
            filled["batch"] = parse_batch(filled["batch"], where="export.batch")
        if self.runtime is None and self.target == "onnx" and recipe.runtime is not None:
            filled["runtime"] = recipe.runtime  # the recipe's choice applies to ONNX targets only
            _check_runtime(self.target, recipe.runtime, self.int8_activations, where="export.runtime")
        return self.model_copy(update=filled)

    def require_complete(self) -> None:
        """The stages read the recipe fields unguarded: missing ones are our bug (`with_recipe` was skipped)."""
        missing = [k for k in FROM_RECIPE if getattr(self, k) is None]
        if missing:
            raise InternalError(f"export options without {', '.join(missing)}: with_recipe() was not applied")

    @property
    def symmetric(self) -> bool:
        return self.int8_activations == "symmetric"

    @property
    def shaped_for(self) -> Runtime:
        """The runtime the ONNX file is shaped for: `runtime` when set; otherwise trt for `--target trt` and ort-cpu
        for `--target onnx` (ONNX Runtime on the CPU is what deploymtl itself and most services run a file on;
        the fp32 ort-cpu file is zero-padded only, so every runtime reads it)."""
        if self.runtime is not None:
            return self.runtime
        return "trt" if self.target == "trt" else "ort-cpu"


def _check_runtime(target: str, runtime: str | None, activations: str, where: str = "--for") -> None:
    """A TensorRT engine is built from the trt form, and TensorRT reads symmetric activations only."""
    if target == "trt" and runtime not in (None, "trt"):
        raise DeploymtlError(f"{where} {runtime} cannot be combined with --target trt: the engine is built from the "
                             "TensorRT form of the graph", hint="leave --for out (or use --for trt) with --target trt")
    if activations != "symmetric" and (target == "trt" or runtime == "trt"):
        raise DeploymtlError("--int8-activations asymmetric cannot feed TensorRT (it needs zero points of 0)",
                             hint="use symmetric (the default) with --target trt or --for trt")


def _choices(annotation: Any) -> list[str]:
    """The literal values of a field's type, through `X | None`."""
    return [c for a in get_args(annotation) for c in (_choices(a) if get_args(a) else [a]) if isinstance(c, str)]


def _flag_error(exc: ValidationError) -> DeploymtlError:
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    flag = _FLAGS.get(field, "--" + field.replace("_", "-"))
    value, ctx = err.get("input"), err.get("ctx") or {}
    info = ExportOptions.model_fields.get(field)
    if err["type"] == "literal_error" and info is not None:
        return DeploymtlError(f"{flag}: unknown {_CHOICE.get(field, 'value')} '{value}'",
                              hint=f"expected one of {', '.join(_choices(info.annotation))}")
    bound = next(((op, ctx[k]) for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if k in ctx), None)
    if bound is not None:
        return DeploymtlError(f"{flag} {value}{_OUT_OF_RANGE.get(field, '')}",
                              hint=f"expected {bound[0]} {bound[1]:g}")
    if err["type"] == "finite_number":
        return DeploymtlError(f"{flag} {value}", hint="expected a finite number")
    return DeploymtlError(f"{flag} {value!r}: {err['msg'].removeprefix('Value error, ')}")
