"""A model on a running Triton server, seen through `tritonclient` (HTTP or gRPC, the KServe v2 protocol).

`RemoteModel.connect(url, model)` checks the server and the model are ready and reads the model's metadata and
config (input name, datatype and dims; outputs; max_batch_size; dynamic batching). `make_call(image)` is a
caller factory for `loadgen` (one client per worker thread: tritonclient's HTTP client is bound to the thread
that made it). `statistics()` reads Triton's statistics extension; `stats_delta(before, after)` turns two
cumulative snapshots into per-window figures:

- per request: `request_ms` (success: Triton's request time from arrival to response), `queue_ms` (waiting in
  the dynamic batcher), `compute_input_ms`, `compute_infer_ms`, `compute_output_ms` (each request is charged the
  whole duration of the batch it ran in);
- per execution: `executions`, `avg_batch` (inferences / executions), `batch_histogram` {batch size:
  executions}, `compute_per_execution_ms`, and `busy_s` (the model's total compute time).

Works against any Triton, deploymtl's or not. Headers (`--header KEY=VALUE`) go with every request, for servers
that keep endpoints behind a token (on gRPC, PyTriton expects the `triton-grpc-protocol-` prefix on the key).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ..errors import DeploymtlError
from .loadgen import Call, short_error

DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
TIMEOUT_S = 30.0


def _clients() -> tuple[Any, Any]:
    try:
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient
    except ImportError:
        raise DeploymtlError("deploymtl profile --url needs tritonclient",
                             hint='install it with pip install -e ".[triton]"') from None
    return httpclient, grpcclient


def parse_url(url: str) -> tuple[str, str]:
    """`http://HOST:PORT` / `grpc://HOST:PORT` / `HOST:PORT` (HTTP) -> (protocol, "host:port")."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise DeploymtlError(f"--url {url} is not a Triton endpoint",
                             hint="expected http://HOST:PORT or grpc://HOST:PORT, e.g. http://127.0.0.1:8000")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise DeploymtlError(f"--url {url}: the port is not a number 1..65535") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return parts.scheme, f"{host}:{port}"


@dataclass
class RemoteModel:
    url: str
    protocol: str
    address: str
    model: str
    headers: dict[str, str]
    input_name: str
    datatype: str
    dims: tuple[int, ...]
    outputs: list[str]
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def connect(cls, url: str, model: str, headers: dict[str, str] | None = None) -> RemoteModel:
        protocol, address = parse_url(url)
        headers = dict(headers or {})
        client = _new_client(protocol, address)
        try:
            if not client.is_server_ready(headers=headers):
                raise DeploymtlError(f"Triton at {url} is not ready", hint="wait for /v2/health/ready, then retry")
            if not client.is_model_ready(model, headers=headers):
                raise DeploymtlError(f"model '{model}' is not ready on {url}",
                                     hint=f"models there: {', '.join(_model_names(client, headers)) or 'none'}")
            meta = client.get_model_metadata(model, headers=headers)
            config = client.get_model_config(model, headers=headers)
        except DeploymtlError:
            raise
        except Exception as exc:  # connection refused, 4xx/5xx, a timeout: one line
            raise DeploymtlError(f"cannot reach model '{model}' on Triton at {url} ({short_error(exc)})",
                                 hint="is the server running (deploymtl serve ...) and the URL right?") from None
        finally:
            client.close()
        if protocol == "grpc":
            meta, config = _grpc_json(meta), _grpc_json(config)["config"]
        inputs = meta.get("inputs") or []
        if len(inputs) != 1:
            raise DeploymtlError(f"model '{model}' has {len(inputs)} inputs", hint="expected one image input")
        shape = [int(d) for d in inputs[0]["shape"]]
        batched = int(config.get("max_batch_size", 0)) > 0
        dims = tuple(shape[1:] if batched else shape)
        if any(d < 1 for d in dims):
            raise DeploymtlError(f"model '{model}' input '{inputs[0]['name']}' has variable dims {shape}",
                                 hint="profile needs fixed dims to build its requests")
        return cls(url, protocol, address, model, headers, inputs[0]["name"], inputs[0]["datatype"], dims,
                   [o["name"] for o in meta.get("outputs") or []], config)

    @property
    def max_batch_size(self) -> int:
        return int(self.config.get("max_batch_size", 0))

    def batching(self) -> dict[str, Any]:
        db = self.config.get("dynamic_batching") or {}
        return {"max_batch_size": self.max_batch_size,
                "preferred": [int(p) for p in db.get("preferred_batch_size") or []],
                "max_queue_delay_us": int(db.get("max_queue_delay_microseconds", 0) or 0),
                "dynamic_batching": bool(self.config.get("dynamic_batching"))}

    def example(self, seed: int = 0) -> np.ndarray:
        """One request's input: (1, *dims) standard normal in the input's datatype (or dims alone unbatched)."""
        http, _ = _clients()
        dtype = http.triton_to_np_dtype(self.datatype)
        if dtype is None:
            raise DeploymtlError(f"model '{self.model}' input datatype {self.datatype} is not supported")
        shape = ((1,) if self.max_batch_size > 0 else ()) + self.dims
        return np.random.default_rng(seed).standard_normal(shape).astype(dtype)

    def new_client(self) -> Any:
        return _new_client(self.protocol, self.address)

    def make_call(self, image: np.ndarray) -> Callable[[], Call]:
        """A caller factory for loadgen: each worker makes its own client and sends `image`, binary."""
        http, grpc = _clients()
        mod = http if self.protocol == "http" else grpc

        def factory() -> Call:
            client = self.new_client()
            inp = mod.InferInput(self.input_name, list(image.shape), self.datatype)
            if self.protocol == "http":
                inp.set_data_from_numpy(image, binary_data=True)
                outs = [mod.InferRequestedOutput(n, binary_data=True) for n in self.outputs]
            else:
                inp.set_data_from_numpy(image)
                outs = [mod.InferRequestedOutput(n) for n in self.outputs]

            def call() -> Any:
                return client.infer(self.model, [inp], outputs=outs, headers=self.headers)

            return call

        return factory

    def statistics(self, client: Any = None) -> dict[str, Any]:
        """Cumulative statistics of the model, summed over its versions (raises on a restricted endpoint)."""
        own = client is None
        client = client or self.new_client()
        try:
            if self.protocol == "http":
                data = client.get_inference_statistics(self.model, headers=self.headers)
            else:
                data = client.get_inference_statistics(self.model, headers=self.headers, as_json=True)
        finally:
            if own:
                client.close()
        return _sum_versions(data.get("model_stats") or [])


