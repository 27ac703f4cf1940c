"""Good tiny artifacts and bad variants of them for `test_reliability_inputs.py`.

`Inputs(root)` writes the good set once (a recipe, an AdaShare and a GatedMTL supernet.pt, a plan.json, a
`pruned.pt` using every op the families emit, a toy ONNX model with its parity file, a toy `pruned.pt`) and builds a
bad variant on first use, cached by name: `inp.static("k0", mutate)` copies the good `pruned.pt` payload, applies
`mutate` to it and saves it. Malicious pickles (`evil_*`) would create `inp.marker` if anything unpickled them.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import pickle
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from export_fixtures import tiny_artifact
from test_data_nyuv2 import make_nyuv2
from test_prune_cli import make_checkpoint

from deploymtl.formats.parity import save_parity
from deploymtl.formats.plan import save_plan
from deploymtl.formats.static import load_static
from deploymtl.formats.trt_manifest import RuntimeInfo, make_manifest, manifest_path
from deploymtl.io import load_torch, save_torch, sha256_file
from deploymtl.models.checkpoint import load_supernet
from deploymtl.runtime.toy import toy_onnx, toy_static
from deploymtl.surgery.plan import make_plan

ROOT = Path(__file__).resolve().parents[1]
RECIPE = {"name": "rel", "family": "adashare", "tasks": [{"name": "seg", "kind": "segmentation", "channels": 5},
                                                          {"name": "depth", "kind": "depth"}],
          "data": {"height": 32, "width": 48, "train_size": 4, "val_size": 2},
          "model": {"blocks": [1, 1, 1, 1], "width": 4, "head_hidden": 8}, "train": {"batch_size": 2}}


class RunsCommand:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class TouchesFile:
    """Unpickling this creates the marker file through a method reference (pickled as `getattr`)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def node(payload: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in payload["graph"]["nodes"] if n["name"] == name)


def set_attr(name: str, **attrs: Any) -> Callable[[dict], None]:
    return lambda p: node(p, name)["attrs"].update(attrs)


def set_key(path: str, value: Any) -> Callable[[dict], None]:
    """Mutation setting a dotted key (`train.device`) of a mapping."""
    def mutate(data: dict) -> None:
        *parents, leaf = path.split(".")
        for part in parents:
            data = data.setdefault(part, {})
        data[leaf] = value
    return mutate


