"""Crash safety: a builder killed with SIGKILL at any moment leaves the old snapshot intact.

In format 2 the in-store snapshot is the only chunk, ``PLATE/.snapmeta/0``, of a
one-dimensional ``uint8`` zarr array ``.snapmeta``. A build creates a temporary
file ``0.<pid>.<hex>.tmp`` next to the chunk before it reads the plate, writes
the Arrow file into it, fsyncs it, makes it read-only, renames it over ``0``,
fsyncs the directory, and then rewrites the array's document (``zarr.json``, or
``.zarray`` + ``.zattrs``) the same way (``<name>.<pid>.<hex>.tmp``, rename).

Builders run in real processes (multiprocessing ``forkserver`` context with
snapmeta preloaded) on a 192-position plate whose build takes a few tenths of
a second. They are killed

* at fixed points, by the builder itself (``os.kill(getpid(), SIGKILL)``) from
  inside its progress callback or around its real file operations: halfway
  through reading the plate's documents, half of the Arrow bytes written,
  before the chunk's ``fsync``, before and after the chunk's rename, before and
  after the document's rename;
* by the parent after a random delay, anywhere in the build, or a random delay
  after the builder announced the ``write`` stage.

After every kill the chunk under its final name is byte for byte the previous
snapshot, or (only once its rename happened) a complete new build of the same
plate; readers (a fresh process cache, as a new worker has) and ``verify``
accept it, the snapshot's directory holds nothing but the chunk, the array
document and temp files, and nothing else in the store changed. A kill between
the chunk's rename and the document's rewrite leaves a document that describes
the previous chunk: snapmeta maps the chunk and never needs the document, so it
still opens the plate correctly, and the next build rewrites the document.

"Complete new build" is decided without snapmeta: the file is read with
pyarrow, the plate entry's CRC is checked with zlib and its MessagePack decoded
with msgpack, and everything but the build's own clock readings
(``build_start_ns``, ``granularity_ns``) must equal a reference build.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import random
import re
import signal
import stat
import time
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from conftest import forkserver_context, snapshot_file

import snapmeta
from snapmeta._open import clear_cache
from snapmeta.testing import write_plate

SLOW = bool(os.environ.get("SNAPMETA_SLOW"))
slow = pytest.mark.skipif(not SLOW, reason="large run: set SNAPMETA_SLOW=1")

RANDOM_KILLS = 5
WRITE_KILLS = 2
RANDOM_KILLS_SLOW = 100

ARRAY_DIR = ".snapmeta"
CHUNK = "0"
DOCS = {2: (".zarray", ".zattrs"), 3: ("zarr.json",)}
TEMP = re.compile(r"^(?P<name>.+)\.(?P<pid>[0-9]+)\.(?P<tag>[0-9a-f]+)\.tmp$")
HOUR = 3600.0

# (kill point, what it leaves behind): "chunk-temp" an unrenamed chunk temp file,
# "doc-temp" an unrenamed document temp file; the chunk is the old one unless
# the point lies after the chunk's rename ("renamed").
KILL_POINTS: dict[str, dict[str, Any]] = {
    "start": {"leaves": "chunk-temp", "renamed": False},
    "reading": {"leaves": "chunk-temp", "renamed": False},
    "encode": {"leaves": "chunk-temp", "renamed": False},
    "mid-write": {"leaves": "chunk-temp", "renamed": False},
    "before-fsync": {"leaves": "chunk-temp", "renamed": False},
    "before-rename": {"leaves": "chunk-temp", "renamed": False},
    "after-rename": {"leaves": None, "renamed": True},
    "doc-before-rename": {"leaves": "doc-temp", "renamed": True},
    "after-doc-rename": {"leaves": None, "renamed": True},
}

# Tally of kills, printed by the random-kill tests.
TALLY: dict[str, int] = {"sigkill": 0, "completed-before-kill": 0}


# ---------------------------------------------------------------------------
# the builder process


def _fd_name(fd: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return ""


def _is_chunk_temp(name: str) -> bool:
    found = TEMP.match(name)
    return found is not None and found["name"] == CHUNK


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _HalfWriter:
    """A file object that dies once ``half`` bytes went through it (flushed first)."""

    def __init__(self, fh: Any, half: int) -> None:
        self._fh = fh
        self._left = half

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(view) >= self._left:
            self._fh.write(view[: self._left])
            self._fh.flush()
            _die()
        self._left -= len(view)
        return self._fh.write(view)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _HalfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def _builder(store: str, conn: Any, point: str | None, half: int) -> None:
    """Build the snapshot of ``store``; with ``point``, SIGKILL itself there.

    The hooks wrap the real calls of this process only, so every byte written
    before the kill really reaches the file system.
    """
    real_open, real_fdopen, real_fsync, real_replace = os.open, os.fdopen, os.fsync, os.replace
    if point == "reading":
        opened = [0]

        def open_(path: Any, *args: Any, **kwargs: Any) -> int:
            if os.fspath(path).endswith("zarr.json"):
                opened[0] += 1
                if opened[0] == half:  # halfway through the plate's documents
                    _die()
            return real_open(path, *args, **kwargs)

        os.open = open_  # type: ignore[assignment]
    elif point == "mid-write":

        def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
            fh = real_fdopen(fd, *args, **kwargs)
            return _HalfWriter(fh, half) if _is_chunk_temp(_fd_name(fd)) else fh

        os.fdopen = fdopen  # type: ignore[assignment]
    elif point == "before-fsync":

        def fsync(fd: int) -> None:
            if _is_chunk_temp(_fd_name(fd)):
                _die()
            real_fsync(fd)

        os.fsync = fsync
    elif point in ("before-rename", "after-rename", "doc-before-rename", "after-doc-rename"):
        docs_left = {2: 2, 3: 1}

        def replace(src: Any, dst: Any, **kwargs: Any) -> None:
            is_chunk = os.path.basename(os.fspath(dst)) == CHUNK
            if is_chunk and point == "before-rename":
                _die()
            if not is_chunk and point == "doc-before-rename":
                _die()
            real_replace(src, dst, **kwargs)
            if is_chunk and point == "after-rename":
                _die()
            if not is_chunk:
                zarr_format = 3 if os.path.basename(os.fspath(dst)) == "zarr.json" else 2
                docs_left[zarr_format] -= 1
                if point == "after-doc-rename" and docs_left[zarr_format] == 0:
                    _die()

        os.replace = replace

    def progress(stage: str, done: int, total: int) -> None:
        conn.send(("stage", stage, done, total, time.monotonic()))
        if point == "start" and stage == "wells" and done == 0:
            _die()
        if point == "encode" and stage == "write" and done == 0:
            _die()

    # the validator (pydantic) is imported on first use: import it before the clock
    # starts, so that random delays spread over the build's own work
    importlib.import_module("snapmeta._ngff._validate")
    conn.send(("started", time.monotonic(), os.getpid()))
    snapmeta.build_snapshot(store, progress=progress)
    conn.send(("done", time.monotonic()))


_context = forkserver_context


def run_builder(
    store: Path,
    *,
    point: str | None = None,
    delay: float | None = None,
    after_stage: str | None = None,
    half: int = 0,
) -> dict[str, Any]:
    """Run one builder process; kill it as asked. Returns what happened."""
    ctx = _context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_builder, args=(str(store), send, point, half))
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
        "pid": proc.pid,
        "exitcode": proc.exitcode,
        "done": done,
        "killed": killed or proc.exitcode == -signal.SIGKILL,
        "last_stage": stages[-1][1:4] if stages else None,
        "seconds": (next(e[1] for e in events if e[0] == "done") - events[0][1]) if done else None,
    }
    if result["killed"] and not done:
        assert proc.exitcode == -signal.SIGKILL, result
        TALLY["sigkill"] += 1
        where = f"in:{point or (stages[-1][1] if stages else 'start')}"
        TALLY[where] = TALLY.get(where, 0) + 1
    elif done:
        assert proc.exitcode == 0 or killed, result
        TALLY["completed-before-kill"] += int(killed)
    return result


# ---------------------------------------------------------------------------
# independent reading of snapshot files and stores


def canonical(data: bytes) -> tuple[Any, ...]:
    """What a build of an unchanged plate always writes: the file, read without snapmeta,
    minus the plate entry's clock readings. Raises if the file is not a complete build."""
    reader = ipc.open_file(pa.py_buffer(data))
    assert reader.num_record_batches == 1
    schema = reader.schema
    assert schema.metadata == {b"snapmeta.format": b"2"}
    batch = reader.get_batch(0)
    batch.validate(full=True)
    assert batch.num_rows == 1
    entry = batch.column("plate")[0].as_py()
    assert int.from_bytes(entry[:4], "little") == zlib.crc32(b"plate\0" + entry[4:])
    plate = msgpack.unpackb(entry[4:], raw=False)
    assert plate["wells"] + plate["positions"] == len(batch.column("paths")[0])
    for key in ("build_start_ns", "granularity_ns"):
        del plate[key]
    columns = [batch.column(name).to_pylist() for name in schema.names if name != "plate"]
    return (schema.to_string(show_schema_metadata=True), columns, plate)


