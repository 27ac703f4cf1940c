"""The built-in synthetic scenes: deterministic, well-formed, and geometrically consistent across tasks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deploymtl.config import DataConfig
from deploymtl.data import build_datasets, make_loader, synthetic
from deploymtl.data.synthetic import NUM_COUNT_CLASSES, NUM_SEG_CLASSES, render_scene
from deploymtl.errors import DeploymtlError
from deploymtl.tasks import TaskSpec

H, W = 48, 64
TASKS = [
    TaskSpec(name="seg", kind="segmentation", channels=NUM_SEG_CLASSES),
    TaskSpec(name="depth", kind="depth"),
    TaskSpec(name="normal", kind="normals"),
    TaskSpec(name="count", kind="classification", channels=NUM_COUNT_CLASSES),
]
WALL, FLOOR, CEIL, SPHERE, BOX = range(5)


def _rays(h: int, w: int) -> np.ndarray:
    """The renderer's pinhole rays (z = 1), f = 0.9 * width, principal point at the image centre."""
    f = 0.9 * w
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([(u + 0.5 - w / 2) / f, (v + 0.5 - h / 2) / f, np.ones_like(u)], -1)


def _normals_from_depth(depth: np.ndarray) -> np.ndarray:
    """Normals of the back-projected depth by central differences, facing the camera; (H-2, W-2, 3)."""
    h, w = depth.shape[:2]
    pts = depth.astype(np.float64) * _rays(h, w)
    du = pts[1:-1, 2:] - pts[1:-1, :-2]
    dv = pts[2:, 1:-1] - pts[:-2, 1:-1]
    n = np.cross(du, dv)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    flip = (n * pts[1:-1, 1:-1]).sum(-1, keepdims=True) > 0
    return np.where(flip, -n, n)


def _interior(seg: np.ndarray, cls: int) -> np.ndarray:
    """Pixels (H-2, W-2) whose whole 3x3 neighbourhood has class `cls` (no edges in the differences)."""
    m = seg == cls
    h, w = m.shape
    out = np.ones((h - 2, w - 2), bool)
    for dy in range(3):
        for dx in range(3):
            out &= m[dy:dy + h - 2, dx:dx + w - 2]
    return out


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = np.clip((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)), -1, 1)
    return np.degrees(np.arccos(cos))


def test_same_seed_and_index_give_identical_samples() -> None:
    a, b = render_scene(7, 3, H, W), render_scene(7, 3, H, W)
    assert a.keys() == b.keys() == {"image", "seg", "depth", "normals", "count"}
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_other_seed_or_index_gives_other_samples() -> None:
    base = render_scene(0, 0, H, W)
    for other in (render_scene(1, 0, H, W), render_scene(0, 1, H, W)):
        assert not np.array_equal(base["image"], other["image"])
        assert not np.array_equal(base["depth"], other["depth"])
    # Eight samples of two seeds: the scene layouts differ, not just the noise.
    depths0 = [render_scene(0, i, H, W)["depth"] for i in range(8)]
    depths1 = [render_scene(1, i, H, W)["depth"] for i in range(8)]
    assert all(not np.allclose(x, y) for x, y in zip(depths0, depths1, strict=True))


def test_shapes_dtypes_and_ranges() -> None:
    s = render_scene(0, 0, 40, 56)
    assert s["image"].shape == (40, 56, 3) and s["image"].dtype == np.float32
    assert s["seg"].shape == (40, 56) and s["seg"].dtype == np.int64
    assert s["depth"].shape == (40, 56, 1) and s["depth"].dtype == np.float32
    assert s["normals"].shape == (40, 56, 3) and s["normals"].dtype == np.float32
    assert s["count"].shape == () and s["count"].dtype == np.int64
    assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
    assert s["seg"].min() >= 0 and s["seg"].max() < NUM_SEG_CLASSES


