"""The output directory is the unit (`deploymtl.outdir`): a reader sees the old set or the new set, never a mix.

- The writer itself: the swap, foreign files carried as hard links, owned files dropped, a failing block, stale
  staging folders of dead processes, the fallback without RENAME_EXCHANGE, and a real SIGKILL (forked writer) at
  every step boundary of the commit.
- `-o` that cannot be written (read-only parent or directory, a path under a file) for train, prune, export and
  profile: exit 2 and one line naming the directory, before any work. The machine runs the tests as root, for whom
  mode bits mean nothing, so the read-only case runs in a child process without CAP_DAC_OVERRIDE (`setpriv`):
  real EACCES from the kernel, no mock.
- SIGKILL of real `deploymtl export` and `deploymtl prune` processes writing into a directory that holds a good
  set, at instants picked by watching the directory and its staging folder (and after delays); SIGINT once.
  A sample of instants runs by default; DEPLOYMTL_TEST_ALL_INSTANTS=1 runs them all.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from export_fixtures import tiny_artifact
from test_prune_cli import make_checkpoint

from deploymtl import outdir
from deploymtl.cli.main import main
from deploymtl.env import env_flag
from deploymtl.errors import DeploymtlError
from deploymtl.io import read_json, sha256_json
from deploymtl.outdir import check_output_dir, clean_stale, is_transient, output_set, untouched

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = ROOT / "tests" / "data" / "minimal_adashare.yaml"
ALL_INSTANTS = env_flag("DEPLOYMTL_TEST_ALL_INSTANTS")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# -- helpers ------------------------------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` (hidden ones included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def transient_inside(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if is_transient(p.name)]


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def make_set(out: Path, files: dict[str, str]) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    return snapshot(out)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


OLD = {"model.bin": "old model", "report.json": '{"v": 1}', "NOTES.md": "the user's notes",
       "sub/keep.txt": "a folder the command does not write", "stale.bin": "written by an older version"}
NEW = {"model.bin": "new model", "report.json": '{"v": 2}', "extra.bin": "only in the new set"}
OWNED = ("model.bin", "report.json", "extra.bin", "stale.bin")


def write_new(stage: Path) -> None:
    for name, text in NEW.items():
        (stage / name).write_text(text)


def expected_new(old: dict[str, str]) -> dict[str, str]:
    """Snapshot of the new set: the command's files plus the old foreign ones (owned names it did not write are
    dropped) -- from the old set's snapshot."""
    kept = {k: h for k, h in old.items() if k.split("/")[0] not in OWNED}
    return kept | {k: hashlib.sha256(v.encode()).hexdigest() for k, v in NEW.items()}


# -- the writer ---------------------------------------------------------------------------------------------------
def test_swap_carries_foreign_files_as_hard_links_and_drops_owned_ones(tmp_path: Path) -> None:
    out = tmp_path / "out"
    old = make_set(out, OLD)
    out.chmod(0o750)
    inode_notes = (out / "NOTES.md").stat().st_ino
    with output_set(out, owned=OWNED) as stage:
        assert stage.parent == tmp_path and stage.name.startswith(".out.staging-")
        write_new(stage)
        assert snapshot(out) == old  # nothing of the new set is visible before the block ends
    assert snapshot(out) == expected_new(old)
    assert sorted(snapshot(out)) == ["NOTES.md", "extra.bin", "model.bin", "report.json", "sub/keep.txt"]
    assert not (out / "stale.bin").exists()  # owned, not written this time: dropped, not left beside the new set
    assert (out / "NOTES.md").stat().st_ino == inode_notes  # carried as a hard link, not copied
    assert (out / "NOTES.md").stat().st_nlink == 1  # the old tree is gone
    assert out.stat().st_mode & 0o777 == 0o750  # the directory keeps its mode
    assert siblings(out) == [] and transient_inside(out) == []


