"""Typed recipes: one source of truth for every stage, validated on load, resolved copy written beside
every artifact.

A recipe names a family, its tasks and data, the family's `model` and `search` settings (validated by the
family's own config classes, see `deploymtl.families`), and optional sections per pipeline stage.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .budgets import parse_budgets
from .errors import DeploymtlError, validation_message
from .families import FAMILY_NAMES
from .tasks import TaskSpec

Family = Literal[FAMILY_NAMES]  # type: ignore[valid-type]  # the registry's names, in its order
Precision = Literal["fp32", "fp16", "int8", "auto"]  # auto: int8 where it is faster and keeps every budget
Target = Literal["onnx", "trt"]
# The runtime an exported ONNX file is shaped for (`deploymtl export --for`, docs/export.md "Shaped for a runtime").
Runtime = Literal["ort-cpu", "trt", "generic"]


_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
# A recipe's name names its default output folders (artifacts/<stage>/<name>): one plain path component.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_device(device: str) -> str:
    """`device` if it is one deploymtl trains on (auto, cpu, cuda, cuda:N); ValueError naming the choices."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ValueError(f"{device!r} is not a device; expected auto, cpu, cuda or cuda:N")
    return device


@dataclass(frozen=True)
class BatchSpec:
    """The batch specification `MIN:OPT:MAX`: the single source of truth for the ONNX dynamic batch axis, TensorRT
    optimisation profiles and serving configs (the recipe's `export.batch`; read by every later stage)."""

    min: int
    opt: int
    max: int

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def contains(self, n: int) -> bool:
        return self.min <= n <= self.max


def parse_batch(text: str | BatchSpec, where: str = "--batch") -> BatchSpec:
    """Parse `MIN:OPT:MAX` (or a single `N` meaning N:N:N); requires 1 <= MIN <= OPT <= MAX."""
    if isinstance(text, BatchSpec):
        return text
    parts = str(text).strip().split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise DeploymtlError(f"{where}: '{text}' is not a batch specification",
                             hint="expected MIN:OPT:MAX, e.g. 1:4:8") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise DeploymtlError(f"{where}: '{text}' has {len(values)} fields", hint="expected MIN:OPT:MAX, e.g. 1:4:8")
    lo, opt, hi = values
    if lo < 1 or not lo <= opt <= hi:
        raise DeploymtlError(f"{where}: '{text}' needs 1 <= MIN <= OPT <= MAX", hint="e.g. 1:4:8")
    return BatchSpec(lo, opt, hi)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


PIXEL_SCALE = 1 / 255  # deploymtl's own convention: pixels 0..255 -> [0, 1], then mean/std


class DataConfig(_Strict):
    """The data and the model's input convention: the model takes `(pixel * scale - mean) / std` per channel, where
    `pixel` is the 0..255 value of the image in `channel_order` (mean and std in that order too). deploymtl's own
    models: RGB, scale 1/255; an imported public AdaShare model: BGR, scale 1, the Caffe means, std 1."""

    source: Literal["synthetic", "nyuv2"] = "synthetic"
    root: str | None = None
    height: int = Field(default=48, ge=8)
    width: int = Field(default=64, ge=8)
    train_size: int = Field(default=384, ge=0, description="samples (synthetic) or cap, 0 = all (nyuv2)")
    val_size: int = Field(default=96, ge=0)
    seed: int = 0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.25, 0.25, 0.25)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    scale: PositiveFloat = Field(default=PIXEL_SCALE, description="multiplies the 0..255 pixel before mean/std")
    targets: bool = Field(default=True, description="false: images only (an imported model, whose tasks have no "
                                                    "labels in this data); task metrics are then skipped")


class TrainConfig(_Strict):
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    arch_lr: float = Field(default=1e-2, gt=0, description="learning rate of decisions (policy/gates/alphas)")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    eval_every: int = Field(default=1, ge=1, description="validate every N epochs")
    max_steps: int | None = Field(default=None, ge=1, description="cap on optimizer steps per stage")
    single_task_baselines: bool = True
    baseline_epochs: int = Field(default=4, ge=1)
    threads: int | None = Field(default=None, ge=1)

    _device = field_validator("device")(classmethod(lambda cls, v: check_device(v)))