class Inputs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bad_dir = root / "bad"
        self.bad_dir.mkdir(parents=True)
        self.marker = root / "PWNED"
        good = root / "good"
        good.mkdir()
        self.good_dir = good
        self.recipe_data = copy.deepcopy(RECIPE)
        self.good = {"recipe": good / "recipe.yaml", "supernet": make_checkpoint(good / "supernet.pt", "adashare"),
                     "gated": make_checkpoint(good / "gated_supernet.pt", "gated"),
                     "static": tiny_artifact(good / "pruned.pt", trained=False),
                     "toy": toy_static(good / "toy.pt"), "onnx": toy_onnx(good / "model.onnx", max_batch=4),
                     "plan": good / "plan.json", "parity": good / "model.parity.npz"}
        self.good["recipe"].write_text(yaml.safe_dump(self.recipe_data))
        model, _ = load_supernet(self.good["supernet"])
        save_plan(self.good["plan"], make_plan(model, "adashare"))
        art = load_static(self.good["toy"])
        images = np.random.default_rng(0).standard_normal((4, 3, 48, 64)).astype(np.float32)
        with torch.no_grad():
            ref = {k: v.numpy() for k, v in art.model(torch.from_numpy(images)).items()}
        self.parity_arrays = {"image": images, **{f"ref__{k}": v for k, v in ref.items()}}
        self.parity_meta = {"format": "deploymtl.parity/1", "outputs": list(ref), "precision": "fp32"}
        save_parity(self.good["parity"], images, ref, {"precision": "fp32"})
        shutil.copy(self.good["parity"], good / "toy.parity.npz")
        self.payload = {k: load_torch(self.good[k]) for k in ("static", "supernet")}
        self.plan_data = json.loads(self.good["plan"].read_text())
        self._cache: dict[str, Path] = {}

    def g(self, key: str) -> str:
        return str(self.good[key])

    def _once(self, name: str, write: Callable[[Path], None]) -> str:
        if name not in self._cache:
            path = self.bad_dir / name
            write(path)
            self._cache[name] = path
        return str(self._cache[name])

    def file(self, name: str, data: bytes | str) -> str:
        raw = data.encode() if isinstance(data, str) else data
        return self._once(name, lambda p: p.write_bytes(raw))

    def torch_file(self, name: str, obj: Any) -> str:
        return self._once(name, lambda p: save_torch(p, obj))

    def static(self, name: str, mutate: Callable[[dict], Any]) -> str:
        data = copy.deepcopy(self.payload["static"])
        mutate(data)
        return self.torch_file(f"{name}.pt", data)

    def supernet(self, name: str, mutate: Callable[[dict], Any]) -> str:
        data = copy.deepcopy(self.payload["supernet"])
        mutate(data)
        return self.torch_file(f"{name}.pt", data)

    def recipe(self, name: str, mutate: Callable[[dict], Any]) -> str:
        data = copy.deepcopy(self.recipe_data)
        mutate(data)
        return self.file(f"{name}.yaml", yaml.safe_dump(data))

    def plan(self, name: str, mutate: Callable[[dict], Any]) -> str:
        data = copy.deepcopy(self.plan_data)
        mutate(data)
        return self.file(f"{name}.json", json.dumps(data))

    def parity(self, name: str, mutate: Callable[[dict, dict], Any]) -> str:
        """An .npz like the good parity file; `mutate(arrays, meta)` edits it before it is written."""
        arrays, meta = dict(self.parity_arrays), copy.deepcopy(self.parity_meta)
        mutate(arrays, meta)

        def write(p: Path) -> None:
            if meta is not None:
                arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
            with open(p, "wb") as f:
                np.savez(f, **arrays)
        return self._once(f"{name}.npz", write)

    def engine(self, name: str, mutate: Callable[[dict], Any]) -> str:
        """A `.plan` with a well-formed manifest beside it, edited by `mutate` (TensorRT itself is not needed: the
        manifest is checked before the engine is deserialised)."""
        def write(p: Path) -> None:
            p.write_bytes(b"not really an engine")
            manifest = make_manifest(
                runtime=RuntimeInfo("10.3.0", (8, 6), "NVIDIA A10", "12.4"), precision="fp32",
                batch={"min": 1, "opt": 2, "max": 4}, tasks=[],
                profile={"image": {"min": [1, 3, 48, 64], "opt": [2, 3, 48, 64], "max": [4, 3, 48, 64]}},
                io=[{"name": "image", "mode": "input", "dtype": "float32", "shape": [-1, 3, 48, 64]}],
                onnx_path="model.onnx", onnx_sha256="ab" * 32, engine_name=p.name, engine_sha256=sha256_file(p))
            mutate(manifest)
            manifest_path(p).write_text(json.dumps(manifest))
        return self._once(f"{name}.plan", write)

    # -- malicious pickles: loading any of them with pickle would create self.marker --------------------------
    def evil_torch(self) -> str:
        """A torch zip file whose payload is an object that runs a shell command when unpickled."""
        return self._once("evil_torch.pt", lambda p: torch.save(
            {"format": "deploymtl.static/1", "state_dict": {"w": RunsCommand(self.marker)}}, p))

    def evil_method(self) -> str:
        return self._once("evil_method.pt", lambda p: torch.save({"x": TouchesFile(self.marker)}, p))

    def evil_plain(self, protocol: int = 2) -> str:
        """A plain pickle (not a torch archive) named like a checkpoint."""
        return self._once(f"evil_plain{protocol}.pt", lambda p: p.write_bytes(
            pickle.dumps({"format": "deploymtl.supernet/1", "x": RunsCommand(self.marker)}, protocol=protocol)))

    def evil_npz(self) -> str:
        """A parity file whose reference array is an object array (a pickle inside the .npz)."""
        def write(p: Path) -> None:
            arrays = dict(self.parity_arrays)
            arrays["ref__seg"] = np.array([RunsCommand(self.marker)] * 4, dtype=object)
            arrays["meta"] = np.frombuffer(json.dumps(self.parity_meta).encode(), dtype=np.uint8)
            with open(p, "wb") as f:
                np.savez(f, allow_pickle=True, **arrays)
        return self._once("evil.npz", write)

    def evil_nyuv2(self) -> str:
        """A recipe on an NYUv2 folder one of whose arrays is a pickled object array."""
        def write(p: Path) -> None:
            root = make_nyuv2(p.with_suffix(""))
            np.save(root / "train" / "image" / "0.npy", np.array([RunsCommand(self.marker)], dtype=object),
                    allow_pickle=True)
            data = copy.deepcopy(self.recipe_data)
            data["tasks"] = [{"name": "depth", "kind": "depth"}]
            data["data"] = {"source": "nyuv2", "root": str(root), "height": 8, "width": 8}
            p.write_text(yaml.safe_dump(data))
        return self._once("nyuv2.yaml", write)

    def evil_yaml(self) -> str:
        text = yaml.safe_dump(self.recipe_data) + f"seed: !!python/object/apply:os.system ['touch {self.marker}']\n"
        return self.file("evil.yaml", text)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` by relative path: (size, mtime in ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def good_output_dir(inp: Inputs, folder: Path) -> Path:
    """An output directory already holding a good set of artifacts, which a failing command must leave alone."""
    folder.mkdir(parents=True)
    for key in ("toy", "onnx", "parity", "plan"):
        shutil.copy(inp.good[key], folder / Path(inp.good[key]).name)
    (folder / "report.json").write_text('{"passed": true}\n')
    return folder
