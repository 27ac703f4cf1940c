"""Serving on NVIDIA Triton Inference Server: model repositories, and a real Triton in front of deploymtl's runtime.

    interface.py    what a model file declares: input/output names, dtypes, dims, batch maximum (ONNX, plan)
    modelconfig.py  Triton's `config.pbtxt` (ModelConfig in protobuf text format): build, render, parse
    batching.py     the dynamic batcher setting: the profiler's best one, else the recipe's, else defaults
    validate.py     a model directory checked against its model file (what Triton's schema does not check)
    repository.py   `deploymtl export --target triton`: REPO/NAME/{config.pbtxt, 1/model.onnx|plan, warmup/}
    ports.py        port options checked and probed before anything starts
    environment.py  the `[serve]` extra, the numpy<2 guard, the python-backend stub's libpython
    binding.py      an artifact or a repository model -> PyTriton tensors, model config, inference function
    server.py       the lifecycle: start tritonserver through PyTriton, wait for a signal, stop once

`tritonclient` (extra `[triton]`) is needed for the schema (repository, validate); PyTriton (extra `[serve]`) only
for the server. Both are imported inside the functions that need them, with a one-line error naming the extra.
"""
