"""Concurrency with real processes: rebuilds under readers, racing builders, data writers.

Readers, builders and writers are separate processes (multiprocessing
``forkserver`` context, snapmeta preloaded). Each reader process checks every
answer it gets and sends back its counts and any failure; the parent asserts
there were none.

* Rebuilds under readers: every metadata *generation* g names the plate
  ``gen-<g>`` (plate entry), stores ``generation: g`` in every well's
  attributes (well entries) and in every position's, and renames the channels
  to ``DAPI-g<g>``/``GFP-g<g>`` (position leaves). A reader must see one
  generation per snapshot (plate name, well attributes, channel names and
  position attributes agree: never a mix), generations never go backwards, and
  no read fails while the file is replaced. Handles opened before the first
  replacement keep answering from their own snapshot.
* Rebuilds that change every fingerprint (documents rewritten with the same
  bytes, some of them during the build, so they are stored smudged) under
  readers that check freshness: no error, no warning, every answer equal to
  the JSON.
* Racing builders on one store: one complete snapshot results, its array
  document describes it, no temp file is left; verify is ok.
* Writers fill arrays through ``mode="a"`` handles while readers read
  metadata and data: no stale warning, no error, every chunk is old or new.
* A process that mapped a snapshot before a rebuild maps the new one on its
  next ``open_*`` call (format 1's promise), without a stale warning.
"""

from __future__ import annotations

import json
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import forkserver_context, snapshot_file

import snapmeta
from snapmeta.testing import write_plate

try:
    from test_reliability_crash import TEMP, canonical, document_size
except ModuleNotFoundError:  # tests/ imported as a package
    from tests.test_reliability_crash import TEMP, canonical, document_size

SLOW = bool(os.environ.get("SNAPMETA_SLOW"))
slow = pytest.mark.skipif(not SLOW, reason="large run: set SNAPMETA_SLOW=1")

READERS = 3
REBUILD_SECONDS = 1.5
REBUILD_SECONDS_SLOW = 30.0

_context = forkserver_context


def _start(target: Any, *args: Any) -> Any:
    proc = _context().Process(target=target, args=args)
    proc.start()
    return proc


def _collect(queue: Any, procs: list[Any], timeout: float = 120.0) -> list[dict[str, Any]]:
    results = [queue.get(timeout=timeout) for _ in procs]
    for proc in procs:
        proc.join(timeout)
        assert proc.exitcode == 0, f"worker exit code {proc.exitcode}"
    return results


# ---------------------------------------------------------------------------
# plate generations


def _doc_path(store: Path, node: str) -> Path:
    return (store / node if node else store) / "zarr.json"


def _rewrite(path: Path, change: Any) -> None:
    doc = json.loads(path.read_bytes())
    change(doc["attributes"])
    path.write_text(json.dumps(doc))


def set_generation(store: Path, g: int, positions: list[str]) -> None:
    """Rewrite the root, every well and every position document for generation ``g``."""

    def root(attrs: dict[str, Any]) -> None:
        attrs["generation"] = g
        attrs["ome"]["plate"]["name"] = f"gen-{g}"

    def position(attrs: dict[str, Any]) -> None:
        attrs["generation"] = g
        for channel, name in zip(attrs["ome"]["omero"]["channels"], ("DAPI", "GFP"), strict=True):
            channel["label"] = f"{name}-g{g}"

    _rewrite(_doc_path(store, ""), root)
    for well in sorted({p.rpartition("/")[0] for p in positions}):
        _rewrite(_doc_path(store, well), lambda attrs: attrs.update(generation=g))
    for path in positions:
        _rewrite(_doc_path(store, path), position)


def _generation_of(pos: snapmeta.Position) -> tuple[int, int, int]:
    """Generation per leaf: first channel name, attribute, second channel name."""
    first, second = pos.channel_names
    return int(first.split("-g")[1]), int(pos.attrs["generation"]), int(second.split("-g")[1])


def _plate_generation(plate: snapmeta.Plate) -> int:
    name = plate.name
    assert name is not None
    return int(name.split("-")[1])


