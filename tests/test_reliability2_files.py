"""Snapshots overwritten in place, and special files where documents or snapshots belong.

In-place overwrites (reliability II item 3). A mapped file that is truncated
or rewritten in place kills every process that maps it with SIGBUS on its
next access to a page past the new end. Users do this without meaning to:
``truncate -s 0 SNAPSHOT``, ``cp smaller.arrow SNAPSHOT`` (cp rewrites the
existing inode) and ``rsync --inplace``. Snapshots are now written read-only
(mode 0444), so these commands fail for every user but root, and readers
check the file's size before reusing a mapping. The tests run each command
as an unprivileged user (uid 65534, the plate and snapshot chowned to it,
through ``setpriv``/``runuser``/``su``) against reader processes that hold
``Plate`` handles and open positions in a loop: no reader dies of a signal,
and every read is correct or a ``SnapmetaError``.

What remains: root (or the owner after ``chmod u+w``) can still truncate or
rewrite a snapshot in place. A process that then opens a plate or a
position again gets a ``SnapmetaError`` (``open_plate`` and
``open_position`` compare the file's size with the mapping's first; tested
below), but a ``Plate`` or ``Position`` handle that touches a page past the
new end of the file, or a truncation between that check and the read, still
kills the process with SIGBUS; on network filesystems ``open_position``
skips the check (it would be a round trip). Replace snapshots with
``snapmeta build`` (or ``cp --remove-destination``/``mv``, a new inode),
never in place.

Special files (item 4). Every document and snapshot read is bounded: only
regular files, opened non-blocking, with capped reads. A FIFO, a device
(``/dev/zero``) or a symlink loop where the snapshot or a metadata document
belongs gives a ``SnapmetaError`` at build, open and verify; format 1 hung
on FIFOs, read ``/dev/zero`` until memory ran out and raised a raw
``OSError`` for a symlink loop. Each scenario runs in a child process with a
timeout, so a hang fails the test instead of the suite; the command line
(``snapmeta._cli.main``) returns 1 with one ``snapmeta: error: ...`` line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import forkserver_context, limit_memory, snapshot_file

import snapmeta
from snapmeta._open import clear_cache
from snapmeta.testing import write_plate

NOBODY = 65534
SCENARIO_TIMEOUT = 30.0


# ---------------------------------------------------------------------------
# child processes with a timeout


def outcome(fn: Callable[[], Any]) -> str:
    """``"ok"``, ``"E:<SnapmetaError class>"`` or ``"RAW:<type>: <message>"``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn()
        except snapmeta.SnapmetaError as exc:
            return f"E:{type(exc).__name__}"
        except Exception as exc:
            return f"RAW:{type(exc).__name__}: {exc}"
    return "ok"


def _scenario_child(conn: Any, name: str, args: tuple[Any, ...]) -> None:
    limit_memory(2 << 30)
    try:
        result = SCENARIOS[name](*args)
    except BaseException as exc:
        result = {"scenario": f"RAW:{type(exc).__name__}: {exc}"}
    conn.send(result)
    conn.close()
    os._exit(0)


def run_scenarios(jobs: list[tuple[str, tuple[Any, ...]]], parallel: int = 3) -> list[Any]:
    """Each ``(scenario, args)`` in a forked child; its result, ``"hang"`` or ``"signal N"``."""
    ctx = forkserver_context()
    results: list[Any] = [None] * len(jobs)
    pending = list(enumerate(jobs))
    running: list[tuple[int, Any, Any, float]] = []
    while pending or running:
        while pending and len(running) < parallel:
            index, (name, args) = pending.pop(0)
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_scenario_child, args=(send, name, args), daemon=True)
            proc.start()
            send.close()
            running.append((index, proc, recv, time.monotonic()))
        time.sleep(0.005)
        for item in list(running):
            index, proc, recv, started = item
            if recv.poll(0):
                try:
                    results[index] = recv.recv()
                except EOFError:
                    proc.join(5)
                    results[index] = f"signal {proc.exitcode}"
            elif not proc.is_alive():
                results[index] = recv.recv() if recv.poll(0) else f"signal {proc.exitcode}"
            elif time.monotonic() - started > SCENARIO_TIMEOUT:
                proc.kill()
                results[index] = "hang"
            else:
                continue
            proc.join(5)
            recv.close()
            running.remove(item)
    return results


