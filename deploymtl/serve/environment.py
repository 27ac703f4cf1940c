"""What the machine must offer before `deploymtl serve` starts a Triton, and the one thing serve changes for it.

- The `[serve]` extra: PyTriton (`nvidia-pytriton`, which bundles tritonserver and its python backend).
- numpy < 2 in this process: PyTriton 0.7 passes tensors through numpy and, under numpy 2, answers every request
  with HTTP 200 and *empty* outputs. Refused up front with the fix.
- libpython: the python backend's stub (`triton_python_backend_stub`, spawned by tritonserver) links
  `libpython3.X.so.1.0` by soname. The dynamic loader finds the system's copy first (e.g. Debian's 3.11.2), while
  the stub runs this interpreter's standard library; an interpreter of another build (pyenv, a custom prefix)
  then fails to load the model with `'_thread.RLock' object has no attribute '_recursion_count'`. Putting this
  interpreter's own LIBDIR first on LD_LIBRARY_PATH while PyTriton starts tritonserver (PyTriton copies
  os.environ into the child, tritonserver passes it on to the stub) makes the stub load the matching library.
  It is set only around the start and restored afterwards; an interpreter built without a shared libpython gets
  no change, and a load that still fails this way is explained in one line (`explain_start_failure`).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from ..errors import DeploymtlError

SERVE_EXTRA = 'pip install -e ".[serve]" (nvidia-pytriton; Linux x86_64, glibc >= 2.35)'


def require_pytriton() -> ModuleType:
    """`pytriton.triton`, after the numpy guard; one-line errors naming the extra or the numpy fix."""
    check_numpy()
    try:
        import pytriton.triton as triton
    except ImportError as exc:
        raise DeploymtlError(f"deploymtl serve needs PyTriton, which is not installed ({exc.name or exc})",
                             hint=f"install it with {SERVE_EXTRA}") from None
    return triton


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


@contextlib.contextmanager
def libpython_first() -> Iterator[None]:
    """LD_LIBRARY_PATH starts with this interpreter's LIBDIR inside the block (see the module docstring)."""
    lib = shared_libpython()
    old = os.environ.get("LD_LIBRARY_PATH")
    if lib is not None:
        libdir = str(lib.parent)
        rest = [p for p in (old or "").split(":") if p and p != libdir]
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *rest])
    try:
        yield
    finally:  # tritonserver has copied the environment by the time the start returns
        if old is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = old


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