@pytest.fixture
def generation_plate(tmp_path: Path) -> tuple[Path, list[str]]:
    store = tmp_path / "gen.zarr"
    write_plate(
        store,
        rows=4,
        columns=6,
        fields=2,
        ngff="0.5",
        levels=1,
        shape=(1, 2, 1, 16, 16),
        data="fill",
    )
    positions = [f"{r}/{c}/{f}" for r in "ABCD" for c in range(1, 7) for f in range(2)]
    set_generation(store, 0, positions)
    snapmeta.build_snapshot(store)
    return store, positions


# ---------------------------------------------------------------------------
# 1. rebuilds under readers


def _generation_reader(
    store: str, positions: list[str], seed: int, ready: Any, stop: Any, out: Any
) -> None:
    rng = random.Random(seed)
    errors: list[str] = []
    seen: set[int] = set()
    reads = 0
    last = -1
    held = snapmeta.open_position(store, positions[0], check="none")  # before any replacement
    held_generation = _generation_of(held)[0]
    plate_kept = snapmeta.open_plate(store, check="none")
    kept_generation = _plate_generation(plate_kept)
    ready.wait(60)  # every reader holds its handles before the first replacement
    while not stop.is_set() or reads < 50:
        try:
            if reads % 2:
                plate = snapmeta.open_plate(store, check="none")
                g = _plate_generation(plate)
                pos = plate[rng.choice(positions)]
                gens = _generation_of(pos)
                well = plate.well(pos.well).attrs["generation"]
                if gens != (g, g, g) or well != g:
                    errors.append(f"mixed generations: plate {g}, well {well}, position {gens}")
            else:
                pos = snapmeta.open_position(store, rng.choice(positions), check="none")
                gens = _generation_of(pos)
                g = gens[0]
                if len(set(gens)) != 1:
                    errors.append(f"mixed generations in one position: {gens}")
            if pos.level(0).shape != (1, 2, 1, 16, 16) or pos[0].shape != (1, 2, 1, 16, 16):
                errors.append(f"wrong shape {pos.level(0)}")
            if g < last:
                errors.append(f"generation went back from {last} to {g}")
            last = g
            seen.add(g)
            # a Plate opened at the start still answers from its own snapshot
            kept = plate_kept[positions[-1]]
            if _generation_of(kept) != (kept_generation,) * 3:
                errors.append(f"a kept Plate changed generation: {_generation_of(kept)}")
            if _plate_generation(plate_kept) != kept_generation:
                errors.append("a kept Plate changed its name")
            if reads % 10 == 0:
                # root attributes are read from the root document: the kept Plate
                # refuses a changed one rather than mixing generations
                try:
                    root_generation = plate_kept.attrs["generation"]
                except snapmeta.StaleSnapshotError:
                    pass
                else:
                    if root_generation != kept_generation:
                        errors.append(f"kept Plate attrs of generation {root_generation}")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        reads += 1
    # the handle opened before the first replacement: attributes, arrays and data
    try:
        assert _generation_of(held) == (held_generation,) * 3
        assert held.level(0).shape == (1, 2, 1, 16, 16)
        assert int(held.data[0, 0, 0, 0, 0]) == 0  # position 0 of the plate is filled with 0
        assert int(held[0][0, 1, 0, 15, 15]) == 0
        assert (
            snapmeta.open_position(store, positions[0], check="none").channel_names[0]
            != held.channel_names[0]
        )
    except Exception as exc:
        errors.append(f"old handle: {type(exc).__name__}: {exc}")
    out.put(
        {
            "reads": reads,
            "generations": sorted(seen),
            "errors": errors[:20],
            "error_count": len(errors),
        }
    )


def _run_generations(store: Path, positions: list[str], seconds: float) -> dict[str, Any]:
    ctx = _context()
    stop, out, ready = ctx.Event(), ctx.Queue(), ctx.Barrier(READERS + 1)
    readers = [
        _start(_generation_reader, str(store), positions, seed, ready, stop, out)
        for seed in range(READERS)
    ]
    ready.wait(60)
    g = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds or g < 5:
        g += 1
        set_generation(store, g, positions)
        snapmeta.build_snapshot(store)
    stop.set()
    results = _collect(out, readers)
    return {"rebuilds": g, "results": results}