def _new_client(protocol: str, address: str) -> Any:
    http, grpc = _clients()
    if protocol == "http":
        return http.InferenceServerClient(address, network_timeout=TIMEOUT_S, connection_timeout=TIMEOUT_S)
    return grpc.InferenceServerClient(address)


def _grpc_json(message: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)


def _model_names(client: Any, headers: dict[str, str]) -> list[str]:
    try:
        index = client.get_model_repository_index(headers=headers)
    except Exception:  # noqa: BLE001 - only for a hint; restricted on PyTriton servers
        return []
    entries = index if isinstance(index, list) else _grpc_json(index).get("models", [])
    return sorted({e.get("name", "") for e in entries} - {""})


_COUNTS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def _sum_versions(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """{inference_count, execution_count, <stage>: (count, ns), batches: {size: {stage: (count, ns)}}}; gRPC's
    JSON writes 64-bit numbers as strings and leaves zeros out."""
    out: dict[str, Any] = {"inference_count": 0, "execution_count": 0, "batches": {}}
    out |= {k: [0, 0] for k in _COUNTS}
    for s in stats:
        out["inference_count"] += int(s.get("inference_count", 0))
        out["execution_count"] += int(s.get("execution_count", 0))
        for k in _COUNTS:
            d = (s.get("inference_stats") or {}).get(k) or {}
            out[k][0] += int(d.get("count", 0))
            out[k][1] += int(d.get("ns", 0))
        for b in s.get("batch_stats") or []:
            entry = out["batches"].setdefault(int(b.get("batch_size", 0)), {k: [0, 0] for k in _COUNTS[3:]})
            for k in _COUNTS[3:]:
                d = b.get(k) or {}
                entry[k][0] += int(d.get("count", 0))
                entry[k][1] += int(d.get("ns", 0))
    return out


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per-window server figures between two `statistics()` snapshots (module docstring)."""
    def per_request(key: str) -> float | None:
        n = after[key][0] - before[key][0]
        return (after[key][1] - before[key][1]) / n / 1e6 if n else None

    executions = after["execution_count"] - before["execution_count"]
    inferences = after["inference_count"] - before["inference_count"]
    histogram, busy_ns = {}, 0
    for size, entry in after["batches"].items():
        old = before["batches"].get(size, {k: [0, 0] for k in entry})
        n = entry["compute_infer"][0] - old["compute_infer"][0]
        if n:
            histogram[size] = n
        busy_ns += sum(entry[k][1] - old[k][1] for k in entry)
    return {"requests": after["success"][0] - before["success"][0], "failed": after["fail"][0] - before["fail"][0],
            "inferences": inferences, "executions": executions,
            "avg_batch": inferences / executions if executions else None,
            "batch_histogram": dict(sorted(histogram.items())),
            "request_ms": per_request("success"), "queue_ms": per_request("queue"),
            "compute_input_ms": per_request("compute_input"), "compute_infer_ms": per_request("compute_infer"),
            "compute_output_ms": per_request("compute_output"),
            "compute_per_execution_ms": busy_ns / executions / 1e6 if executions else None, "busy_s": busy_ns / 1e9}
