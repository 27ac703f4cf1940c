"""The architecture a public AdaShare checkpoint was trained with, which the checkpoint itself does not store.

It comes from the public code's YAML config (`--config nyu_v2_2task.yml`: `backbone`, `tasks`, `tasks_num_class`,
`skip_layer`, `policy_model`, `dataload.dataset`) or from explicit flags (`--backbone resnet18 --tasks seg:40,sn:3`).
Task `t` of the public files (`task{t}_logits`, `task{t}_fc1_c*`, `task{t}_policy`) is the t-th task of that list.

Public task names map to deploymtl kinds: `seg` -> segmentation (C classes), `sn` -> normals (3), `depth` -> depth
(1). Taskonomy's `keypoint` and `edge` have no deploymtl kind and are refused, as are ResNet-101 (Bottleneck
blocks) and the instance-specific policy model: the public code's only other choices.

The input convention is the public dataloaders': BGR pixels 0..255 minus the Caffe means, no std; the input size is
the dataset's test resolution unless `--input-size` says otherwise (NYU_v2 480x640, CityScapes 256x512, Taskonomy
256x256).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...errors import DeploymtlError
from ...models.backbone import DEPTHS
from ...tasks import TaskSpec

CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)  # the public dataloaders' means, B, G, R
BACKBONES = {"ResNet18": "resnet18", "ResNet34": "resnet34"}
KINDS = {"seg": "segmentation", "sn": "normals", "depth": "depth"}
TEST_SIZES = {"NYU_v2": (480, 640), "CityScapes": (256, 512), "Taskonomy": (256, 256)}
DEFAULT_SIZE = TEST_SIZES["NYU_v2"]


@dataclass(frozen=True)
class PublicTask:
    name: str  # the public name (seg, sn, depth): it names the deploymtl task and its output
    classes: int

    def spec(self) -> TaskSpec:
        """The deploymtl task: the public name, its kind, raw output at feature resolution (docs/methods.md)."""
        kind = KINDS[self.name]
        channels = self.classes if kind == "segmentation" else None
        return TaskSpec(name=self.name, kind=kind, channels=channels, resolution="features")


@dataclass(frozen=True)
class PublicArchitecture:
    backbone: str  # resnet18 | resnet34
    tasks: list[PublicTask]
    skip_layer: int = 0
    dataset: str | None = None
    source: str = "flags"  # the YAML file, or "flags"
    read: dict[str, Any] = field(default_factory=dict)  # the YAML fields used, for the report
    ignored: list[str] = field(default_factory=list)  # the YAML's other top-level keys

    @property
    def layers(self) -> list[int]:
        return list(DEPTHS[self.backbone])

    @property
    def blocks(self) -> int:
        return sum(self.layers)

    def task_specs(self) -> list[TaskSpec]:
        return [t.spec() for t in self.tasks]

    def test_size(self) -> tuple[int, int]:
        return TEST_SIZES.get(self.dataset or "", DEFAULT_SIZE)


def _task(name: Any, classes: Any, where: str) -> PublicTask:
    if name not in KINDS:
        raise DeploymtlError(f"{where}: task {name!r} has no deploymtl kind",
                             hint=f"expected tasks among {', '.join(KINDS)} (keypoint and edge are not supported)")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise DeploymtlError(f"{where}: task {name} has {classes!r} classes", hint="expected a positive integer")
    fixed = {"sn": 3, "depth": 1}
    if name in fixed and classes != fixed[name]:
        raise DeploymtlError(f"{where}: task {name} has {classes} output channels, a {KINDS[name]} task has "
                             f"{fixed[name]}")
    if name == "seg" and classes < 2:
        raise DeploymtlError(f"{where}: task seg has {classes} class", hint="expected at least 2 classes")
    return PublicTask(name, classes)


def _unique(tasks: list[PublicTask], where: str) -> list[PublicTask]:
    names = [t.name for t in tasks]
    if not tasks or len(set(names)) != len(names):
        raise DeploymtlError(f"{where}: tasks {names} must be a non-empty list without repeats")
    return tasks


def from_yaml(path: str | Path) -> PublicArchitecture:
    """The architecture of a public YAML config (module docstring); plain YAML only (`yaml.safe_load`)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeploymtlError(f"config not found: {p}", hint="expected the public code's YAML, e.g. "
                             "yamls/adashare/nyu_v2_2task.yml") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DeploymtlError(f"config {p} is not a readable plain YAML file ({type(exc).__name__})",
                             hint="expected the public code's YAML, e.g. yamls/adashare/nyu_v2_2task.yml") from None
    if not isinstance(data, dict):
        raise DeploymtlError(f"config {p}: the top level is a {type(data).__name__}, expected a mapping")
    for key in ("backbone", "tasks", "tasks_num_class"):
        if key not in data:
            raise DeploymtlError(f"config {p}: no '{key}' field", hint="expected the public AdaShare YAML fields "
                                 "backbone, tasks, tasks_num_class")
    backbone = data["backbone"]
    if backbone not in BACKBONES:
        raise DeploymtlError(f"config {p}: backbone {backbone!r} is not supported",
                             hint="expected ResNet18 or ResNet34 (ResNet101's Bottleneck blocks are not)")
    names, classes = data["tasks"], data["tasks_num_class"]
    if not isinstance(names, list) or not isinstance(classes, list) or len(names) != len(classes):
        raise DeploymtlError(f"config {p}: tasks {names!r} and tasks_num_class {classes!r} must be lists of one "
                             "length")
    policy_model = data.get("policy_model", "task-specific")
    if policy_model != "task-specific":
        raise DeploymtlError(f"config {p}: policy_model {policy_model!r} is not supported",
                             hint="expected task-specific (the instance-specific policy network is out of scope)")
    skip = data.get("skip_layer", 0) or 0
    if isinstance(skip, bool) or not isinstance(skip, int) or not 0 <= skip < sum(DEPTHS[BACKBONES[backbone]]):
        raise DeploymtlError(f"config {p}: skip_layer {skip!r}", hint="expected an integer from 0 to blocks - 1")
    dataload = data.get("dataload") if isinstance(data.get("dataload"), dict) else {}
    dataset = dataload.get("dataset")
    tasks = _unique([_task(n, c, f"config {p}") for n, c in zip(names, classes, strict=True)], f"config {p}")
    used = {"backbone": backbone, "tasks": names, "tasks_num_class": classes, "skip_layer": skip,
            "policy_model": policy_model, "dataload.dataset": dataset}
    ignored = [("dataload (all but dataset)" if k == "dataload" else str(k)) for k in data
               if k not in ("backbone", "tasks", "tasks_num_class", "skip_layer", "policy_model")]
    return PublicArchitecture(BACKBONES[backbone], tasks, skip, dataset if isinstance(dataset, str) else None,
                              str(p), used, ignored)


def from_flags(backbone: str, tasks: str, skip_layer: int = 0) -> PublicArchitecture:
    """`--backbone resnet18|resnet34 --tasks seg:40,sn:3[,depth:1]` (public task names, in the public order)."""
    if backbone not in BACKBONES.values():
        raise DeploymtlError(f"--backbone {backbone!r}", hint="expected resnet18 or resnet34")
    items = [t.strip() for t in tasks.split(",") if t.strip()]
    parsed = []
    for item in items:
        name, sep, count = item.partition(":")
        if not sep or not count.strip().isdigit():
            raise DeploymtlError(f"--tasks {item!r} is not NAME:CLASSES", hint="e.g. --tasks seg:40,sn:3")
        parsed.append(_task(name.strip(), int(count), "--tasks"))
    if not 0 <= skip_layer < sum(DEPTHS[backbone]):
        raise DeploymtlError(f"--skip-layer {skip_layer}", hint="expected an integer from 0 to blocks - 1")
    return PublicArchitecture(backbone, _unique(parsed, "--tasks"), skip_layer,
                              read={"backbone": backbone, "tasks": [t.name for t in parsed],
                                    "tasks_num_class": [t.classes for t in parsed], "skip_layer": skip_layer})