def _assert_generations(run: dict[str, Any]) -> None:
    reads = sum(r["reads"] for r in run["results"])
    print(
        f"\n{run['rebuilds']} rebuilds under {READERS} reader processes, {reads} reads: "
        + "; ".join(
            f"generations {r['generations'][0]}..{r['generations'][-1]} ({len(r['generations'])})"
            for r in run["results"]
        )
    )
    for r in run["results"]:
        assert r["error_count"] == 0, r["errors"]
        assert len(r["generations"]) >= 2, "a reader saw no replacement"


def test_readers_see_old_or_new_snapshot_never_a_mix(
    generation_plate: tuple[Path, list[str]],
) -> None:
    store, positions = generation_plate
    _assert_generations(_run_generations(store, positions, REBUILD_SECONDS))
    assert snapmeta.verify(store).ok


@pytest.mark.slow
@slow
def test_readers_see_old_or_new_snapshot_large(generation_plate: tuple[Path, list[str]]) -> None:
    store, positions = generation_plate
    _assert_generations(_run_generations(store, positions, REBUILD_SECONDS_SLOW))


def test_old_handles_survive_replacement_in_process(
    generation_plate: tuple[Path, list[str]],
) -> None:
    """Same process: handles keep the mapping of the file they came from."""
    store, positions = generation_plate
    plate = snapmeta.open_plate(store, check="none")
    pos = plate["B/3/1"]  # attributes and arrays not touched yet
    old_inode = snapshot_file(store).stat().st_ino
    for g in (1, 2, 3):
        set_generation(store, g, positions)
        snapmeta.build_snapshot(store)
    assert snapshot_file(store).stat().st_ino != old_inode
    assert _generation_of(pos) == (0, 0, 0)
    assert pos.attrs["generation"] == 0
    assert int(pos.data[0, 1, 0, 3, 3]) == positions.index("B/3/1")
    assert _plate_generation(plate) == 0
    assert _generation_of(plate["D/6/0"]) == (0, 0, 0)
    assert plate.well("D/6").attrs["generation"] == 0
    with pytest.raises(snapmeta.StaleSnapshotError):
        plate.attrs  # noqa: B018  (the root document is read: it changed)
    # the next open maps the new file
    assert _plate_generation(snapmeta.open_plate(store, check="none")) == 3
    assert _generation_of(snapmeta.open_plate(store)["B/3/1"]) == (3, 3, 3)


def _map_then_rebuild(store: Path, positions: list[str], check: str) -> None:
    """This process maps generation 0 through open_position; the plate moves to 3."""
    assert _generation_of(snapmeta.open_position(store, "B/3/1", check=check)) == (0, 0, 0)
    for g in (1, 2, 3):
        set_generation(store, g, positions)
        snapmeta.build_snapshot(store)


def test_open_position_maps_a_rebuilt_snapshot(generation_plate: tuple[Path, list[str]]) -> None:
    """After a rebuild, the default check finds the documents match the *new* snapshot:
    no warning, no JSON fallback, no StaleSnapshotError (workers keep their process)."""
    store, positions = generation_plate
    _map_then_rebuild(store, positions, "stat")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pos = snapmeta.open_position(store, "B/3/1")
        names = pos.channel_names
    assert [str(w.message) for w in caught] == []
    assert names == ("DAPI-g3", "GFP-g3")
    assert pos.from_snapshot
    assert _generation_of(snapmeta.open_position(store, "C/2/0", on_stale="raise")) == (3, 3, 3)