# ---------------------------------------------------------------------------
# scenarios (run in children)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with (
        open(os.devnull, "w") as null,
        contextlib.redirect_stdout(null),
        contextlib.redirect_stderr(null),
    ):
        yield


def _opens(store: str) -> dict[str, str]:
    """Every way in: open, list, a position and its array, verify, and the CLI."""
    from snapmeta._cli import main

    clear_cache()
    found = {
        "open_plate": outcome(lambda: list(snapmeta.open_plate(store))),
        "open_position": outcome(lambda: snapmeta.open_position(store, "A/1/0")[0][0, 0, 0, 0, 0]),
        "plate[]": outcome(lambda: snapmeta.open_plate(store)["A/2/0"].level(0)),
    }
    verify: list[Any] = []
    found["verify"] = outcome(lambda: verify.append(snapmeta.verify(store)))
    found["verify.ok"] = str(verify[0].ok) if verify else "-"
    with _quiet():
        for command in ("info", "ls", "verify"):
            found[f"cli {command}"] = str(main([command, store]))
    return found


def scenario_opens(store: str) -> dict[str, str]:
    return _opens(store)


def scenario_build(store: str) -> dict[str, str]:
    from snapmeta._cli import main

    found = {"build": outcome(lambda: snapmeta.build_snapshot(store))}
    with _quiet():
        found["cli build"] = str(main(["build", store, "-q"]))
    return found


def scenario_explicit_snapshot(store: str, snapshot: str) -> dict[str, str]:
    """The snapshot given explicitly (``snapshot=``, ``--snapshot``)."""
    from snapmeta._cli import main

    found = {
        "open_plate": outcome(lambda: snapmeta.open_plate(store, snapshot=snapshot)),
        "open_position": outcome(lambda: snapmeta.open_position(store, "A/1/0", snapshot=snapshot)),
    }
    verify: list[Any] = []
    found["verify"] = outcome(lambda: verify.append(snapmeta.verify(store, snapshot=snapshot)))
    found["verify.ok"] = str(verify[0].ok) if verify else "-"
    with _quiet():
        found["cli info"] = str(main(["info", store, "--snapshot", snapshot]))
    return found


SCENARIOS: dict[str, Callable[..., Any]] = {
    "opens": scenario_opens,
    "build": scenario_build,
    "explicit": scenario_explicit_snapshot,
}


# ---------------------------------------------------------------------------
# special files


def _replace(path: Path, make: Callable[[Path], Any]) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    make(path)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _devzero(path: Path) -> None:
    os.symlink("/dev/zero", path)


def _loop(path: Path) -> None:
    os.symlink(path.name, path)


def _fifo_link(path: Path) -> None:
    os.mkfifo(path.with_name(path.name + ".fifo"))
    os.symlink(path.name + ".fifo", path)


def _directory(path: Path) -> None:
    path.mkdir()


SPECIAL: dict[str, Callable[[Path], Any]] = {
    "fifo": _fifo,
    "symlink-to-fifo": _fifo_link,
    "devzero": _devzero,
    "symlink-loop": _loop,
    "directory": _directory,
}

# where: (group, path in the plate)
SNAPSHOT_AT = {"snapshot": "snapshot"}
DOCUMENTS_AT = {
    "root": "zarr.json",
    "well": "A/1/zarr.json",
    "position": "A/1/0/zarr.json",
    "array": "A/1/0/0/zarr.json",
}

CASES = [
    *[("snapshot", kind) for kind in SPECIAL],
    *[(f"document:{where}", kind) for where in DOCUMENTS_AT for kind in ("fifo", "devzero")],
    ("document:position", "symlink-loop"),
    ("document:position", "symlink-to-fifo"),
    *[(f"build:{where}", kind) for where in ("root", "position", "array") for kind in SPECIAL],
]


def _prepare(small_plate: Path, root: Path, group: str, kind: str) -> Path:
    store = root / f"{group.replace(':', '-')}-{kind}" / "plate"
    shutil.copytree(small_plate, store, symlinks=True)
    if group == "snapshot":
        target = snapshot_file(store)
    else:
        target = store / DOCUMENTS_AT[group.split(":")[1]]
        if group.startswith("build:"):
            shutil.rmtree(store / ".snapmeta")
    _replace(target, SPECIAL[kind])
    return store


