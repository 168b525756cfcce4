"""Confinement: nothing a snapshot or a metadata document says makes snapmeta leave the store.

A snapshot is untrusted input (a plate shared or downloaded with its
snapshot), and so is every JSON document of a plate. This module crafts both:

* **snapshots** with valid checksums (entries decoded, changed, re-sealed with
  ``snapmeta._format.seal``; sections and the plate entry's checksums
  recomputed; the Arrow file rewritten with pyarrow) that put absolute paths,
  ``..``, symlinks out of the store, NUL bytes, wrong value types, wrong
  dtypes, absurd shapes and chunk sizes, huge declared lengths and deep
  nesting into node paths, level paths, leaves, array documents and the
  plate entry;
* **documents** edited after the build (served by the JSON fallback) and
  before it (seen by the builder): ``datasets[].path = "../../.."``, root
  ``wells[].path = "../x/y"``, image paths out of the well, documents and
  directories that are symlinks out of the store, FIFOs, ``/dev/zero``,
  symlink loops, malformed JSON and deep nesting.

Every case runs in a forked worker process with a timeout, which records
every ``open``, ``os.listdir``, ``os.scandir`` and write-like audit event
(``sys.addaudithook``) and runs, in modes ``r``, ``r+`` and ``a``: opening
the plate and each position (``open_plate``, ``plate[key]``,
``open_position``), every metadata property, every level's array read, an
array write (``r+``, ``a``), ``verify``, the concurrent-check path used on
network filesystems (``SNAPMETA_CONCURRENT_CHECKS=1``) and
``snapmeta.compat.open_ome_zarr(..., fallback=False)``. The requirement per
case: 0 accesses outside the store, 0 crashes (signals), 0 hangs, 0
exceptions other than ``SnapmetaError``, and no crafted path ever returned.
``stat`` has no audit event, so :func:`test_strace_no_access_outside_the_store`
traces a fresh interpreter running the cases with ``strace -f -e trace=%file``
and checks every path syscall (stat family, readlink, open, ...).

Symlinks that stay inside the plate keep working
(:func:`test_symlinks_inside_the_plate_keep_working`).

Plate-level facts (reliability II item 6): a snapshot whose plate entry lies
(name, field count, NGFF version, rows) with valid checksums is reported by
``snapmeta.verify`` and ``snapmeta verify`` (exit code 1).

Every case asserts unconditionally: keys with ``..`` or NUL are rejected,
non-numeric transforms and arrays entries that disagree with their documents
raise ``SnapmetaError``, a snapshot or ``.snapmeta`` directory symlinked out
of the store is never opened, deep JSON is rejected, chunk files that are
FIFOs, devices or symlinks out of the store are never read or written, and
symlinks are resolved without touching anything outside the store.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from conftest import limit_memory, snapshot_file

import snapmeta
from snapmeta import _format as fmt
from snapmeta._open import clear_cache
from snapmeta.testing import write_plate

HERE = Path(__file__).resolve().parent
SLOW = bool(os.environ.get("SNAPMETA_SLOW"))
MODES = ("r", "r+", "a")
CASE_TIMEOUT = 30.0  # seconds per case; a hang fails the case
MARK = "/nonexistent-snapmeta-mark"
EVIL = "evil"  # every crafted path names this; no answer may contain it

# ---------------------------------------------------------------------------
# crafting snapshots: decode every entry, change values, re-seal, rewrite


class Raw(bytes):
    """An entry payload written as these bytes, not packed (malformed MessagePack)."""


def load_snapshot(store: Path) -> dict[str, Any]:
    """Every section of ``store``'s snapshot, decoded (payloads unpacked, CRCs dropped)."""
    data = snapshot_file(store).read_bytes()
    batch = ipc.open_file(pa.BufferReader(data)).get_batch(0)

    def section(name: str) -> list[Any]:
        return batch.column(name)[0].values.to_pylist()

    model: dict[str, Any] = {
        "lookup": section("lookup"),
        "paths": section("paths"),
        "nodes": [fmt.unpack(e[4:]) for e in section("nodes")],
        "contents": section("contents"),
    }
    for name in fmt.SHARED_SECTIONS:
        model[name] = [fmt.unpack(e[4:]) for e in section(name)]
    model["plate"] = fmt.unpack(batch.column("plate")[0].as_py()[4:])
    return model


def _seal(name: str, value: Any) -> bytes:
    return fmt.seal(name, bytes(value) if isinstance(value, Raw) else fmt.pack(value))


def lookup_slots(paths: list[str]) -> list[int]:
    capacity = fmt.lookup_capacity(len(paths))
    slots = [0] * capacity
    for node, path in enumerate(paths):
        slot = fmt.key_hash(path) & (capacity - 1)
        while slots[slot]:
            slot = (slot + 1) & (capacity - 1)
        slots[slot] = node + 1
    return slots


def save_snapshot(store: Path, model: dict[str, Any], *, keep_lookup: bool = False) -> None:
    """Write ``model`` as ``store``'s snapshot: every entry sealed with its name, the
    lookup rebuilt from the paths (unless ``keep_lookup``), section checksums
    recomputed, so the file passes every checksum."""
    paths = model["paths"]
    slots = model["lookup"] if keep_lookup else lookup_slots(paths)
    plate = model["plate"]
    if not isinstance(plate, Raw):
        plate = dict(plate)
        plate["checksums"] = {
            "lookup": fmt.crc32(array("I", slots).tobytes()),
            "paths": fmt.paths_checksum(paths),
            "contents": fmt.crc32(b"".join(model["contents"])),
        }

    def one_row(values: list[Any], item: pa.DataType) -> pa.Array:
        flat = pa.array(values, type=item)
        return pa.ListArray.from_arrays(
            pa.array([0, len(flat)], pa.int32()),
            flat,
            type=pa.list_(pa.field("item", item, nullable=False)),
        )

    shared = {
        name: [_seal(fmt.entry_name(name, i), v) for i, v in enumerate(model[name])]
        for name in fmt.SHARED_SECTIONS
    }
    batch = pa.RecordBatch.from_arrays(
        [
            one_row(slots, pa.uint32()),
            one_row(paths, pa.string()),
            one_row([_seal(p, v) for p, v in zip(paths, model["nodes"], strict=True)], pa.binary()),
            one_row(model["contents"], pa.binary(16)),
            one_row(shared["arrays"], pa.binary()),
            one_row(shared["templates"], pa.binary()),
            one_row(shared["images"], pa.binary()),
            pa.array([_seal("plate", plate)], pa.binary()),
        ],
        schema=fmt.SCHEMA,
    )
    target = snapshot_file(store)
    target.unlink(missing_ok=True)  # mode 0444
    with ipc.new_file(str(target), batch.schema) as writer:
        writer.write_batch(batch)
    clear_cache()


def rewrite_snapshot(store: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    model = load_snapshot(store)
    change(model)
    save_snapshot(store, model)


# model helpers: what the image of a position points at


def node_index(model: dict[str, Any], path: str) -> int:
    return model["paths"].index(path)


def image_of(model: dict[str, Any], path: str = "A/2/0") -> list[Any]:
    return model["images"][model["nodes"][node_index(model, path)][0]]


def template_leaves(model: dict[str, Any], path: str = "A/2/0") -> list[Any]:
    return model["templates"][image_of(model, path)[0]][1]


def level_path_ref(model: dict[str, Any], level: int = 0) -> int:
    return image_of(model)[3][level][0]


def set_leaf(model: dict[str, Any], ref: int, value: Any) -> None:
    """Change a leaf's default (every position sharing the template)."""
    template_leaves(model)[ref] = value


def patch_leaf(model: dict[str, Any], path: str, ref: int, value: Any) -> None:
    """Change one position's leaf through its patch."""
    record = model["nodes"][node_index(model, path)]
    patch = dict(zip(record[1][::2], record[1][1::2], strict=True))
    patch[ref] = value
    record[1] = [x for k in sorted(patch) for x in (k, patch[k])]


def rename_nodes(model: dict[str, Any], renames: dict[str, str]) -> None:
    model["paths"] = [renames.get(p, p) for p in model["paths"]]


def array_entry(model: dict[str, Any], level: int = 0) -> dict[str, Any]:
    return model["arrays"][image_of(model)[3][level][1]]


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"n": value}
    return value


# ---------------------------------------------------------------------------
# JSON document helpers


def group_doc(store: Path, node: str) -> Path:
    base = store / node if node else store
    return base / ("zarr.json" if (store / "zarr.json").exists() else ".zattrs")


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    doc = json.loads(path.read_bytes())
    result = change(doc)
    path.write_text(json.dumps(doc if result is None else result, indent=2))


def ome(doc: dict[str, Any]) -> dict[str, Any]:
    """The NGFF metadata inside a group document (either dialect)."""
    return doc["attributes"]["ome"] if "zarr_format" in doc else doc


