"""The architecture of a public Aux-NAS ViT supernet, from the release's JSON config (the checkpoint has none).

The release (`configs/config_aux_nas_prim_normal.json`) names the timm model (`General.model_timm`), the embedding
and resample widths (`emb_dim`, `resample_dim`), the transformer blocks whose outputs feed the decoder (`hooks`),
the class-token `read`, the tasks (`General.tasks`, `Aux.prim_task`, `seg_nclasses`) and the input size
(`Dataset.transforms.resize`). What its code fixes and the config does not say: 12 transformer blocks joined by
links to the stages at most 2 before them within their group of 3, four reassemble stages at 1/4, 1/8, 1/16 and
1/32 of the input, residual-unit fusions (the supernet builder never passes the config's `fuse_conv_type`), a
primary network built for the primary task alone and an auxiliary one for the other task.

The timm model gives what the tensors do not show: patch size, depth and number of heads (timm's ViT defaults:
MLP ratio 4, qkv bias, LayerNorm eps 1e-6, one class token). Only the 224x224 input the release evaluates at is
accepted: the position embedding holds 14x14 patches plus the class token, and the reassemble stages lay the
tokens out as a 14x14 map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import DeploymtlError
from ...io import read_json
from ...tasks import TaskSpec

IMAGE_SIZE = 224
LN_EPS = 1e-6  # timm ViT's LayerNorm
REASSEMBLE = (4, 8, 16, 32)  # output stride of each reassemble stage (the public default, not in the config)
GROUP = 3  # a link joins stages at most GROUP - 1 apart within a group of GROUP (the release's connectivity)
# timm model name -> (patch, width, depth, heads): the 12-block ViTs at 224 the release's connectivity fits.
TIMM_VITS: dict[str, tuple[int, int, int, int]] = {
    "vit_tiny_patch16_224": (16, 192, 12, 3),
    "vit_small_patch16_224": (16, 384, 12, 6),
    "vit_base_patch16_224": (16, 768, 12, 12),
}
PUBLIC_TASKS = {"normal": "normals", "segmentation": "segmentation"}  # the release's heads
_USED = {"General": ("model_timm", "emb_dim", "resample_dim", "read", "hooks", "patch_size", "tasks", "seg_nclasses",
                     "type", "fuse_conv_type"),
         "Aux": ("prim_task",), "Dataset": ("transforms",)}


@dataclass(frozen=True)
class VitArch:
    """What the static graph needs to know about one public DPT-style ViT network pair."""

    timm_model: str
    patch: int
    width: int  # emb_dim
    depth: int
    heads: int
    resample: int  # resample_dim
    hooks: tuple[int, ...]
    primary: TaskSpec
    auxiliary: TaskSpec
    source: str = "config"
    notes: list[str] = field(default_factory=list)
    read: dict[str, Any] = field(default_factory=dict)  # the config fields used, for the report

    @property
    def grid(self) -> int:
        return IMAGE_SIZE // self.patch

    @property
    def tokens(self) -> int:
        return self.grid * self.grid + 1

    @property
    def mlp(self) -> int:
        return 4 * self.width

    def links(self) -> list[tuple[int, int]]:
        """(stage s, source stage j) of every link into stage s, j ascending: j <= s, s - j < GROUP, one group."""
        return [(s, j) for s in range(self.depth) for j in range(s - s % GROUP, s + 1)]

    def sources(self, s: int) -> list[int]:
        return [j for t, j in self.links() if t == s]


def _section(cfg: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    sec = cfg.get(key)
    if not isinstance(sec, dict):
        raise DeploymtlError(f"{where}: {key}: missing or not an object",
                             hint="expected the release's config (configs/config_aux_nas_prim_normal.json)")
    return sec


def _field(sec: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = sec.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DeploymtlError(f"{where}: {key} is {value!r}, expected a {want}")
    return value


def _timm(name: str, where: str) -> tuple[int, int, int, int]:
    base = name.split(".", 1)[0]  # "vit_base_patch16_224.augreg_in21k": a pretrained tag, same architecture
    if base not in TIMM_VITS:
        raise DeploymtlError(f"{where}: General.model_timm {name!r} is not a ViT this importer builds",
                             hint=f"expected one of {', '.join(TIMM_VITS)} (12 blocks at 224x224, as the release)")
    return TIMM_VITS[base]


def _tasks(g: dict[str, Any], aux: dict[str, Any], where: str) -> tuple[TaskSpec, TaskSpec]:
    tasks = _field(g, "tasks", list, f"{where}: General")
    prim = _field(aux, "prim_task", str, f"{where}: Aux")
    if len(tasks) != 2 or any(t not in PUBLIC_TASKS for t in tasks) or prim not in tasks or len(set(tasks)) != 2:
        raise DeploymtlError(f"{where}: General.tasks {tasks!r} with Aux.prim_task {prim!r}",
                             hint=f"expected the two release tasks {sorted(PUBLIC_TASKS)}, the primary one of them")
    classes = _field(g, "seg_nclasses", int, f"{where}: General")
    if classes < 2:
        raise DeploymtlError(f"{where}: General.seg_nclasses is {classes}, expected >= 2")

    def spec(name: str) -> TaskSpec:
        kind = PUBLIC_TASKS[name]
        return TaskSpec(name=name, kind=kind, channels=classes if kind == "segmentation" else None)

    other = next(t for t in tasks if t != prim)
    return spec(prim), spec(other)


def parse_config(cfg: Any, where: str) -> VitArch:
    """Validate the release's config (module docstring); one-line errors naming the field."""
    if not isinstance(cfg, dict):
        raise DeploymtlError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
    g, aux, data = (_section(cfg, k, where) for k in ("General", "Aux", "Dataset"))
    name = _field(g, "model_timm", str, f"{where}: General")
    patch, width, depth, heads = _timm(name, where)
    size = data.get("transforms", {}).get("resize") if isinstance(data.get("transforms"), dict) else None
    if size != IMAGE_SIZE or isinstance(size, bool):
        raise DeploymtlError(f"{where}: Dataset.transforms.resize is {size!r}: the release's ViT takes "
                             f"{IMAGE_SIZE}x{IMAGE_SIZE} inputs only",
                             hint=f"expected {IMAGE_SIZE} (its position embedding holds 14x14 patches)")
    emb = _field(g, "emb_dim", int, f"{where}: General")
    resample = _field(g, "resample_dim", int, f"{where}: General")
    if g.get("patch_size", patch) != patch:
        raise DeploymtlError(f"{where}: General.patch_size is {g.get('patch_size')!r} but {name} has patches of "
                             f"{patch}", hint="expected the timm model's patch size")
    if emb < heads or emb % heads or resample < 2 or resample % 2:
        raise DeploymtlError(f"{where}: General.emb_dim {emb} / resample_dim {resample}",
                             hint=f"expected emb_dim a multiple of {name}'s {heads} heads, resample_dim even")
    hooks = _field(g, "hooks", list, f"{where}: General")
    if (len(hooks) != len(REASSEMBLE) or not all(isinstance(h, int) and not isinstance(h, bool) for h in hooks)
            or sorted(set(hooks)) != hooks or hooks[0] < 0 or hooks[-1] >= depth):
        raise DeploymtlError(f"{where}: General.hooks is {hooks!r}",
                             hint=f"expected {len(REASSEMBLE)} increasing block indices in 0..{depth - 1}, "
                                  "e.g. [2, 5, 8, 11]")
    if g.get("read", "ignore") != "ignore":
        raise DeploymtlError(f"{where}: General.read is {g.get('read')!r}; this importer builds read 'ignore' "
                             "(the class token dropped)", hint="expected 'ignore', the release's setting")
    primary, auxiliary = _tasks(g, aux, where)
    notes = []
    if emb != width:
        notes.append(f"emb_dim {emb} is not {name}'s width {width}: the public code builds it only with the timm "
                     f"model's width overridden; depth {depth}, {heads} heads and patch {patch} come from {name}")
    if g.get("fuse_conv_type", "residue") != "residue":
        notes.append(f"General.fuse_conv_type {g['fuse_conv_type']!r} is not used: the release's supernet builder "
                     "does not pass it, so its fusions are residual conv units")
    read = {"model_timm": name, "emb_dim": emb, "resample_dim": resample, "hooks": hooks, "tasks": g["tasks"],
            "prim_task": aux["prim_task"], "seg_nclasses": g["seg_nclasses"], "resize": size}
    return VitArch(name, patch, emb, depth, heads, resample, tuple(hooks), primary, auxiliary, where, notes, read)


def read_config(path: str | Path) -> VitArch:
    return parse_config(read_json(path, what="Aux-NAS config"), str(path))
