"""The tritonserver that the `nvidia-pytriton` wheel bundles, and the backend folder `deploymtl serve` gives it.

The wheel carries a tritonserver binary, Triton's python backend (`libtriton_python.so` and its
`triton_python_backend_utils.py`), one python-backend stub per Python version (`python_backend_stubs/3.X/`), and
the shared libraries they link (`nvidia_pytriton.libs/` beside the package, or `tritonserver/external_libs/` in an
editable PyTriton). Triton expects the stub inside the python backend's folder, so `backend_directory` builds a
`backends/python/` of symbolic links with this interpreter's stub: nothing is copied and the wheel is untouched.
deploymtl uses the binary and the python backend only; PyTriton's own Python layer (its proxy model, which relays
each request to another process) is not on the serving path (see server.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeploymtlError

SERVE_EXTRA = 'pip install -e ".[serve]" (nvidia-pytriton; Linux x86_64, glibc >= 2.35)'
BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
STUB = "triton_python_backend_stub"


@dataclass(frozen=True)
class BundledTriton:
    root: Path  # .../site-packages/pytriton/tritonserver

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        installed = self.root.parent.parent / "nvidia_pytriton.libs"
        return installed if installed.is_dir() else self.root / "external_libs"

    def stub(self, version: str | None = None) -> Path:
        version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
        return self.root / "python_backend_stubs" / version / STUB

    def backend_directory(self, where: Path) -> Path:
        """`where/backends` with `python/` linking the python backend and this interpreter's stub."""
        stub = self.stub()
        if not stub.is_file():
            versions = sorted(p.name for p in (self.root / "python_backend_stubs").iterdir() if (p / STUB).is_file())
            raise DeploymtlError(f"the bundled tritonserver has no python backend stub for Python "
                                 f"{sys.version_info.major}.{sys.version_info.minor}",
                                 hint=f"use one of Python {', '.join(versions)}")
        python = where / "backends" / "python"
        python.mkdir(parents=True)
        for name in BACKEND_FILES:
            (python / name).symlink_to(self.root / "backends" / "python" / name)
        (python / STUB).symlink_to(stub)
        return python.parent


def bundled_triton() -> BundledTriton | None:
    """The bundled tritonserver, or None when PyTriton is not installed (or ships no binary)."""
    try:
        import pytriton
    except ImportError:
        return None
    found = BundledTriton(Path(pytriton.__file__).parent / "tritonserver")
    return found if found.binary.is_file() else None


def require_bundled_triton() -> BundledTriton:
    found = bundled_triton()
    if found is None:
        raise DeploymtlError("deploymtl serve needs the tritonserver that PyTriton bundles, which is not installed",
                             hint=f"install it with {SERVE_EXTRA}")
    return found