def move_out(store: Path, rel: str, outside: Path) -> Path:
    """Move ``store/rel`` out of the store and leave an absolute symlink to it."""
    target = outside / rel.replace("/", "_")
    shutil.move(str(store / rel), str(target))
    os.symlink(target, store / rel)
    return target


def copy_out(store: Path, rel: str, outside: Path) -> Path:
    """A copy of ``store/rel`` outside the store, times preserved (so it looks fresh)."""
    source = store / rel
    target = outside / rel.replace("/", "_")
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target)
    return target


# ---------------------------------------------------------------------------
# the cases


@dataclass(frozen=True)
class Case:
    id: str
    group: str  # snapshot | document | build | data
    prepare: Callable[[Path, Path], Any]  # (store, outside) -> None
    base: str = "0.5"
    keys: tuple[str, ...] = ()  # extra keys to look up (crafted paths)
    note: str = ""


CASES: list[Case] = []


def case(id: str, group: str, base: str = "0.5", keys: tuple[str, ...] = ()) -> Callable:
    def register(fn: Callable[[Path, Path], Any]) -> Callable[[Path, Path], Any]:
        CASES.append(Case(id, group, fn, base, keys, (fn.__doc__ or "").strip()))
        return fn

    return register


def canary(store: Path, rel: str, name: str) -> None:
    """A fresh-looking copy (times preserved) of ``store/rel`` beside the store, at ``name``:
    where a crafted ``..`` path leads. Following it would serve the copy as if unchanged."""
    source, target = store / rel, store.parent / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target)


def snapshot_case(
    id: str,
    change: Callable[[dict[str, Any]], Any],
    base: str = "0.5",
    keys: tuple[str, ...] = (),
    canaries: dict[str, str] | None = None,
) -> None:
    def prepare(store: Path, outside: Path) -> None:
        for name, rel in (canaries or {}).items():
            canary(store, rel, name)
        rewrite_snapshot(store, change)

    CASES.append(Case(id, "snapshot", prepare, base, keys))


# the harness itself: an untouched re-encoded snapshot must read back exactly
snapshot_case("identity-reencoded", lambda m: None)
snapshot_case("identity-reencoded-v2", lambda m: None, base="0.4")

# -- node paths ---------------------------------------------------------------

_NODE_RENAMES = {
    "node-dotdot": {"A/1": "../evil", "A/1/0": "../evil/0"},
    "node-dotdot-well-only": {"A/1": ".."},
    "node-dotdot-field": {"A/1/0": "A/1/.."},
    "node-absolute": {"A/1": "/evil", "A/1/0": "/evil/0"},
    "node-absolute-deep": {"A/1": "/tmp/evil", "A/1/0": "/tmp/evil/0"},
    "node-dot": {"A/1": "./evil", "A/1/0": "./evil/0"},
    "node-empty-segment": {"A/1": "A//evil", "A/1/0": "A//evil/0"},
    "node-backslash": {"A/1": "..\\evil", "A/1/0": "..\\evil\\..\\0"},
    "node-nul": {"A/1": "A/1\x00evil", "A/1/0": "A/1\x00evil/0"},
    "node-long": {"A/1": "A/" + "x" * 5000, "A/1/0": "A/" + "x" * 5000 + "/0"},
    "node-dotdot-deep": {"A/1": "A/../../evil", "A/1/0": "A/../../evil/0"},
}
# where the ".." paths above lead, relative to the store: fresh-looking copies
_NODE_CANARIES = {"evil": "A/1", "zarr.json": "A/1/zarr.json", "0": "A/1/0"}
for _id, _renames in _NODE_RENAMES.items():
    snapshot_case(
        _id,
        lambda m, r=_renames: rename_nodes(m, r),
        keys=tuple(v for v in _renames.values() if v.count("/") == 2),
        canaries=_NODE_CANARIES,
    )
snapshot_case(
    "node-dotdot-v2",
    lambda m: rename_nodes(m, {"A/1": "../evil", "A/1/0": "../evil/0"}),
    base="0.4",
    keys=("../evil/0",),
    canaries={"evil": "A/1"},
)


@case("node-symlink-out", "snapshot", keys=("L/1/0",))
def _node_symlink_out(store: Path, outside: Path) -> None:
    """Nodes L/1 and L/1/0 whose directory L is a symlink to a fresh-looking copy outside."""
    (outside / "L").mkdir()
    shutil.copytree(store / "A/1", outside / "L/1", symlinks=True)
    os.symlink(outside / "L", store / "L")
    rewrite_snapshot(store, lambda m: rename_nodes(m, {"A/1": "L/1", "A/1/0": "L/1/0"}))


# -- level paths (leaves referenced by an image's level path) -------------------

_LEVEL_PATHS: dict[str, Any] = {
    "level-dotdot": "../../../evil",
    "level-dotdot-plain": "..",
    "level-absolute": "/etc/evil",
    "level-absolute-root": "/",
    "level-dot": ".",
    "level-empty": "",
    "level-inner-dotdot": "0/../../../evil",
    "level-backslash": "..\\..\\evil",
    "level-nul": "0\x00evil",
    "level-long": "x" * 8000,
    "level-int": 5,
    "level-none": None,
    "level-bool": True,
    "level-float": 0.5,
}
for _id, _value in _LEVEL_PATHS.items():
    snapshot_case(
        _id, lambda m, v=_value: set_leaf(m, level_path_ref(m), v), canaries={"evil": "A/2/0/0"}
    )
snapshot_case(
    "level-dotdot-patch",
    lambda m: patch_leaf(m, "A/2/0", level_path_ref(m), "../../../evil"),
    canaries={"evil": "A/2/0/0"},
)
snapshot_case(
    "level-dotdot-v2-level1",
    lambda m: set_leaf(m, level_path_ref(m, 1), "../evil"),
    base="0.4",
    canaries={"store/A/2/evil": "A/2/0/1"},
)


@case("level-symlink-out", "snapshot")
def _level_symlink_out(store: Path, outside: Path) -> None:
    """A/2/0's level path leaf names ``lnk``, a symlink to a fresh-looking copy of the level."""
    target = copy_out(store, "A/2/0/0", outside)
    os.symlink(target, store / "A/2/0/lnk")
    rewrite_snapshot(store, lambda m: patch_leaf(m, "A/2/0", level_path_ref(m), "lnk"))


@case("level-fifo", "snapshot")
def _level_fifo(store: Path, outside: Path) -> None:
    """The level path names a FIFO inside the position."""
    os.mkfifo(store / "A/2/0/fifo")
    rewrite_snapshot(store, lambda m: patch_leaf(m, "A/2/0", level_path_ref(m), "fifo"))


@case("level-devzero", "snapshot")
def _level_devzero(store: Path, outside: Path) -> None:
    """The level path names a directory whose array document is a symlink to /dev/zero."""
    (store / "A/2/0/z").mkdir()
    os.symlink("/dev/zero", store / "A/2/0/z/zarr.json")
    rewrite_snapshot(store, lambda m: patch_leaf(m, "A/2/0", level_path_ref(m), "z"))


# -- leaves of the wrong type ------------------------------------------------------


def _scale_ref(m: dict[str, Any]) -> int:
    return image_of(m)[3][0][2]


def _axis_ref(m: dict[str, Any]) -> int:
    return image_of(m)[1][0][0]


def _channel_ref(m: dict[str, Any]) -> int:
    return image_of(m)[2][0]


snapshot_case("leaf-scale-string", lambda m: set_leaf(m, _scale_ref(m), "evil"))
snapshot_case("leaf-scale-none", lambda m: set_leaf(m, _scale_ref(m), None))
snapshot_case("leaf-scale-bigint", lambda m: set_leaf(m, _scale_ref(m), 10**30))
snapshot_case("leaf-axis-name-none", lambda m: set_leaf(m, _axis_ref(m), None))
snapshot_case("leaf-channel-label-int", lambda m: set_leaf(m, _channel_ref(m), 7))

# -- array documents: absurd shapes and chunks, wrong types and dtypes -------------


def _array_change(change: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], None]:
    def apply(m: dict[str, Any]) -> None:
        change(array_entry(m))

    return apply


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        doc[key] = value

    return apply


def _chunks(value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        doc["chunk_grid"]["configuration"]["chunk_shape"] = value

    return apply


_ARRAY_CASES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "array-no-shape": lambda d: d.pop("shape"),
    "array-shape-strings": _set("shape", ["evil"] * 5),
    "array-shape-negative": _set("shape", [1, 2, 1, -8, 8]),
    "array-shape-huge": _set("shape", [2**62] * 5),
    "array-shape-ndim": _set("shape", [8, 8]),
    "array-shape-float": _set("shape", [1.0, 2.0, 1.0, 8.0, 8.0]),
    "array-chunks-zero": _chunks([0, 0, 0, 0, 0]),
    "array-chunks-one-huge-shape": lambda d: (
        _set("shape", [1, 2, 1, 2**40, 2**40])(d),
        _chunks([1, 1, 1, 1, 1])(d),
    ),
    "array-chunks-huge": _chunks([2**40] * 5),
    "array-dtype-unknown": _set("data_type", "evil"),
    "array-dtype-wider": _set("data_type", "uint64"),
    "array-dtype-int": _set("data_type", 5),
    "array-codec-unknown": _set("codecs", [{"name": "evil"}]),
    "array-codec-wrong": _set("codecs", [{"name": "bytes", "configuration": {"endian": "big"}}]),
    "array-fill-string": _set("fill_value", "evil"),
    "array-chunk-key-separator": lambda d: d["chunk_key_encoding"]["configuration"].update(
        separator="/../../../evil/"
    ),
    "array-node-type": _set("node_type", "group"),
    "array-not-a-map": None,  # replaced below
}
for _id, _change in _ARRAY_CASES.items():
    if _change is not None:
        snapshot_case(_id, _array_change(_change))