@pytest.mark.parametrize("index", range(6))
def test_depth_positive_and_normals_unit_facing_camera(index: int) -> None:
    s = render_scene(2, index, H, W)
    depth = s["depth"][..., 0]
    assert np.isfinite(depth).all() and depth.min() > 0.1 and depth.max() < 50.0
    norm = np.linalg.norm(s["normals"], axis=-1)
    np.testing.assert_allclose(norm, 1.0, atol=1e-5)
    # Facing the camera: the normal points back along the viewing ray at every pixel.
    assert ((s["normals"] * _rays(H, W)).sum(-1) < 0).all()


def test_planes_have_the_expected_orientation() -> None:
    # Camera frame: x right, y down, z forward. The floor faces up (-y), the ceiling down (+y), the wall
    # towards the camera (mostly -z, turned by the room's yaw).
    s = render_scene(0, 4, H, W)
    seg, n = s["seg"], s["normals"]
    np.testing.assert_allclose(n[seg == FLOOR], np.broadcast_to([0, -1, 0], n[seg == FLOOR].shape), atol=1e-6)
    np.testing.assert_allclose(n[seg == CEIL], np.broadcast_to([0, 1, 0], n[seg == CEIL].shape), atol=1e-6)
    wall = n[seg == WALL]
    assert (wall[:, 2] < -0.8).all() and np.abs(wall[:, 1]).max() < 1e-6
    assert np.ptp(wall, axis=0).max() < 1e-6  # one plane, one normal


@pytest.mark.parametrize("seed,index", [(0, 0), (0, 1), (3, 5), (11, 2)])
def test_normals_agree_with_depth_on_planes(seed: int, index: int) -> None:
    s = render_scene(seed, index, 96, 128)
    from_depth = _normals_from_depth(s["depth"])
    label = s["normals"][1:-1, 1:-1]
    for cls in (FLOOR, WALL):
        m = _interior(s["seg"], cls)
        assert m.sum() > 200, f"class {cls} should cover a real area"
        err = _angle_deg(from_depth[m], label[m])
        assert err.max() < 3.0, f"class {cls}: max angle {err.max():.2f} deg"
        assert np.median(err) < 0.5


def test_normals_agree_with_depth_on_spheres() -> None:
    errs = []
    for index in range(40):
        s = render_scene(3, index, 96, 128)
        m = _interior(s["seg"], SPHERE)
        if m.sum() > 100:
            errs.append(_angle_deg(_normals_from_depth(s["depth"])[m], s["normals"][1:-1, 1:-1][m]))
    assert len(errs) >= 3
    err = np.concatenate(errs)
    # A curved surface: central differences are approximate, yet far from the 90 deg of an unrelated field.
    assert np.median(err) < 3.0 and np.percentile(err, 90) < 10.0


def test_segmentation_classes_present() -> None:
    segs = [render_scene(0, i, H, W)["seg"] for i in range(24)]
    for seg in segs:
        assert (seg == WALL).any() and (seg == FLOOR).any()
    assert set(np.unique(np.stack(segs)).tolist()) == set(range(NUM_SEG_CLASSES))


