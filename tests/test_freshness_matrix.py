"""The freshness matrix: every kind of change x every check level, one test per cell.

Rows are changes made to a plate after its snapshot was built; columns are
``check="stat"`` (default), ``check="digest"``, ``check="none"`` and
``snapmeta.verify``. Documented outcomes:

* a metadata change, with ``stat`` or ``digest``: the read warns
  ``SnapshotStaleWarning`` and answers from the JSON documents (the *new*,
  correct answer); with ``on_stale="raise"`` it raises ``StaleSnapshotError``;
* with ``none``: nothing is checked and the snapshot's (old) answer comes
  back without a warning. ``none`` is for plates that cannot change;
* ``verify`` reports the change (it compares digests and re-reads the plate);
* not stale at all: a document rewritten with identical bytes (new mtime),
  and array data written through the arrays.

Every modification sets the file's mtime explicitly (+10 s) so the result
does not depend on the file system's timestamp granularity. The last tests
show the one change ``stat`` cannot see (same size, mtime restored) and that
``digest`` and ``verify`` see it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from conftest import snapshot_file

import snapmeta
from snapmeta.errors import PositionNotFoundError, SnapshotStaleWarning, StaleSnapshotError
from snapmeta.testing import write_plate

MISSING = "missing"
LEVELS = ("stat", "digest", "none", "verify")


# ---------------------------------------------------------------------------
# plates and edits


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Sparse 2x2 plates (wells A/1, A/2, B/1; B/2 free for 'add a well'), snapshots built."""
    base = tmp_path_factory.mktemp("freshness")
    out = {}
    for ngff in ("0.4", "0.5"):
        store = write_plate(
            base / f"p{ngff}.zarr",
            rows=2,
            columns=2,
            fields=2,
            ngff=ngff,
            levels=2,
            wells=["A/1", "A/2", "B/1"],
            data="none",
        )
        snapmeta.build_snapshot(store)
        out[ngff] = store
    return out


def v3(store: Path) -> bool:
    return (store / "zarr.json").exists()


def group_doc(store: Path, node: str) -> Path:
    return (store / node if node else store) / ("zarr.json" if v3(store) else ".zattrs")


def array_doc(store: Path, node: str) -> Path:
    return store / node / ("zarr.json" if v3(store) else ".zarray")


def write_later(path: Path, data: bytes) -> None:
    """Write ``data`` and give the file an mtime 10 s after its previous one."""
    old = path.stat().st_mtime_ns if path.exists() else None
    path.write_bytes(data)
    if old is not None:
        os.utime(path, ns=(old + 10**10, old + 10**10))


def edit_ngff(store: Path, node: str, fn: Callable[[dict[str, Any]], Any]) -> None:
    """Edit a group's NGFF metadata (``attributes.ome`` for v3, top level for v2)."""
    path = group_doc(store, node)
    doc = json.loads(path.read_bytes())
    fn(doc["attributes"]["ome"] if v3(store) else doc)
    write_later(path, json.dumps(doc, indent=2).encode())


def edit_array(store: Path, node: str, fn: Callable[[dict[str, Any]], Any]) -> None:
    path = array_doc(store, node)
    doc = json.loads(path.read_bytes())
    fn(doc)
    write_later(path, json.dumps(doc, indent=2).encode())


def copy_node(store: Path, src: str, dst: str) -> None:
    shutil.copytree(store / src, store / dst)


# ---------------------------------------------------------------------------
# probes: what to read, the old (snapshot) answer and the new (JSON) answer


def _answer(fn: Callable[[], Any]) -> Any:
    """A read's answer; a missing position is an answer too. Stale errors propagate."""
    try:
        return fn()
    except PositionNotFoundError:
        return MISSING


def reader(
    key: str, attr: Callable[[snapmeta.Position], Any]
) -> Callable[[Path, str, str], dict[str, Any]]:
    def read(store: Path, check: str, on_stale: str) -> dict[str, Any]:
        plate = snapmeta.open_plate(store, check=check, on_stale=on_stale)
        return {
            "position": _answer(lambda: attr(plate[key])),
            "open_position": _answer(
                lambda: attr(snapmeta.open_position(store, key, check=check, on_stale=on_stale))
            ),
            "len": len(plate),
            "paths": list(plate),
        }

    return read


@dataclass
class Probe:
    read: Callable[[Path, str, str], dict[str, Any]]
    old: dict[str, Any]
    new: dict[str, Any]
    stale: bool
    hint: str  # expected in verify's problems when stale


PATHS = ["A/1/0", "A/1/1", "A/2/0", "A/2/1", "B/1/0", "B/1/1"]
NAMES = ("DAPI", "GFP")
SHAPE = (1, 2, 4, 64, 64)
SCALE = (1.0, 1.0, 2.0, 0.5, 0.5)


def _expect(position: Any, paths: list[str] = PATHS) -> dict[str, Any]:
    return {"position": position, "open_position": position, "len": len(paths), "paths": paths}


