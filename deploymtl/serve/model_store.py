"""The model repository `deploymtl serve` hands its tritonserver: one python-backend model per served model.

Not the user's repository (that one, from `deploymtl export --target triton`, names Triton's onnxruntime or
tensorrt backends and is left untouched): a private folder the server owns, with per model

    NAME/config.pbtxt   backend "python"; the served max_batch_size, dynamic batcher, tensors and instance count;
                        parameters deploymtl_model / _provider / _spinning / _threads / _max_batch (what each
                        instance loads)
    NAME/1/model.py     `from deploymtl.serve.python_model import TritonPythonModel`

Instances are KIND_CPU for the python backend whatever the provider: the stub is a CPU process, and ONNX Runtime's
CUDA or TensorRT provider puts the session on the GPU itself.
"""

from __future__ import annotations

from pathlib import Path

from .binding import ServedModel
from .modelconfig import CONFIG_NAME, ConfigSpec, build_config, render
from .python_model import instance_parameters

MODEL_PY = "from deploymtl.serve.python_model import TritonPythonModel  # noqa: F401 (Triton's python backend)\n"


def write_model_store(models: list[ServedModel], store: Path) -> Path:
    """`store/NAME/...` for each model (module docstring); returns `store`."""
    for m in models:
        spec = ConfigSpec(name=m.name, platform="", backend="python", inputs=m.inputs, outputs=m.outputs,
                          batching=m.batching, instance_kind="KIND_CPU", instances=m.instances,
                          parameters=instance_parameters(m.model_file, m.provider, m.spinning, m.threads,
                                                         m.max_batch))
        (store / m.name / "1").mkdir(parents=True)
        (store / m.name / CONFIG_NAME).write_text(render(build_config(spec), f"deploymtl serve: {m.describe()}"))
        (store / m.name / "1" / "model.py").write_text(MODEL_PY)
    return store