@pytest.fixture(scope="module")
def special_results(
    small_plate: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], Any]:
    root = tmp_path_factory.mktemp("special-cases")
    stores = {case: _prepare(small_plate, root, *case) for case in CASES}
    # the snapshot given explicitly, and found through SNAPMETA_SNAPSHOT_DIR
    explicit = root / "explicit"
    explicit.mkdir()
    for kind, make in SPECIAL.items():
        make(explicit / f"{kind}.arrow")
    jobs: list[tuple[str, tuple[Any, ...]]] = [
        ("build" if group.startswith("build:") else "opens", (str(stores[(group, kind)]),))
        for group, kind in CASES
    ]
    jobs += [("explicit", (str(small_plate), str(explicit / f"{kind}.arrow"))) for kind in SPECIAL]
    results = run_scenarios(jobs)
    out = dict(zip(CASES, results[: len(CASES)], strict=True))
    for kind, result in zip(SPECIAL, results[len(CASES) :], strict=True):
        out[("explicit", kind)] = result
    return out


def _check(result: Any, expect_error: tuple[str, ...]) -> None:
    assert isinstance(result, dict), f"the child process: {result}"
    raw = {k: v for k, v in result.items() if v.startswith("RAW:")}
    assert not raw, f"raw exceptions: {raw}"
    for op in expect_error:
        assert result[op].startswith("E:") or result[op] == "1", f"{op}: {result}"


@pytest.mark.parametrize(("group", "kind"), [c for c in CASES if c[0] == "snapshot"])
def test_special_snapshot(special_results: dict[Any, Any], group: str, kind: str) -> None:
    """The snapshot is a FIFO, a symlink to one, /dev/zero, a symlink loop or a directory:
    open, a position, verify and ``snapmeta info/ls/verify`` fail with a SnapmetaError
    (exit code 1), in bounded time."""
    result = special_results[(group, kind)]
    _check(result, ("open_plate", "open_position", "plate[]", "cli info", "cli ls", "cli verify"))
    assert result["verify"] == "ok" and result["verify.ok"] == "False", result


@pytest.mark.parametrize("kind", list(SPECIAL))
def test_special_explicit_snapshot(special_results: dict[Any, Any], kind: str) -> None:
    """The same through ``snapshot=`` and ``--snapshot``."""
    result = special_results[("explicit", kind)]
    _check(result, ("open_plate", "open_position", "cli info"))
    assert result["verify.ok"] == "False", result


@pytest.mark.parametrize(("group", "kind"), [c for c in CASES if c[0].startswith("document:")])
def test_special_document_after_the_build(
    special_results: dict[Any, Any], group: str, kind: str
) -> None:
    """A metadata document became a FIFO, /dev/zero, a symlink loop after the build: reads
    that depend on it fail with a SnapmetaError (never served from the snapshot, which
    knew a regular file), verify reports it; nothing hangs or reads without bound."""
    result = special_results[(group, kind)]
    where = group.split(":")[1]
    # every document A/1/0 depends on: its position, its array, its well, the root
    _check(result, ("open_position",))
    if where in ("root", "well"):
        _check(result, ("open_plate",) if where == "root" else ())
    assert result["verify"] == "ok" and result["verify.ok"] == "False", result
    assert result["cli verify"] == "1", result


@pytest.mark.parametrize(("group", "kind"), [c for c in CASES if c[0].startswith("build:")])
def test_special_document_at_build(special_results: dict[Any, Any], group: str, kind: str) -> None:
    """``build_snapshot``/``snapmeta build`` on a plate with a special document: a
    PlateValidationError or NotAPlateError naming it, exit code 1, no snapshot."""
    result = special_results[(group, kind)]
    _check(result, ("build", "cli build"))
    assert result["build"] in ("E:PlateValidationError", "E:NotAPlateError"), result


def test_root_is_a_fifo(tmp_path: Path) -> None:
    """The plate path itself is a FIFO: NotAPlateError / SnapshotNotFoundError."""
    fifo = tmp_path / "plate.ome.zarr"
    os.mkfifo(fifo)
    result = run_scenarios([("opens", (str(fifo),)), ("build", (str(fifo),))])
    _check(result[0], ("open_plate", "open_position", "cli info"))
    _check(result[1], ("build", "cli build"))


# -- the command line, in process (a hang would be stopped by an alarm)


