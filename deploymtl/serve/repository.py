"""`deploymtl export ARTIFACT --target triton -o REPO`: a Triton model repository Triton loads unchanged.

    REPO/README.md                 the models, their interface, and the tritonserver command line
    REPO/NAME/config.pbtxt         platform, max_batch_size, inputs/outputs, dynamic_batching, instance_group,
                                   parameters (tasks, preprocessing, provenance), model_warmup
    REPO/NAME/1/model.onnx         or model.plan (+ model.plan.json, the engine manifest)
    REPO/NAME/1/model.parity.npz   deploymtl's sidecars, so `deploymtl verify REPO/NAME/1/model.onnx` works
    REPO/NAME/1/export_report.json   (Triton ignores files it does not load)
    REPO/NAME/warmup/image         one parity sample, raw row-major bytes: Triton's warm-up input

The source is a verified export: `model.onnx` / `model.plan` with its `export_report.json` beside it (a failed
one is refused). `deploymtl export pruned.pt --target triton` exports to ONNX first, into a temporary folder, and
then packages that (cli/serve.py composes the two, so serving never imports the exporter). Every value comes from
the one batch specification and the model file: `max_batch_size` is the batch MAX, dims are the model's without
the batch axis, one output per task. The dynamic batcher setting is resolved by `batching.py`. The repository is
one output set (`outdir.output_set`): other models in REPO are carried over, the new model directory and README
replace the old ones in one swap, and the new model directory is validated (`validate.check_model_dir`) before
the swap, so a Triton polling REPO never sees a half-written model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import DeploymtlError, InternalError
from ..io import atomic_write_bytes, atomic_write_text, read_json, sha256_file
from ..outdir import check_output_dir, link_or_copy, output_set
from .batching import Batching, resolve_batching
from .interface import MODEL_FILES, ONNX_PLATFORM, PLAN_PLATFORM, ModelInterface, platform_of, read_interface
from .modelconfig import CONFIG_NAME, TRT_PRECISIONS, ConfigSpec, Warmup, build_config, render
from .validate import RepositoryModel, check_model_dir

README = "README.md"
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")  # Triton/PyTriton model names; no hidden folders
REPORT = "export_report.json"
SIDECARS = ("model.parity.npz", REPORT, "recipe.json", "model.plan.json")
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}


@dataclass(frozen=True)
class RepositoryOptions:
    """What `--target triton` takes besides the source and REPO (the export options apply to a pruned.pt)."""

    name: str | None = None
    instance_kind: str | None = None  # cpu / gpu; default: cpu for ONNX, gpu for a plan
    instances: int = 1
    trt_accelerator: str | None = None  # FP16 / FP32: ONNX Runtime's TensorRT accelerator in Triton (GPU)
    threads: int | None = None  # ONNX Runtime intra-op threads (the backend's intra_op_thread_count)
    preferred: list[int] | None = None
    max_delay_ms: float | None = None
    profile: Path | None = None


def model_name(artifact: Path, name: str | None = None) -> str:
    """`name`, else the recipe's name (from recipe.json beside the artifact), else the artifact's folder name."""
    if name is None:
        recipe = artifact.parent / "recipe.json"
        found = read_json(recipe, "recipe").get("name") if recipe.is_file() else None
        name = found if isinstance(found, str) and found else artifact.resolve().parent.name
        name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "model"
    if not NAME_RE.fullmatch(name):
        raise DeploymtlError(f"--name '{name}' is not a Triton model name",
                             hint="expected letters, digits, '_', '.' and '-', not starting with '.' or '-'")
    return name


def write_repository(source: str | Path, repo: str | Path, options: RepositoryOptions = RepositoryOptions(),
                     log: Callable[[str], None] = lambda _msg: None) -> RepositoryModel:
    """Package `source` as REPO/NAME (module docstring); returns the validated model directory."""
    src, out = Path(source), Path(repo)
    check_output_dir(out)
    if not src.is_file():
        raise DeploymtlError(f"model not found: {src}", hint="expected model.onnx or model.plan")
    _check_options(options)
    if src.suffix.lower() == ".pt":  # exporting is the exporter's job; `deploymtl export` composes the two
        raise DeploymtlError(f"{src} is not exported yet", hint=f"run deploymtl export {src} --target triton, which "
                             "exports it to ONNX first")
    return _package(src, out, options, model_name(src, options.name), log)


def _check_options(o: RepositoryOptions) -> None:
    if o.instance_kind is not None and o.instance_kind not in INSTANCE_KINDS:
        raise DeploymtlError(f"--instance-kind '{o.instance_kind}'", hint="expected cpu or gpu")
    if o.instances < 1:
        raise DeploymtlError(f"--instances {o.instances}", hint="expected >= 1")
    if o.trt_accelerator is not None and o.trt_accelerator.upper() not in TRT_PRECISIONS:
        raise DeploymtlError(f"--ort-trt '{o.trt_accelerator}'", hint="expected fp16 or fp32")
    if o.threads is not None and o.threads < 1:
        raise DeploymtlError(f"--threads {o.threads}", hint="expected >= 1")


def _verified_report(src: Path) -> dict[str, Any]:
    path = src.parent / REPORT
    if not path.is_file():
        raise DeploymtlError(f"{src} has no {REPORT} beside it",
                             hint="expected a model written by deploymtl export (or pass its pruned.pt)")
    report = read_json(path, "export report")
    if not isinstance(report, dict) or report.get("artifact") != src.name:
        raise DeploymtlError(f"{path} does not describe {src.name}", hint="expected the export report of this model")
    if report.get("passed") is not True:
        raise DeploymtlError(f"{src} failed its export verification ({path})",
                             hint="fix the export first; only verified artifacts are packaged for serving")
    return report


def _package(src: Path, out: Path, options: RepositoryOptions, name: str,
             log: Callable[[str], None]) -> RepositoryModel:
    platform = platform_of(src)
    kind = INSTANCE_KINDS[options.instance_kind or ("gpu" if platform == PLAN_PLATFORM else "cpu")]
    if platform == PLAN_PLATFORM and kind != "KIND_GPU":
        raise DeploymtlError("--instance-kind cpu: a TensorRT plan runs only on a GPU", hint="use --instance-kind gpu")
    if options.trt_accelerator is not None and (platform != ONNX_PLATFORM or kind != "KIND_GPU"):
        raise DeploymtlError("--ort-trt needs an ONNX model on GPU instances", hint="add --instance-kind gpu")
    report = _verified_report(src)
    interface = read_interface(src)
    if interface.max_batch is None:
        raise DeploymtlError(f"{src} records no batch maximum", hint="expected a model written by deploymtl export")
    batching = resolve_batching(src, interface.max_batch, preferred=options.preferred,
                                max_delay_ms=options.max_delay_ms, profile=options.profile)
    parity = src.with_name(f"{src.stem}.parity.npz")
    sample = _warmup_sample(parity, interface)
    spec = ConfigSpec(name=name, platform=platform, inputs=interface.inputs, outputs=interface.outputs,
                      batching=batching, instance_kind=kind, instances=options.instances,
                      parameters=_parameters(src, interface, report, batching, options.threads),
                      warmup=tuple(Warmup(f"parity_sample_batch_{b}", b, interface.inputs[0], interface.inputs[0].name)
                                   for b in sorted({1, batching.max_batch_size})),
                      trt_accelerator=options.trt_accelerator.upper() if options.trt_accelerator else None)
    header = (f"Triton model configuration written by deploymtl {__version__} for {src.name}.\n"
              f"max_batch_size = the batch specification's MAX; dynamic batching from {batching.source}.")
    others = _other_models(out, name)
    with output_set(out, owned=(name, README)) as stage:
        model_dir = stage / name
        (model_dir / "1").mkdir(parents=True)
        (model_dir / "warmup").mkdir()
        atomic_write_text(model_dir / CONFIG_NAME, render(build_config(spec), header))
        link_or_copy(src, model_dir / "1" / MODEL_FILES[platform])
        for sidecar in SIDECARS:
            if (src.parent / sidecar).is_file():
                link_or_copy(src.parent / sidecar, model_dir / "1" / sidecar)
        atomic_write_bytes(model_dir / "warmup" / interface.inputs[0].name, sample.tobytes())
        try:
            checked = check_model_dir(model_dir)
        except DeploymtlError as exc:  # we wrote it from the model's own interface: our bug, not the input's
            raise InternalError(f"the Triton model directory written for {src} fails its own check: {exc}") from None
        atomic_write_text(stage / README, readme(out, [*others, _summary(spec, interface)]))
    log(f"wrote {out / name}: {platform}, max_batch_size {batching.max_batch_size}, preferred "
        f"{list(batching.preferred)}, delay {batching.max_delay_ms:g} ms ({batching.source})")
    return RepositoryModel(name, out / name, checked.config, checked.version, out / name / "1" / src.name,
                           checked.interface)


def _warmup_sample(parity: Path, interface: ModelInterface) -> np.ndarray:
    """The first parity input, in the model input's dtype: what Triton sends at load to warm the model up."""
    from ..formats.parity import load_parity

    inp = interface.inputs[0]
    if len(interface.inputs) != 1:
        raise DeploymtlError(f"{interface.path} has {len(interface.inputs)} inputs", hint="expected one image input")
    image = load_parity(parity).inputs[0]
    if tuple(image.shape) != inp.dims:
        raise DeploymtlError(f"{parity}: images are {list(image.shape)}, {interface.path.name} takes {list(inp.dims)}",
                             hint="expected the parity file written with this model")
    return np.ascontiguousarray(image, dtype=np.dtype(inp.dtype))


