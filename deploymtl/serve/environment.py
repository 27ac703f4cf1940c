"""What the machine must offer before `deploymtl serve` starts a Triton, and the environment tritonserver gets.

- The `[serve]` extra: PyTriton (`nvidia-pytriton`), for the tritonserver binary and python backend it bundles
  (bundled.py).
- numpy < 2: nvidia-pytriton 0.7 declares `numpy<2` (its python layer answered every request with HTTP 200 and
  *empty* outputs under numpy 2), so the extra installs numpy 1.x; an environment forced past that is refused up
  front with the fix rather than found out per request.
- The stub's environment (`stub_environment`): the python backend's stub (`triton_python_backend_stub`, spawned
  by tritonserver) links `libpython3.X.so.1.0` by soname. The dynamic loader finds the system's copy first (e.g.
  Debian's 3.11.2), while the stub runs this interpreter's standard library; an interpreter of another build
  (pyenv, a custom prefix) then fails to load the model with `'_thread.RLock' object has no attribute
  '_recursion_count'`. This interpreter's own LIBDIR goes first on LD_LIBRARY_PATH (nothing for a build without a
  shared libpython), the bundled libraries last; this interpreter's bin folder goes first on PATH and its
  site-packages and deploymtl itself on PYTHONPATH, so the stub imports the same deploymtl, onnxruntime and numpy
  as the process that checked the models. Only the child's environment changes, never this process's; a load
  that still fails this way is explained in one line (`explain_start_failure`).
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
from pathlib import Path

from ..errors import DeploymtlError
from .bundled import BundledTriton, require_bundled_triton


def require_serving() -> BundledTriton:
    """The numpy guard, then the bundled tritonserver; one-line errors naming the fix."""
    check_numpy()
    return require_bundled_triton()


def check_numpy(version: str | None = None) -> None:
    import numpy

    version = version or numpy.__version__
    if int(version.split(".")[0]) >= 2:
        raise DeploymtlError(f"deploymtl serve needs numpy < 2 (installed: {version}): PyTriton 0.7 answers every "
                             "request with empty outputs under numpy 2",
                             hint="pip install 'numpy<2' (the [serve] extra pins it)")


def shared_libpython() -> Path | None:
    """This interpreter's own shared libpython (LIBDIR/INSTSONAME), or None for a statically linked build."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not libdir or not soname or not (Path(libdir) / soname).is_file():
        return None
    return Path(libdir) / soname


def stub_environment(bundled_libs: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver and its stubs run with (module docstring)."""
    import deploymtl

    env = dict(os.environ if base is None else base)
    lib = shared_libpython()
    first = [str(lib.parent)] if lib is not None else []
    rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p not in first]
    env["LD_LIBRARY_PATH"] = ":".join([*first, *rest, str(bundled_libs)])
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = ":".join([bin_dir, *(p for p in env.get("PATH", "").split(":") if p and p != bin_dir)])
    paths = [str(Path(deploymtl.__file__).resolve().parent.parent),
             *dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))]
    env["PYTHONPATH"] = ":".join([*paths, *(p for p in env.get("PYTHONPATH", "").split(":") if p and p not in paths)])
    return env


_IN_USE = re.compile(r"failed to start (HTTP|GRPC|Metrics) service: Unavailable - Socket '([^']+)' already in use")
_LOG_ERROR = re.compile(r'^E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "?(.*?)"?\s*$')
_HARMLESS = ("CudaDriverHelper", "pinned", "CUDA driver", "model_config_content_name_", "GPU metrics")


def explain_start_failure(exc: BaseException, log_text: str) -> DeploymtlError:
    """One line for a failed start, from the exception and tritonserver's log."""
    m = _IN_USE.search(log_text)
    if m:
        option = {"HTTP": "--http-port", "GRPC": "--grpc-port", "Metrics": "--metrics-port"}[m[1]]
        return DeploymtlError(f"tritonserver could not listen on {m[2]} ({m[1]}): already in use",
                              hint=f"pick another with {option}")
    text = f"{exc} {log_text}"
    if "_recursion_count" in text or re.search(r"libpython3\.\d+\.so", text):
        lib = shared_libpython()
        return DeploymtlError(f"Triton's python backend cannot run with this interpreter ({sys.executable}, Python "
                              f"{sys.version.split()[0]}): its stub loads another libpython",
                              hint="use a Python built with --enable-shared (pyenv's default) or the system's "
                                   f"python3{'' if lib else '; this one has no shared libpython'}")
    detail = last_log_error(log_text) or " ".join(str(exc).split()) or type(exc).__name__
    return DeploymtlError(f"Triton failed to start: {detail[:300]}", hint="see the tritonserver log (--log-file)")


def last_log_error(log_text: str) -> str | None:
    """The last error line of a tritonserver log, skipping the CUDA lines every CPU-only machine logs."""
    errors = [e for e in (_LOG_ERROR.match(line) for line in log_text.splitlines()) if e]
    errors = [e[1] for e in errors if not any(h in e[1] for h in _HARMLESS)]
    return errors[-1] if errors else None
