"""`deploymtl import adashare`: the public code's checkpoint + policy file + architecture -> a deploymtl
`supernet.pt` whose decisions are the policy file's (rule "imported"), with `import_report.json` / `.md`.

Order of work: the output directory, then every input (options, architecture, checkpoint and its agreement with the
architecture, policy) is read and checked before anything is written, so bad input writes nothing (exit 2, one line).
Then the static tree `deploymtl prune` will build is made once to measure what deploying saves against the public
inference (`cost.py`), and the set {supernet.pt, import_report.json, import_report.md} is written as one
(`deploymtl.outdir.output_set`). `deploymtl prune`, `export`, `verify`, `profile` and `inspect` then work on
supernet.pt as on a trained one; its recipe says the data is synthetic images without targets (`convert.recipe`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import __version__
from ...config import parse_recipe
from ...errors import DeploymtlError
from ...formats.supernet import write_supernet
from ...io import atomic_write_text, sha256_file, write_json
from ...outdir import check_output_dir, output_set
from .architecture import PublicArchitecture, from_flags, from_yaml
from .checkpoint import ignored_entries, read_checkpoint
from .convert import KeyMap, apply_policy, build_model, decisions, recipe
from .cost import deployed_tree, measure_savings
from .policy import read_policy
from .report import REPORT_FORMAT, policy_section, render_markdown

IMPORT_FILES = ("supernet.pt", "import_report.json", "import_report.md")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class ImportOptions:
    """The command's options besides the three input files (`deploymtl import adashare --help`)."""

    config: Path | None = None  # the public YAML; or backbone + tasks
    backbone: str | None = None
    tasks: str | None = None
    skip_layer: int = 0
    input_size: tuple[int, int] | None = None  # default: the dataset's test resolution
    bake_preprocessing: bool = False
    calibration_samples: int = 64
    latency_repeats: int = 5