class PruneConfig(_Strict):
    tasks: list[str] | None = None
    round_channels: int = Field(default=1, ge=1, description="round kept channel counts up to a multiple")
    options: dict[str, Any] = Field(default={}, description="the family's surgeon options besides round_channels "
                                                            "(validated by the family's options model)")
    accept_approximation: bool = False
    atol: float = Field(default=1e-4, gt=0)
    rtol: float = Field(default=1e-3, ge=0)
    verify_samples: int = Field(default=32, ge=1)


class ExportConfig(_Strict):
    targets: list[Target] = Field(default=["onnx"], min_length=1)
    precisions: list[Precision] = Field(default=["fp32", "int8"], min_length=1)
    batch: str = "1:4:8"
    opset: int = Field(default=17, ge=17)
    calibration_samples: int = Field(default=64, ge=1)
    max_metric_drop: float | str | dict[str, float | str] = Field(
        default=0.05, description="each task's allowed loss of its primary metric: a relative fraction, '1%', "
                                  "'abs:0.002', or per task ('seg=0.5%,depth=abs:0.002' or a map); see budgets.py")
    bake_preprocessing: bool = Field(default=False, description="the exported graph takes raw uint8 pixels (N, C, "
                                                                "H, W) in data.channel_order and normalises them")
    runtime: Runtime | None = Field(default=None, description="the runtime `onnx` targets are shaped for "
                                    "(default ort-cpu); the `trt` target is always shaped for trt")

    @field_validator("max_metric_drop", "batch")
    @classmethod
    def _parsed(cls, value: Any, info: ValidationInfo) -> Any:
        """Checked by the one parser each has (budgets, MIN:OPT:MAX); the recipe keeps the value as written."""
        parse = parse_budgets if info.field_name == "max_metric_drop" else parse_batch
        try:
            parse(value, where=str(info.field_name))
        except DeploymtlError as exc:
            raise ValueError(exc.one_line().removeprefix(f"{info.field_name}").removeprefix(": ").strip()) from None
        return value


class ProfileConfig(_Strict):
    batch_sizes: list[PositiveInt] = Field(default=[1, 2, 4, 8], min_length=1)
    threads: int = Field(default=2, ge=1)
    duration_s: float = Field(default=1.0, gt=0)
    streams: int = Field(default=4, ge=1)
    fps: float = Field(default=30.0, gt=0)
    max_batch: int = Field(default=4, ge=1)
    max_delay_ms: float = Field(default=5.0, ge=0)


class Recipe(_Strict):
    name: str = Field(description="names the default output folders: letters, digits, _ . -")
    family: Family
    seed: int = 0
    tasks: list[TaskSpec] = Field(min_length=1)
    data: DataConfig = DataConfig()
    model: dict[str, Any] = {}
    search: dict[str, Any] = {}
    train: TrainConfig = TrainConfig()
    prune: PruneConfig = PruneConfig()
    export: ExportConfig = ExportConfig()
    profile: ProfileConfig = ProfileConfig()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not _NAME.fullmatch(name) or name in (".", ".."):
            raise ValueError(f"{name!r} must be one plain folder name (letters, digits, _ . -), it names the "
                             "default output folders")
        return name

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, tasks: list[TaskSpec]) -> list[TaskSpec]:
        names = [t.name for t in tasks]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"task names must be unique, repeated: {sorted(dup)}")
        return tasks

    @model_validator(mode="after")
    def _family_sections(self) -> Recipe:
        from .families import family_spec  # the family validates its own sections

        spec = family_spec(self.family)
        for section, cls in (("model", spec.model_config_cls), ("search", spec.search_config_cls)):
            try:
                cls.model_validate(getattr(self, section))
            except ValidationError as exc:  # keep the section in the error's location
                raise _SectionError(section, exc) from None
        try:  # the backbone's own rule, checked on load rather than when the model is built
            spec.model_config_cls.model_validate(self.model).block_counts()
        except ValueError as exc:
            raise _FieldError("model.blocks", str(exc)) from None
        if "round_channels" in self.prune.options:
            raise _FieldError("prune.options.round_channels", "set prune.round_channels instead")
        try:
            spec.surgeon.options_model.model_validate(self.prune.options)
        except ValidationError as exc:
            raise _SectionError("prune.options", exc) from None
        return self

    @model_validator(mode="after")
    def _prune_tasks(self) -> Recipe:
        names = [t.name for t in self.tasks]
        chosen = self.prune.tasks
        if chosen is not None and (not chosen or any(t not in names for t in chosen)):
            raise _FieldError("prune.tasks", f"{chosen} is not a non-empty subset of the recipe's tasks {names}")
        return self

    def model_cfg(self) -> Any:
        from .families import family_spec

        return family_spec(self.family).model_config_cls.model_validate(self.model)

    def search_cfg(self) -> Any:
        from .families import family_spec

        return family_spec(self.family).search_config_cls.model_validate(self.search)

    def resolved(self) -> dict[str, Any]:
        """The full recipe with every default filled in (written beside artifacts)."""
        data = self.model_dump(mode="json")
        data["model"] = self.model_cfg().model_dump(mode="json")
        data["search"] = self.search_cfg().model_dump(mode="json")
        return data