def test_open_position_after_a_position_changed_and_the_plate_was_rebuilt(
    generation_plate: tuple[Path, list[str]],
) -> None:
    """The common edit: one position's document changes (a channel renamed), the plate is
    rebuilt. A process that mapped the old snapshot must not warn, read JSON or raise."""
    store, _ = generation_plate
    assert snapmeta.open_position(store, "B/3/1").channel_names == ("DAPI-g0", "GFP-g0")
    _rewrite(
        _doc_path(store, "B/3/1"),
        lambda attrs: attrs["ome"]["omero"]["channels"][0].update(label="DAPI-renamed"),
    )
    snapmeta.build_snapshot(store)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pos = snapmeta.open_position(store, "B/3/1")
        names = pos.channel_names
    assert names == ("DAPI-renamed", "GFP-g0")
    assert [str(w.message) for w in caught] == []
    assert pos.from_snapshot
    raised = snapmeta.open_position(store, "B/3/1", on_stale="raise")
    assert raised.channel_names == ("DAPI-renamed", "GFP-g0")


def test_open_position_unchecked_maps_a_rebuilt_snapshot(
    generation_plate: tuple[Path, list[str]],
) -> None:
    """check="none" skips document checks, not the snapshot: the next open_position
    serves the rebuilt snapshot, as the next open_plate does."""
    store, positions = generation_plate
    _map_then_rebuild(store, positions, "none")
    assert _generation_of(snapmeta.open_position(store, "B/3/1", check="none")) == (3, 3, 3)
    assert _plate_generation(snapmeta.open_plate(store, check="none")) == 3


# ---------------------------------------------------------------------------
# 1b. rebuilds that change every fingerprint under readers that check freshness


def _checking_reader(store: str, expected: dict[str, Any], seed: int, stop: Any, out: Any) -> None:
    rng = random.Random(seed)
    errors: list[str] = []
    reads = 0
    paths = list(expected)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        while not stop.is_set() or reads < 50:
            path = rng.choice(paths)
            try:
                if reads % 3 == 2:
                    pos = snapmeta.open_plate(store)[path]
                else:
                    pos = snapmeta.open_position(store, path)
                got = [list(pos.channel_names), pos.attrs, list(pos.level(0).shape), pos[0].path]
                if got != expected[path]:
                    errors.append(f"{path}: {got!r:.200} != {expected[path]!r:.200}")
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            reads += 1
    errors += [f"warning: {w.message}" for w in caught]
    out.put({"reads": reads, "errors": errors[:20], "error_count": len(errors)})


def _expected(store: Path, paths: list[str]) -> dict[str, Any]:
    """Answers read from the JSON documents (ground truth, not snapmeta)."""
    out = {}
    for path in paths:
        attrs = json.loads(_doc_path(store, path).read_bytes())["attributes"]
        array = json.loads((store / path / "0" / "zarr.json").read_bytes())
        out[path] = [
            [c["label"] for c in attrs["ome"]["omero"]["channels"]],
            attrs,
            array["shape"],
            f"{path}/0",
        ]
    return out


def _documents(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob("zarr.json") if ".snapmeta" not in p.parts)


def _touch(paths: list[Path]) -> None:
    """Rewrite with identical bytes, atomically: a new file and mtime, the same content."""
    for path in paths:
        tmp = path.with_name(path.name + ".touch")
        tmp.write_bytes(path.read_bytes())
        os.replace(tmp, path)


