"""deploymtl's session as a model of Triton's python backend: this code runs inside the backend's stub process.

tritonserver starts one stub per model instance; the stub imports the model folder's `model.py` (two lines written
by model_store.py that import `TritonPythonModel` from here) and calls `initialize` once, `execute` per batch the
dynamic batcher formed, `finalize` at unload. Requests and answers travel between tritonserver and the stub in
shared memory; the session runs in the stub itself, so a batch costs one hand-over each way and nothing else.

The config's `parameters` (`instance_parameters`, written into the store by model_store.py) say what to load:
`deploymtl_model` (the artifact or the repository's model file), `deploymtl_provider`, `deploymtl_spinning` ("0":
ONNX Runtime's idle threads sleep instead of busy-waiting on CPUs the server shares), `deploymtl_threads`,
`deploymtl_max_batch` (torch artifacts). A batch is the requests' images concatenated in arrival order; each
request gets its own rows of every output back. A failing batch answers each of its requests with the error in
one line; the instance keeps serving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeploymtlError

REQUIRED = ("deploymtl_model", "deploymtl_provider")


def instance_parameters(model_file: Path, provider: str, spinning: bool, threads: int | None,
                        max_batch: int | None) -> dict[str, str]:
    """The config.pbtxt `parameters` that tell each instance what to open (read back by `initialize`)."""
    params = {"deploymtl_model": str(model_file.resolve()), "deploymtl_provider": provider,
              "deploymtl_spinning": "1" if spinning else "0"}
    if threads is not None:
        params["deploymtl_threads"] = str(threads)
    if max_batch is not None:
        params["deploymtl_max_batch"] = str(max_batch)
    return params


def _parameters(model_config: dict[str, Any]) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()}


def split_rows(outputs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    """Each request's rows of every output, in request order."""
    answers, start = [], 0
    for n in sizes:
        answers.append({k: v[start:start + n] for k, v in outputs.items()})
        start += n
    return answers


class TritonPythonModel:
    """Triton python-backend model (its interface: `initialize`, `execute`, `finalize`)."""

    def initialize(self, args: dict[str, str]) -> None:
        from ..runtime.session import load

        config = json.loads(args["model_config"])
        params = _parameters(config)
        missing = [k for k in REQUIRED if not params.get(k)]
        if missing:
            raise ValueError(f"model {args.get('model_name')}: config.pbtxt lacks parameters {missing}")
        threads, max_batch = params.get("deploymtl_threads"), params.get("deploymtl_max_batch")
        self.session = load(params["deploymtl_model"], provider=params["deploymtl_provider"],
                            threads=int(threads) if threads else None, max_batch=int(max_batch) if max_batch else None,
                            spinning=params.get("deploymtl_spinning", "0") == "1")
        self.input_name = config["input"][0]["name"]
        self.output_names = [o["name"] for o in config["output"]]
        self.model_name = args.get("model_name", "model")

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils  # exists only inside the stub

        images = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        try:
            batch = images[0] if len(images) == 1 else np.concatenate(images)
            out = self.session.infer(batch)
            outputs = {n: out[n] for n in self.output_names}
        except Exception as exc:  # this batch's requests fail, with one line each; the next batch is served
            one_line = exc.one_line() if isinstance(exc, DeploymtlError) else \
                " ".join(f"{type(exc).__name__}: {exc}".split())
            error = pb_utils.TritonError(f"deploymtl model {self.model_name}: {one_line}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, np.ascontiguousarray(v))
                                                           for k, v in rows.items()])
                for rows in split_rows(outputs, [len(x) for x in images])]

    def finalize(self) -> None:
        self.session.close()