def parse_size(text: str) -> tuple[int, int]:
    """`480x640` -> (480, 640)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or min(int(m.group(1)), int(m.group(2))) < 8:
        raise DeploymtlError(f"--input-size {text!r}", hint="expected HEIGHTxWIDTH, each >= 8, e.g. 480x640")
    return int(m.group(1)), int(m.group(2))


def _architecture(o: ImportOptions) -> PublicArchitecture:
    if o.config is not None:
        if o.backbone or o.tasks:
            raise DeploymtlError("--config and --backbone/--tasks both given",
                                 hint="give the public YAML, or --backbone and --tasks, not both")
        return from_yaml(o.config)
    if not (o.backbone and o.tasks):
        raise DeploymtlError("no architecture: the checkpoint does not store it",
                             hint="give --config nyu_v2_2task.yml, or --backbone resnet18 --tasks seg:40,sn:3")
    return from_flags(o.backbone, o.tasks, o.skip_layer)


def _check_options(o: ImportOptions) -> None:
    if o.calibration_samples < 1 or o.latency_repeats < 0:
        raise DeploymtlError(f"--calibration-samples {o.calibration_samples} / --latency-repeats "
                             f"{o.latency_repeats}", hint="expected calibration samples >= 1, repeats >= 0")


def _read_lines(arch: PublicArchitecture, ckpt: Any, keymap: KeyMap, policy: Any, model_cfg: dict) -> list[str]:
    fields = ", ".join(f"{k} {v}" for k, v in arch.read.items() if v is not None)
    lines = [f"architecture ({arch.source}): {fields}",
             f"checkpoint['mtl-net']: {len(keymap.keys)} tensors mapped onto the supernet's weights",
             f"widths from the tensors: first segment {model_cfg['width']} (backbone.conv1.weight), ASPP hidden "
             f"{model_cfg['head_hidden']} (task1_fc1_c0.conv1.weight)",
             f"policy file: {', '.join(f'task{i + 1}_policy' for i in range(len(policy.rows)))}, {policy.dtype} "
             f"({arch.blocks - policy.skip_layer}, 2) each -> the decisions, rule 'imported'"]
    if policy.skip_layer:
        lines.append(f"skip_layer {policy.skip_layer}: the first {policy.skip_layer} block(s) always execute, as in "
                     "the public forward")
    if ckpt.info:
        lines.append("recorded, not used: " + ", ".join(f"{k} {v}" for k, v in ckpt.info.items()))
    return lines + [f"note: {n}" for n in ckpt.notes]


def _ignored(arch: PublicArchitecture, ckpt: Any, keymap: KeyMap) -> list[dict[str, str]]:
    out = ignored_entries(ckpt)
    if keymap.logits:
        out.append({"what": f"checkpoint['mtl-net'] {', '.join(keymap.logits)}",
                    "why": "the policy logits of a re-train checkpoint are their initial values (re-train restores "
                           "them before training), not the searched ones; the policy file is the decision"})
    if keymap.filled:
        out.append({"what": f"{len(keymap.filled)} missing num_batches_tracked counters",
                    "why": "BatchNorm's update counter (older torch omits it): set to 0, unused in eval mode"})
    if arch.ignored:
        out.append({"what": f"config keys {', '.join(arch.ignored)}",
                    "why": "training, data-path and logging settings: the deployed computation does not use them"})
    out.append({"what": "supernet buffers logits.*, temperature, curriculum_k",
                "why": "deploymtl's search state, no public counterpart: left at their defaults, unused when deployed"})
    return out


def import_adashare(checkpoint: str | Path, policy_path: str | Path, out_dir: str | Path,
                    options: ImportOptions | None = None) -> dict[str, Any]:
    """Import (module docstring); returns the report, also written as import_report.json."""
    t0 = time.perf_counter()
    o = options or ImportOptions()
    check_output_dir(out_dir)
    out = Path(out_dir)
    _check_options(o)
    arch = _architecture(o)
    ckpt = read_checkpoint(checkpoint)
    model, keymap = build_model(arch, ckpt)  # the checkpoint against the architecture first: its errors say more
    policy = read_policy(policy_path, len(arch.tasks), arch.blocks, arch.skip_layer)
    apply_policy(model, policy)
    size = o.input_size or arch.test_size()
    name = out.name if _NAME.fullmatch(out.name) else "adashare_import"
    rec = parse_recipe(recipe(name, arch, ckpt, size, bake_preprocessing=o.bake_preprocessing,
                              calibration_samples=o.calibration_samples), "imported recipe")
    savings = measure_savings(model, deployed_tree(model), size, o.latency_repeats).to_dict()
    d = rec.data
    report = {
        "format": REPORT_FORMAT, "importer": "adashare", "public_code": "github sunxm2357/AdaShare",
        "source": {"checkpoint": {"path": str(ckpt.path), "sha256": sha256_file(ckpt.path),
                                  "format": ckpt.storage_format, "entries": ckpt.entries},
                   "policy": {"path": str(policy_path), "sha256": sha256_file(policy_path)},
                   "config": arch.source},
        "architecture": {"source": arch.source, "backbone": arch.backbone, "layers": arch.layers,
                         "width": rec.model["width"], "head_hidden": rec.model["head_hidden"],
                         "skip_layer": arch.skip_layer, "dataset": arch.dataset,
                         "tasks": [t.model_dump() | {"public": f"task{i + 1}"} for i, t in enumerate(rec.tasks)],
                         "input": {"channels": 3, "height": d.height, "width": d.width, "mean": list(d.mean),
                                   "std": list(d.std), "scale": d.scale, "channel_order": d.channel_order,
                                   "bake_preprocessing": rec.export.bake_preprocessing}},
        "read": _read_lines(arch, ckpt, keymap, policy, rec.model),
        "ignored": _ignored(arch, ckpt, keymap),
        "policy": policy_section(model),
        "cost": savings,
        "artifact": str(out / "supernet.pt"),
        "next": f"deploymtl prune {out / 'supernet.pt'}",
        "deploymtl_version": __version__, "seconds": None,
    }
    imported = {k: report[k] for k in ("importer", "public_code", "source", "cost")}
    with output_set(out, owned=IMPORT_FILES) as stage:
        write_supernet(stage / "supernet.pt", rec, model.state_dict(), decisions(model, policy), metrics={},
                       imported=imported)
        report["seconds"] = round(time.perf_counter() - t0, 3)
        write_json(stage / "import_report.json", report)
        atomic_write_text(stage / "import_report.md", render_markdown(report))
    return report
