"""The input convention an artifact records and the pieces an imported model needs: channel order and pixel scale in
the data and the input spec (old artifacts keep loading), images without targets, the `preprocess` op baked into a
static graph, and dense tasks at feature resolution."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from deploymtl.config import DataConfig
from deploymtl.data import build_datasets
from deploymtl.data.datasets import _normalise
from deploymtl.errors import DeploymtlError
from deploymtl.export.preprocess import baked
from deploymtl.export.samples import raw_pixels
from deploymtl.formats.static import load_static, save_static
from deploymtl.io import load_torch, save_torch
from deploymtl.ir import build_static
from deploymtl.ir.preprocess import bake_preprocessing
from deploymtl.metrics import TaskMeter
from deploymtl.runtime.toy import toy_artifact
from deploymtl.tasks import TaskSpec, task_loss

CAFFE = [104.00698793, 116.66876762, 122.67891434]


def test_the_default_convention_keeps_images_bit_identical() -> None:
    """RGB and scale 1/255 are deploymtl's own convention: the images are (x - mean) / std exactly as before."""
    images = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    cfg = DataConfig()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    old = (x - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
    assert torch.equal(_normalise(images, cfg), old)


def test_bgr_caffe_convention() -> None:
    images = np.random.default_rng(1).random((1, 8, 8, 3), dtype=np.float32)
    cfg = DataConfig(channel_order="BGR", scale=1.0, mean=tuple(CAFFE), std=(1.0, 1.0, 1.0))
    got = _normalise(images, cfg)
    want = images[..., ::-1].transpose(0, 3, 1, 2) * 255.0 - np.float32(CAFFE).reshape(1, 3, 1, 1)
    assert np.abs(got.numpy() - want).max() < 1e-4
    with pytest.raises(ValidationError):
        DataConfig(channel_order="BRG")
    with pytest.raises(ValidationError):
        DataConfig(scale=0.0)


def test_images_without_targets_fit_any_tasks() -> None:
    """An imported model's 40-class segmentation has no labels in the synthetic scenes: with targets false the
    samples are images only (with targets, the class count is refused as before)."""
    tasks = [TaskSpec(name="seg", kind="segmentation", channels=40)]
    sets = build_datasets(DataConfig(targets=False, height=16, width=16, train_size=2, val_size=3), tasks)
    assert sets["val"].images.shape == (3, 3, 16, 16) and sets["val"].targets == {}
    with pytest.raises(DeploymtlError, match="declares 40 classes but synthetic data has 5"):
        build_datasets(DataConfig(height=16, width=16, train_size=1, val_size=1), tasks)


def test_old_artifacts_read_with_the_old_convention(tmp_path) -> None:
    """A pruned.pt written before channel_order / scale / dtype existed reads as RGB, 1/255, float32; a bad value is
    a one-line error naming the field."""
    path = save_static(tmp_path / "pruned.pt", toy_artifact(height=16, image_width=16))
    data = load_torch(path)
    data["input"] = {k: data["input"][k] for k in ("channels", "height", "width", "mean", "std")}
    save_torch(tmp_path / "old.pt", data)
    art = load_static(tmp_path / "old.pt")
    assert (art.input["channel_order"], art.input["scale"], art.input["dtype"]) == ("RGB", 1 / 255, "float32")
    bad = copy.deepcopy(data)
    bad["input"]["channel_order"] = "GBR"
    save_torch(tmp_path / "bad.pt", bad)
    with pytest.raises(DeploymtlError, match="input.channel_order"):
        load_static(tmp_path / "bad.pt")


def test_baked_preprocessing_equals_the_unbaked_graph_on_normalised_pixels() -> None:
    art = toy_artifact(height=16, image_width=16)
    art.input.update(mean=CAFFE, std=[1.0, 1.0, 1.0], scale=1.0, channel_order="BGR")
    b = baked(art, "toy")
    assert b.input["dtype"] == "uint8" and b.model.spec["nodes"][0]["op"] == "preprocess"
    assert all("image" not in n["inputs"] for n in b.model.spec["nodes"][1:])  # every reader rewired
    pixels = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    x = pixels.float() - torch.tensor(CAFFE).view(1, 3, 1, 1)
    with torch.inference_mode():
        ours, ref = b.model.infer(pixels), art.model.infer(x)
    assert all(torch.allclose(ours[k], ref[k], atol=1e-5, rtol=1e-5) for k in ref)
    assert torch.equal(raw_pixels(x, b.input), pixels)  # the samples' inverse of the convention
    with pytest.raises(DeploymtlError, match="uint8 already"):
        baked(b, "toy")
    with pytest.raises(DeploymtlError, match="already starts with a preprocess node"):
        bake_preprocessing(b.model.spec, {}, scale=1.0, mean=CAFFE, std=[1.0] * 3)


def test_preprocess_op_is_checked_like_every_op() -> None:
    art = toy_artifact(height=16, image_width=16)
    state = dict(art.model.state_dict())
    spec, state = bake_preprocessing(art.model.spec, state, scale=1 / 255, mean=[0.5] * 3, std=[0.25] * 3)
    assert torch.allclose(state["layers.preprocess.mul"], torch.full((3,), 1 / 255 / 0.25))
    spec["nodes"][0]["attrs"]["channels"] = 4
    with pytest.raises(DeploymtlError, match="node 'preprocess' \\(preprocess\\): attrs.channels is 4"):
        build_static(spec, state, image=(3, 16, 16))


def test_feature_resolution_outputs_are_scored_at_the_targets_size() -> None:
    """Losses and metrics bring a raw stride-8 output to its target's size (nearest, the public evaluation's rule)."""
    seg = TaskSpec(name="seg", kind="segmentation", channels=3, resolution="features")
    out = torch.zeros(1, 3, 2, 2)
    out[0, 1] = 1.0  # class 1 everywhere
    target = torch.ones(1, 8, 8, dtype=torch.int64)
    meter = TaskMeter(seg)
    meter.update(out, target)
    assert meter.compute()["pixel_acc"] == 1.0
    assert float(task_loss(seg, out, target)) == pytest.approx(float(torch.nn.functional.cross_entropy(
        torch.nn.functional.interpolate(out, size=(8, 8)), target)))
    with pytest.raises(ValidationError, match="resolution applies to dense tasks"):
        TaskSpec(name="c", kind="classification", channels=3, resolution="features")