class _SectionError(DeploymtlError):
    """A family's `model:`/`search:` section failed the family's own validation."""

    def __init__(self, section: str, exc: ValidationError) -> None:
        self.section, self.exc = section, exc
        super().__init__(validation_message(exc, "recipe", prefix=(section,)))


class _FieldError(DeploymtlError):
    """A rule across fields, raised inside validation; `parse_recipe` adds the file to its location."""

    def __init__(self, loc: str, message: str) -> None:
        self.loc, self.message = loc, message
        super().__init__(f"recipe: {loc}: {message}")


def parse_recipe(data: Any, path: Path | str = "<recipe>") -> Recipe:
    if not isinstance(data, dict):
        raise DeploymtlError(f"{path}: a recipe must be a mapping at the top level, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except _SectionError as exc:
        raise DeploymtlError(validation_message(exc.exc, path, prefix=(exc.section,))) from None
    except _FieldError as exc:
        raise DeploymtlError(f"{path}: {exc.loc}: {exc.message}") from None
    except ValidationError as exc:
        raise DeploymtlError(validation_message(exc, path)) from None


def _read_yaml(p: Path) -> Any:
    """The YAML document of a recipe file: UTF-8 text, plain YAML (no Python tags: safe_load never runs code)."""
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DeploymtlError(f"cannot read recipe {p}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        binary = raw[:4] == b"PK\x03\x04" or raw[:1] == b"\x80" or b"\x00" in raw[:1024]
        what = "a binary file (a .pt checkpoint?)" if binary else f"not UTF-8 text (byte 0x{raw[exc.start]:02x} " \
            f"at offset {exc.start})"
        raise DeploymtlError(f"recipe {p} is {what}", hint="expected a UTF-8 YAML recipe, e.g. "
                             "recipes/adashare_tiny.yaml") from None
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise DeploymtlError(f"{p}: YAML tag{at} is not plain data ({' '.join(str(exc.problem).split())})",
                             hint="recipes are plain YAML: mappings, lists, strings and numbers") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise DeploymtlError(f"{p}: not valid YAML{at}") from None


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and validate a YAML recipe; `overrides` maps dotted keys ("train.max_steps") to values."""
    p = Path(path)
    if not p.is_file():
        raise DeploymtlError(f"recipe not found: {p}", hint="expected a YAML file, e.g. recipes/adashare_tiny.yaml")
    data = _read_yaml(p)
    if not isinstance(data, dict):
        raise DeploymtlError(f"{p}: a recipe must be a mapping at the top level, got {type(data).__name__}")
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DeploymtlError(f"{p}: {part}: expected a mapping to set {key}, got {type(node).__name__}")
        node[leaf] = value
    return parse_recipe(data, p)