snapshot_case("array-not-a-map", lambda m: m["arrays"].__setitem__(0, ["evil"]))
snapshot_case(
    "array-v2-dimension-separator",
    lambda m: array_entry(m).update(dimension_separator="/../../evil/"),
    base="0.4",
)
snapshot_case("array-v2-dtype-object", lambda m: array_entry(m).update(dtype="|O"), base="0.4")
snapshot_case(
    "array-v2-compressor-unknown",
    lambda m: array_entry(m).update(compressor={"id": "evil"}),
    base="0.4",
)

# -- plate entry ----------------------------------------------------------------


def _plate_object(change: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], None]:
    def apply(m: dict[str, Any]) -> None:
        change(m["plate"]["plate"])

    return apply


snapshot_case("plate-rows-int", _plate_object(lambda p: p.__setitem__("rows", 5)))
snapshot_case("plate-rows-missing", _plate_object(lambda p: p.pop("rows")))
snapshot_case("plate-rows-no-name", _plate_object(lambda p: p.__setitem__("rows", [{"x": 1}])))
snapshot_case(
    "plate-acquisitions-bad", _plate_object(lambda p: p.__setitem__("acquisitions", [{"x": 1}]))
)
snapshot_case("plate-name-map", _plate_object(lambda p: p.__setitem__("name", {"evil": 1})))
snapshot_case(
    "plate-zarr-format-lie", lambda m: m["plate"].__setitem__("zarr_format", 2)
)  # a zarr 3 plate said to be zarr 2: every document name is wrong
snapshot_case("plate-mtime-base-extreme", lambda m: m["plate"].__setitem__("mtime_base", -(2**63)))

# -- node records ----------------------------------------------------------------


def _record(path: str, change: Callable[[list[Any]], Any]) -> Callable[[dict[str, Any]], None]:
    def apply(m: dict[str, Any]) -> None:
        change(m["nodes"][node_index(m, path)])

    return apply


snapshot_case("record-well-count-huge", _record("A/1", lambda r: r.__setitem__(2, 10**9)))
snapshot_case(
    "record-fingerprint-size-huge",
    _record("A/2/0", lambda r: r[3].__setitem__(1, [2**62, 0, 1])),
)
snapshot_case(
    "record-fingerprint-negative", _record("A/2/0", lambda r: r[3].__setitem__(1, [-1, 0, 1]))
)
snapshot_case("record-patch-object", _record("A/2/0", lambda r: r.__setitem__(1, [0, {"evil": 1}])))
snapshot_case("record-acquisition-string", _record("A/2/0", lambda r: r.__setitem__(2, "evil")))
snapshot_case("record-many-documents", _record("A/2/0", lambda r: r.__setitem__(3, r[3] * 2_000)))

# -- huge declared lengths, deep nesting -----------------------------------------------

_HUGE = {
    "str32": b"\xdb\xff\xff\xff\xff" + b"evil",
    "array32": b"\xdd\xff\xff\xff\xff\x01\x02",
    "map32": b"\xdf\xff\xff\xff\xff\xa1a\x01",
    "bin32": b"\xc6\xff\xff\xff\xff\x00",
    "ext32": b"\xc9\xff\xff\xff\xff\x01\x00",
}
for _id, _raw in _HUGE.items():
    snapshot_case(
        f"huge-{_id}-node",
        lambda m, raw=_raw: m["nodes"].__setitem__(node_index(m, "A/2/0"), Raw(raw)),
    )
snapshot_case("huge-str32-template", lambda m: m["templates"].__setitem__(0, Raw(_HUGE["str32"])))
snapshot_case("huge-array32-plate", lambda m: m.__setitem__("plate", Raw(_HUGE["array32"])))


_PLACEHOLDER = "__snapmeta_deep__"


def deep_raw(value: Any, depth: int, leaf: Any) -> Raw:
    """MessagePack of ``value`` with its ``_PLACEHOLDER`` string replaced by ``depth``
    nested one-member maps around ``leaf`` (deeper than msgpack packs itself)."""
    packed = fmt.pack(value)
    marker = fmt.pack(_PLACEHOLDER)
    assert packed.count(marker) == 1
    return Raw(packed.replace(marker, b"\x81\xa1n" * depth + fmt.pack(leaf)))


def _deep_template(depth: int) -> Callable[[dict[str, Any]], None]:
    def apply(m: dict[str, Any]) -> None:
        index = image_of(m)[0]
        shape, defaults = m["templates"][index]
        shape["deep"] = _PLACEHOLDER
        # the new leaf comes last in document order: append its default
        m["templates"][index] = deep_raw([shape, [*defaults, "deep"]], depth, None)

    return apply


snapshot_case("deep-template-900", _deep_template(900))
snapshot_case("deep-template-2000", _deep_template(2000))


def _deep_array_attributes(m: dict[str, Any]) -> None:
    index = image_of(m)[3][0][1]
    entry = m["arrays"][index]
    entry["attributes"] = {"deep": _PLACEHOLDER}
    m["arrays"][index] = deep_raw(entry, 900, 1)


snapshot_case("deep-array-attributes", _deep_array_attributes)
snapshot_case("deep-plate-object", _plate_object(lambda p: p.__setitem__("deep", nested(400))))


# -- where the snapshot itself is --------------------------------------------------


@case("snapshot-file-symlink-out", "snapshot")
def _snapshot_file_symlink_out(store: Path, outside: Path) -> None:
    """The in-store snapshot file is a symlink to a (valid) snapshot outside the store."""
    move_out(store, ".snapmeta/0", outside)


@case("snapshot-dir-symlink-out", "snapshot")
def _snapshot_dir_symlink_out(store: Path, outside: Path) -> None:
    move_out(store, ".snapmeta", outside)


@case("snapshot-file-devzero", "snapshot")
def _snapshot_file_devzero(store: Path, outside: Path) -> None:
    snapshot_file(store).unlink()
    os.symlink("/dev/zero", snapshot_file(store))


@case("snapshot-file-fifo", "snapshot")
def _snapshot_file_fifo(store: Path, outside: Path) -> None:
    snapshot_file(store).unlink()
    os.mkfifo(snapshot_file(store))


# -- the lookup table ----------------------------------------------------------------


@case("lookup-all-slots-one-node", "snapshot", keys=("A/2/0", "Z/9/0"))
def _lookup_loop(store: Path, outside: Path) -> None:
    """Every lookup slot names node 1: probing must stop and a miss be confirmed."""
    model = load_snapshot(store)
    model["lookup"] = [1] * len(model["lookup"])
    save_snapshot(store, model, keep_lookup=True)


# ---------------------------------------------------------------------------
# documents changed after the build: served by the JSON fallback


def document_case(id: str, base: str = "0.5", keys: tuple[str, ...] = ()) -> Callable:
    return case(id, "document", base, keys)


@document_case("json-datasets-dotdot")
def _json_datasets_dotdot(store: Path, outside: Path) -> None:
    """``multiscales[0].datasets[0].path = "../../.."`` in A/2/0."""
    edit_json(
        group_doc(store, "A/2/0"),
        lambda d: ome(d)["multiscales"][0]["datasets"][0].update(path="../../.."),
    )


@document_case("json-datasets-dotdot-canary-v2", base="0.4")
def _json_datasets_dotdot_v2(store: Path, outside: Path) -> None:
    """``datasets[1].path = "../../../evil"`` (NGFF 0.4), with a fresh-looking copy there."""
    canary(store, "A/2/0/1", "evil")
    edit_json(
        group_doc(store, "A/2/0"),
        lambda d: ome(d)["multiscales"][0]["datasets"][1].update(path="../../../evil"),
    )


@document_case("json-datasets-absolute")
def _json_datasets_absolute(store: Path, outside: Path) -> None:
    target = copy_out(store, "A/2/0/0", outside)
    edit_json(
        group_doc(store, "A/2/0"),
        lambda d: ome(d)["multiscales"][0]["datasets"][0].update(path=str(target)),
    )


