"""Atomic writes, JSON reports, safe checkpoint loading and the error model."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from deploymtl.cli.main import main
from deploymtl.errors import EXIT_USAGE, EXIT_VERIFICATION, DeploymtlError, VerificationError, where
from deploymtl.io import (
    atomic_path,
    atomic_write_text,
    ensure_dir,
    load_torch,
    read_json,
    save_torch,
    sha256_file,
    sha256_json,
    write_json,
)


class _Evil:
    """Unpickling this would create a file: proof that loading executed code from the checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot serialise this")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# -- atomic writes ---------------------------------------------------------------------------------------
def test_failing_writer_leaves_no_file(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "model.bin"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half of a mod")
            raise RuntimeError("disk full")
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # the temporary file is gone too


def test_failing_writer_keeps_the_previous_good_file(tmp_path: Path) -> None:
    dest = tmp_path / "report.json"
    write_json(dest, {"ok": True})
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(dest) as tmp:
            tmp.write_text('{"ok": fa')
            raise KeyboardInterrupt
    assert read_json(dest) == {"ok": True}
    with pytest.raises(TypeError):
        write_json(dest, {"bad": object()})  # fails while serialising: the good file stays
    assert read_json(dest) == {"ok": True}
    assert _leftovers(tmp_path) == []


def test_failing_torch_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    dest = tmp_path / "supernet.pt"
    save_torch(dest, {"w": torch.arange(4.0)})
    with pytest.raises(Exception, match="cannot serialise this"):
        save_torch(dest, {"w": torch.zeros(4), "extra": _Unpicklable()})
    assert torch.equal(load_torch(dest)["w"], torch.arange(4.0))
    assert _leftovers(tmp_path) == []


def test_successful_writes_replace_and_create_parents(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "b" / "notes.md"
    atomic_write_text(dest, "first\n")
    atomic_write_text(dest, "second\n")
    assert dest.read_text() == "second\n"
    assert _leftovers(dest.parent) == []


def test_output_dir_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("I am a file")
    with pytest.raises(DeploymtlError) as exc:
        ensure_dir(blocker)
    assert exc.value.one_line() == f"output directory {blocker} exists and is a file (expected a directory path)"
    with pytest.raises(DeploymtlError, match="exists and is a file"):
        write_json(blocker / "report.json", {})
    assert blocker.read_text() == "I am a file"


def test_cli_output_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPLOYMTL_DEBUG", raising=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "family": "adashare", "tasks": [{"name": "d", "kind": "depth"}],
                                      "data": {"train_size": 2, "val_size": 1}}))
    blocker = tmp_path / "out"
    blocker.write_text("")
    assert main(["train", str(recipe), "-o", str(blocker), "-q"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == f"error: output directory {blocker} exists and is a file (expected a directory path)\n"


# -- JSON ------------------------------------------------------------------------------------------------
def test_write_json_converts_numpy_torch_paths_and_non_finite(tmp_path: Path) -> None:
    path = write_json(tmp_path / "r.json", {
        "np": np.float32(1.5), "arr": np.arange(3), "t": torch.tensor([1, 2]), "scalar": torch.tensor(2.5),
        "path": Path("a/b"), "nan": float("nan"), "inf": math.inf, 3: (1, 2),
    })
    text = path.read_text()
    assert text.endswith("\n") and "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"np": 1.5, "arr": [0, 1, 2], "t": [1, 2], "scalar": 2.5, "path": "a/b",
                                "nan": "nan", "inf": "inf", "3": [1, 2]}


def test_read_json_errors(tmp_path: Path) -> None:
    with pytest.raises(DeploymtlError) as exc:
        read_json(tmp_path / "none.json", what="plan")
    assert exc.value.one_line() == f"plan not found: {tmp_path / 'none.json'} (expected an existing file)"
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,,}')
    with pytest.raises(DeploymtlError) as exc:
        read_json(bad, what="plan")
    assert exc.value.one_line().startswith(f"plan {bad} is not valid JSON: ")
    assert "\n" not in exc.value.one_line()