def add_position(store: Path) -> Probe:
    copy_node(store, "A/1/1", "A/1/2")
    edit_ngff(store, "A/1", lambda d: d["well"]["images"].append({"path": "2", "acquisition": 0}))
    new_paths = [*PATHS[:2], "A/1/2", *PATHS[2:]]
    return Probe(
        reader("A/1/2", lambda p: p.channel_names),
        _expect(MISSING),
        _expect(NAMES, new_paths),
        True,
        "A/1/2",
    )


def add_well(store: Path) -> Probe:
    copy_node(store, "A/2", "B/2")
    edit_ngff(
        store,
        "",
        lambda d: d["plate"]["wells"].append({"path": "B/2", "rowIndex": 1, "columnIndex": 1}),
    )
    return Probe(
        reader("B/2/1", lambda p: p.channel_names),
        _expect(MISSING),
        _expect(NAMES, [*PATHS, "B/2/0", "B/2/1"]),
        True,
        "B/2/1",
    )


def rename_channel(store: Path) -> Probe:
    edit_ngff(store, "A/2/0", lambda d: d["omero"]["channels"][1].update(label="RFP"))
    return Probe(
        reader("A/2/0", lambda p: p.channel_names),
        _expect(NAMES),
        _expect(("DAPI", "RFP")),
        True,
        "A/2/0",
    )


def append_channel(store: Path) -> Probe:
    edit_ngff(
        store, "A/2/0", lambda d: d["omero"]["channels"].append({"label": "Cy5", "color": "FFFFFF"})
    )
    for level in ("0", "1"):
        edit_array(store, f"A/2/0/{level}", lambda d: d["shape"].__setitem__(1, 3))
    attr = lambda p: (p.channel_names, p.shape, p[0].shape)  # noqa: E731
    return Probe(
        reader("A/2/0", attr),
        _expect((NAMES, SHAPE, SHAPE)),
        _expect((("DAPI", "GFP", "Cy5"), (1, 3, 4, 64, 64), (1, 3, 4, 64, 64))),
        True,
        "A/2/0",
    )


def change_scale(store: Path) -> Probe:
    scale = ["multiscales", 0, "datasets", 0, "coordinateTransformations", 0, "scale"]

    def apply(d: dict[str, Any]) -> None:
        target = d
        for key in scale:
            target = target[key]
        target[4] = 0.25

    edit_ngff(store, "B/1/1", apply)
    return Probe(
        reader("B/1/1", lambda p: p.scale),
        _expect(SCALE),
        _expect((*SCALE[:4], 0.25)),
        True,
        "B/1/1",
    )


def resize_array(store: Path) -> Probe:
    """Through zarr's own API, as a user appending data would (rewrites the array document)."""
    doc = array_doc(store, "B/1/0/0")
    old = doc.stat().st_mtime_ns
    zarr.open_array(store / "B" / "1" / "0" / "0", mode="r+").resize((1, 2, 4, 128, 128))
    os.utime(doc, ns=(old + 10**10, old + 10**10))
    attr = lambda p: (p.shape, p[0].shape)  # noqa: E731
    return Probe(
        reader("B/1/0", attr),
        _expect((SHAPE, SHAPE)),
        _expect(((1, 2, 4, 128, 128), (1, 2, 4, 128, 128))),
        True,
        "B/1/0",
    )


def unlist_position(store: Path) -> Probe:
    """Dropped from the well's images; its directory stays on disk."""
    edit_ngff(store, "A/1", lambda d: d["well"]["images"].pop())
    return Probe(
        reader("A/1/1", lambda p: p.channel_names),
        _expect(NAMES),
        _expect(MISSING, [p for p in PATHS if p != "A/1/1"]),
        True,
        "A/1/1",
    )


def delete_position(store: Path) -> Probe:
    """Unlisted and its directory removed: the same answers are expected."""
    shutil.rmtree(store / "A" / "1" / "1")
    return unlist_position(store)


def identical_rewrite(store: Path) -> Probe:
    for node in ("", "A/1", "A/1/0"):  # root, well and position: same bytes, new mtime
        path = group_doc(store, node)
        write_later(path, path.read_bytes())
    return Probe(
        reader("A/1/0", lambda p: p.channel_names), _expect(NAMES), _expect(NAMES), False, ""
    )


def reformatted_root(store: Path) -> Probe:
    """Same JSON value, different bytes: snapmeta compares bytes, so this counts as a change."""
    path = group_doc(store, "")
    write_later(path, json.dumps(json.loads(path.read_bytes()), separators=(",", ":")).encode())
    return Probe(
        reader("A/1/0", lambda p: p.channel_names),
        _expect(NAMES),
        _expect(NAMES),
        True,
        group_doc(store, "").name,
    )


def data_write(store: Path) -> Probe:
    pos = snapmeta.open_position(store, "B/1/1", mode="a")
    pos.data[...] = np.full(pos.shape, 77, dtype=pos.dtype)
    pos[1][0, 0, 0, 0, 0] = 78
    attr = lambda p: (p.channel_names, int(p.data[0, 1, 3, 63, 63]), int(p[1][0, 0, 0, 0, 0]))  # noqa: E731
    return Probe(
        reader("B/1/1", attr), _expect((NAMES, 77, 78)), _expect((NAMES, 77, 78)), False, ""
    )


