"""`deploymtl import auxnas`: the release's checkpoint + its JSON config -> a deploymtl `pruned.pt` of the primary
network alone (or, with `--keep-links`, of the supernet with every link at sigmoid(alpha)), with plan.json and
import_report.json / .md.

Order of work: the output directory, the options, the config, the checkpoint and its agreement with the config are
read and checked before anything is written, so bad input writes nothing (exit 2, one line). Then the static
graphs are built from the checkpoint's tensors (`network.py`) and validated like any pruned.pt (`ir.build_static`),
the cost of the public evaluation against the deployed model is counted (`cost.py`), with `--keep-links` the cut
model is compared with the kept one on the recipe's images, and {pruned.pt, plan.json, import_report.json,
import_report.md} is written as one set (`deploymtl.outdir.output_set`). `deploymtl export pruned.pt` then
handles it as any pruned.pt: ONNX fp32 / fp16 / int8, parity, TensorRT lint, batch specification.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import __version__
from ...config import PIXEL_SCALE, DataConfig
from ...errors import DeploymtlError
from ...formats.plan import parse_plan, save_plan
from ...formats.static import StaticArtifact, save_static
from ...io import atomic_write_text, sha256_file, write_json
from ...ir import StaticModel, build_static
from ...outdir import check_output_dir, output_set
from ...verify.compare import compare_arrays, preset
from .checkpoint import UNUSED, ReleaseCheckpoint, read_checkpoint
from .config import IMAGE_SIZE, VitArch, read_config
from .cost import cut_cost, graph_cost
from .links import link_weights, make_plan, summary
from .network import primary_spec, supernet_spec
from .report import REPORT_FORMAT, render_markdown

IMPORT_FILES = ("pruned.pt", "plan.json", "import_report.json", "import_report.md")
MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]  # the release's Normalize after ToTensor (x / 255)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class ImportOptions:
    """The command's options besides checkpoint, config and output directory (`deploymtl import auxnas --help`)."""

    keep_links: bool = False
    bake_preprocessing: bool = False
    calibration_samples: int = 64
    compare_samples: int = 4  # --keep-links: images the cut and kept models are compared on


def _recipe(name: str, arch: VitArch, tasks: list[Any], o: ImportOptions) -> dict[str, Any]:
    """The recipe pruned.pt embeds: the release's input convention on synthetic images without targets (no
    dataset comes with a checkpoint), so export verifies and calibrates at 224x224 and skips the metric gate."""
    return {"name": name, "family": "auxnas", "seed": 0, "tasks": [t.model_dump() for t in tasks],
            "data": {"source": "synthetic", "targets": False, "height": IMAGE_SIZE, "width": IMAGE_SIZE,
                     "train_size": o.calibration_samples, "val_size": 8, "mean": MEAN, "std": STD,
                     "scale": PIXEL_SCALE, "channel_order": "RGB"},
            "export": {"calibration_samples": o.calibration_samples, "bake_preprocessing": o.bake_preprocessing}}


def _models(arch: VitArch, ckpt: ReleaseCheckpoint, keep: bool) -> tuple[StaticModel, StaticModel | None,
                                                                          dict[str, Any], dict[str, Any] | None]:
    """(cut model, kept supernet or None, deployed cost, public-evaluation cost or None)."""
    tasks = [arch.primary]
    spec, state = primary_spec(arch, ckpt.net(ckpt.primary_prefix))
    cut = build_static(spec, state, image=(3, IMAGE_SIZE, IMAGE_SIZE), tasks=tasks)
    if ckpt.kind != "supernet":
        return cut, None, graph_cost(spec, [arch.primary.name]), None
    both = [arch.primary.name, arch.auxiliary.name]
    a2p, p2a = link_weights(ckpt)
    meta = {k: torch.empty_like(v, device="meta") for k, v in ckpt.state.items()}
    evaluation = graph_cost(supernet_spec(arch, meta, torch.zeros_like(a2p), p2a)[0], both)
    if not keep:
        return cut, None, graph_cost(spec, [arch.primary.name]), evaluation
    kspec, kstate = supernet_spec(arch, ckpt.state, a2p, p2a)
    kept = build_static(kspec, kstate, image=(3, IMAGE_SIZE, IMAGE_SIZE), tasks=[arch.primary, arch.auxiliary])
    return cut, kept, graph_cost(kspec, both), evaluation


def _compare_cut(cut: StaticModel, kept: StaticModel, arch: VitArch, recipe: dict[str, Any], n: int
                 ) -> dict[str, Any]:
    """The primary output of the cut model against the kept supernet's, on the recipe's first `n` images."""
    from ...data import build_datasets

    cfg = DataConfig.model_validate(recipe["data"] | {"train_size": 1, "val_size": n})
    images = build_datasets(cfg, [], where="imported recipe")["val"].images[:n].float()
    name = arch.primary.name
    with torch.inference_mode():
        out, ref = cut.infer(images)[name].numpy(), kept.infer(images)[name].numpy()
    result = compare_arrays(name, out, ref, preset("fp32"))
    return {"samples": n, "images": "synthetic 224x224 images (the recipe's)", "peak": float(np.abs(ref).max()),
            "primary": result.to_dict()}


def _read_lines(arch: VitArch, ckpt: ReleaseCheckpoint) -> list[str]:
    fields = ", ".join(f"{k} {v}" for k, v in arch.read.items())
    lines = [f"config ({arch.source}): {fields}",
             f"checkpoint['model_state_dict']: {len(ckpt.state)} tensors, every key and shape as the config implies"]
    return lines + [f"note: {n}" for n in arch.notes + ckpt.notes]