@contextlib.contextmanager
def _alarm(seconds: int) -> Iterator[None]:
    def timeout(signum: int, frame: Any) -> None:
        raise TimeoutError(f"no answer in {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("kind", list(SPECIAL))
@pytest.mark.parametrize("command", ["info", "ls", "verify"])
def test_cli_special_snapshot_one_error_line(
    small_plate: Path, tmp_path: Path, kind: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``snapmeta info|ls|verify`` on a special snapshot: exit code 1 and, for info and
    ls, exactly one line on stderr, ``snapmeta: error: ...`` (verify prints its report)."""
    from snapmeta._cli import main

    store = tmp_path / "plate"
    shutil.copytree(small_plate, store, symlinks=True)
    _replace(snapshot_file(store), SPECIAL[kind])
    clear_cache()
    capsys.readouterr()
    with _alarm(20):
        code = main([command, str(store)])
    captured = capsys.readouterr()
    assert code == 1, (captured.out, captured.err)
    if command != "verify":
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("snapmeta: error: "), captured.err
    else:
        assert "problem" in captured.out, captured.out


def test_cli_subprocess_fifo_snapshot(small_plate: Path, tmp_path: Path) -> None:
    """``python -m snapmeta info`` on a FIFO snapshot, as a user runs it: exit code 1,
    one error line, in bounded time."""
    store = tmp_path / "plate"
    shutil.copytree(small_plate, store, symlinks=True)
    _replace(snapshot_file(store), _fifo)
    proc = subprocess.run(
        [sys.executable, "-m", "snapmeta", "info", str(store)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapmeta: error: "), proc.stderr


# ---------------------------------------------------------------------------
# in-place overwrites against live readers


def _as_user_command() -> list[str] | None:
    """A prefix that runs a command as uid/gid 65534, or None."""
    if os.geteuid() != 0:
        return None
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    return None


def _chown_tree(root: Path, uid: int) -> None:
    os.lchown(root, uid, uid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)


@pytest.fixture
def shared_plate() -> Iterator[Path]:
    """A plate and its snapshot owned by uid 65534, in a directory that user can reach."""
    work = Path(tempfile.mkdtemp(prefix="snapmeta-inplace-"))
    try:
        os.chmod(work, 0o755)
        store = write_plate(
            work / "plate", rows=1, columns=2, fields=1, shape=(1, 2, 1, 8, 8), data="fill"
        )
        snapmeta.build_snapshot(store)
        smaller = write_plate(
            work / "small", rows=1, columns=1, fields=1, shape=(1, 1, 1, 4, 4), data="none"
        )
        snapmeta.build_snapshot(smaller)
        shutil.copyfile(snapshot_file(smaller), work / "smaller.arrow")
        if os.geteuid() == 0:
            _chown_tree(work, NOBODY)
        clear_cache()
        yield store
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _reader(store: str, ready: Any, stop: Any, queue: Any) -> None:
    """Hold a Plate, open positions and read pixels in a loop until told to stop."""
    counts = {"ok": 0, "wrong": 0, "error": 0, "raw": 0}
    kinds: set[str] = set()
    expected = ("DAPI", "GFP")
    plate = None
    while not stop.is_set():
        for path in ("A/1/0", "A/2/0"):
            try:
                if plate is None:
                    plate = snapmeta.open_plate(store)
                held = plate[path].channel_names
                pos = snapmeta.open_position(store, path)
                names = pos.channel_names
                value = int(pos[0][0, 1, 0, 0, 0])
                good = names == held == expected and value == (0 if path == "A/1/0" else 1)
                counts["ok" if good else "wrong"] += 1
            except snapmeta.SnapmetaError as exc:
                counts["error"] += 1
                kinds.add(type(exc).__name__)
                plate = None
            except Exception as exc:
                counts["raw"] += 1
                kinds.add(f"{type(exc).__name__}: {exc}")
        ready.set()
    queue.put({**counts, "kinds": sorted(kinds)})


def _emulated_rsync_inplace(source: Path, target: Path) -> list[str]:
    """What ``rsync --inplace`` does to the target: open it for writing without
    truncating, write the new bytes, cut it to the new length."""
    code = (
        "import sys; data = open(sys.argv[1], 'rb').read(); fh = open(sys.argv[2], 'r+b'); "
        "fh.write(data); fh.truncate(len(data)); fh.close()"
    )
    return [sys.executable, "-c", code, str(source), str(target)]


def _overwrite_commands(work: Path, snapshot: Path) -> dict[str, list[str]]:
    smaller = work / "smaller.arrow"
    commands = {
        "truncate -s 0": ["truncate", "-s", "0", str(snapshot)],
        "cp smaller.arrow": ["cp", str(smaller), str(snapshot)],
        "rsync --inplace (emulated)": _emulated_rsync_inplace(smaller, snapshot),
    }
    if shutil.which("rsync"):
        commands["rsync --inplace"] = ["rsync", "--inplace", str(smaller), str(snapshot)]
    return commands


def _live_readers(store: Path, count: int) -> tuple[list[Any], Any, Any]:
    ctx = forkserver_context()
    ready = [ctx.Event() for _ in range(count)]
    stop, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_reader, args=(str(store), r, stop, queue)) for r in ready]
    for proc in procs:
        proc.start()
    for event in ready:
        assert event.wait(60), "a reader never read"
    return procs, stop, queue


def _stop_readers(procs: list[Any], stop: Any, queue: Any) -> list[dict[str, Any]]:
    time.sleep(0.3)  # the readers keep reading after the command
    stop.set()
    results = []
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0, f"a reader died: exit code {proc.exitcode} (SIGBUS is -7)"
    while len(results) < len(procs):
        results.append(queue.get(timeout=10))
    return results


@pytest.mark.parametrize(
    "command", ["truncate -s 0", "cp smaller.arrow", "rsync --inplace (emulated)", "rsync"]
)
def test_inplace_overwrite_as_a_user_spares_live_readers(shared_plate: Path, command: str) -> None:
    """The command run by the owner of the plate (uid 65534) on the read-only snapshot
    while two processes read: it fails, and no reader dies or reads wrong metadata."""
    prefix = _as_user_command()
    if prefix is None:
        pytest.skip("needs root and setpriv or runuser to run commands as uid 65534")
    work = shared_plate.parent
    snapshot = snapshot_file(shared_plate)
    commands = _overwrite_commands(work, snapshot)
    if command == "rsync":
        if "rsync --inplace" not in commands:
            pytest.skip("rsync is not installed (its --inplace writes are emulated above)")
        command = "rsync --inplace"
    # the user can write in the plate: only the snapshot's mode protects it
    probe = subprocess.run([*prefix, "touch", str(work / "plate" / ".probe")], check=False)
    assert probe.returncode == 0, "uid 65534 cannot write in its own plate"
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o444
    before = snapshot.read_bytes()
    procs, stop, queue = _live_readers(shared_plate, 2)
    try:
        run = subprocess.run(
            [*prefix, *commands[command]], capture_output=True, text=True, timeout=60
        )
    finally:
        results = _stop_readers(procs, stop, queue)
    for result in results:
        assert result["raw"] == 0 and result["wrong"] == 0, result
        assert result["ok"] > 0, result
    if run.returncode != 0:
        assert snapshot.read_bytes() == before, "a failed command still changed the snapshot"
        assert all(r["error"] == 0 for r in results), results
    else:  # a filesystem that ignores the mode: the readers must still have survived
        assert all(
            set(r["kinds"]) <= {"SnapshotCorruptError", "SnapshotFormatError"} for r in results
        )


def _after_root_truncation(store: str, path: str, how: str) -> dict[str, str]:
    """A process maps the snapshot, root truncates it in place, the process opens again."""
    clear_cache()
    assert snapmeta.open_position(store, path).channel_names == ("DAPI", "GFP")
    snapmeta.open_plate(store)
    snapshot = snapshot_file(Path(store))
    os.truncate(snapshot, 0 if how == "zero" else snapshot.stat().st_size // 2)
    return {
        "open_position": outcome(lambda: snapmeta.open_position(store, path).channel_names),
        "open_plate": outcome(lambda: list(snapmeta.open_plate(store))),
    }


SCENARIOS["after_root_truncation"] = _after_root_truncation


@pytest.mark.parametrize("how", ["zero", "half"])
def test_root_truncation_is_detected_before_reuse(shared_plate: Path, how: str) -> None:
    """The remaining hole's safe side: after root truncates the snapshot in place, the
    next ``open_position``/``open_plate`` in a process that mapped it compares sizes
    first and raises a SnapmetaError instead of touching the mapping (SIGBUS)."""
    [result] = run_scenarios([("after_root_truncation", (str(shared_plate), "A/2/0", how))])
    assert isinstance(result, dict), f"the reader process: {result}"
    assert result["open_position"].startswith("E:"), result
    assert result["open_plate"].startswith("E:"), result