def _parameters(src: Path, interface: ModelInterface, report: dict[str, Any], batching: Batching,
                threads: int | None) -> dict[str, str]:
    """Strings in `parameters`: what a client needs (tasks, preprocessing) and where the model came from."""
    meta = interface.meta
    tasks = meta.get("tasks") or report.get("tasks") or [o.name for o in interface.outputs]
    params = {
        "deploymtl_tasks": json.dumps([t["name"] if isinstance(t, dict) else t for t in tasks]),
        "deploymtl_preprocessing": json.dumps(meta.get("input") or {}),
        "deploymtl_precision": str(meta.get("precision") or report.get("precision")),
        "deploymtl_batch": json.dumps(report.get("batch") or meta.get("batch")),
        "deploymtl_batching_source": batching.source,
        "deploymtl_model_sha256": sha256_file(src),
        "deploymtl_version": __version__,
    }
    if threads is not None and interface.platform == ONNX_PLATFORM:
        params["intra_op_thread_count"] = str(threads)  # read by Triton's onnxruntime backend
    return params


def _other_models(repo: Path, name: str) -> list[dict[str, Any]]:
    """Summaries of the repository's other models (carried into the new set), for the README."""
    if not repo.is_dir():
        return []
    from .modelconfig import parse_config

    out = []
    for d in sorted(repo.iterdir()):
        if d.name == name or not (d / CONFIG_NAME).is_file():
            continue
        try:
            cfg = parse_config(d / CONFIG_NAME)
            line = f"{cfg.platform or cfg.backend}, max_batch_size {cfg.max_batch_size} (kept as it was)"
        except DeploymtlError as exc:
            line = f"kept as it was; its config.pbtxt does not parse: {exc}"
        out.append({"name": d.name, "line": line})
    return out