CHANGES: dict[str, Callable[[Path], Probe]] = {
    "add-position": add_position,
    "add-well": add_well,
    "rename-channel": rename_channel,
    "append-channel": append_channel,
    "change-scale": change_scale,
    "resize-array": resize_array,
    "delete-position": delete_position,
    "unlist-position": unlist_position,
    "identical-rewrite": identical_rewrite,
    "reformatted-root": reformatted_root,
    "data-write": data_write,
}


# ---------------------------------------------------------------------------
# the matrix


@pytest.fixture(params=["0.4", "0.5"])
def store(request: pytest.FixtureRequest, pristine: dict[str, Path], tmp_path: Path) -> Path:
    # copy2 keeps mtimes, so the copied snapshot is fresh for the copied plate
    copy = shutil.copytree(pristine[request.param], tmp_path / "plate.zarr")
    report = snapmeta.verify(copy, reread=False)
    assert report.ok, report
    return copy


CELLS = [
    pytest.param(change, level, id=f"{change}-{level}") for change in CHANGES for level in LEVELS
]


@pytest.mark.parametrize(("change", "level"), CELLS)
def test_cell(store: Path, change: str, level: str) -> None:
    snapshot = snapshot_file(store).read_bytes()
    probe = CHANGES[change](store)
    if level == "verify":
        report = snapmeta.verify(store)
        if probe.stale:
            assert not report.ok
            assert any(probe.hint in p for p in report.problems), report.problems
            assert all(p.startswith("stale") for p in report.problems), report.problems
        else:
            assert report.ok, report
    elif level == "none":
        # nothing is checked: the snapshot's answer, no warning (warnings are errors here)
        assert probe.read(store, "none", "fallback") == probe.old
        assert probe.read(store, "none", "raise") == probe.old
    elif probe.stale:
        with pytest.warns(SnapshotStaleWarning):
            answer = probe.read(store, level, "fallback")
        assert answer == probe.new
        with pytest.raises(StaleSnapshotError) as info:
            probe.read(store, level, "raise")
        assert info.value.changed
    else:
        assert probe.read(store, level, "fallback") == probe.new
        assert probe.read(store, level, "raise") == probe.new
    # reads never modify the store or the snapshot
    assert snapshot_file(store).read_bytes() == snapshot


@pytest.mark.parametrize(
    "change", [c for c in CHANGES if c not in ("identical-rewrite", "data-write")]
)
def test_rebuild_makes_every_change_fresh(store: Path, change: str) -> None:
    probe = CHANGES[change](store)
    snapmeta.build_snapshot(store)
    for level in ("stat", "digest", "none"):
        assert probe.read(store, level, "raise") == probe.new
    assert snapmeta.verify(store).ok


# ---------------------------------------------------------------------------
# what a stat check cannot see


def _same_size_same_mtime_edit(store: Path) -> None:
    """Rename a channel to a name of the same length, then restore size and mtime."""
    path = group_doc(store, "A/2/1")
    st = path.stat()
    data = path.read_bytes()
    changed = data.replace(b'"GFP"', b'"RFP"')
    assert changed != data and len(changed) == len(data)
    path.write_bytes(changed)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_stat_cannot_see_same_size_same_mtime(store: Path) -> None:
    _same_size_same_mtime_edit(store)
    # stat: size and mtime match the fingerprint, so the (now wrong) snapshot answer is served
    assert snapmeta.open_position(store, "A/2/1").channel_names == NAMES
    assert snapmeta.open_position(store, "A/2/1", on_stale="raise").channel_names == NAMES


def test_digest_sees_same_size_same_mtime(store: Path) -> None:
    _same_size_same_mtime_edit(store)
    with pytest.warns(SnapshotStaleWarning):
        assert snapmeta.open_position(store, "A/2/1", check="digest").channel_names == (
            "DAPI",
            "RFP",
        )
    with pytest.raises(StaleSnapshotError):
        snapmeta.open_position(store, "A/2/1", check="digest", on_stale="raise")


def test_verify_sees_same_size_same_mtime(store: Path) -> None:
    _same_size_same_mtime_edit(store)
    report = snapmeta.verify(store)
    assert not report.ok
    assert any("A/2/1" in p for p in report.problems)
    assert not snapmeta.verify(store, reread=False).ok  # the digest comparison alone finds it


def test_stat_digest_shortcut_is_per_file_state(store: Path) -> None:
    """After a same-bytes rewrite, stat confirms by digest once; a later real edit at the
    same size but a new mtime is still detected."""
    path = group_doc(store, "A/2/1")
    write_later(path, path.read_bytes())
    assert snapmeta.open_position(store, "A/2/1").channel_names == NAMES  # digest equal: fresh
    write_later(path, path.read_bytes().replace(b'"GFP"', b'"RFP"'))
    with pytest.warns(SnapshotStaleWarning):
        assert snapmeta.open_position(store, "A/2/1").channel_names == ("DAPI", "RFP")
