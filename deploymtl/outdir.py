"""Output directories written as one unit: a reader sees the whole old set of files or the whole new set.

`with output_set(out_dir, owned=...) as stage:` yields a private staging directory beside `out_dir`, on the same
filesystem (`.<name>.staging-<pid>-<random>`); the command writes its files there. When the block ends normally:

1. entries of the old `out_dir` that the command did not write and does not own (`owned`: the names it is
   responsible for, so a file it no longer produces is dropped rather than left beside the new ones) are carried
   into the stage as hard links: a user's notes survive and nothing is copied;
2. the stage's files and folders are fsynced (a power cut after the swap cannot surface empty files);
3. the stage takes the place of `out_dir` in one atomic step: Linux `renameat2(RENAME_EXCHANGE)` swaps the two
   directories (a plain `rename` when `out_dir` does not exist yet); where the exchange is unavailable (another
   OS, a filesystem without it) the old directory is renamed aside, then the stage renamed in;
4. the old tree, now under a staging name, is deleted.
SIGINT is held back during steps 3-4 and delivered after them. An exception in the block (bad input, SIGINT)
deletes the stage: `out_dir` keeps its old set and the exception says so (`kept_dirs`).

A SIGKILL at any instant leaves the old or the new set, plus at most a dead process's staging (or aside) folder
beside `out_dir`, never inside it; the next `output_set` on that directory deletes such folders. The fallback has
one window, between its two renames, in which `out_dir` is missing: the next `output_set` renames the old set
back when it finds `out_dir` missing and a dead process's `.<name>.old-*` beside it.

Limits: one writer per directory at a time (the stale-folder rule reads process ids, so concurrent writers must
share a pid namespace); a reader that opens files one by one across a swap can still read one file of each set.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import re
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import DeploymtlError

_OURS = re.compile(r"^\.(?P<name>.+)\.(?P<kind>staging|old)-(?P<pid>\d+)-[0-9a-z]+$")
_ATOMIC_TMP = re.compile(r"^\..+\.[0-9a-z_]{8}\.tmp$")  # io.atomic_path's temporaries (mkstemp's 8 characters)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_commits: dict[str, int] = {}  # sets this process committed, per real path (read by `untouched`)
_open_stages: list[Path] = []  # stages of the sets being written now (a set nested in another's stage is private)


# -- checks -------------------------------------------------------------------------------------------------------
def check_output_dir(path: str | os.PathLike[str]) -> Path:
    """Refuse, before any work, an output directory this process cannot replace as a whole (exit 2, one line)."""
    out = Path(path)
    if out.is_dir() and out.is_symlink():
        out = Path(os.path.realpath(out))  # a link to the artifacts' folder: replace the folder, keep the link
    if out.exists() and not out.is_dir():
        raise DeploymtlError(f"output directory {path} exists and is a file", hint="expected a directory path")
    base = _base(out)
    if not base.is_dir():
        raise DeploymtlError(f"output directory {path} cannot be created: {base} is a file",
                             hint="expected a path under a directory")
    writable = "expected a writable directory: the output is staged beside it and swapped in"
    if not os.access(base, os.W_OK | os.X_OK):
        raise DeploymtlError(f"output directory {path} cannot be written: {base} is read-only", hint=writable)
    if out.is_dir():
        if not os.access(out, os.R_OK | os.W_OK | os.X_OK):
            raise DeploymtlError(f"output directory {path} is read-only",
                                 hint="expected a writable directory (deploymtl replaces it as a whole)")
        if os.path.ismount(out) or out.stat().st_dev != base.stat().st_dev:
            raise DeploymtlError(f"output directory {path} is a mount point, which cannot be swapped as a whole",
                                 hint=f"expected a directory inside it, e.g. {out / 'out'}")
    probe = _sibling(out, "staging", base)
    try:  # what os.access cannot see: read-only mounts, immutable folders, root on either
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise DeploymtlError(f"output directory {path} cannot be written: {base}: {exc.strerror}",
                             hint=writable) from None
    return out


def _base(out: Path) -> Path:
    """Where the stage is made: the parent, or its nearest existing ancestor (a failed run creates no folders)."""
    base = out.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    return base


def _sibling(out: Path, kind: str, base: Path) -> Path:
    return base / f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def is_transient(name: str) -> bool:
    """True for names of our staging/aside folders and atomic_path temporaries, never carried into a new set."""
    return bool(_OURS.match(name) or _ATOMIC_TMP.match(name))


# -- the writer ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def output_set(out_dir: str | os.PathLike[str], *, owned: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a staging directory; on success it replaces `out_dir` atomically (see the module docstring)."""
    out = check_output_dir(out_dir)
    clean_stale(out)
    base = _base(out)
    stage = _sibling(out, "staging", base)
    stage.mkdir()
    private = any(s in out.parents for s in _open_stages)  # e.g. export's pruned/, inside the export's stage
    _open_stages.append(stage)
    try:
        try:
            yield stage
        except BaseException as exc:
            if not private:
                exc.kept_dirs = [*kept_dirs(exc), str(out_dir)]  # type: ignore[attr-defined]  # read by the CLI
            raise
        _commit(stage, out, set(owned))
    finally:
        _open_stages.remove(stage)
        if os.path.lexists(stage):
            _remove(stage)