@document_case("json-root-well-dotdot", keys=("../x/y",))
def _json_root_well_dotdot(store: Path, outside: Path) -> None:
    """Root ``wells[0].path = "../x/y"``."""
    edit_json(group_doc(store, ""), lambda d: ome(d)["plate"]["wells"][0].update(path="../x/y"))


@document_case("json-root-row-dotdot", keys=("../1/0",))
def _json_root_row_dotdot(store: Path, outside: Path) -> None:
    """Row named ``..`` and a well path ``../1`` that matches it."""

    def change(d: dict[str, Any]) -> None:
        plate = ome(d)["plate"]
        plate["rows"][0]["name"] = ".."
        plate["wells"][0]["path"] = "../1"

    canary(store, "A/1", "1")
    edit_json(group_doc(store, ""), change)


@document_case("json-well-image-dotdot", keys=("A/1/../../../evil",))
def _json_well_image_dotdot(store: Path, outside: Path) -> None:
    edit_json(
        group_doc(store, "A/1"), lambda d: ome(d)["well"]["images"][0].update(path="../../../evil")
    )


@document_case("json-well-image-absolute")
def _json_well_image_absolute(store: Path, outside: Path) -> None:
    edit_json(group_doc(store, "A/1"), lambda d: ome(d)["well"]["images"][0].update(path="/evil"))


@document_case("json-position-doc-symlink-out")
def _json_position_doc_symlink_out(store: Path, outside: Path) -> None:
    """A/2/0's group document is replaced by a symlink to an edited copy outside."""
    target = copy_out(store, "A/2/0/" + group_doc(store, "A/2/0").name, outside)
    edit_json(target, lambda d: ome(d)["omero"]["channels"][0].update(label="evil"))
    group_doc(store, "A/2/0").unlink()
    os.symlink(target, group_doc(store, "A/2/0"))


@document_case("json-position-dir-symlink-out")
def _json_position_dir_symlink_out(store: Path, outside: Path) -> None:
    move_out(store, "A/2/0", outside)


@document_case("json-well-dir-symlink-out")
def _json_well_dir_symlink_out(store: Path, outside: Path) -> None:
    move_out(store, "A/2", outside)


@document_case("json-level-dir-symlink-out")
def _json_level_dir_symlink_out(store: Path, outside: Path) -> None:
    move_out(store, "A/2/0/0", outside)


@document_case("json-array-doc-symlink-out")
def _json_array_doc_symlink_out(store: Path, outside: Path) -> None:
    move_out(store, "A/2/0/0/zarr.json", outside)


@document_case("json-root-doc-symlink-out")
def _json_root_doc_symlink_out(store: Path, outside: Path) -> None:
    move_out(store, "zarr.json", outside)


@document_case("json-position-doc-symlink-relative-out")
def _json_position_doc_relative_out(store: Path, outside: Path) -> None:
    """A relative symlink climbing out: ``A/2/0/zarr.json -> ../../../outside/...``."""
    target = copy_out(store, "A/2/0/zarr.json", outside)
    (store / "A/2/0/zarr.json").unlink()
    os.symlink(os.path.relpath(target, store / "A/2/0"), store / "A/2/0/zarr.json")


@document_case("json-position-doc-fifo")
def _json_position_doc_fifo(store: Path, outside: Path) -> None:
    (store / "A/2/0/zarr.json").unlink()
    os.mkfifo(store / "A/2/0/zarr.json")


@document_case("json-well-doc-devzero")
def _json_well_doc_devzero(store: Path, outside: Path) -> None:
    (store / "A/2/zarr.json").unlink()
    os.symlink("/dev/zero", store / "A/2/zarr.json")


@document_case("json-array-doc-symlink-loop")
def _json_array_doc_loop(store: Path, outside: Path) -> None:
    (store / "A/2/0/0/zarr.json").unlink()
    os.symlink("zarr.json", store / "A/2/0/0/zarr.json")


@document_case("json-position-doc-malformed")
def _json_position_doc_malformed(store: Path, outside: Path) -> None:
    path = store / "A/2/0/zarr.json"
    path.write_bytes(path.read_bytes()[:-7])