def test_count_equals_number_of_objects_rendered(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    sphere, box = synthetic._sphere_hit, synthetic._box_hit

    def counted(fn):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(synthetic, "_sphere_hit", counted(sphere))
    monkeypatch.setattr(synthetic, "_box_hit", counted(box))
    seen = set()
    for index in range(30):
        calls["n"] = 0
        s = render_scene(5, index, 24, 32)
        assert int(s["count"]) == calls["n"]
        seen.add(int(s["count"]))
    assert seen == set(range(NUM_COUNT_CLASSES))


def test_count_correlates_with_object_pixels() -> None:
    counts, frac = [], []
    for index in range(120):
        s = render_scene(1, index, 24, 32)
        counts.append(int(s["count"]))
        frac.append(float(np.isin(s["seg"], (SPHERE, BOX)).mean()))
    counts_a, frac_a = np.array(counts), np.array(frac)
    assert (frac_a[counts_a == 0] == 0).all()  # an empty room has no object pixels
    assert (frac_a[counts_a > 0] > 0).mean() > 0.9  # objects are placed in view
    means = [frac_a[counts_a == c].mean() for c in range(NUM_COUNT_CLASSES)]
    assert means == sorted(means) and means[3] > means[1] > 0
    assert np.corrcoef(counts_a, frac_a)[0, 1] > 0.5


def test_image_is_lit_and_carries_the_scene() -> None:
    # Lambertian shading with the light above: the floor and wall are lit (not just ambient), and surfaces
    # are separable by colour so the image is informative about the labels.
    s = render_scene(0, 0, H, W)
    img, seg = s["image"], s["seg"]
    assert img[seg == WALL].mean() > 0.2 and img[seg == FLOOR].mean() > 0.15
    assert abs(img[seg == WALL].mean() - img[seg == CEIL].mean()) > 0.05


def test_build_datasets_shapes_normalisation_and_determinism() -> None:
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    cfg = DataConfig(height=H, width=W, train_size=6, val_size=3, seed=4, mean=mean, std=std)
    data = build_datasets(cfg, TASKS)
    assert len(data["train"]) == 6 and len(data["val"]) == 3
    sample = data["train"][2]
    assert set(sample) == {"image", "seg", "depth", "normal", "count"}
    assert sample["image"].shape == (3, H, W) and sample["image"].dtype == torch.float32
    assert sample["seg"].shape == (H, W) and sample["seg"].dtype == torch.int64
    assert sample["depth"].shape == (1, H, W) and sample["normal"].shape == (3, H, W)
    assert sample["count"].shape == () and sample["count"].dtype == torch.int64

    raw = render_scene(4, 2, H, W)
    image = sample["image"].permute(1, 2, 0).numpy() * np.array(std) + np.array(mean)
    np.testing.assert_allclose(image, raw["image"], atol=1e-6)
    assert torch.equal(sample["seg"], torch.from_numpy(raw["seg"]))
    assert torch.equal(sample["depth"], torch.from_numpy(raw["depth"]).permute(2, 0, 1))
    assert torch.equal(sample["normal"], torch.from_numpy(raw["normals"]).permute(2, 0, 1))
    assert int(sample["count"]) == int(raw["count"])

    again = build_datasets(cfg, TASKS)
    assert torch.equal(again["train"].images, data["train"].images)
    assert all(torch.equal(again["val"].targets[k], data["val"].targets[k]) for k in data["val"].targets)
    # Train and val are different scenes; another seed is another data set.
    assert not torch.equal(data["train"].images[:3], data["val"].images)
    other = build_datasets(cfg.model_copy(update={"seed": 5}), TASKS)
    assert not torch.equal(other["train"].images, data["train"].images)


def test_build_datasets_only_requested_tasks_and_batch_helpers() -> None:
    cfg = DataConfig(height=32, width=40, train_size=4, val_size=2)
    data = build_datasets(cfg, TASKS[:2])
    assert set(data["train"].targets) == {"seg", "depth"}
    batch = data["train"].batch(3, offset=1)
    assert batch["image"].shape == (3, 3, 32, 40) and batch["seg"].shape == (3, 32, 40)
    sub = data["train"].subset([0, 3])
    assert torch.equal(sub.images[1], data["train"].images[3])


def test_make_loader_shuffles_deterministically() -> None:
    data = build_datasets(DataConfig(height=16, width=16, train_size=8, val_size=1), TASKS[:1])["train"]
    first = [b["image"] for b in make_loader(data, 3, shuffle=True, seed=1)]
    second = [b["image"] for b in make_loader(data, 3, shuffle=True, seed=1)]
    assert [x.shape[0] for x in first] == [3, 3, 2]
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))
    in_order = [b["image"] for b in make_loader(data, 3, shuffle=False, drop_last=True)]
    assert [x.shape[0] for x in in_order] == [3, 3]
    assert torch.equal(in_order[0], data.images[:3])
    assert not torch.equal(torch.cat(first), data.images)  # shuffled


def test_wrong_class_count_for_synthetic_is_a_user_error() -> None:
    tasks = [TaskSpec(name="seg", kind="segmentation", channels=13)]
    with pytest.raises(DeploymtlError, match=r"recipe demo: task 'seg' declares 13 classes but synthetic data has 5"):
        build_datasets(DataConfig(train_size=1, val_size=1), tasks, where="recipe demo")