def test_first_set_in_a_missing_directory_creates_no_folder_until_it_succeeds(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(ValueError, match="bad input"):
        with output_set(out) as stage:
            assert stage.parent == tmp_path  # staged in the nearest existing ancestor
            raise ValueError("bad input")
    assert list(tmp_path.iterdir()) == []
    with output_set(out) as stage:
        write_new(stage)
    assert sorted(snapshot(out)) == sorted(NEW) and list(tmp_path.iterdir()) == [tmp_path / "a"]


@pytest.mark.parametrize("error", [ValueError("bad input"), KeyboardInterrupt()])
def test_failure_inside_the_block_leaves_the_old_set_and_no_stage(tmp_path: Path, error: BaseException) -> None:
    out = tmp_path / "out"
    old = make_set(out, OLD)
    inode = out.stat().st_ino
    with pytest.raises(type(error)) as caught:
        with output_set(out, owned=OWNED) as stage:
            write_new(stage)
            raise error
    assert snapshot(out) == old and out.stat().st_ino == inode
    assert siblings(out) == []
    assert outdir.kept_dirs(caught.value) == [str(out)]
    assert outdir.interrupted_message(caught.value) == (
        f"interrupted; {out} keeps its previous files (nothing of this run was written into it)")


def test_a_set_nested_in_a_stage_is_part_of_the_outer_set(tmp_path: Path) -> None:
    out = tmp_path / "out"
    old = make_set(out, OLD)
    with output_set(out, owned=(*OWNED, "pruned")) as stage:  # export writes pruned/ when it prunes on the way
        with output_set(stage / "pruned") as inner:
            write_new(inner)
        write_new(stage)
    assert snapshot(out) == expected_new(old) | {f"pruned/{k}": v for k, v in expected_new({}).items()}
    with pytest.raises(KeyboardInterrupt) as caught:
        with output_set(out, owned=(*OWNED, "pruned")) as stage:
            with output_set(stage / "pruned"):
                raise KeyboardInterrupt
    assert outdir.kept_dirs(caught.value) == [str(out)]  # the inner stage's path is nobody's business
    assert siblings(out) == []


def test_stale_staging_of_dead_processes_is_removed_live_ones_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_set(out, OLD)
    dead = tmp_path / f".out.staging-{dead_pid()}-0badf00d"
    make_set(dead, {"model.bin": "half"})
    alive = tmp_path / f".out.staging-{os.getppid()}-00c0ffee"  # pytest's parent: a live process
    alive.mkdir()
    other = tmp_path / f".other.staging-{dead_pid()}-12345678"  # another directory's: not ours to touch
    other.mkdir()
    leftover = out / ".model.bin.ab3_x9zq.tmp"  # an atomic_path temporary of an older version, inside the set
    leftover.write_text("half")
    with output_set(out, owned=OWNED) as stage:
        assert not dead.exists()
        write_new(stage)
    assert alive.is_dir() and other.is_dir()
    assert not (out / leftover.name).exists() and transient_inside(out) == []


def test_fallback_without_exchange_swaps_and_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    old = make_set(out, OLD)
    monkeypatch.setattr(outdir, "_exchange", lambda a, b: False)  # a system without renameat2
    with output_set(out, owned=OWNED) as stage:
        write_new(stage)
    assert snapshot(out) == expected_new(old)
    assert siblings(out) == []
    # killed between the fallback's two renames: the directory is missing, its old set aside; the next run restores it
    aside = tmp_path / f".out.old-{dead_pid()}-0a0b0c0d"
    saved = snapshot(out)
    out.rename(aside)
    clean_stale(out)
    assert snapshot(out) == saved and siblings(out) == []


def test_untouched_marks_only_directories_not_replaced_meanwhile(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt) as before_any_set:
        with untouched(out):
            raise KeyboardInterrupt
    assert outdir.kept_dirs(before_any_set.value) == [str(out)]
    with pytest.raises(KeyboardInterrupt) as after_a_set:
        with untouched(out):
            with output_set(out) as stage:
                write_new(stage)
            raise KeyboardInterrupt
    assert outdir.kept_dirs(after_a_set.value) == []
    assert outdir.interrupted_message(after_a_set.value) == "interrupted; no output directory was left half-written"


def test_sigint_during_the_swap_is_delivered_after_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    old = make_set(out, OLD)
    real = outdir._exchange

    def exchange_with_ctrl_c(a: Path, b: Path) -> bool:
        os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C between the swap and the removal of the old tree
        return real(a, b)

    monkeypatch.setattr(outdir, "_exchange", exchange_with_ctrl_c)
    with pytest.raises(KeyboardInterrupt) as caught:
        with output_set(out, owned=OWNED) as stage:
            write_new(stage)
    assert snapshot(out) == expected_new(old) and siblings(out) == []  # the swap finished, the old tree is gone
    assert outdir.kept_dirs(caught.value) == []  # so the message does not claim the old set was kept
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_renameat2_exchange_is_what_linux_uses(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux") or outdir._renameat2() is None:
        pytest.skip("renameat2 is not in this C library: the fallback (tested above) is what runs here")
    a, b = tmp_path / "a", tmp_path / "b"
    make_set(a, {"x": "a"})
    make_set(b, {"x": "b"})
    assert outdir._exchange(a, b)
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


# Step boundaries of a commit; a SIGKILL before the swap leaves the old set, after it the new one.
KILL_POINTS = {
    "writing": "old", "carried": "old", "synced": "old", "swapped": "new", "removing-old-tree": "new",
    "fallback-aside": "old", "fallback-renamed-in": "new",
}


def _arm(point: str) -> None:
    """In the forked writer: SIGKILL itself right after `point`."""
    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def after(fn: Callable) -> Callable:
        def wrapped(*args, **kwargs):
            result = fn(*args, **kwargs)
            die()
            return result
        return wrapped

    if point == "carried":
        outdir._carry = after(outdir._carry)
    elif point == "synced":
        outdir._sync_tree = after(outdir._sync_tree)
    elif point == "swapped":
        outdir._exchange = after(outdir._exchange)
    elif point == "removing-old-tree":
        def remove_some(path: Path) -> None:
            next(p for p in path.rglob("*") if p.is_file()).unlink()
            die()
        outdir._remove = remove_some
    elif point.startswith("fallback"):
        outdir._exchange = lambda a, b: False
        real, calls = os.rename, []

        def rename(src, dst):
            real(src, dst)
            calls.append(src)
            if len(calls) == (1 if point == "fallback-aside" else 2):
                die()
        outdir.os.rename = rename


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to SIGKILL a writer at an exact instant")
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_at_every_step_of_the_commit(tmp_path: Path, point: str) -> None:
    out = tmp_path / "out"
    old = make_set(out, OLD)
    new = expected_new(old)
    pid = os.fork()
    if pid == 0:  # the writer
        try:
            _arm(point)
            with output_set(out, owned=OWNED) as stage:
                write_new(stage)
                if point == "writing":
                    os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)  # never reached when the kill lands
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    if point == "fallback-aside":
        assert not out.exists()  # the documented window of the fallback
    else:
        assert snapshot(out) == (old if KILL_POINTS[point] == "old" else new) and transient_inside(out) == []
        assert siblings(out)  # the dead writer's stage (or old tree) is beside the directory, never inside
    clean_stale(out)  # what the next run on the directory does first
    assert snapshot(out) == (old if KILL_POINTS[point] == "old" else new)
    assert siblings(out) == []


# -- -o that cannot be written ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    return {"recipe": MINIMAL, "supernet": make_checkpoint(root / "supernet.pt", "adashare"),
            "pruned": tiny_artifact(root / "pruned.pt", trained=False)}