@document_case("json-position-wrong-types")
def _json_position_wrong_types(store: Path, outside: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        ms = ome(d)["multiscales"][0]
        ms["axes"] = "evil"
        ms["datasets"][0]["coordinateTransformations"] = [{"type": "scale", "scale": "evil"}]

    edit_json(group_doc(store, "A/2/0"), change)


@document_case("json-root-wrong-types")
def _json_root_wrong_types(store: Path, outside: Path) -> None:
    edit_json(group_doc(store, ""), lambda d: ome(d)["plate"].update(wells="evil", rows=[7]))


@document_case("json-position-deep-nesting")
def _json_position_deep(store: Path, outside: Path) -> None:
    edit_json(group_doc(store, "A/2/0"), lambda d: d["attributes"].update(deep=nested(600)))


@document_case("json-position-huge-document")
def _json_position_huge(store: Path, outside: Path) -> None:
    """A sparse 300 MB group document (over the read cap)."""
    with open(store / "A/2/0/zarr.json", "r+b") as fh:
        fh.truncate(300 << 20)


# ---------------------------------------------------------------------------
# documents crafted before the build: the builder must reject them


def build_case(id: str, base: str = "0.5") -> Callable:
    return case(id, "build", base)


@build_case("build-datasets-dotdot")
def _build_datasets_dotdot(store: Path, outside: Path) -> None:
    canary(store, "A/2/0/0", "evil")
    edit_json(
        group_doc(store, "A/2/0"),
        lambda d: ome(d)["multiscales"][0]["datasets"][0].update(path="../../../evil"),
    )


@build_case("build-root-well-dotdot")
def _build_root_well_dotdot(store: Path, outside: Path) -> None:
    edit_json(group_doc(store, ""), lambda d: ome(d)["plate"]["wells"][0].update(path="../x/y"))


@build_case("build-well-image-dotdot")
def _build_well_image_dotdot(store: Path, outside: Path) -> None:
    canary(store, "A/1/0", "evil")
    edit_json(
        group_doc(store, "A/1"), lambda d: ome(d)["well"]["images"][0].update(path="../../evil")
    )


@build_case("build-position-dir-symlink-out")
def _build_position_dir_symlink_out(store: Path, outside: Path) -> None:
    move_out(store, "A/2/0", outside)


@build_case("build-level-dir-symlink-out-v2", base="0.4")
def _build_level_dir_symlink_out(store: Path, outside: Path) -> None:
    move_out(store, "A/2/0/1", outside)


@build_case("build-position-doc-fifo")
def _build_position_doc_fifo(store: Path, outside: Path) -> None:
    (store / "A/2/0/zarr.json").unlink()
    os.mkfifo(store / "A/2/0/zarr.json")


@build_case("build-array-doc-devzero-v2", base="0.4")
def _build_array_doc_devzero(store: Path, outside: Path) -> None:
    (store / "A/2/0/0/.zarray").unlink()
    os.symlink("/dev/zero", store / "A/2/0/0/.zarray")


@build_case("build-deep-nesting")
def _build_deep_nesting(store: Path, outside: Path) -> None:
    edit_json(group_doc(store, "A/2/0"), lambda d: d["attributes"].update(deep=nested(600)))


@build_case("build-root-doc-symlink-out")
def _build_root_doc_symlink_out(store: Path, outside: Path) -> None:
    move_out(store, "zarr.json", outside)


# ---------------------------------------------------------------------------
# the data layer: chunk files are read and written by zarr through the store


@case("data-chunk-fifo", "data")
def _data_chunk_fifo(store: Path, outside: Path) -> None:
    chunk = next(p for p in sorted((store / "A/2/0/0").rglob("*")) if p.is_file() and p.name == "0")
    chunk.unlink()
    os.mkfifo(chunk)


@case("data-chunk-devzero", "data")
def _data_chunk_devzero(store: Path, outside: Path) -> None:
    chunk = next(p for p in sorted((store / "A/2/0/0").rglob("*")) if p.is_file() and p.name == "0")
    chunk.unlink()
    os.symlink("/dev/zero", chunk)


@case("data-chunk-dir-symlink-out", "data")
def _data_chunk_dir_symlink_out(store: Path, outside: Path) -> None:
    move_out(store, "A/2/0/0/c", outside)


# ---------------------------------------------------------------------------
# the worker: every public operation, audited


@dataclass
class Result:
    ops: list[tuple[str, str, str]] = field(default_factory=list)  # (operation, outcome, detail)
    events: list[tuple[str, str, bool, bool]] = field(default_factory=list)  # path, write, nofollow
    fatal: str = ""
    seconds: float = 0.0


_WRITE_EVENTS = {
    "os.mkdir",
    "os.remove",
    "os.rename",
    "os.rmdir",
    "os.chmod",
    "os.chown",
    "os.utime",
    "os.truncate",
    "os.symlink",
    "os.link",
    "os.setxattr",
    "os.removexattr",
    "shutil.rmtree",
    "shutil.copyfile",
    "shutil.move",
}
_READ_EVENTS = {"open", "os.listdir", "os.scandir", "os.getxattr", "os.listxattr"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class _Audit:
    armed = False
    installed = False
    events: ClassVar[list[tuple[str, str, bool, bool]]] = []


def _audit_hook(event: str, args: tuple[Any, ...]) -> None:
    if not _Audit.armed or (event not in _READ_EVENTS and event not in _WRITE_EVENTS):
        return
    if not args or isinstance(args[0], int) or args[0] is None:
        return  # descriptors: their open was recorded
    path = args[0]
    if isinstance(path, bytes):
        path = path.decode(errors="replace")
    path = str(os.fspath(path)) if isinstance(path, os.PathLike) else str(path)
    write = event in _WRITE_EVENTS
    nofollow = False
    if event == "open":
        mode = args[1] if len(args) > 1 else None
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        write = bool(flags & _WRITE_FLAGS) or (
            isinstance(mode, str) and any(c in mode for c in "wax+")
        )
        nofollow = bool(flags & getattr(os, "O_NOFOLLOW", 0))
    _Audit.events.append((event, path, write, nofollow))


def allowed_prefixes(store: str) -> tuple[str, ...]:
    """Where the interpreter itself reads (its installation, imports, /proc), minus
    anything that contains the store's own directory."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, "/usr", "/lib", "/lib64"}
    prefixes |= {"/proc", "/sys"}
    for entry in sys.path:
        if entry and os.path.isabs(entry):
            prefixes |= {entry, os.path.realpath(entry)}
    case_dir = os.path.dirname(os.path.realpath(store))
    out = {p.rstrip("/") + "/" for p in prefixes if p and not case_dir.startswith(p.rstrip("/"))}
    out |= {"/dev/null", "/dev/urandom", "/dev/shm/", "/etc/ld.so", "/etc/localtime", MARK}
    return tuple(sorted(out))


def resolve(path: str, nofollow: bool) -> str:
    """Where an access to ``path`` lands (the last symlink followed unless ``nofollow``)."""
    if nofollow:
        head, tail = os.path.split(path.rstrip("/") or "/")
        if tail not in ("", ".", ".."):
            return os.path.join(os.path.realpath(head), tail)
    return os.path.realpath(path)


def outside_store(path: str, nofollow: bool, store: str, allowed: tuple[str, ...]) -> bool:
    """Whether an access to the absolute ``path`` lands outside ``store``.

    The store's ancestors (every lookup of the store's path passes them) and
    the interpreter's own files (``allowed``) do not count.
    """
    landed = resolve(path, nofollow)
    for base in {os.path.realpath(store), os.path.normpath(store)}:
        if landed == base or landed.startswith(base + "/"):
            return False
        if base.startswith(landed.rstrip("/") + "/"):
            return False  # an ancestor of the store
    return not any(landed == p.rstrip("/") or landed.startswith(p) for p in allowed)


def _short(value: Any) -> str:
    try:
        return repr(value)[:300]
    except Exception as exc:
        return f"<repr failed: {type(exc).__name__}>"


class _Skip(Exception):
    pass


def run_case(spec: dict[str, Any]) -> Result:
    """Every public operation on ``spec["store"]``: outcomes, and the audited accesses."""
    import math

    import numpy as np

    store = spec["store"]
    result = Result()

    def op(label: str, fn: Callable[[], Any]) -> Any:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            try:
                value = fn()
            except snapmeta.SnapmetaError as exc:
                result.ops.append((label, "E:" + type(exc).__name__, str(exc)[:300]))
                return None
            except Exception as exc:  # the point: nothing else may escape
                tb = traceback.extract_tb(exc.__traceback__)
                where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in tb[-4:][::-1])
                detail = f"{exc!s}"[:240] + f" [{where}]"
                result.ops.append((label, "RAW:" + type(exc).__name__, detail))
                return None
        result.ops.append((label, "ok", _short(value)))
        return value

    def position_ops(pos: Any, mode: str, label: str, full: bool) -> None:
        if full:
            for name in (
                "channel_names",
                "axis_names",
                "axes",
                "levels",
                "scale",
                "translation",
                "shape",
                "chunks",
                "dtype",
                "attrs",
                "acquisition",
            ):
                op(f"{label}.{name}", lambda n=name: getattr(pos, n))
        for i in range(len(pos._meta.image.levels)):
            if full:
                op(f"{label}.level({i})", lambda i=i: pos.level(i))
            arr = op(f"{label}[{i}]", lambda i=i: pos[i])
            if arr is None:
                continue
            origin = (0,) * arr.ndim
            op(f"{label}[{i}][origin]", lambda a=arr, o=origin: a[o])
            if full and math.prod(arr.shape) <= 1 << 16:
                op(f"{label}[{i}][...]", lambda a=arr: int(np.asarray(a[...]).sum()))
            if mode != "r":
                op(f"{label}[{i}][origin]=", lambda a=arr, o=origin: a.__setitem__(o, a[o]))

    def compat_ops(mode: str) -> None:
        from snapmeta.compat import open_ome_zarr

        clear_cache()
        plate = op(
            f"compat:{mode}:open",
            lambda: open_ome_zarr(store, layout="hcs", mode=mode, fallback=False),
        )
        if plate is None:
            return
        for name, pos in op(f"compat:{mode}:positions", lambda: list(plate.positions())) or []:
            label = f"compat:{mode}:{name}"
            op(f"{label}.channel_names", lambda p=pos: p.channel_names)
            op(f"{label}.scale", lambda p=pos: p.scale)
            data = op(f"{label}.data", lambda p=pos: p.data)
            if data is not None:
                origin = (0,) * data.ndim
                op(f"{label}.data[origin]", lambda d=data, o=origin: d[o])
                if mode != "r":
                    op(f"{label}.data[origin]=", lambda d=data, o=origin: d.__setitem__(o, d[o]))

    def mode_ops(mode: str, keys: list[str]) -> None:
        full = mode == "r"  # metadata once; opens, reads and writes in every mode
        clear_cache()
        plate = op(f"{mode}:open_plate", lambda: snapmeta.open_plate(store, mode=mode))
        paths: list[str] = []
        if plate is not None:
            if full:
                for attr in (
                    "name",
                    "rows",
                    "columns",
                    "field_count",
                    "acquisitions",
                    "version",
                    "zarr_format",
                    "attrs",
                ):
                    op(f"{mode}:plate.{attr}", lambda a=attr: getattr(plate, a))
                for well in op(f"{mode}:plate.wells", lambda: plate.wells) or ():
                    w = op(f"{mode}:well({well})", lambda w=well: plate.well(w))
                    if w is not None:
                        op(f"{mode}:well({well}).positions", lambda w=w: w.positions)
                        op(f"{mode}:well({well}).attrs", lambda w=w: w.attrs)
            paths = op(f"{mode}:list", lambda: list(plate)) or []
            op(f"{mode}:len", lambda: len(plate))
        for key in dict.fromkeys([*paths, *keys]):
            if plate is not None:
                op(f"{mode}:in({key})", lambda k=key: k in plate)
                pos = op(f"{mode}:plate[{key}]", lambda k=key: plate[k])
                if pos is not None:
                    position_ops(pos, mode, f"{mode}:plate[{key}]", full)
            pos = op(
                f"{mode}:open_position({key})",
                lambda k=key: snapmeta.open_position(store, k, mode=mode),
            )
            if pos is not None:
                position_ops(pos, mode, f"{mode}:open_position({key})", full)

    _Audit.events = []
    _Audit.armed = True
    try:
        if spec.get("build"):
            op("build", lambda: snapmeta.build_snapshot(store))
        keys = ["A/1/0", "A/2/0", *spec.get("keys", ())]
        for mode in MODES:
            mode_ops(mode, keys)
        op("verify", lambda: (lambda r: (r.ok, r.problems[:3]))(snapmeta.verify(store)))
        # the concurrent checks used on network filesystems (directory handles, a pool)
        os.environ["SNAPMETA_CONCURRENT_CHECKS"] = "1"
        try:
            if not spec.get("walk", True):
                raise _Skip
            clear_cache()
            plate = op("walk:open_plate", lambda: snapmeta.open_plate(store))
            if plate is not None:
                op("walk:list", lambda: list(plate))
            for key in keys:
                pos = op(
                    f"walk:open_position({key})", lambda k=key: snapmeta.open_position(store, k)
                )
                if pos is not None:
                    position_ops(pos, "r", f"walk:open_position({key})", False)
        except _Skip:
            pass
        finally:
            del os.environ["SNAPMETA_CONCURRENT_CHECKS"]
        if spec.get("compat"):
            for mode in ("r", "r+"):
                compat_ops(mode)
    finally:
        _Audit.armed = False
    result.events = list(_Audit.events)
    return result


def compat_available() -> bool:
    try:
        import iohub  # noqa: F401

        import snapmeta.compat  # noqa: F401
    except Exception:
        return False
    return True


def _mark(name: str) -> None:
    """A stat of a path that does not exist: a mark in a syscall trace."""
    with contextlib.suppress(OSError):
        os.stat(f"{MARK}/{name}")


def _child(batch: list[dict[str, Any]], results_dir: str) -> None:
    """In a forked child: run the cases of ``batch`` in turn, each leaving a start mark
    and then its result in ``results_dir``."""
    code = 0
    try:
        limit_memory(3 << 30)
        for spec in batch:
            base = os.path.join(results_dir, spec["id"])
            with open(base + ".start", "w"):
                pass
            if spec.get("mark"):
                _mark(f"{spec['id']}/start")
            started = time.monotonic()
            try:
                result = run_case(spec)
            except BaseException as exc:
                trace = traceback.format_exc()[-2000:]
                result = Result(fatal=f"{type(exc).__name__}: {exc}\n{trace}")
            result.seconds = time.monotonic() - started
            if spec.get("mark"):
                _mark(f"{spec['id']}/end")
            clear_cache()
            with open(base + ".part", "wb") as fh:
                pickle.dump(result, fh)
            os.rename(base + ".part", base + ".result")
    except BaseException:
        code = 70
    finally:
        # leave now: zarr's event loop and snapmeta's stat pool are threads to wait for
        os._exit(code)


def runner_main(spec_file: str, out_file: str, parallel: int, batch_size: int) -> None:
    """A fresh interpreter that imports everything once, then forks children that run
    the cases in small batches (a few children at a time). A child that outlives a
    case's timeout is killed: that case hung, and the rest of its batch runs again.
    Every outcome goes to ``out_file``: a :class:`Result`, ``("hang", ...)`` or
    ``("signal", ...)``."""
    import numpy  # noqa: F401

    import snapmeta._build
    import snapmeta._ngff  # noqa: F401

    with open(spec_file) as fh:
        specs = json.load(fh)
    if any(spec.get("compat") for spec in specs):
        compat_available()
    warm = next((s for s in specs if s["id"].startswith("identity")), None)
    if warm is not None:
        # every lazy import and zarr's codec set-up once, here, not in every child
        run_case({**warm, "walk": False})
        clear_cache()
    from zarr.core.sync import cleanup_resources

    cleanup_resources()  # zarr's event loop thread: the runner forks single-threaded
    for _ in range(200):
        if threading.active_count() == 1:
            break
        time.sleep(0.01)
    assert threading.active_count() == 1, [t.name for t in threading.enumerate()]
    gc.freeze()  # children do not copy the runner's heap by collecting it
    sys.addaudithook(_audit_hook)
    results_dir = os.path.dirname(out_file)
    # cases with a short leash (those that could hang) alone and first, the others in batches
    short = [[s] for s in specs if s.get("timeout", CASE_TIMEOUT) < CASE_TIMEOUT]
    normal = [s for s in specs if s.get("timeout", CASE_TIMEOUT) >= CASE_TIMEOUT]
    pending = short + [normal[i : i + batch_size] for i in range(0, len(normal), batch_size)]
    running: dict[int, tuple[list[dict[str, Any]], float]] = {}
    outcomes: dict[str, Any] = {}

    def collect(batch: list[dict[str, Any]], failure: Any) -> None:
        """Results of a finished child; its current case gets ``failure``, the rest rerun."""
        rest = []
        for i, spec in enumerate(batch):
            base = os.path.join(results_dir, spec["id"])
            if os.path.exists(base + ".result"):
                with open(base + ".result", "rb") as fh:
                    outcomes[spec["id"]] = pickle.load(fh)
            elif os.path.exists(base + ".start") and not rest:
                outcomes[spec["id"]] = failure
                rest = batch[i + 1 :]
                break
            else:
                rest = batch[i:]
                break
        if rest:
            pending.insert(0, rest)

    while pending or running:
        while pending and len(running) < parallel:
            batch = pending.pop(0)
            pid = os.fork()
            if pid == 0:
                _child(batch, results_dir)
            running[pid] = (batch, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            batch, _ = running.pop(pid)
            if os.WIFSIGNALED(status):
                collect(batch, ("signal", f"killed by signal {os.WTERMSIG(status)}"))
            else:
                collect(batch, ("signal", f"exit code {os.WEXITSTATUS(status)}, no result"))
            continue
        time.sleep(0.002)
        now = time.monotonic()
        for pid, (batch, started) in list(running.items()):
            current = next(
                (
                    s
                    for s in batch
                    if not os.path.exists(os.path.join(results_dir, s["id"] + ".result"))
                ),
                None,
            )
            if current is None:
                continue
            mark = os.path.join(results_dir, current["id"] + ".start")
            since = os.stat(mark).st_mtime if os.path.exists(mark) else None
            elapsed = now - started if since is None else time.time() - since
            timeout = current.get("timeout", CASE_TIMEOUT)
            if elapsed > timeout:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                del running[pid]
                collect(batch, ("hang", f"no answer in {timeout:.0f} s"))
    with open(out_file, "wb") as fh:
        pickle.dump(outcomes, fh)


def run_cases(
    specs: list[dict[str, Any]],
    work: Path,
    *,
    parallel: int = 4,
    batch_size: int = 6,
    strace: list[str] | None = None,
) -> dict[str, Any]:
    """Outcomes of ``specs`` from a runner process (see :func:`runner_main`), optionally
    run under ``strace``."""
    spec_file, out_file = work / "specs.json", work / "outcomes.pickle"
    spec_file.write_text(json.dumps(specs))
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); "
        "import test_reliability2_confinement as t; "
        f"t.runner_main({str(spec_file)!r}, {str(out_file)!r}, {parallel}, {batch_size})"
    )
    budget = 120.0 + sum(s.get("timeout", CASE_TIMEOUT) for s in specs if s.get("timeout", 0) < 30)
    proc = subprocess.run(
        [*(strace or []), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=budget,
        cwd=HERE,
    )
    if proc.returncode != 0 or not out_file.exists():
        raise AssertionError(f"the case runner failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    with open(out_file, "rb") as fh:
        return pickle.load(fh)


# ---------------------------------------------------------------------------
# fixtures


def _base_plate(root: Path, ngff: str) -> Path:
    store = root / f"base-{ngff}" / "store"
    store.parent.mkdir(parents=True)
    write_plate(
        store,
        rows=1,
        columns=2,
        fields=1,
        ngff=ngff,  # type: ignore[arg-type]
        levels=1 if ngff == "0.5" else 2,
        shape=(1, 2, 1, 8, 8),
        data="fill",
    )
    snapmeta.build_snapshot(store)
    return store


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("confinement-bases")
    return {ngff: _base_plate(root, ngff) for ngff in ("0.4", "0.5")}


def prepare_case(c: Case, bases: dict[str, Path], root: Path, compat: bool) -> dict[str, Any]:
    """The case's directory: ``store`` (the crafted plate) and ``outside`` (out of it)."""
    case_dir = root / c.id
    store = case_dir / "store"
    outside = case_dir / "outside"
    outside.mkdir(parents=True)
    shutil.copytree(bases[c.base], store, symlinks=True)
    if c.group == "build":
        shutil.rmtree(store / ".snapmeta")
    c.prepare(store, outside)
    clear_cache()
    return {
        "id": c.id,
        "store": str(store),
        "keys": list(c.keys),
        "build": c.group == "build",
        "compat": compat,
        # a chunk that is a FIFO or a device must not hang a read: a short leash, started
        # first, so that a regression fails the case instead of stalling the suite
        "timeout": 3.0 if c.group == "data" else CASE_TIMEOUT,
    }


def _selected(request: pytest.FixtureRequest) -> set[str]:
    return {
        item.callspec.params["crafted"].id
        for item in request.session.items
        if getattr(item, "originalname", "").startswith("test_crafted_case")
        and hasattr(item, "callspec")
    }


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, bases: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[str, Any]]:
    """Every selected case, prepared and run in parallel workers: id -> (store, outcome)."""
    selected = _selected(request)
    root = tmp_path_factory.mktemp("confinement-cases")
    compat = compat_available()
    specs = [prepare_case(c, bases, root, compat) for c in CASES if c.id in selected]
    results = run_cases(specs, root)
    return {spec["id"]: (spec["store"], results[spec["id"]]) for spec in specs}