@contextlib.contextmanager
def untouched(out_dir: str | os.PathLike[str]) -> Iterator[None]:
    """For work done before a command opens its output set: an exception escaping the block is marked as leaving
    `out_dir` with its previous files (`kept_dirs`), unless a set was committed to it meanwhile."""
    key = os.path.realpath(out_dir)
    before = _commits.get(key, 0)
    try:
        yield
    except BaseException as exc:
        if _commits.get(key, 0) == before and str(out_dir) not in kept_dirs(exc):
            exc.kept_dirs = [*kept_dirs(exc), str(out_dir)]  # type: ignore[attr-defined]
        raise


def kept_dirs(exc: BaseException) -> list[str]:
    """Output directories an exception left with their previous set of files."""
    return list(getattr(exc, "kept_dirs", []))


def interrupted_message(exc: BaseException) -> str:
    kept = kept_dirs(exc)
    if kept:
        return f"interrupted; {', '.join(kept)} keeps its previous files (nothing of this run was written into it)"
    return "interrupted; no output directory was left half-written"


def clean_stale(out: Path) -> None:
    """Delete staging/aside folders of dead processes beside `out`; restore an aside set if `out` is missing."""
    for base in {out.parent, _base(out)}:
        if not base.is_dir():
            continue
        for entry in sorted(base.iterdir(), key=lambda p: p.name):
            m = _OURS.match(entry.name)
            if not m or m["name"] != out.name or _alive(int(m["pid"])):
                continue
            if m["kind"] == "old" and not os.path.lexists(out):
                os.rename(entry, out)  # killed between the fallback's two renames: the old set comes back
            else:
                _remove(entry)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _commit(stage: Path, out: Path, owned: set[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    replacing = out.is_dir()
    if replacing:
        _carry(out, stage, owned)
        shutil.copymode(out, stage)
    _sync_tree(stage)
    with _interrupts_deferred():
        if not replacing:
            os.rename(stage, out)
            trash = None
        elif _exchange(stage, out):
            trash = stage  # the old tree now lives under the staging name
        else:
            trash = _sibling(out, "old", out.parent)
            os.rename(out, trash)
            os.rename(stage, out)
        _sync_dir(out.parent)
        if stage.parent != out.parent:
            _sync_dir(stage.parent)
        if trash is not None:
            _remove(trash)
    key = os.path.realpath(out)
    _commits[key] = _commits.get(key, 0) + 1


def _carry(old: Path, stage: Path, owned: set[str]) -> None:
    for entry in sorted(old.iterdir(), key=lambda p: p.name):
        name = entry.name
        if name in owned or is_transient(name) or os.path.lexists(stage / name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, stage / name, symlinks=True, copy_function=link_or_copy,
                            ignore=lambda _d, names: [n for n in names if is_transient(n)])
        else:
            link_or_copy(entry, stage / name)


def link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Hard-link `src` at `dst` (same inode, no bytes copied); copy where the filesystem refuses the link."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:  # a filesystem without hard links (or a file of another owner under protected_hardlinks)
        shutil.copy2(src, dst, follow_symlinks=False)


def _sync_tree(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _sync_dir(Path(folder))


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory; the rename stays atomic
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@functools.cache
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28, musl >= 1.2.5
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where this system or filesystem cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT back while the swap runs; deliver it afterwards (Python handlers run in the main thread)."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield  # handlers can only be set from the main thread (None: a handler not installed from Python)
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt here
        elif caught and previous == signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGINT)