def zarr_format_of(store: Path) -> int:
    return 3 if (store / "zarr.json").exists() else 2


def array_dir(store: Path) -> Path:
    return store / ARRAY_DIR


def temp_files(store: Path) -> list[Path]:
    """Every builder temp file in the snapshot's directory (chunk and documents)."""
    directory = array_dir(store)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if TEMP.match(p.name))


def array_state(store: Path) -> dict[str, tuple[int, int, str]]:
    """The array's chunk and documents: size, mtime and digest of each (temp files aside)."""
    out = {}
    directory = array_dir(store)
    for name in (CHUNK, *DOCS[zarr_format_of(store)]):
        path = directory / name
        if path.exists():
            st = path.stat()
            out[name] = (st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def document_size(store: Path) -> int | None:
    """The chunk size the array document declares (None without a document)."""
    directory = array_dir(store)
    if zarr_format_of(store) == 3:
        path = directory / "zarr.json"
        if not path.exists():
            return None
        doc = json.loads(path.read_bytes())
        assert doc["chunk_grid"]["configuration"]["chunk_shape"] == doc["shape"]
        assert doc["attributes"]["snapmeta"]["format"] == 2
    else:
        path = directory / ".zarray"
        if not path.exists():
            return None
        doc = json.loads(path.read_bytes())
        assert doc["chunks"] == doc["shape"] and doc["dtype"] == "|u1"
        assert doc["compressor"] is None
    (size,) = doc["shape"]
    return int(size)


def tree_digest(store: Path, *, content: bool = False) -> str:
    """Digest of the store outside the snapshot's array directory.

    Names, sizes and mtimes (a builder that wrote anything would change them);
    with ``content=True`` the bytes too.
    """
    h = hashlib.sha256()

    def walk(directory: str, rel: str) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if not rel and entry.name == ARRAY_DIR:
                continue
            st = entry.stat(follow_symlinks=False)
            name = f"{rel}{entry.name}"
            h.update(f"{name}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
            if stat.S_ISDIR(st.st_mode):
                walk(entry.path, f"{name}/")
            elif content and stat.S_ISREG(st.st_mode):
                with open(entry.path, "rb") as fh:
                    h.update(fh.read())

    walk(os.fspath(store), "")
    return h.hexdigest()


def _channel_names(store: Path, position: str) -> list[str]:
    zattrs = store / position / ".zattrs"
    if zattrs.exists():
        doc = json.loads(zattrs.read_bytes())
    else:
        doc = json.loads((store / position / "zarr.json").read_bytes())["attributes"]["ome"]
    return [c["label"] for c in doc["omero"]["channels"]]


def _positions(store: Path) -> list[str]:
    def attrs(node: str) -> dict[str, Any]:
        if zarr_format_of(store) == 3:
            path = (store / node if node else store) / "zarr.json"
            return json.loads(path.read_bytes())["attributes"]["ome"]
        return json.loads(((store / node if node else store) / ".zattrs").read_bytes())

    return [
        f"{w['path']}/{image['path']}"
        for w in attrs("")["plate"]["wells"]
        for image in attrs(w["path"])["well"]["images"]
    ]


def assert_readable(store: Path, samples: list[str]) -> None:
    """A reader that maps the snapshot afresh (a new worker) gets the plate's metadata."""
    clear_cache()
    plate = snapmeta.open_plate(store)
    assert list(plate) == _positions(store)
    assert len(plate) == len(list(plate))
    for path in samples:
        assert list(plate[path].channel_names) == _channel_names(store, path)
        assert list(snapmeta.open_position(store, path).channel_names) == _channel_names(
            store, path
        )
    clear_cache()


def assert_only_array_files(store: Path) -> None:
    names = {p.name for p in array_dir(store).iterdir()}
    expected = {CHUNK, *DOCS[zarr_format_of(store)]}
    assert {n for n in names if not TEMP.match(n)} <= expected, names


def assert_intact(state: dict[str, Any], *, renamed: bool | None = None) -> None:
    """The chunk is the previous snapshot, byte for byte, or (``renamed`` allowed) a
    complete new build; readers accept it; nothing outside the snapshot changed.

    ``renamed`` None accepts either. The state's current snapshot is updated.
    """
    store = state["store"]
    data = snapshot_file(store).read_bytes()
    previous = state["snapshot"]
    if renamed is False or (renamed is None and data == previous):
        assert data == previous, "the chunk under its final name is not the previous snapshot"
        # nothing of the array was touched: the document is the previous one too
        assert array_state(store) == state["array"]
    else:
        assert canonical(data) == state["canonical"], "the chunk is not a complete build"
        if renamed:
            assert data != previous, "a new build has other clock readings"
        state["snapshot"] = data
    assert_only_array_files(store)
    assert_readable(store, state["samples"])
    assert tree_digest(store) == state["tree"]
    state["array"] = array_state(store)


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def plate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    store = tmp_path_factory.mktemp("crash") / "plate.zarr"
    write_plate(store, rows=12, columns=16, fields=1, ngff="0.5", levels=2, data="none")
    reference = run_builder(store)  # an unkilled build in a builder process: the timing reference
    assert reference["done"] and reference["exitcode"] == 0
    snapshot = snapshot_file(store).read_bytes()
    assert document_size(store) == len(snapshot)
    report = snapmeta.verify(store, reread=False)
    assert report.ok, report
    print(
        f"\nreference build: {reference['seconds']:.2f} s for "
        f"{len(snapmeta.open_plate(store))} positions, {len(snapshot)} bytes"
    )
    return {
        "store": store,
        "snapshot": snapshot,
        "canonical": canonical(snapshot),
        "array": array_state(store),
        "seconds": reference["seconds"],
        "tree": tree_digest(store),
        "content": tree_digest(store, content=True),
        "samples": ["A/1/0", "F/9/0", "L/16/0"],
        "documents": sum(1 for _ in store.rglob("zarr.json")),
    }


# ---------------------------------------------------------------------------
# tests


def test_rebuilds_differ_only_in_their_clock_readings(plate: dict[str, Any]) -> None:
    """Two builds of an unchanged plate differ only in their clock readings, which is
    what ``canonical`` relies on. (Random delays are drawn from the reference build's
    duration, so they land inside a build on any machine.)"""
    again = run_builder(plate["store"])
    assert again["done"]
    assert_intact(plate, renamed=True)


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_at_point(plate: dict[str, Any], point: str) -> None:
    store = plate["store"]
    expect = KILL_POINTS[point]
    before = set(temp_files(store))
    documents = [array_dir(store) / name for name in DOCS[zarr_format_of(store)]]
    inodes = [path.stat().st_ino for path in documents]
    half = plate["documents"] // 2 if point == "reading" else len(plate["snapshot"]) // 2
    result = run_builder(store, point=point, half=half)
    assert result["killed"] and not result["done"], result
    assert result["exitcode"] == -signal.SIGKILL
    assert_intact(plate, renamed=expect["renamed"])
    leftovers = set(temp_files(store)) - before
    chunk = snapshot_file(store).read_bytes()
    if expect["leaves"] is None:
        assert not leftovers, leftovers
    else:
        (leftover,) = leftovers
        found = TEMP.match(leftover.name)
        assert found is not None and int(found["pid"]) == result["pid"], leftover
        if expect["leaves"] == "chunk-temp":
            assert found["name"] == CHUNK
            data = leftover.read_bytes()
            if point in ("start", "reading", "encode"):
                assert data == b""  # created before the first document is read
            elif point == "mid-write":
                assert len(data) == len(plate["snapshot"]) // 2
                assert plate["snapshot"].startswith(data[:8])  # the Arrow magic
            else:  # complete, never renamed
                assert canonical(data) == plate["canonical"]
                if point == "before-rename":
                    assert stat.S_IMODE(leftover.stat().st_mode) == 0o444
        else:
            assert found["name"] in DOCS[zarr_format_of(store)]
            assert json.loads(leftover.read_bytes())["shape"] == [len(chunk)]
    # the document is replaced (a new inode) only by a kill after its rename
    rewritten = [path.stat().st_ino != inode for path, inode in zip(documents, inodes, strict=True)]
    assert rewritten == [point == "after-doc-rename"] * len(documents)
    assert document_size(store) == len(chunk)  # an unchanged plate: the same size
    report = snapmeta.verify(store, reread=False)  # every entry and every document's digest
    assert report.ok, report


def test_kill_between_chunk_rename_and_document_rewrite(tmp_path: Path) -> None:
    """The chunk is new, its document still describes the old one (or is absent on a
    first build): snapmeta opens the plate from the chunk; the next build fixes the
    document. zarr 2 has two documents: a kill between them is covered too."""
    store = tmp_path / "plate.zarr"
    write_plate(store, rows=3, columns=4, fields=2, ngff="0.4", levels=2, data="none")
    tree = tree_digest(store, content=True)
    # a first build killed after its chunk's rename: no document at all
    result = run_builder(store, point="after-rename")
    assert result["killed"] and not result["done"]
    assert sorted(p.name for p in array_dir(store).iterdir() if not TEMP.match(p.name)) == [CHUNK]
    assert document_size(store) is None
    assert_readable(store, ["A/1/0", "C/4/1"])
    assert snapmeta.verify(store).ok
    snapmeta.build_snapshot(store)
    assert document_size(store) == snapshot_file(store).stat().st_size
    assert tree_digest(store, content=True) == tree

    def grow(position: str, label: str) -> None:
        # a longer attribute makes a larger snapshot: the document's size goes wrong
        path = store / position / ".zattrs"
        doc = json.loads(path.read_bytes())
        doc["omero"]["channels"][1]["label"] = label
        path.write_text(json.dumps(doc, indent=2))

    for k, point in enumerate(("after-rename", "doc-before-rename", "after-doc-rename")):
        old_size = snapshot_file(store).stat().st_size
        declared = document_size(store)
        grow("B/2/1", "GFP" + "-longer" * (k + 1) * 20)
        tree = tree_digest(store, content=True)
        result = run_builder(store, point=point)
        assert result["killed"] and not result["done"]
        new_size = snapshot_file(store).stat().st_size
        assert new_size > old_size
        zarray = json.loads((array_dir(store) / ".zarray").read_bytes())
        if point == "after-doc-rename":
            # killed between .zarray and .zattrs: the size is right already
            assert zarray["shape"] == [new_size]
        else:
            assert zarray["shape"] == [declared] != [new_size], "the test missed the window"
        assert_readable(store, ["A/1/0", "B/2/1", "C/4/1"])
        clear_cache()
        pos = snapmeta.open_position(store, "B/2/1", on_stale="raise")
        assert pos.channel_names[1] == "GFP" + "-longer" * (k + 1) * 20
        assert snapmeta.verify(store).ok
        assert tree_digest(store, content=True) == tree
    snapmeta.build_snapshot(store)
    assert document_size(store) == snapshot_file(store).stat().st_size
    assert json.loads((array_dir(store) / ".zattrs").read_bytes())["snapmeta"]["format"] == 2


def _random_kills(plate: dict[str, Any], count: int, seed: int) -> int:
    rng = random.Random(seed)
    store = plate["store"]
    kills = 0
    for _ in range(count):
        result = run_builder(store, delay=rng.uniform(0.0, 1.1 * plate["seconds"]))
        kills += int(result["killed"] and not result["done"])
        assert_intact(plate, renamed=None)
    print(f"\n{kills} of {count} builders killed by random delays; {json.dumps(TALLY)}")
    return kills


def test_random_kills(plate: dict[str, Any]) -> None:
    kills = _random_kills(plate, RANDOM_KILLS, seed=1)
    assert kills >= RANDOM_KILLS // 2


def test_kills_during_snapshot_write(plate: dict[str, Any]) -> None:
    rng = random.Random(2)
    store = plate["store"]
    for _ in range(WRITE_KILLS):
        run_builder(store, after_stage="write", delay=rng.uniform(0.0, 0.03))
        assert_intact(plate, renamed=None)


def _age(paths: list[Path], hours: float = 2.0) -> None:
    old = time.time() - hours * HOUR
    for path in paths:
        os.utime(path, (old, old))


def test_leftover_chunk_temp_files_are_ignored_then_cleaned(plate: dict[str, Any]) -> None:
    store = plate["store"]
    directory = array_dir(store)
    # leftovers: a builder killed mid-write, and foreign junk under the temp pattern
    run_builder(store, point="mid-write", half=len(plate["snapshot"]) // 2)
    junk = directory / f"{CHUNK}.999999.{'0' * 12}.tmp"
    junk.write_bytes(b"ARROW1\0\0 not a snapshot")
    leftovers = [p for p in temp_files(store) if _is_chunk_temp(p.name)]
    assert len(leftovers) >= 2
    # readers do not look at them
    assert_intact(plate, renamed=False)
    # the next build succeeds; it removes leftovers older than an hour and leaves
    # young ones alone (they may belong to a concurrent builder)
    aged = [p for p in leftovers if p != junk]
    _age(aged)
    snapmeta.build_snapshot(store)
    remaining = [p for p in temp_files(store) if _is_chunk_temp(p.name)]
    assert remaining == [junk]
    junk.unlink()
    assert_intact(plate, renamed=True)


def test_leftover_document_temp_files_are_cleaned(plate: dict[str, Any]) -> None:
    """A builder killed before its document's rename leaves ``zarr.json.<pid>.<hex>.tmp``;
    like a chunk's temp file, it is ignored while young and removed once old."""
    store = plate["store"]
    before = set(temp_files(store))
    run_builder(store, point="doc-before-rename")
    assert_intact(plate, renamed=True)
    leftovers = [p for p in set(temp_files(store)) - before if not _is_chunk_temp(p.name)]
    assert len(leftovers) == 1
    snapmeta.build_snapshot(store)
    assert set(leftovers) <= set(temp_files(store)), "a young temp file was removed"
    _age(leftovers)
    snapmeta.build_snapshot(store)
    assert_intact(plate, renamed=True)
    stale = [p.name for p in leftovers if p.exists()]
    assert not stale, f"temp files of a builder killed hours ago were never removed: {stale}"


def test_kills_while_the_plate_changed(tmp_path: Path) -> None:
    """Metadata changed, then builds killed: the snapshot is the old or the complete new one."""
    store = tmp_path / "plate.zarr"
    write_plate(store, rows=8, columns=12, fields=2, ngff="0.4", levels=2, data="none")
    snapmeta.build_snapshot(store)
    old = snapshot_file(store).read_bytes()
    doc_path = store / "C" / "5" / "1" / ".zattrs"
    doc = json.loads(doc_path.read_bytes())
    doc["omero"]["channels"][1]["label"] = "GFP-renamed"
    doc_path.write_text(json.dumps(doc, indent=2))
    tree = tree_digest(store, content=True)
    seen = []
    for point in ("start", "mid-write", "before-rename"):
        run_builder(store, point=point, half=len(old) // 2)
        seen.append(snapshot_file(store).read_bytes())
    assert set(seen) == {old}
    # the old snapshot is intact, and readers notice the change
    clear_cache()
    with pytest.warns(snapmeta.SnapshotStaleWarning):
        names = snapmeta.open_position(store, "C/5/1").channel_names
    assert names == ("DAPI", "GFP-renamed")
    assert snapmeta.open_position(store, "C/5/0").channel_names == ("DAPI", "GFP")
    run_builder(store, point="after-rename")  # renamed, then killed: the new snapshot is complete
    new = snapshot_file(store).read_bytes()
    assert new != old
    snapmeta.build_snapshot(store)
    assert canonical(snapshot_file(store).read_bytes()) == canonical(new)
    assert canonical(new) != canonical(old)
    report = snapmeta.verify(store)
    assert report.ok, report
    clear_cache()  # a new reader process (see test_reliability_concurrency for old ones)
    assert snapmeta.open_position(store, "C/5/1", on_stale="raise").channel_names == (
        "DAPI",
        "GFP-renamed",
    )
    assert tree_digest(store, content=True) == tree


def test_full_verify_after_all_kills(plate: dict[str, Any]) -> None:
    """After every kill of this module: verify re-reads the plate and agrees; no file
    outside the snapshot changed; the array document describes the chunk."""
    store = plate["store"]
    report = snapmeta.verify(store)
    assert report.ok, report
    data = snapshot_file(store).read_bytes()
    assert canonical(data) == plate["canonical"]
    assert document_size(store) == len(data)
    assert tree_digest(store, content=True) == plate["content"]


@pytest.mark.slow
@slow
def test_random_kills_large(plate: dict[str, Any]) -> None:
    kills = _random_kills(plate, RANDOM_KILLS_SLOW, seed=10)
    assert kills >= RANDOM_KILLS_SLOW // 2