# answers that are paths: none may be absolute or hold a "." or ".." segment
_PATH_ANSWERS = re.compile(r"(:list|\.levels|:plate\.wells|\.positions)$")
_BAD_PATH = re.compile(r"""(^|['"/])\.{1,2}(['"/]|$)|['"]/|//""")


def violations(store: str, outcome: Any, compat: bool = False) -> list[str]:
    """Everything a case's outcome breaks: a crash, a hang, an exception other than
    SnapmetaError, an access outside the store, a crafted path or value served.

    ``compat`` selects the operations through ``snapmeta.compat`` (else the others).
    """
    if isinstance(outcome, tuple):
        kind, detail = outcome
        return [] if compat else [f"worker {kind} ({detail})"]
    if outcome.fatal:
        return [] if compat else [f"worker failed: {outcome.fatal}"]
    found = []
    for label, result, detail in outcome.ops:
        if label.startswith("compat:") != compat:
            continue
        if result.startswith("RAW:"):
            found.append(f"{label}: {result[4:]}: {detail}")
        elif result == "ok" and label != "verify" and EVIL in detail:
            found.append(f"{label}: served a crafted value: {detail}")
        elif result == "ok" and _PATH_ANSWERS.search(label) and _BAD_PATH.search(detail):
            found.append(f"{label}: served a crafted path: {detail}")
    if compat:
        return found
    allowed = allowed_prefixes(store)
    for event, path, write, nofollow in outcome.events:
        if not os.path.isabs(path):
            if ".." in path.split("/"):
                found.append(f"{event} of a relative {path!r}")
            continue
        if outside_store(path, nofollow, store, allowed):
            found.append(f"{'write ' if write else ''}{event} outside the store: {path}")
    if outcome.ops and outcome.ops[0][0] == "build" and outcome.ops[0][1] == "ok":
        found.append("the builder accepted the crafted plate")
    return found


