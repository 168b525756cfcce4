"""Crash safety: a builder killed with SIGKILL at any moment leaves the old snapshot intact.

Builders run in real processes (multiprocessing ``forkserver`` context with
snapmeta preloaded, so a process starts in milliseconds) on a 768-position
plate whose build takes about a second in a fresh builder process. They are killed

* at fixed points, by the builder itself (``os.kill(getpid(), SIGKILL)``
  from inside its progress callback or around the real ``os.write``,
  ``os.fsync`` and ``os.replace`` of the snapshot write), and
* by the parent after a random delay, anywhere in the build, or a random
  delay after the builder announced the ``write`` stage.

After every kill the snapshot under its final name is byte-for-byte the
previous one (or, only when the rename already happened, the complete new
one), readers and ``verify`` accept it, leftover ``.snapmeta.arrow.*.tmp``
files are ignored, and nothing else in the store changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import forkserver_context

import snapmeta
from snapmeta import _format
from snapmeta.testing import write_plate

SLOW = bool(os.environ.get("SNAPMETA_SLOW"))
slow = pytest.mark.skipif(not SLOW, reason="large run: set SNAPMETA_SLOW=1")

RANDOM_KILLS = 5
WRITE_KILLS = 2
RANDOM_KILLS_SLOW = 100

KILL_POINTS = (
    "wells",
    "positions",
    "encode",
    "mid-write",
    "before-fsync",
    "before-rename",
    "after-rename",
)
LEAVES_TEMP = {"mid-write", "before-fsync", "before-rename"}

# Tally of kills, printed at the end of the module (see test_zz_tally).
TALLY: dict[str, int] = {"sigkill": 0, "completed-before-kill": 0}


# ---------------------------------------------------------------------------
# the builder process


def _is_temp(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp")
    except OSError:
        return False


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _builder(store: str, conn: Any, point: str | None) -> None:
    """Build the snapshot of ``store``; with ``point``, SIGKILL itself there.

    The hooks wrap the real system calls of this process only: the bytes up
    to the kill really reach the file system.
    """
    real_write, real_fsync, real_replace = os.write, os.fsync, os.replace
    if point == "mid-write":

        def write(fd: int, data: Any) -> int:
            if _is_temp(fd):
                real_write(fd, bytes(data[: max(1, len(data) // 2)]))
                _die()
            return real_write(fd, data)

        os.write = write
    elif point == "before-fsync":

        def fsync(fd: int) -> None:
            if _is_temp(fd):
                _die()
            real_fsync(fd)

        os.fsync = fsync
    elif point in ("before-rename", "after-rename"):

        def replace(src: Any, dst: Any, **kwargs: Any) -> None:
            if point == "before-rename":
                _die()
            real_replace(src, dst, **kwargs)
            _die()

        os.replace = replace

    def progress(stage: str, done: int, total: int) -> None:
        conn.send(("stage", stage, done, total, time.monotonic()))
        if point == "wells" and stage == "wells" and done > 0:
            _die()
        if point == "positions" and stage == "positions" and total and done >= total // 2:
            _die()
        if point == "encode" and stage == "write" and done == 0:
            _die()

    conn.send(("started", time.monotonic()))
    snapmeta.build_snapshot(store, progress=progress)
    conn.send(("done", time.monotonic()))


_context = forkserver_context


def run_builder(
    store: Path,
    *,
    point: str | None = None,
    delay: float | None = None,
    after_stage: str | None = None,
) -> dict[str, Any]:
    """Run one builder process; kill it as asked. Returns what happened."""
    ctx = _context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_builder, args=(str(store), send, point))
    proc.start()
    send.close()
    events: list[tuple[Any, ...]] = []

    def pump(until: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            assert left > 0, f"builder stuck; events so far: {events[-3:]}"
            if recv.poll(min(left, 0.05)):
                try:
                    events.append(recv.recv())
                except EOFError:
                    return

    pump(lambda: any(e[0] == "started" for e in events))
    killed = False
    if after_stage is not None:

        def reached(event: tuple[Any, ...]) -> bool:
            return event[0] == "done" or (event[0] == "stage" and event[1] == after_stage)

        pump(lambda: any(reached(e) for e in events))
    if delay is not None:
        time.sleep(delay)
        if proc.exitcode is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
    proc.join(120)
    assert proc.exitcode is not None, "builder did not finish"
    while True:
        try:
            if not recv.poll(0):
                break
            events.append(recv.recv())
        except EOFError:
            break
    recv.close()
    done = any(e[0] == "done" for e in events)
    stages = [e for e in events if e[0] == "stage"]
    result = {
        "exitcode": proc.exitcode,
        "done": done,
        "killed": killed or proc.exitcode == -signal.SIGKILL,
        "last_stage": stages[-1][1:4] if stages else None,
        "seconds": (next(e[1] for e in events if e[0] == "done") - events[0][1]) if done else None,
    }
    if result["killed"] and not done:
        assert proc.exitcode == -signal.SIGKILL, result
        TALLY["sigkill"] += 1
        where = f"in:{stages[-1][1] if stages else 'start'}"
        TALLY[where] = TALLY.get(where, 0) + 1
    elif done:
        assert proc.exitcode == 0 or killed, result
        TALLY["completed-before-kill"] += int(killed)
    return result


# ---------------------------------------------------------------------------
# checks


def tree_digest(store: Path, *, content: bool = False) -> str:
    """Digest of the store's files except the snapshot and temp files.

    Names, sizes and mtimes (a builder that wrote anything would change
    them); with ``content=True`` the bytes too.
    """
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(store):
        dirnames.sort()
        for name in sorted(filenames):
            if name == _format.SNAPSHOT_NAME or name.startswith(_format.SNAPSHOT_NAME + "."):
                continue
            path = Path(dirpath) / name
            st = path.lstat()
            h.update(f"{path.relative_to(store)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
            if content:
                h.update(path.read_bytes())
    return h.hexdigest()


def _channel_names(store: Path, position: str) -> list[str]:
    zattrs = store / position / ".zattrs"
    if zattrs.exists():
        doc = json.loads(zattrs.read_bytes())
    else:
        doc = json.loads((store / position / "zarr.json").read_bytes())["attributes"]["ome"]
    return [c["label"] for c in doc["omero"]["channels"]]


def assert_intact(store: Path, expected: set[bytes], tree: str, samples: list[str]) -> None:
    """The snapshot is one of the complete expected files; readers and verify accept it."""
    target = _format.snapshot_path(store)
    assert target.read_bytes() in expected, (
        "the snapshot under its final name is not a complete build"
    )
    plate = snapmeta.open_plate(store)
    assert len(plate) == len(list(plate))
    for path in samples:
        assert list(plate[path].channel_names) == _channel_names(store, path)
    assert tree_digest(store) == tree


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def plate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    store = tmp_path_factory.mktemp("crash") / "plate.zarr"
    write_plate(store, rows=16, columns=24, fields=2, ngff="0.5", levels=2, data="none")
    reference = run_builder(store)  # an unkilled build in a builder process: the timing reference
    assert reference["done"] and reference["exitcode"] == 0
    snapshot = _format.snapshot_path(store).read_bytes()
    print(
        f"\nreference build: {reference['seconds']:.2f} s for "
        f"{len(snapmeta.open_plate(store))} positions, {len(snapshot)} bytes"
    )
    return {
        "store": store,
        "snapshot": snapshot,
        "seconds": reference["seconds"],
        "tree": tree_digest(store),
        "content": tree_digest(store, content=True),
        "samples": ["A/1/0", "H/12/1", "P/24/1"],
    }


# ---------------------------------------------------------------------------
# tests


def test_build_takes_long_enough_to_be_hit(plate: dict[str, Any]) -> None:
    """Random delays land inside the build; 'after-rename' below shows a rebuild of an
    unchanged plate writes the same bytes, so old and new snapshots coincide here."""
    assert plate["seconds"] > 0.3


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_at_point(plate: dict[str, Any], point: str) -> None:
    store = plate["store"]
    before = set(_format.stale_temp_files(store))
    result = run_builder(store, point=point)
    assert result["killed"] and not result["done"], result
    assert result["exitcode"] == -signal.SIGKILL
    assert_intact(store, {plate["snapshot"]}, plate["tree"], plate["samples"])
    leftovers = set(_format.stale_temp_files(store)) - before
    if point in LEAVES_TEMP:
        (leftover,) = leftovers
        size = leftover.stat().st_size
        if point == "mid-write":
            assert 0 < size < len(plate["snapshot"])
        else:
            assert leftover.read_bytes() == plate["snapshot"]  # complete, never renamed
    else:
        assert not leftovers


def _random_kills(plate: dict[str, Any], count: int, seed: int) -> int:
    rng = random.Random(seed)
    store = plate["store"]
    kills = 0
    for _ in range(count):
        result = run_builder(store, delay=rng.uniform(0.0, 1.1 * plate["seconds"]))
        kills += int(result["killed"] and not result["done"])
        assert_intact(store, {plate["snapshot"]}, plate["tree"], plate["samples"])
    return kills


def test_random_kills(plate: dict[str, Any]) -> None:
    kills = _random_kills(plate, RANDOM_KILLS, seed=1)
    assert kills >= RANDOM_KILLS // 2


def test_kills_during_snapshot_write(plate: dict[str, Any]) -> None:
    rng = random.Random(2)
    store = plate["store"]
    for _ in range(WRITE_KILLS):
        run_builder(store, after_stage="write", delay=rng.uniform(0.0, 0.03))
        assert_intact(store, {plate["snapshot"]}, plate["tree"], plate["samples"])


def test_leftover_temp_files_are_ignored_then_cleaned(plate: dict[str, Any]) -> None:
    store = plate["store"]
    target = _format.snapshot_path(store)
    # leftovers: a builder killed mid-write, and foreign junk under the temp pattern
    run_builder(store, point="mid-write")
    junk = target.with_name(f"{target.name}.999999.{'0' * 32}.tmp")
    junk.write_bytes(b"ARROW1\0\0 not a snapshot")
    leftovers = _format.stale_temp_files(store)
    assert len(leftovers) >= 2
    # readers do not look at them
    assert_intact(store, {plate["snapshot"]}, plate["tree"], plate["samples"])
    # the next build succeeds; it removes leftovers older than an hour and leaves
    # young ones alone (they may belong to a concurrent builder)
    aged = [p for p in leftovers if p != junk]
    old = time.time() - 2 * 3600
    for path in aged:
        os.utime(path, (old, old))
    snapmeta.build_snapshot(store)
    assert _format.stale_temp_files(store) == [junk]
    junk.unlink()
    assert_intact(store, {plate["snapshot"]}, plate["tree"], plate["samples"])


def test_kills_while_the_plate_changed(tmp_path: Path) -> None:
    """Metadata changed, then builds killed: the snapshot is the old or the complete new one."""
    store = tmp_path / "plate.zarr"
    write_plate(store, rows=8, columns=12, fields=2, ngff="0.4", levels=2, data="none")
    snapmeta.build_snapshot(store)
    old = _format.snapshot_path(store).read_bytes()
    doc_path = store / "C" / "5" / "1" / ".zattrs"
    doc = json.loads(doc_path.read_bytes())
    doc["omero"]["channels"][1]["label"] = "GFP-renamed"
    doc_path.write_text(json.dumps(doc, indent=2))
    tree = tree_digest(store, content=True)
    seen = []
    for point in ("mid-write", "before-rename"):
        run_builder(store, point=point)
        seen.append(_format.snapshot_path(store).read_bytes())
    assert set(seen) == {old}
    # the old snapshot is intact, and readers notice the change
    with pytest.warns(snapmeta.SnapshotStaleWarning):
        names = snapmeta.open_position(store, "C/5/1").channel_names
    assert names == ("DAPI", "GFP-renamed")
    assert snapmeta.open_position(store, "C/5/0").channel_names == ("DAPI", "GFP")
    run_builder(store, point="after-rename")  # renamed, then killed: the new snapshot is complete
    new = _format.snapshot_path(store).read_bytes()
    assert new != old
    snapmeta.build_snapshot(store)
    assert _format.snapshot_path(store).read_bytes() == new
    report = snapmeta.verify(store)
    assert report.ok, report
    assert snapmeta.open_position(store, "C/5/1").channel_names == ("DAPI", "GFP-renamed")
    assert tree_digest(store, content=True) == tree


def test_full_verify_after_all_kills(plate: dict[str, Any]) -> None:
    """After every kill of this module: verify re-reads the plate and agrees; no file changed."""
    report = snapmeta.verify(plate["store"])
    assert report.ok, report
    assert _format.snapshot_path(plate["store"]).read_bytes() == plate["snapshot"]
    assert tree_digest(plate["store"], content=True) == plate["content"]


@pytest.mark.slow
@slow
def test_random_kills_large(plate: dict[str, Any]) -> None:
    kills = _random_kills(plate, RANDOM_KILLS_SLOW, seed=10)
    assert kills >= RANDOM_KILLS_SLOW // 2


def test_zz_tally() -> None:
    """Prints how many builders were killed (and where) in this module."""
    print(f"\ncrash tally: {json.dumps(TALLY, sort_keys=True)}")