def _summary(spec: ConfigSpec, interface: ModelInterface) -> dict[str, Any]:
    b = spec.batching
    kind = "GPU" if spec.instance_kind == "KIND_GPU" else "CPU"
    line = (f"{spec.platform} ({interface.meta.get('precision', '?')}), max_batch_size {b.max_batch_size}, dynamic "
            f"batching preferred {list(b.preferred)} with {b.max_delay_ms:g} ms queue delay ({b.source}), "
            f"{spec.instances} {kind} instance(s)")
    io = [f"input `{t.name}` {t.dtype} [-1, {', '.join(map(str, t.dims))}]" for t in spec.inputs]
    io += [f"output `{t.name}` {t.dtype} [-1, {', '.join(map(str, t.dims))}]" for t in spec.outputs]
    return {"name": spec.name, "line": line, "io": io, "preprocessing": interface.meta.get("input"),
            "plan": spec.platform == PLAN_PLATFORM, "trt": interface.meta.get("tensorrt_version")}


def readme(repo: Path, models: list[dict[str, Any]]) -> str:
    root = repo.resolve()
    lines = [f"# Triton model repository (deploymtl {__version__})", ""]
    for m in models:
        lines += [f"- **{m['name']}**: {m['line']}"]
        lines += [f"  - {io}" for io in m.get("io", [])]
        pre = m.get("preprocessing")
        if pre:
            lines += [f"  - preprocessing: {pre.get('layout', 'NCHW')} {pre.get('dtype', 'float32')}, pixels in [0, 1] "
                      f"then (x - mean) / std per channel, mean {pre.get('mean')}, std {pre.get('std')}"]
        if m.get("plan"):
            lines += [f"  - TensorRT plan built with TensorRT {m.get('trt')}: the Triton release must ship the "
                      "same TensorRT version, on the GPU model it was built for (see 1/model.plan.json)"]
    lines += ["", "Serve it with NVIDIA Triton Inference Server, which needs the backend of each model's platform "
              "(onnxruntime for `onnxruntime_onnx`, tensorrt for `tensorrt_plan`; NVIDIA's container "
              "`nvcr.io/nvidia/tritonserver:<yy.mm>-py3` ships both):", "",
              f"    tritonserver --model-repository={root}", "",
              "or in a container:", "",
              f"    docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v {root}:/models "
              "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models", "",
              "Without a Triton that has these backends, `deploymtl serve` runs this repository on a real Triton "
              "(PyTriton's bundled tritonserver, python backend) with deploymtl's runtime as the model, with the "
              "same config values:", "", f"    deploymtl serve {root}", "",
              "Check a client against it with `deploymtl profile --url http://127.0.0.1:8000 --model NAME`.", ""]
    return "\n".join(lines)
