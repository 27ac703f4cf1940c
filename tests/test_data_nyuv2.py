"""The NYUv2 loader (MTAN / Auto-Lambda layout) on tiny fixture folders, invalid pixels included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from deploymtl.cli.main import main
from deploymtl.config import DataConfig
from deploymtl.data import build_datasets
from deploymtl.data.nyuv2 import load_nyuv2_sample, nyuv2_indices
from deploymtl.errors import DeploymtlError
from deploymtl.metrics import TaskMeter
from deploymtl.tasks import TaskSpec

H, W = 8, 12
TASKS = [
    TaskSpec(name="semantic", kind="segmentation", channels=13),
    TaskSpec(name="depth", kind="depth"),
    TaskSpec(name="normal", kind="normals"),
]
KINDS = ["segmentation", "depth", "normals"]


def _sample(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    label = rng.integers(0, 13, (H, W)).astype(np.float32)  # MTAN stores labels as floats
    label[0, :4] = -1  # ignore
    depth = rng.uniform(0.5, 8.0, (H, W, 1)).astype(np.float32)
    depth[1, :3] = 0.0  # invalid
    normal = rng.normal(size=(H, W, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[2, :5] = 0.0  # invalid
    return {"image": rng.uniform(0, 1, (H, W, 3)).astype(np.float32), "label": label, "depth": depth,
            "normal": normal}


def make_nyuv2(root: Path, n_train: int = 3, n_val: int = 2) -> Path:
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            for folder, arr in _sample(i + (100 if split == "val" else 0)).items():
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                np.save(root / split / folder / f"{i}.npy", arr)
    return root


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(source="nyuv2", root=str(root), height=H, width=W, train_size=0, val_size=0, **kw)


def test_loads_samples_keeping_invalid_pixels(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path / "nyu")
    data = build_datasets(_cfg(root, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)), TASKS)
    assert len(data["train"]) == 3 and len(data["val"]) == 2
    raw = _sample(1)
    s = data["train"][1]
    assert s["image"].shape == (3, H, W) and s["image"].dtype == torch.float32
    np.testing.assert_allclose(s["image"].permute(1, 2, 0).numpy(), raw["image"], atol=1e-7)
    assert s["semantic"].dtype == torch.int64 and s["semantic"].shape == (H, W)
    assert (s["semantic"][0, :4] == -1).all()
    assert torch.equal(s["semantic"], torch.from_numpy(raw["label"].astype(np.int64)))
    assert s["depth"].shape == (1, H, W) and (s["depth"][0, 1, :3] == 0).all()
    assert s["normal"].shape == (3, H, W) and (s["normal"][:, 2, :5] == 0).all()
    assert torch.equal(s["normal"], torch.from_numpy(raw["normal"]).permute(2, 0, 1))
    val = build_datasets(_cfg(root), TASKS)["val"][0]
    assert torch.equal(val["depth"], torch.from_numpy(_sample(100)["depth"]).permute(2, 0, 1))


def test_images_normalised_with_config(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path / "nyu")
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)
    s = build_datasets(_cfg(root, mean=mean, std=std), TASKS)["train"][0]
    image = s["image"].permute(1, 2, 0).numpy() * np.array(std) + np.array(mean)
    np.testing.assert_allclose(image, _sample(0)["image"], atol=1e-6)


def test_resize_keeps_ignore_and_invalid_pixels(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path / "nyu")
    cfg = DataConfig(source="nyuv2", root=str(root), height=2 * H, width=2 * W)
    s = build_datasets(cfg, TASKS)["train"][0]
    raw = _sample(0)
    assert s["image"].shape == (3, 2 * H, 2 * W)
    # Nearest-neighbour upsampling by 2: every label pixel becomes a 2x2 block, never a blend.
    up = np.repeat(np.repeat(raw["label"].astype(np.int64), 2, 0), 2, 1)
    assert torch.equal(s["semantic"], torch.from_numpy(up))
    assert (s["depth"][0, 2:4, :6] == 0).all() and (s["normal"][:, 4:6, :10] == 0).all()
    assert int((s["depth"] == 0).sum()) == 4 * 3


def test_caps_on_split_sizes(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path / "nyu", n_train=4)
    data = build_datasets(_cfg(root).model_copy(update={"train_size": 2, "val_size": 1}), TASKS)
    assert len(data["train"]) == 2 and len(data["val"]) == 1


def test_depth_given_as_hw_is_accepted(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path / "nyu")
    np.save(root / "train" / "depth" / "0.npy", _sample(0)["depth"][..., 0])
    s = load_nyuv2_sample(root, "train", 0, ["depth"])
    assert s["depth"].shape == (H, W, 1)


def test_metrics_skip_invalid_pixels(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path / "nyu")
    batch = build_datasets(_cfg(root), TASKS)["train"].batch(3)
    n_pix = 3 * H * W

    seg = TaskMeter(TASKS[0])
    seg.update(torch.nn.functional.one_hot(batch["semantic"].clamp(min=0), 13).permute(0, 3, 1, 2).float(),
               batch["semantic"])
    assert seg.compute() == {"miou": 1.0, "pixel_acc": 1.0}  # ignore pixels predicted as class 0 don't count
    assert int(seg._confusion.sum()) == n_pix - 3 * 4

    depth = TaskMeter(TASKS[1])
    pred = batch["depth"] + 1.0  # error 1 on every valid pixel, 1 + gt on invalid ones
    depth.update(pred, batch["depth"])
    assert depth.compute()["abs_err"] == pytest.approx(1.0)
    assert depth.count == n_pix - 3 * 3

    normal = TaskMeter(TASKS[2])
    normal.update(batch["normal"] * 2.0, batch["normal"])
    scores = normal.compute()
    assert scores["mean_angle"] == pytest.approx(0.0, abs=0.05) and scores["within_11.25"] == 1.0
    assert torch.cat(normal._angles).numel() == n_pix - 3 * 5


# -- bad input: one-line DeploymtlError naming the file or folder ------------------------------------------
def _one_line(exc: pytest.ExceptionInfo[DeploymtlError]) -> str:
    line = exc.value.one_line()
    assert "\n" not in line
    return line


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DeploymtlError) as exc:
        build_datasets(_cfg(tmp_path / "nowhere"), TASKS)
    assert f"NYUv2 split folder not found: {tmp_path / 'nowhere' / 'train'}" in _one_line(exc)


def test_missing_root_setting() -> None:
    with pytest.raises(DeploymtlError, match="data.root is required when data.source is nyuv2"):
        build_datasets(DataConfig(source="nyuv2"), TASKS, where="recipe r")


def test_missing_task_folder(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path / "nyu")
    for f in (root / "train" / "normal").iterdir():
        f.unlink()
    (root / "train" / "normal").rmdir()
    with pytest.raises(DeploymtlError) as exc:
        build_datasets(_cfg(root), TASKS)
    assert f"NYUv2 folder missing: {root / 'train' / 'normal'}" in _one_line(exc)
    # Without a normals task the folder is not needed.
    assert len(build_datasets(_cfg(root), TASKS[:2])["train"]) == 3


def test_empty_folder(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path / "nyu")
    for f in (root / "val" / "depth").iterdir():
        f.unlink()
    (root / "val" / "depth" / "notes.txt").write_text("not a sample")
    with pytest.raises(DeploymtlError) as exc:
        build_datasets(_cfg(root), TASKS)
    assert f"NYUv2 folder is empty: {root / 'val' / 'depth'}" in _one_line(exc)


def test_mismatched_sample_sets(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path / "nyu")
    (root / "train" / "label" / "2.npy").unlink()
    with pytest.raises(DeploymtlError) as exc:
        nyuv2_indices(root, "train", KINDS)
    line = _one_line(exc)
    assert str(root / "train" / "label") in line and "samples [2] differ" in line


@pytest.mark.parametrize("folder,bad,what", [
    ("label", np.zeros((H, W - 2), np.float32), "label"),
    ("depth", np.ones((H + 1, W, 1), np.float32), "depth"),
    ("normal", np.ones((H, W, 2), np.float32), "normal"),
])
def test_label_shape_differs_from_image(tmp_path: Path, folder: str, bad: np.ndarray, what: str) -> None:
    root = make_nyuv2(tmp_path / "nyu")
    np.save(root / "train" / folder / "1.npy", bad)
    with pytest.raises(DeploymtlError) as exc:
        build_datasets(_cfg(root), TASKS)
    line = _one_line(exc)
    assert f"NYUv2 {what} {root / 'train' / folder / '1.npy'} has shape {bad.shape} but its image is 8x12" in line


def test_image_not_hwc3(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path / "nyu")
    np.save(root / "train" / "image" / "0.npy", np.zeros((3, H, W), np.float32))
    with pytest.raises(DeploymtlError) as exc:
        build_datasets(_cfg(root), TASKS)
    assert f"NYUv2 image {root / 'train' / 'image' / '0.npy'} has shape (3, 8, 12) (expected HxWx3)" in _one_line(exc)


def test_images_of_different_sizes_in_a_split(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path / "nyu")
    rng = np.random.default_rng(0)
    np.save(root / "train" / "image" / "2.npy", rng.uniform(size=(H, W + 4, 3)).astype(np.float32))
    np.save(root / "train" / "label" / "2.npy", np.zeros((H, W + 4), np.float32))
    np.save(root / "train" / "depth" / "2.npy", np.ones((H, W + 4, 1), np.float32))
    np.save(root / "train" / "normal" / "2.npy", np.ones((H, W + 4, 3), np.float32))
    with pytest.raises(DeploymtlError) as exc:
        build_datasets(_cfg(root), TASKS)
    assert f"NYUv2 images in {root / 'train' / 'image'} differ in shape" in _one_line(exc)


def test_unreadable_and_pickled_arrays(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path / "nyu")
    (root / "train" / "depth" / "0.npy").write_bytes(b"garbage, not an npy file")
    with pytest.raises(DeploymtlError) as exc:
        load_nyuv2_sample(root, "train", 0, KINDS)
    assert f"cannot read NYUv2 array {root / 'train' / 'depth' / '0.npy'}" in _one_line(exc)
    # An object array would need unpickling: refused.
    np.save(root / "train" / "label" / "0.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DeploymtlError, match=r"cannot read NYUv2 array .*label/0\.npy"):
        load_nyuv2_sample(root, "train", 0, ["segmentation"])


def test_label_values_out_of_range(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path / "nyu")
    label = _sample(0)["label"]
    label[3, 3] = 255  # another ignore convention: would be silently dropped by the confusion matrix
    np.save(root / "train" / "label" / "0.npy", label)
    with pytest.raises(DeploymtlError) as exc:
        build_datasets(_cfg(root), TASKS)
    line = _one_line(exc)
    assert str(root / "train" / "label" / "0.npy") in line and "..255" in line and "-1 = ignore" in line


def test_tasks_that_nyuv2_cannot_serve(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path / "nyu")
    with pytest.raises(DeploymtlError, match="task 'count' is classification but NYUv2 has no image labels"):
        build_datasets(_cfg(root), [TaskSpec(name="count", kind="classification", channels=4)])
    with pytest.raises(DeploymtlError, match="task 'seg' declares 5 classes but nyuv2 data has 13"):
        build_datasets(_cfg(root), [TaskSpec(name="seg", kind="segmentation", channels=5)])


# -- the same errors through `deploymtl train`: exit 2, one line, no traceback -------------------------------
def _break_missing(root: Path) -> tuple[Path, str]:
    return root / "absent", f"NYUv2 split folder not found: {root / 'absent' / 'train'}"


def _break_empty(root: Path) -> tuple[Path, str]:
    make_nyuv2(root)
    for f in (root / "train" / "label").iterdir():
        f.unlink()
    return root, f"NYUv2 folder is empty: {root / 'train' / 'label'}"


def _break_shape(root: Path) -> tuple[Path, str]:
    make_nyuv2(root)
    np.save(root / "val" / "depth" / "1.npy", np.ones((H, W + 1, 1), np.float32))
    return root, f"NYUv2 depth {root / 'val' / 'depth' / '1.npy'} has shape (8, 13, 1) but its image is 8x12"


def _break_sets(root: Path) -> tuple[Path, str]:
    make_nyuv2(root)
    np.save(root / "train" / "normal" / "7.npy", _sample(7)["normal"])
    return root, f"NYUv2 folder {root / 'train' / 'normal'} does not match image/: samples [7] differ"


@pytest.mark.parametrize("breaker", [_break_missing, _break_empty, _break_shape, _break_sets],
                         ids=["missing", "empty", "shape", "sample-sets"])
def test_cli_train_on_bad_nyuv2_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch, breaker) -> None:
    monkeypatch.delenv("DEPLOYMTL_DEBUG", raising=False)
    root, expected = breaker(tmp_path / "nyu")
    recipe = tmp_path / "nyu.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "nyu", "family": "adashare",
        "tasks": [{"name": "semantic", "kind": "segmentation", "channels": 13}, {"name": "depth", "kind": "depth"},
                  {"name": "normal", "kind": "normals"}],
        "data": {"source": "nyuv2", "root": str(root), "height": H, "width": W},
    }))
    assert main(["train", str(recipe), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {expected}"), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out" / "supernet.pt").exists()
