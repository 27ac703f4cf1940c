"""What `deploymtl serve` runs inside Triton's python backend, without a server: the model store it writes (parsed
with Triton's schema) and `TritonPythonModel` driven the way the stub drives it, with a stand-in for the stub's
`triton_python_backend_utils` module (it exists only inside the stub)."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="needs tritonclient (the [triton] or [serve] extra)")

from deploymtl.runtime.toy import toy_onnx  # noqa: E402
from deploymtl.serve.binding import ServeOptions, load_served  # noqa: E402
from deploymtl.serve.model_store import MODEL_PY, write_model_store  # noqa: E402
from deploymtl.serve.modelconfig import parse_config  # noqa: E402
from deploymtl.serve.python_model import TritonPythonModel, split_rows  # noqa: E402


class _Tensor:
    def __init__(self, name, value):
        self.name, self.value = name, value

    def as_numpy(self):
        return self.value


class _Response:
    def __init__(self, output_tensors, error=None):
        self.outputs = {t.name: t.value for t in output_tensors}
        self.error = error


class _Error:
    def __init__(self, message):
        self.message = message


@pytest.fixture
def pb_utils(monkeypatch):
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor = _Tensor
    fake.InferenceResponse = _Response
    fake.TritonError = _Error
    fake.get_input_tensor_by_name = lambda request, name: _Tensor(name, request[name]) if name in request else None
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    return fake


@pytest.fixture
def toy_model(tmp_path):
    toy = toy_onnx(tmp_path / "toy" / "model.onnx", max_batch=8)
    [served] = load_served(toy, ServeOptions(name="toy", threads=1, preferred=[4], max_delay_ms=5.0, instances=2))
    return served


def _initialized(store, name):
    cfg = parse_config(store / name / "config.pbtxt")
    from google.protobuf import json_format

    model = TritonPythonModel()
    model.initialize({"model_config": json.dumps(json_format.MessageToDict(cfg, preserving_proto_field_name=True)),
                      "model_name": name, "model_version": "1", "model_repository": str(store / name)})
    return model


def test_the_model_store_is_a_python_backend_model_triton_can_parse(toy_model, tmp_path):
    store = write_model_store([toy_model], tmp_path / "store")
    cfg = parse_config(store / "toy" / "config.pbtxt")
    assert cfg.backend == "python" and cfg.platform == "" and cfg.max_batch_size == 8
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 5000
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, 2)]  # KIND_CPU is 2 in model_config.proto
    assert [o.name for o in cfg.output] == ["seg", "depth", "count"] and list(cfg.input[0].dims) == [3, 48, 64]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params == {"deploymtl_model": str(toy_model.model_file.resolve()), "deploymtl_provider": "cpu",
                      "deploymtl_spinning": "0",
                      "deploymtl_threads": "1"}
    assert (store / "toy" / "1" / "model.py").read_text() == MODEL_PY


def test_execute_answers_each_request_with_its_own_rows_of_the_batch(toy_model, tmp_path, pb_utils):
    store = write_model_store([toy_model], tmp_path / "store")
    model = _initialized(store, "toy")
    with toy_model.open_session() as session:
        images = [session.example(n, seed=n) for n in (1, 3, 2)]
        expected = [session.infer(x) for x in images]
    answers = model.execute([{"image": x} for x in images])
    assert len(answers) == 3 and all(a.error is None for a in answers)
    for got, ref in zip(answers, expected, strict=True):
        assert sorted(got.outputs) == sorted(ref)
        for task in ref:
            np.testing.assert_allclose(got.outputs[task], ref[task], rtol=1e-5, atol=1e-6)
    model.finalize()


def test_a_failing_batch_fails_its_requests_in_one_line_and_the_next_batch_is_served(toy_model, tmp_path, pb_utils):
    store = write_model_store([toy_model], tmp_path / "store")
    model = _initialized(store, "toy")
    bad = np.zeros((1, 3, 48, 64), np.float64)  # Triton checks dtypes before execute; the session is the backstop
    answers = model.execute([{"image": bad}, {"image": bad}])
    assert [a.outputs for a in answers] == [{}, {}]
    messages = [a.error.message for a in answers]
    assert messages[0] == messages[1] and messages[0].startswith("deploymtl model toy: ") and "\n" not in messages[0]
    good = model.execute([{"image": np.zeros((2, 3, 48, 64), np.float32)}])
    assert good[0].error is None and good[0].outputs["seg"].shape[0] == 2
    model.finalize()


def test_a_config_without_the_model_parameters_is_refused_at_load(toy_model, tmp_path, pb_utils):
    store = write_model_store([toy_model], tmp_path / "store")
    path = store / "toy" / "config.pbtxt"
    text = path.read_text()
    path.write_text(text[:text.index("parameters")])
    with pytest.raises(ValueError, match=r"lacks parameters \['deploymtl_model', 'deploymtl_provider'\]"):
        _initialized(store, "toy")


def test_split_rows_keeps_request_order():
    out = {"a": np.arange(6)[:, None], "b": np.arange(6) * 10}
    parts = split_rows(out, [2, 1, 3])
    assert [p["a"][:, 0].tolist() for p in parts] == [[0, 1], [2], [3, 4, 5]]
    assert [p["b"].tolist() for p in parts] == [[0, 10], [20], [30, 40, 50]]


def _spinning(model) -> str:
    return model.session.runner.session.get_session_options().get_session_config_entry(
        "session.intra_op.allow_spinning")


def test_instances_sleep_between_batches_unless_spinning_is_asked_for(tmp_path, pb_utils):
    toy = toy_onnx(tmp_path / "toy" / "model.onnx", max_batch=4)
    for spinning, expected in ((False, "0"), (True, "1")):
        [served] = load_served(toy, ServeOptions(name="toy", threads=1, spinning=spinning))
        store = write_model_store([served], tmp_path / f"store{expected}")
        model = _initialized(store, "toy")
        assert _spinning(model) == expected
        model.finalize()