def _commands(inputs: dict[str, Path], out: Path) -> dict[str, list[str]]:
    o = ["-o", str(out)]
    return {"train": ["train", str(inputs["recipe"]), *o, "-q"], "prune": ["prune", str(inputs["supernet"]), *o],
            "export": ["export", str(inputs["pruned"]), *o, "-q"],
            "profile": ["profile", str(inputs["pruned"]), *o, "--no-memory", "--no-edge", "-q"]}


def test_output_under_a_file_is_refused_before_any_work(inputs, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("DEPLOYMTL_DEBUG", raising=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("keep")
    out = blocker / "out"
    for name, argv in _commands(inputs, out).items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: output directory {out} cannot be created: {blocker} is a file "
                       "(expected a path under a directory)"], name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] and blocker.read_text() == "keep"


_RO_SCRIPT = """
import contextlib, io, json, os, sys
from deploymtl.cli.main import main
try:
    os.mkdir(os.path.join(sys.argv[1], "probe"))
    denied = False
except PermissionError:
    denied = True
results = {"denied": denied}
for name, argv in json.loads(sys.argv[2]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    results[name] = [rc, err.getvalue()]
print(json.dumps(results))
"""


def _without_dac_override() -> list[str]:
    """argv prefix running a child whose mode bits bind: as root, drop the capabilities that bypass them."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root, whom mode bits do not bind, and setpriv (util-linux) is missing")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def test_read_only_output_is_refused_with_exit_2_before_any_work(inputs, tmp_path) -> None:
    prefix = _without_dac_override()
    ro_parent = tmp_path / "ro"
    ro_parent.mkdir()
    ro_dir = tmp_path / "rw" / "out"  # an existing output directory that is itself read-only
    kept = make_set(ro_dir, {"model.bin": "keep"})
    cases = {f"{k}-in-ro": v for k, v in _commands(inputs, ro_parent / "out").items()}
    cases["export-ro-dir"] = _commands(inputs, ro_dir)["export"]
    ro_parent.chmod(0o555)
    ro_dir.chmod(0o555)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("DEPLOYMTL_DEBUG", None)
    try:
        proc = subprocess.run([*prefix, sys.executable, "-c", _RO_SCRIPT, str(ro_parent), json.dumps(cases)],
                              capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    finally:
        ro_parent.chmod(0o755)
        ro_dir.chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results.pop("denied") is True  # the child really cannot write there: the kernel says so
    for name, (rc, err) in results.items():
        lines = err.strip().splitlines()
        if name == "export-ro-dir":
            assert lines == [f"error: output directory {ro_dir} is read-only "
                             "(expected a writable directory (deploymtl replaces it as a whole))"], name
        else:
            assert lines == [f"error: output directory {ro_parent / 'out'} cannot be written: {ro_parent} is "
                             "read-only (expected a writable directory: the output is staged beside it and "
                             "swapped in)"], (name, err)
        assert rc == 2, name
    assert list(ro_parent.iterdir()) == [] and snapshot(ro_dir) == kept
    assert siblings(ro_dir) == []


def test_mount_point_output_is_refused(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not (os.path.ismount(shm) and os.access(shm, os.W_OK) and os.access(shm.parent, os.W_OK)):
        pytest.skip("no writable mount point with a writable parent here")
    with pytest.raises(DeploymtlError, match="is a mount point, which cannot be swapped as a whole"):
        check_output_dir(shm)


# -- interrupted commands -----------------------------------------------------------------------------------------
def test_interrupted_prune_says_so_and_keeps_the_old_set(inputs, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "prune"
    assert main(["prune", str(inputs["supernet"]), "-o", str(out)]) == 0
    old = snapshot(out)
    capsys.readouterr()

    def ctrl_c(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("deploymtl.surgery.inspect.draw_plan", ctrl_c)  # after plan.json is staged
    assert main(["prune", str(inputs["supernet"]), "-o", str(out), "--tasks", "seg"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: interrupted; {out} keeps its previous files (nothing of this run was written into it)")
    assert snapshot(out) == old and siblings(out) == []


@pytest.mark.slow
def test_train_keeps_its_epoch_state_beside_the_set_and_resumes(tmp_path, capsys, monkeypatch) -> None:
    from deploymtl.train import trainer as trainer_mod

    out = tmp_path / "train"
    assert main(["train", str(MINIMAL), "-o", str(out), "-q", "--max-steps", "1"]) == 0
    old = snapshot(out)
    assert sorted(old) == sorted(trainer_mod.TRAIN_FILES)
    state = trainer_mod.resume_state_path(out)
    assert state == tmp_path / ".train.train_state.pt" and not state.exists()  # moved into the set
    capsys.readouterr()

    real, saves = trainer_mod.Trainer._save_state, []

    def save_then_ctrl_c(self):
        real(self)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.Trainer, "_save_state", save_then_ctrl_c)
    assert main(["train", str(MINIMAL), "-o", str(out), "-q", "--max-steps", "1"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"note: the state after the last completed epoch is in {state} (continue with --resume {state})",
                   f"error: interrupted; {out} keeps its previous files (nothing of this run was written into it)"]
    assert snapshot(out) == old and state.is_file() and siblings(out) == [state.name]
    monkeypatch.setattr(trainer_mod.Trainer, "_save_state", real)
    assert main(["train", str(MINIMAL), "-o", str(out), "-q", "--max-steps", "1", "--resume", str(state)]) == 0
    report = read_json(out / "train_report.json")
    assert [len(s["epochs"]) for s in report["stages"]] == [1, 1, 1]  # two epochs resumed, one trained
    assert not state.exists() and siblings(out) == [] and (out / "train_state.pt").is_file()


# -- SIGKILL of real commands -------------------------------------------------------------------------------------
def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "deploymtl.cli.main", *args]


def _stages(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.staging-")]


def _trigger(kind: str, out: Path, t0: float, inode: int) -> bool:
    if kind.startswith("delay:"):
        return time.monotonic() - t0 >= float(kind.split(":", 1)[1])
    if kind == "staged":
        return bool(_stages(out))
    if kind.startswith("staged:"):
        name = kind.split(":", 1)[1]
        return any((s / name).exists() for s in _stages(out))
    if kind == "swapped":
        with contextlib.suppress(FileNotFoundError):
            return out.stat().st_ino != inode
        return False
    raise ValueError(kind)


def _kill_when(argv: list[str], out: Path, kind: str, sig: int = signal.SIGKILL,
               limit_s: float = 60.0) -> tuple[int, str, float]:
    """Run `argv`, send `sig` as soon as `kind` holds; returns (exit status, stderr, seconds to the signal)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("DEPLOYMTL_DEBUG", None)
    inode = out.stat().st_ino
    t0 = time.monotonic()
    proc = subprocess.Popen(_cli(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        while proc.poll() is None and not _trigger(kind, out, t0, inode):
            if time.monotonic() - t0 > limit_s:
                raise AssertionError(f"{kind} never happened within {limit_s} s")
            time.sleep(0.002)
        at = time.monotonic() - t0
        if proc.poll() is None:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err, at


def _instants(default: list[str], extra: list[str]) -> list[str]:
    return default + extra if ALL_INSTANTS else default


@pytest.fixture(scope="module")
def good_export(inputs, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    out = tmp_path_factory.mktemp("good") / "exp"
    assert main(["export", str(inputs["pruned"]), "-o", str(out), "--batch", "1:1:2", "--no-simplify",
                 "--threads", "1", "-q"]) == 0
    (out / "NOTES.md").write_text("the user's notes on this export")
    return out, snapshot(out)


def _fresh(good: Path, tmp_path: Path) -> Path:
    out = tmp_path / good.name
    shutil.copytree(good, out)
    return out


def _assert_old_or_new_export(out: Path, old: dict[str, str], capsys) -> str:
    assert transient_inside(out) == [] and not any(p.name.startswith(".") for p in out.iterdir())
    now = snapshot(out)
    if now == old:
        return "old"
    assert sorted(now) == sorted(old) and now["NOTES.md"] == old["NOTES.md"]
    for name in ("model.onnx", "model.parity.npz", "export_report.json"):
        assert now[name] != old[name], f"{name} of the old set beside the new report: a mixed set"
    report = read_json(out / "export_report.json")
    assert report["batch"]["max"] == 3 and report["passed"] is True
    capsys.readouterr()
    assert main(["verify", str(out / "model.onnx")]) == 0, capsys.readouterr()  # artifact matches its parity set
    return "new"


@pytest.mark.slow
@pytest.mark.parametrize("kind", _instants(["staged", "staged:model.onnx", "swapped"],
                                           ["staged:model.parity.npz", "staged:export_report.json", "delay:1.5",
                                            "delay:4", "delay:6"]))
def test_sigkill_of_export_leaves_old_or_new_set(inputs, good_export, tmp_path, capsys, kind) -> None:
    good, old = good_export
    out = _fresh(good, tmp_path)
    argv = ["export", str(inputs["pruned"]), "-o", str(out), "--batch", "1:1:3", "--no-simplify", "--threads", "1"]
    rc, err, _at = _kill_when(argv, out, kind)
    assert rc in (-signal.SIGKILL, 0), err[-2000:]
    state = _assert_old_or_new_export(out, old, capsys)
    if kind in ("staged", "staged:model.onnx"):
        assert state == "old" and rc == -signal.SIGKILL  # killed before any swap could happen
    if kind == "swapped":
        assert state == "new"
    clean_stale(out)
    assert siblings(out) == []


@pytest.mark.slow
def test_sigint_of_export_says_so_and_keeps_the_old_set(inputs, good_export, tmp_path, capsys) -> None:
    good, old = good_export
    out = _fresh(good, tmp_path)
    argv = ["export", str(inputs["pruned"]), "-o", str(out), "--batch", "1:1:3", "--no-simplify", "--threads", "1"]
    rc, err, _ = _kill_when(argv, out, "staged:model.onnx", sig=signal.SIGINT)
    assert rc == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        f"error: interrupted; {out} keeps its previous files (nothing of this run was written into it)")
    assert snapshot(out) == old and siblings(out) == []


@pytest.fixture(scope="module")
def good_prune(inputs, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    out = tmp_path_factory.mktemp("good") / "prune"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["prune", str(inputs["supernet"]), "-o", str(out)]) == 0
    (out / "NOTES.md").write_text("the user's notes on this plan")
    return out, snapshot(out)


def _assert_old_or_new_prune(out: Path, old: dict[str, str]) -> str:
    from deploymtl.formats.static import load_static

    assert transient_inside(out) == [] and not any(p.name.startswith(".") for p in out.iterdir())
    now = snapshot(out)
    if now == old:
        return "old"
    assert sorted(now) == sorted(old) and now["NOTES.md"] == old["NOTES.md"]
    for name in ("plan.json", "pruned.pt", "prune_report.json", "prune_report.md"):
        assert now[name] != old[name], f"{name} of the old set beside the new report: a mixed set"
    report = read_json(out / "prune_report.json")
    plan = read_json(out / "plan.json")
    assert report["tasks"] == plan["tasks"] == ["seg"] and report["passed"] is True
    assert report["plan"]["hash"] == sha256_json(plan) == load_static(out / "pruned.pt").plan_hash
    return "new"


@pytest.mark.slow
@pytest.mark.parametrize("kind", _instants(["staged:plan.json", "staged:prune_report.json"],
                                           ["staged", "swapped", "delay:1", "delay:3"]))
def test_sigkill_of_prune_leaves_old_or_new_set(inputs, good_prune, tmp_path, kind) -> None:
    good, old = good_prune
    out = _fresh(good, tmp_path)
    rc, err, _at = _kill_when(["prune", str(inputs["supernet"]), "-o", str(out), "--tasks", "seg"], out, kind)
    assert rc in (-signal.SIGKILL, 0), err[-2000:]
    state = _assert_old_or_new_prune(out, old)
    if kind == "staged:plan.json":
        assert state == "old" and rc == -signal.SIGKILL
    if kind == "swapped":
        assert state == "new"
    clean_stale(out)
    assert siblings(out) == []