def _report(case_id: str, found: list[str]) -> str:
    unique = list(dict.fromkeys(found))
    shown = "\n  ".join(unique[:25])
    more = f"\n  ... and {len(unique) - 25} more" if len(unique) > 25 else ""
    return f"{case_id}: {len(unique)} violation(s):\n  {shown}{more}"


@pytest.mark.parametrize("crafted", CASES, ids=[c.id for c in CASES])
def test_crafted_case(crafted: Case, outcomes: dict[str, tuple[str, Any]]) -> None:
    """No access outside the store, no crash, no hang, nothing but SnapmetaError, no
    crafted path or value served: at open, metadata access, array read and write."""
    store, outcome = outcomes[crafted.id]
    found = violations(store, outcome)
    if crafted.id == "build-deep-nesting":
        # deep attributes are valid NGFF: a faithful snapshot is as good as a rejection
        found = [f for f in found if f != "the builder accepted the crafted plate"]
    if crafted.id.startswith("identity") and not isinstance(outcome, tuple):
        # the harness sees a working plate: everything answers, verify is ok
        found += [f"{label}: {r}: {d}" for label, r, d in outcome.ops if r != "ok"]
        verify = next(d for label, _, d in outcome.ops if label == "verify")
        if not verify.startswith("(True"):
            found.append(f"verify: {verify}")
    assert not found, _report(crafted.id, found)


@pytest.mark.parametrize("crafted", CASES, ids=[c.id for c in CASES])
def test_crafted_case_compat(crafted: Case, outcomes: dict[str, tuple[str, Any]]) -> None:
    """The same through ``snapmeta.compat.open_ome_zarr(..., fallback=False)``."""
    store, outcome = outcomes[crafted.id]
    if isinstance(outcome, tuple) or not any(
        label.startswith("compat:") for label, _, _ in outcome.ops
    ):
        reason = (
            "snapmeta.compat or iohub is not importable"
            if not isinstance(outcome, tuple)
            else f"the case's worker {outcome[0]} before compat ran (see test_crafted_case)"
        )
        pytest.skip(reason)
    found = violations(store, outcome, compat=True)
    assert not found, _report(crafted.id, found)


# ---------------------------------------------------------------------------
# strace: stat, readlink and every other path syscall, not only what Python audits

_STRING_ARG = re.compile(r'(?:(AT_FDCWD|-?\d+)(?:<([^>]*)>)?,\s*)?"((?:[^"\\]|\\.)*)"')
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(.*)$")
_FIRST_PATH_ONLY = {"readlink", "readlinkat", "execve", "getxattr", "lgetxattr", "listxattr"}
_SECOND_PATH_ONLY = {"symlink", "symlinkat"}
_NOFOLLOW_CALLS = {
    "lstat",
    "readlink",
    "readlinkat",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "symlink",
    "symlinkat",
    "mkdir",
    "mkdirat",
    "rmdir",
    "link",
    "linkat",
    "lgetxattr",
    "llistxattr",
    "lchown",
}


def traced_paths(trace_dir: Path) -> list[tuple[str, str, bool, str]]:
    """``(syscall, absolute path, nofollow, result)`` of every path syscall in the
    ``strace -ff`` files of ``trace_dir``, from each process's first mark on (the
    interpreter's start and imports come before)."""
    calls = []
    files = sorted(trace_dir.glob("trace.*"), key=lambda f: int(f.suffix[1:]))
    marked = {f for f in files if MARK in f.read_text(errors="replace")}
    started = False
    for f in files[1:]:  # the first is the runner itself: its start, imports and warm-up
        # the threads of a case's child have no mark: all they do counts
        active = f not in marked
        for line in f.read_text(errors="replace").splitlines():
            if MARK in line:
                active = True
                started = True
                continue
            match = _CALL.match(line)
            if not active or match is None:
                continue
            name, args, ret = match.groups()
            strings = _STRING_ARG.findall(args)
            if name in _FIRST_PATH_ONLY:
                strings = strings[:1]
            elif name in _SECOND_PATH_ONLY:
                strings = strings[1:2]
            nofollow = (
                name in _NOFOLLOW_CALLS or "AT_SYMLINK_NOFOLLOW" in args or "O_NOFOLLOW" in args
            )
            for _fd, fd_path, text in strings:
                if text == "" or "\\" in text:
                    continue
                if text.startswith("/"):
                    path = text
                elif fd_path:
                    path = f"{fd_path}/{text}"
                else:
                    continue
                calls.append((name, path, nofollow, ret))
    assert started, "no mark in the trace: the runner did not run the cases"
    return calls


def strace_violations(
    calls: list[tuple[str, str, bool, str]], stores: list[str], work: Path
) -> list[str]:
    """Path syscalls that land outside every case's store (interpreter files, the
    stores' ancestors and the runner's own files in ``work`` excepted)."""
    allowed = allowed_prefixes(stores[0])
    bases = {os.path.realpath(s) for s in stores} | {os.path.normpath(s) for s in stores}
    ancestors = {str(p) for b in bases for p in Path(b).parents}
    found = []
    seen: dict[tuple[str, bool], bool] = {}
    for name, path, nofollow, ret in calls:
        if path.startswith(MARK):
            continue
        if os.path.dirname(path) == str(work) and path.endswith(_RUNNER_FILES):
            continue
        key = (path, nofollow)
        if key not in seen:
            landed = resolve(path, nofollow)
            inside = landed in bases or any(
                landed.startswith(b + "/") for b in bases if landed.startswith(b)
            )
            seen[key] = not (
                inside
                or landed in ancestors
                or any(landed == p.rstrip("/") or landed.startswith(p) for p in allowed)
            )
        if seen[key]:
            found.append(f"{name}({path!r}) = {ret[:40]}")
    return found


_RUNNER_FILES = (".start", ".result", ".part", ".json", ".pickle")

# one case per way out of the store (the strace run's default sample; all with SLOW)
STRACE_SAMPLE = (
    "identity-reencoded",
    "node-dotdot",
    "node-symlink-out",
    "level-dotdot",
    "level-symlink-out",
    "json-datasets-dotdot",
    "json-position-dir-symlink-out",
    "json-well-doc-devzero",
    "build-position-dir-symlink-out",
)


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_strace_no_access_outside_the_store(bases: dict[str, Path], tmp_path: Path) -> None:
    """Every path syscall (stat, lstat, readlink, open, mkdir, rename...) of the crafted
    cases, traced with ``strace -f``: none lands outside the store.

    ``SNAPMETA_SLOW=1`` traces every case; the default traces the cases whose
    crafted paths lead out of the store.
    """
    chosen = [c for c in CASES if SLOW or c.id in STRACE_SAMPLE]
    # snapmeta.compat's accesses are audited in test_crafted_case_compat; not traced here
    specs = [prepare_case(c, bases, tmp_path, compat=SLOW and compat_available()) for c in chosen]
    for spec in specs:
        spec["mark"] = True
    trace_dir = tmp_path / "strace"
    trace_dir.mkdir()
    command = ["strace", "--seccomp-bpf", "-f", "-ff", "-qq", "-y", "-e", "trace=%file", "-o"]
    try:
        outcomes = run_cases(specs, tmp_path, strace=[*command, str(trace_dir / "trace")])
    except AssertionError as exc:
        if "ptrace" in str(exc) or "Operation not permitted" in str(exc):
            pytest.skip(f"strace cannot trace here: {exc}")
        raise
    assert len(outcomes) == len(specs)
    found = strace_violations(traced_paths(trace_dir), [spec["store"] for spec in specs], tmp_path)
    assert not found, f"{len(found)} path syscall(s) outside the store:\n  " + "\n  ".join(
        list(dict.fromkeys(found))[:40]
    )


# ---------------------------------------------------------------------------
# symlinks that stay inside the plate