def test_rebuilds_changing_every_fingerprint_under_checking_readers(
    generation_plate: tuple[Path, list[str]],
) -> None:
    """Same metadata, new mtimes on every rebuild (half of them written during the build,
    so the snapshot stores them smudged): readers never see a warning or a wrong answer."""
    store, positions = generation_plate
    expected = _expected(store, positions)
    documents = _documents(store)
    rng = random.Random(5)
    ctx = _context()
    stop, out = ctx.Event(), ctx.Queue()
    readers = [
        _start(_checking_reader, str(store), expected, seed, stop, out) for seed in range(READERS)
    ]
    rebuilds = 0
    sizes = set()
    started = time.monotonic()
    while time.monotonic() - started < REBUILD_SECONDS or rebuilds < 6:
        touched = rng.sample(documents, len(documents) // 3)
        if rebuilds % 2:

            def progress(stage: str, done: int, total: int, touched: list[Path] = touched) -> None:
                if stage == "wells" and done == 0:  # after the build's start: racy
                    _touch(touched)

            snapmeta.build_snapshot(store, progress=progress)
        else:
            _touch(touched)
            snapmeta.build_snapshot(store)
        sizes.add(snapshot_file(store).stat().st_size)
        rebuilds += 1
    stop.set()
    results = _collect(out, readers)
    print(
        f"\n{rebuilds} fingerprint-changing rebuilds ({len(sizes)} snapshot sizes), "
        f"{sum(r['reads'] for r in results)} checked reads"
    )
    for r in results:
        assert r["error_count"] == 0, r["errors"]
    assert snapmeta.verify(store).ok


# ---------------------------------------------------------------------------
# 2. racing builders


def _racing_builder(store: str, barrier: Any, rounds: int, out: Any) -> None:
    errors = []
    for _ in range(rounds):
        barrier.wait(30)
        try:
            snapmeta.build_snapshot(store)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    out.put({"errors": errors})


def _plate_expected(store: Path, every: int) -> dict[str, Any]:
    plate = snapmeta.open_plate(store)
    return {
        p: [list(plate[p].channel_names), plate[p].attrs, list(plate[p].shape), plate[p][0].path]
        for p in list(plate)[::every]
    }


def test_racing_builders_leave_one_valid_snapshot(tmp_path: Path) -> None:
    store = tmp_path / "race.zarr"
    write_plate(store, rows=8, columns=12, fields=2, ngff="0.4", levels=2, data="none")
    snapmeta.build_snapshot(store)
    reference = canonical(snapshot_file(store).read_bytes())
    ctx = _context()
    builders, rounds = 3, 2
    barrier, out = ctx.Barrier(builders), ctx.Queue()
    stop, reads = ctx.Event(), ctx.Queue()
    expected = _plate_expected(store, 7)
    reader = _start(_checking_reader, str(store), expected, 99, stop, reads)
    procs = [_start(_racing_builder, str(store), barrier, rounds, out) for _ in range(builders)]
    results = _collect(out, procs)
    stop.set()
    (read,) = _collect(reads, [reader])
    assert all(not r["errors"] for r in results), results
    assert read["error_count"] == 0, read["errors"]
    print(
        f"\n{builders} builders x {rounds} rounds raced; reader made {read['reads']} checked reads"
    )
    data = snapshot_file(store).read_bytes()
    assert canonical(data) == reference
    array_dir = snapshot_file(store).parent
    assert sorted(p.name for p in array_dir.iterdir()) == [".zarray", ".zattrs", "0"]
    assert not [p for p in array_dir.iterdir() if TEMP.match(p.name)]
    assert document_size(store) == len(data)
    assert [p.name for p in store.iterdir() if p.name.startswith(".snapmeta")] == [".snapmeta"]
    report = snapmeta.verify(store)
    assert report.ok, report


def _slow_builder(store: str, paused: Any, resume: Any) -> None:
    def progress(stage: str, done: int, total: int) -> None:
        if stage == "write" and done == 0:
            paused.set()
            resume.wait(60)

    snapmeta.build_snapshot(store, progress=progress)


def test_last_rename_wins_even_with_older_metadata(tmp_path: Path) -> None:
    """A builder that read the plate before a change and renames last leaves a stale
    snapshot: it is complete, and readers and verify detect that it is stale."""
    store = tmp_path / "late.zarr"
    write_plate(store, rows=2, columns=3, fields=1, ngff="0.5", levels=1, data="none")
    snapmeta.build_snapshot(store)
    ctx = _context()
    paused, resume = ctx.Event(), ctx.Event()
    slow_builder = _start(_slow_builder, str(store), paused, resume)
    assert paused.wait(60)  # it has read every document and is about to write
    doc_path = _doc_path(store, "A/2/0")
    doc = json.loads(doc_path.read_bytes())
    doc["attributes"]["ome"]["omero"]["channels"][0]["label"] = "DAPI-new"
    doc_path.write_text(json.dumps(doc))
    snapmeta.build_snapshot(store)  # up to date ...
    resume.set()
    slow_builder.join(60)
    assert slow_builder.exitcode == 0  # ... until the older build renames over it
    assert document_size(store) == snapshot_file(store).stat().st_size
    with pytest.warns(snapmeta.SnapshotStaleWarning):
        assert snapmeta.open_position(store, "A/2/0").channel_names == ("DAPI-new", "GFP")
    assert snapmeta.open_position(store, "A/1/0").channel_names == ("DAPI", "GFP")
    with pytest.raises(snapmeta.StaleSnapshotError):
        snapmeta.open_position(store, "A/2/0", on_stale="raise")
    report = snapmeta.verify(store)
    assert not report.ok
    assert any("A/2/0" in p for p in report.problems)
    snapmeta.build_snapshot(store)  # the documented remedy
    assert snapmeta.verify(store).ok


# ---------------------------------------------------------------------------
# 3. writers and readers of array data


def _writer(store: str, positions: list[str], rounds: int, out: Any) -> None:
    errors = []
    for r in range(1, rounds + 1):
        for path in positions:
            try:
                pos = snapmeta.open_position(store, path, mode="a")
                value = 1000 * r + int(pos.path.split("/")[-1]) + 10 * positions.index(path)
                pos.data[...] = np.full(pos.shape, value, dtype=pos.dtype)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
    out.put({"errors": errors})


def _data_reader(store: str, allowed: dict[str, list[int]], seed: int, stop: Any, out: Any) -> None:
    rng = random.Random(seed)
    errors: list[str] = []
    reads = 0
    paths = list(allowed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        while not stop.is_set() or reads < 30:
            path = rng.choice(paths)
            try:
                pos = snapmeta.open_position(store, path)
                if pos.channel_names != ("DAPI", "GFP") or pos.shape != (1, 2, 2, 16, 16):
                    errors.append(f"{path}: metadata {pos.channel_names} {pos.shape}")
                block = pos.data[0, :, :, ::8, ::8]  # one sample from every chunk
                bad = set(np.unique(block).tolist()) - set(allowed[path])
                if bad:
                    errors.append(f"{path}: unexpected values {sorted(bad)}")
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            reads += 1
    errors += [f"warning: {w.message}" for w in caught]
    out.put({"reads": reads, "errors": errors[:20], "error_count": len(errors)})


def test_writers_through_append_handles_while_others_read(tmp_path: Path) -> None:
    store = tmp_path / "data.zarr"
    write_plate(
        store,
        rows=2,
        columns=4,
        fields=2,
        ngff="0.5",
        levels=1,
        shape=(1, 2, 2, 16, 16),
        data="none",
    )
    snapmeta.build_snapshot(store)
    snapshot = snapshot_file(store).read_bytes()
    array_docs = {p.name: p.read_bytes() for p in snapshot_file(store).parent.iterdir()}
    positions = [f"{r}/{c}/{f}" for r in "AB" for c in range(1, 5) for f in range(2)]
    halves = [positions[0::2], positions[1::2]]
    rounds = 8
    allowed = {}
    for half in halves:
        for i, path in enumerate(half):
            allowed[path] = [0] + [1000 * r + int(path[-1]) + 10 * i for r in range(1, rounds + 1)]
    ctx = _context()
    stop, reads, writes = ctx.Event(), ctx.Queue(), ctx.Queue()
    readers = [_start(_data_reader, str(store), allowed, seed, stop, reads) for seed in range(2)]
    writers = [_start(_writer, str(store), half, rounds, writes) for half in halves]
    written = _collect(writes, writers)
    stop.set()
    read = _collect(reads, readers)
    assert all(not w["errors"] for w in written), written
    for r in read:
        assert r["error_count"] == 0, r["errors"]
    print(
        f"\n2 writer processes x {rounds} rounds x 8 positions; "
        f"{sum(r['reads'] for r in read)} checked reads"
    )
    # data writes are not metadata changes: the snapshot is untouched and fresh
    assert snapshot_file(store).read_bytes() == snapshot
    assert {p.name: p.read_bytes() for p in snapshot_file(store).parent.iterdir()} == array_docs
    report = snapmeta.verify(store)
    assert report.ok, report
    for half in halves:
        for path in half:
            pos = snapmeta.open_position(store, path, check="digest", on_stale="raise")
            assert np.all(pos.data[...] == allowed[path][-1])
