"""Loader for the preprocessed NYUv2 layout used by MTAN / Auto-Lambda (docs/methods.md, evaluation conventions).

`{root}/{train,val}/{image,label,depth,normal}/{i}.npy`, 288x384: image HxWx3 in [0,1]; label HxW with
-1 = ignore (13 classes); depth HxWx1 with 0 = invalid; normal HxWx3 unit vectors with 0 = invalid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DeploymtlError

NYU_SEG_CLASSES = 13
# task kind -> sub-folder holding its labels
KIND_FOLDERS = {"segmentation": "label", "depth": "depth", "normals": "normal"}


def nyuv2_indices(root: str | Path, split: str, kinds: list[str]) -> list[int]:
    """Sample indices present for `split`, checking every needed folder exists and agrees."""
    base = Path(root) / split
    if not base.is_dir():
        raise DeploymtlError(f"NYUv2 split folder not found: {base}",
                             hint="expected {root}/{train,val}/{image,label,depth,normal}/{i}.npy")
    folders = ["image"] + [KIND_FOLDERS[k] for k in kinds]
    indices: set[int] | None = None
    for name in folders:
        folder = base / name
        if not folder.is_dir():
            raise DeploymtlError(f"NYUv2 folder missing: {folder}", hint=f"expected {name}/{{i}}.npy files")
        found = {int(p.stem) for p in folder.glob("*.npy") if p.stem.isdigit()}
        if not found:
            raise DeploymtlError(f"NYUv2 folder is empty: {folder}", hint="expected {i}.npy files")
        if indices is not None and found != indices:
            missing = sorted(indices ^ found)[:5]
            raise DeploymtlError(f"NYUv2 folder {folder} does not match image/: samples {missing} differ",
                                 hint="expected the same {i}.npy in every folder")
        indices = found
    assert indices is not None
    return sorted(indices)


def load_nyuv2_sample(root: str | Path, split: str, index: int, kinds: list[str]) -> dict[str, np.ndarray]:
    """One sample as numpy arrays keyed image/segmentation/depth/normals, validated for shape."""
    base = Path(root) / split

    def load(folder: str) -> np.ndarray:
        path = base / folder / f"{index}.npy"
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DeploymtlError(f"cannot read NYUv2 array {path}: {exc}", hint="expected a .npy array") from None

    image = load("image").astype(np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise DeploymtlError(f"NYUv2 image {base / 'image' / f'{index}.npy'} has shape {image.shape}",
                             hint="expected HxWx3")
    out = {"image": image}
    h, w = image.shape[:2]
    expected = {"segmentation": (h, w), "depth": (h, w, 1), "normals": (h, w, 3)}
    for kind in kinds:
        arr = load(KIND_FOLDERS[kind])
        if kind == "depth" and arr.ndim == 2:
            arr = arr[..., None]
        if arr.shape != expected[kind]:
            raise DeploymtlError(
                f"NYUv2 {KIND_FOLDERS[kind]} {base / KIND_FOLDERS[kind] / f'{index}.npy'} has shape "
                f"{arr.shape} but its image is {h}x{w}", hint=f"expected {expected[kind]}")
        if kind == "segmentation":
            arr = arr.astype(np.int64)
            if arr.size and (arr.min() < -1 or arr.max() >= NYU_SEG_CLASSES):
                raise DeploymtlError(
                    f"NYUv2 label {base / 'label' / f'{index}.npy'} has values {arr.min()}..{arr.max()}",
                    hint=f"expected 0..{NYU_SEG_CLASSES - 1} and -1 = ignore")
        out[kind] = arr if kind == "segmentation" else arr.astype(np.float32)
    return out