def _symlinked_plate(root: Path, ngff: str) -> Path:
    """A plate whose position, well, level and document are symlinks within the plate."""
    store = root / f"linked-{ngff}"
    write_plate(store, rows=1, columns=3, fields=1, ngff=ngff, levels=2, shape=(1, 2, 1, 8, 8))  # type: ignore[arg-type]
    doc = "zarr.json" if ngff == "0.5" else ".zattrs"
    (store / "_data").mkdir()
    shutil.move(store / "A/2/0", store / "_data/A20")
    os.symlink("../../_data/A20", store / "A/2/0")  # relative, position directory
    shutil.move(store / "A/3", store / "_data/A3")
    os.symlink(store / "_data/A3", store / "A/3")  # absolute, well directory
    shutil.move(store / "A/1/0/1", store / "_data/A101")
    os.symlink("../../../_data/A101", store / "A/1/0/1")  # a level directory
    shutil.move(store / "A/1/0" / doc, store / "_data/A10.json")
    os.symlink("../../../_data/A10.json", store / "A/1/0" / doc)  # a group document
    return store


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
@pytest.mark.parametrize("concurrent", ["0", "1"])
def test_symlinks_inside_the_plate_keep_working(
    tmp_path: Path, ngff: str, concurrent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Symlinked positions, wells, levels and documents that resolve inside the plate
    are built, opened, read, written and verified like plain ones: no warning, no
    error (warnings are errors in this suite), data equal to zarr's own read."""
    import numpy as np
    import zarr

    monkeypatch.setenv("SNAPMETA_CONCURRENT_CHECKS", concurrent)
    store = _symlinked_plate(tmp_path, ngff)
    snapmeta.build_snapshot(store)
    clear_cache()
    plate = snapmeta.open_plate(store, mode="r+")
    assert list(plate) == ["A/1/0", "A/2/0", "A/3/0"]
    for path in plate:
        for check in ("stat", "digest"):
            pos = snapmeta.open_position(store, path, check=check)
            assert pos.from_snapshot
            assert pos.channel_names == ("DAPI", "GFP")
            for level in pos.levels:
                ours = pos[level][...]
                theirs = zarr.open_array(store / path / level, mode="r")[...]
                np.testing.assert_array_equal(ours, theirs)
        writable = plate[path]
        writable[0][0, 0, 0, 0, 0] = 7
        assert int(zarr.open_array(store / path / "0", mode="r")[0, 0, 0, 0, 0]) == 7
    report = snapmeta.verify(store)
    assert report.ok, report.problems
    # an edit through a symlink is an edit: the default check notices it
    target = store / "_data/A10.json"
    edit_json(target, lambda d: ome(d)["omero"]["channels"][0].update(label="DAPI2"))
    clear_cache()
    with pytest.warns(snapmeta.SnapshotStaleWarning):
        assert snapmeta.open_position(store, "A/1/0").channel_names == ("DAPI2", "GFP")


# ---------------------------------------------------------------------------
# plate-level facts (reliability II item 6): a lying plate entry is reported by verify

_PLATE_LIES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "name": lambda p: p["plate"].update(name="another plate"),
    "field_count": lambda p: p["plate"].update(field_count=7),
    "ngff_version": lambda p: p.update(ngff_version="0.4"),
    "rows": lambda p: p["plate"].update(rows=[{"name": "A"}, {"name": "B"}]),
    "columns": lambda p: p["plate"]["columns"].reverse(),
    "acquisitions": lambda p: p["plate"].update(acquisitions=[{"id": 3}]),
}


@pytest.mark.parametrize("lie", list(_PLATE_LIES))
def test_verify_reports_a_lying_plate_entry(
    bases: dict[str, Path], tmp_path: Path, lie: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plate entry re-encoded with one fact changed (all checksums valid): verify
    reports it (``ok`` False, ``snapmeta verify`` exits 1), though reads trust it."""
    from snapmeta._cli import main

    store = tmp_path / "store"
    shutil.copytree(bases["0.5"], store, symlinks=True)
    assert snapmeta.verify(store).ok  # the control: the untouched copy verifies
    rewrite_snapshot(store, lambda m: _PLATE_LIES[lie](m["plate"]))
    served = snapmeta.open_plate(store)  # the lie is well-formed: it opens
    assert (served.name, served.field_count, served.version, served.rows) != (
        "snapmeta demo plate",
        1,
        "0.5",
        ("A",),
    ) or lie in ("columns", "acquisitions")
    report = snapmeta.verify(store)
    assert not report.ok
    assert any("stale" in p or "differs" in p for p in report.problems), report.problems
    capsys.readouterr()
    assert main(["verify", str(store), "-q"]) == 1
    out = capsys.readouterr().out
    assert "problem" in out


# ---------------------------------------------------------------------------
# chunk I/O: the kernel's confined walk (openat2) and the lstat walk that stands
# in for it where the kernel cannot decide (absolute symlinks, old kernels)


def _openat2_works(tmp_path: Path) -> bool:
    from snapmeta import _fsio

    try:
        os.close(_fsio.open_beneath(str(tmp_path), ".", _fsio.DIR_FLAGS))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
@pytest.mark.parametrize("resolver", ["openat2", "lstat"])
def test_chunk_confinement_by_either_walk(
    bases: dict[str, Path],
    tmp_path: Path,
    ngff: str,
    resolver: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chunk reads and writes refuse a directory symlink out of the store and a FIFO
    chunk, and follow an absolute symlink that points back inside, whichever walk
    checks them: data equal to zarr's own read, no hang, UnsafeStoreError."""
    import numpy as np
    import zarr

    from snapmeta import _fsio

    if resolver == "openat2" and not _openat2_works(tmp_path):
        pytest.skip("openat2(RESOLVE_BENEATH) is not available here")
    if resolver == "lstat":
        monkeypatch.setattr(_fsio, "_syscall", False)
    store = tmp_path / "store"
    shutil.copytree(bases[ngff], store, symlinks=True)
    level = store / "A/1/0/0"
    written = zarr.open_array(level, mode="r+")  # the base plate holds no chunks
    written[...] = np.arange(written.size, dtype=written.dtype).reshape(written.shape)
    expected = zarr.open_array(level, mode="r")[...]
    top = "c" if ngff == "0.5" else "0"  # the first directory of chunk keys

    # an absolute symlink to a directory inside the store: followed
    shutil.move(level / top, store / "moved")
    os.symlink(store / "moved", level / top)
    clear_cache()
    np.testing.assert_array_equal(snapmeta.open_position(store, "A/1/0")["0"][...], expected)
    snapmeta.open_position(store, "A/1/0", mode="r+")["0"][...] = expected
    np.testing.assert_array_equal(zarr.open_array(level, mode="r")[...], expected)

    # the same directory out of the store: refused both ways, the outside untouched
    outside = tmp_path / "outside"
    shutil.move(store / "moved", outside)
    before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    os.unlink(level / top)
    os.symlink(outside, level / top)
    clear_cache()
    with pytest.raises(snapmeta.UnsafeStoreError, match=r"out of the store|leads out"):
        snapmeta.open_position(store, "A/1/0")["0"][...]
    with pytest.raises(snapmeta.UnsafeStoreError, match=r"out of the store|leads out"):
        # one chunk: zarr leaves a call's other chunk writes running after the first error
        snapmeta.open_position(store, "A/1/0", mode="r+")["0"][0, 0, 0, 0, 0] = 1
    assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == before

    # a FIFO where a chunk is: an error, not a hang
    os.unlink(level / top)
    shutil.copytree(outside, level / top)
    chunk = next(p for p in (level / top).rglob("*") if p.is_file())
    chunk.unlink()
    os.mkfifo(chunk)
    clear_cache()
    with pytest.raises(snapmeta.UnsafeStoreError, match="not a regular file"):
        snapmeta.open_position(store, "A/1/0")["0"][...]


def test_a_refused_openat2_falls_back_on_the_first_read(
    bases: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a seccomp filter answers openat2 with EPERM, the very first chunk read
    already takes the lstat walk (and every later one): data equal to zarr's."""
    import ctypes
    import errno

    import numpy as np
    import zarr

    from snapmeta import _fsio

    calls: list[int] = []

    def refused(*args: Any) -> int:
        calls.append(1)
        ctypes.set_errno(errno.EPERM)
        return -1

    store = tmp_path / "store"
    shutil.copytree(bases["0.5"], store, symlinks=True)
    level = store / "A/1/0/0"
    written = zarr.open_array(level, mode="r+")
    written[...] = np.arange(written.size, dtype=written.dtype).reshape(written.shape)
    monkeypatch.setattr(_fsio, "_syscall", refused)
    monkeypatch.setattr(_fsio, "_OPENAT2_NR", 437)
    clear_cache()
    for _ in range(2):
        ours = snapmeta.open_position(store, "A/1/0")["0"][...]
        np.testing.assert_array_equal(ours, zarr.open_array(level, mode="r")[...])
    assert calls == [1]  # refused once, then not asked again