def _ignored(ckpt: ReleaseCheckpoint, keep: bool) -> list[dict[str, str]]:
    out = [{"what": f"checkpoint['{k}']", "why": "not the network's weights (training state)"}
           for k in ckpt.entries if k != "model_state_dict"]
    out.append({"what": ", ".join(f"{ckpt.primary_prefix}{k}" for k in UNUSED),
                "why": "timm's final norm and ImageNet head: the release's forward never runs them"})
    if ckpt.kind == "supernet" and not keep:
        out.append({"what": "aux_net.*, paths.*, prim_aux_alphas, aux_prim_alphas",
                    "why": "the auxiliary network, the fusion convolutions and the alphas: the public evaluation "
                           "cuts every aux->primary link, so the primary output does not depend on them"})
    return out


def _deployed(ckpt: ReleaseCheckpoint, keep: bool) -> str:
    if ckpt.kind != "supernet":
        return "the single network as the primary (a single-task checkpoint: no links to cut)"
    if keep:
        return "the supernet, both networks, every link at sigmoid(alpha) (--keep-links)"
    return "the primary network alone (every aux->primary link cut, as the public evaluation does)"


def _arch_section(arch: VitArch, rec: dict[str, Any]) -> dict[str, Any]:
    d = rec["data"]
    return {"source": arch.source, "timm_model": arch.timm_model, "patch": arch.patch, "width": arch.width,
            "depth": arch.depth, "heads": arch.heads, "resample": arch.resample, "hooks": list(arch.hooks),
            "primary": arch.primary.model_dump(), "auxiliary": arch.auxiliary.model_dump(),
            "input": {"channels": 3, "height": IMAGE_SIZE, "width": IMAGE_SIZE, "mean": d["mean"], "std": d["std"],
                      "scale": d["scale"], "channel_order": "RGB",
                      "bake_preprocessing": bool(rec["export"]["bake_preprocessing"])}}


def _check_counts(o: ImportOptions) -> None:
    if o.calibration_samples < 1 or o.compare_samples < 1:
        raise DeploymtlError(f"--calibration-samples {o.calibration_samples} / --compare-samples "
                             f"{o.compare_samples}", hint="expected both >= 1")


def _check_links(o: ImportOptions, ckpt: ReleaseCheckpoint) -> None:
    if o.keep_links and ckpt.kind != "supernet":
        raise DeploymtlError(f"--keep-links: {ckpt.path} is a single-task network, it has no links",
                             hint="expected a supernet checkpoint (prim_net.*, aux_net.*, paths.*, alphas)")


def import_auxnas(checkpoint: str | Path, config: str | Path, out_dir: str | Path,
                  options: ImportOptions | None = None) -> dict[str, Any]:
    """Import (module docstring); returns the report, also written as import_report.json."""
    t0 = time.perf_counter()
    o = options or ImportOptions()
    check_output_dir(out_dir)
    out = Path(out_dir)
    _check_counts(o)
    arch = read_config(config)
    ckpt = read_checkpoint(checkpoint, arch)
    _check_links(o, ckpt)
    cut, kept, deployed_cost, evaluation = _models(arch, ckpt, o.keep_links)
    tasks = [arch.primary, arch.auxiliary] if kept is not None else [arch.primary]
    rec = _recipe(out.name if _NAME.fullmatch(out.name) else "auxnas_import", arch, tasks, o)
    plan = parse_plan(make_plan(arch, ckpt, o.keep_links), "import plan")
    report: dict[str, Any] = {
        "format": REPORT_FORMAT, "importer": "auxnas", "public_code": "github ethanygao/Aux-NAS",
        "source": {"checkpoint": {"path": str(ckpt.path), "sha256": sha256_file(ckpt.path), "entries": ckpt.entries},
                   "config": {"path": str(config), "sha256": sha256_file(config)}},
        "checkpoint_kind": ckpt.kind, "deployed": _deployed(ckpt, o.keep_links), "rule": plan.rule,
        "architecture": _arch_section(arch, rec), "read": _read_lines(arch, ckpt),
        "ignored": _ignored(ckpt, o.keep_links),
        "links": summary(plan.to_dict()),
        "cost": cut_cost(sum(v.numel() for v in ckpt.state.values()), evaluation, deployed_cost, arch.primary.name),
        "keep_links": _compare_cut(cut, kept, arch, rec, o.compare_samples) if kept is not None else None,
        "artifact": str(out / "pruned.pt"),
        "next": f"deploymtl export {out / 'pruned.pt'} --target onnx --precision fp32",
        "deploymtl_version": __version__, "seconds": None,
    }
    removed = ["aux_net", "paths", "prim_aux_alphas", "aux_prim_alphas"] if kept is None else []
    imported = {k: report[k] for k in ("importer", "public_code", "source", "checkpoint_kind", "cost")}
    art = StaticArtifact(model=kept if kept is not None else cut, family="auxnas", tasks=tasks, plan=plan.to_dict(),
                         input={"channels": 3, "height": IMAGE_SIZE, "width": IMAGE_SIZE, "mean": MEAN, "std": STD,
                                "channel_order": "RGB", "scale": PIXEL_SCALE, "dtype": "float32"},
                         recipe=rec, extra={"removed_prefixes": removed, "imported": imported})
    with output_set(out, owned=IMPORT_FILES) as stage:
        save_static(stage / "pruned.pt", art)
        save_plan(stage / "plan.json", plan)
        report["seconds"] = round(time.perf_counter() - t0, 3)
        write_json(stage / "import_report.json", report)
        atomic_write_text(stage / "import_report.md", render_markdown(report))
    return report