def test_hashes(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(b"deploymtl" * 1000)
    assert sha256_file(p) == hashlib.sha256(b"deploymtl" * 1000).hexdigest()
    assert sha256_json({"b": 1, "a": [1.0, 2]}) == sha256_json({"a": [1.0, 2], "b": 1})  # key order free
    assert sha256_json({"a": 1}) != sha256_json({"a": 2})


# -- loading never executes code -------------------------------------------------------------------------
def test_load_torch_round_trip(tmp_path: Path) -> None:
    state = {"format": "deploymtl.supernet/1", "w": torch.randn(2, 3), "meta": {"tasks": ["a"], "n": 3}}
    loaded = load_torch(save_torch(tmp_path / "c.pt", state))
    assert loaded["format"] == state["format"] and loaded["meta"] == state["meta"]
    assert torch.equal(loaded["w"], state["w"])


def test_load_torch_refuses_pickled_objects(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"payload": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(DeploymtlError) as exc:
        load_torch(tmp_path / "evil.pt")
    assert not marker.exists()
    line = exc.value.one_line()
    assert line.startswith(f"checkpoint {tmp_path / 'evil.pt'} holds pickled Python objects")
    assert "\n" not in line and "\x1b" not in line

    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a whole pickled module
    with pytest.raises(DeploymtlError, match="holds pickled Python objects"):
        load_torch(tmp_path / "module.pt", what="supernet")


@pytest.mark.parametrize("cut", [0, 10, 0.5, -30])
def test_load_torch_truncated_file(tmp_path: Path, cut: float) -> None:
    good = save_torch(tmp_path / "good.pt", {"w": torch.randn(64, 64)})
    data = good.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(data) + cut)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[:n])
    with pytest.raises(DeploymtlError) as exc:
        load_torch(bad, what="supernet")
    line = exc.value.one_line()
    assert line.startswith(f"supernet {bad} is truncated, corrupt or not a weights-only torch file")
    assert "\n" not in line and len(line) < 400


def test_load_torch_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DeploymtlError) as exc:
        load_torch(tmp_path / "none.pt")
    missing = tmp_path / "none.pt"
    assert exc.value.one_line() == f"checkpoint not found: {missing} (expected a file written by deploymtl)"


# -- the error types -------------------------------------------------------------------------------------
def test_error_types_and_one_line() -> None:
    err = DeploymtlError("bad value\n  in   field", hint="expected 3")
    assert err.exit_code == EXIT_USAGE == 2
    assert err.one_line() == "bad value in field (expected 3)"
    v = VerificationError("parity failed")
    assert isinstance(v, DeploymtlError) and v.exit_code == EXIT_VERIFICATION == 1
    assert v.one_line() == "parity failed"
    assert where("r.yaml", "train.epochs") == "r.yaml: train.epochs" and where(Path("p")) == "p"


def test_cli_maps_exit_codes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Verification failures exit 1, our own bugs exit 3 with a hint to set DEPLOYMTL_DEBUG."""
    import deploymtl.config as config

    monkeypatch.delenv("DEPLOYMTL_DEBUG", raising=False)

    def fail(exc: Exception):
        def load_recipe(*args, **kwargs):
            raise exc
        return load_recipe

    monkeypatch.setattr(config, "load_recipe", fail(VerificationError("seg: max abs error 0.3 > atol 1e-4")))
    assert main(["train", "x.yaml"]) == 1
    assert capsys.readouterr().err == "error: seg: max abs error 0.3 > atol 1e-4\n"
    monkeypatch.setattr(config, "load_recipe", fail(ZeroDivisionError("boom")))
    assert main(["train", "x.yaml"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("internal error: ZeroDivisionError: boom") and "DEPLOYMTL_DEBUG=1" in err
    assert "Traceback" not in err
    monkeypatch.setenv("DEPLOYMTL_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["train", "x.yaml"])


def test_atomic_path_temp_name_is_hidden_beside_dest(tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    with atomic_path(dest) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.onnx.") and tmp.suffix == ".tmp"
        assert not dest.exists()
        tmp.write_bytes(b"onnx")
    assert dest.read_bytes() == b"onnx" and not tmp.exists()
    assert os.listdir(tmp_path) == ["model.onnx"]
