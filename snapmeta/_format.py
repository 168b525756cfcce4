"""The snapshot file format, version 1: schema, checksums, writer and reader.

This module is the single source of truth for the bytes on disk; docs/format.md
describes the same thing for readers in other languages. The writer
(:func:`new_file`) and reader (:func:`open_file`) are symmetric, as in
``pyarrow.ipc``.

A snapshot is an uncompressed Arrow IPC file holding one record batch of one
row. Each column is a *section* (a list of entries), so every section can have
its own length while staying zero-copy under ``mmap``. Each well and position
entry carries a MessagePack ``record`` of its own typed values and a CRC-32 of
that record: the open path decodes only the record it was asked for, which is
bounds-checked, checksummed and O(1), while the typed columns serve columnar
readers.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from .errors import (
    SnapshotCorruptError,
    SnapshotFormatError,
    SnapshotNotFoundError,
    UnsupportedFormatVersionError,
)

SNAPSHOT_NAME = ".snapmeta.arrow"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAGIC = "snapmeta-snapshot"
META_PREFIX = "snapmeta."
# Attribute documents larger than this stay in their JSON file; the snapshot
# keeps only their fingerprint (see docs/format.md, "Large attributes").
DEFAULT_INLINE_LIMIT = 1 << 20
EMPTY_SLOT = -1
NO_BLOB = -1

DOCUMENT = pa.struct(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("digest", pa.binary(16)),
    ]
)

ACQUISITION = pa.struct(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("description", pa.string()),
        ("maximum_field_count", pa.int64()),
        ("start_time", pa.int64()),
        ("end_time", pa.int64()),
    ]
)

WELL_FIELDS: list[tuple[str, pa.DataType]] = [
    ("path", pa.string()),
    ("row", pa.string()),
    ("column", pa.string()),
    ("row_index", pa.int32()),
    ("column_index", pa.int32()),
    ("first_position", pa.int64()),
    ("position_count", pa.int64()),
    ("attributes", pa.int64()),
    ("attributes_size", pa.int64()),
    ("documents", pa.list_(DOCUMENT)),
]

_F64_LIST = pa.list_(pa.float64())
POSITION_FIELDS: list[tuple[str, pa.DataType]] = [
    ("path", pa.string()),
    ("well", pa.string()),
    ("field", pa.string()),
    ("well_index", pa.int64()),
    ("acquisition", pa.int64()),
    ("channel_names", pa.list_(pa.string())),
    ("axis_names", pa.list_(pa.string())),
    ("axis_types", pa.list_(pa.string())),
    ("axis_units", pa.list_(pa.string())),
    ("levels", pa.list_(pa.string())),
    ("level_scale", pa.list_(_F64_LIST)),
    ("level_translation", pa.list_(_F64_LIST)),
    ("global_scale", _F64_LIST),
    ("global_translation", _F64_LIST),
    ("zarr_format", pa.int8()),
    ("shape", pa.list_(pa.list_(pa.int64()))),
    ("chunks", pa.list_(pa.list_(pa.int64()))),
    ("dtype", pa.list_(pa.string())),
    ("fill_value", pa.list_(pa.string())),
    ("order", pa.list_(pa.string())),
    ("dimension_separator", pa.list_(pa.string())),
    ("array_metadata", pa.list_(pa.int64())),
    ("attributes", pa.int64()),
    ("attributes_size", pa.int64()),
    ("documents", pa.list_(DOCUMENT)),
]

WELL_NAMES = tuple(name for name, _ in WELL_FIELDS)
POSITION_NAMES = tuple(name for name, _ in POSITION_FIELDS)

_ENTRY_TAIL = [("record", pa.binary()), ("checksum", pa.uint32())]
WELL = pa.struct(WELL_FIELDS + _ENTRY_TAIL)
POSITION = pa.struct(POSITION_FIELDS + _ENTRY_TAIL)
SLOT = pa.struct([("hash", pa.uint64()), ("target", pa.int64()), ("checksum", pa.uint32())])
BLOB = pa.struct([("data", pa.large_binary()), ("checksum", pa.uint32())])

SCHEMA = pa.schema(
    [
        ("rows", pa.list_(pa.string())),
        ("columns", pa.list_(pa.string())),
        ("acquisitions", pa.list_(ACQUISITION)),
        ("wells", pa.list_(WELL)),
        ("positions", pa.list_(POSITION)),
        ("lookup", pa.list_(SLOT)),
        ("blobs", pa.list_(BLOB)),
    ]
)


def snapshot_path(store: str | os.PathLike[str]) -> Path:
    """Where the snapshot of ``store`` lives."""
    return Path(store) / SNAPSHOT_NAME


def key_hash(key: str) -> int:
    """The 64-bit lookup hash of a well or position path (BLAKE2b, 8 bytes, LE)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def digest(data: bytes) -> bytes:
    """The 16-byte content digest stored in document fingerprints."""
    return hashlib.blake2b(data, digest_size=16).digest()


def pack(value: Any) -> bytes:
    """Canonical MessagePack: smallest integer forms, float64, str for text."""
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def slot_checksum(index: int, hash_: int, target: int) -> int:
    return zlib.crc32(pack([index, hash_, target]))


def header_checksum(meta: Mapping[str, str]) -> int:
    items = sorted((k, v) for k, v in meta.items() if k != META_PREFIX + "header_checksum")
    return zlib.crc32(pack(items))


def paths_checksum(paths: Sequence[str]) -> int:
    return zlib.crc32(pack(list(paths)))


def plate_checksum(
    rows: Sequence[str], columns: Sequence[str], acquisitions: Sequence[Mapping[str, Any]]
) -> int:
    return zlib.crc32(pack([list(rows), list(columns), [dict(a) for a in acquisitions]]))


# ---------------------------------------------------------------------------
# writer


@dataclass(frozen=True, slots=True)
class SnapshotContent:
    """Everything a snapshot holds, in plain Python values (the builder's output).

    Wells and positions are dicts keyed by :data:`WELL_NAMES` /
    :data:`POSITION_NAMES`, except that ``attributes`` and ``array_metadata``
    hold ``bytes`` (or ``None``); the writer moves them
    into the deduplicated ``blobs`` section.
    """

    meta: Mapping[str, str]
    rows: Sequence[str]
    columns: Sequence[str]
    acquisitions: Sequence[Mapping[str, Any]]
    wells: Sequence[Mapping[str, Any]]
    positions: Sequence[Mapping[str, Any]]
    root_attributes: bytes | None


class _BlobTable:
    """Deduplicates blobs: identical multiscales/omero documents are stored once."""

    def __init__(self) -> None:
        self.index: dict[bytes, int] = {}
        self.data: list[bytes] = []

    def add(self, blob: bytes | None) -> int:
        if blob is None:
            return NO_BLOB
        found = self.index.get(blob)
        if found is None:
            found = self.index[blob] = len(self.data)
            self.data.append(blob)
        return found


def _entry(fields: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    values = {name: fields[name] for name in names}
    record = pack(values)
    values["record"] = record
    values["checksum"] = zlib.crc32(record)
    return values


def _lookup_table(keys: Sequence[tuple[str, int]]) -> list[dict[str, int]]:
    capacity = 8
    while capacity < 2 * len(keys):
        capacity *= 2
    hashes = [0] * capacity
    targets = [EMPTY_SLOT] * capacity
    mask = capacity - 1
    for key, target in keys:
        h = key_hash(key)
        slot = h & mask
        while targets[slot] != EMPTY_SLOT:
            slot = (slot + 1) & mask
        hashes[slot] = h
        targets[slot] = target
    return [
        {"hash": h, "target": t, "checksum": slot_checksum(i, h, t)}
        for i, (h, t) in enumerate(zip(hashes, targets, strict=True))
    ]


def _list_column(values: list[Any], type_: pa.DataType) -> pa.Array:
    return pa.array([values], type=type_)


def encode(content: SnapshotContent) -> pa.RecordBatch:
    """Turn builder output into the single-row record batch of format v1."""
    blobs = _BlobTable()
    meta = dict(content.meta)
    meta[META_PREFIX + "root_attributes"] = str(blobs.add(content.root_attributes))
    wells = []
    for well in content.wells:
        fields = dict(well)
        fields["attributes"] = blobs.add(well["attributes"])
        wells.append(_entry(fields, WELL_NAMES))
    positions = []
    for pos in content.positions:
        fields = dict(pos)
        fields["attributes"] = blobs.add(pos["attributes"])
        fields["array_metadata"] = [blobs.add(b) for b in pos["array_metadata"]]
        positions.append(_entry(fields, POSITION_NAMES))
    n_pos = len(positions)
    # Wells are lookup targets too, encoded below zero so one table serves both.
    keys = [(p["path"], i) for i, p in enumerate(positions)]
    keys += [(w["path"], -2 - i) for i, w in enumerate(wells)]
    meta[META_PREFIX + "position_count"] = str(n_pos)
    meta[META_PREFIX + "well_count"] = str(len(wells))
    meta[META_PREFIX + "paths_checksum"] = str(paths_checksum([p["path"] for p in positions]))
    meta[META_PREFIX + "plate_checksum"] = str(
        plate_checksum(content.rows, content.columns, content.acquisitions)
    )
    meta[META_PREFIX + "header_checksum"] = str(header_checksum(meta))
    columns = [
        _list_column(list(content.rows), SCHEMA.field("rows").type),
        _list_column(list(content.columns), SCHEMA.field("columns").type),
        _list_column([dict(a) for a in content.acquisitions], SCHEMA.field("acquisitions").type),
        _list_column(wells, SCHEMA.field("wells").type),
        _list_column(positions, SCHEMA.field("positions").type),
        _list_column(_lookup_table(keys), SCHEMA.field("lookup").type),
        _list_column(
            [{"data": b, "checksum": zlib.crc32(b)} for b in blobs.data],
            SCHEMA.field("blobs").type,
        ),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA.with_metadata(meta))


def new_file(path: str | os.PathLike[str], content: SnapshotContent) -> Path:
    """Write a snapshot atomically: temp file in the same directory, fsync, rename.

    Readers never see a partial file, and a reader that has the previous
    snapshot mapped keeps a valid mapping (``os.replace`` swaps the inode).
    """
    target = Path(path)
    batch = encode(content)
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    data = sink.getvalue()
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; some filesystems refuse fsync on directories.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def stale_temp_files(directory: Path) -> list[Path]:
    """Temp files left by builders that died before their rename."""
    return sorted(directory.glob(f"{SNAPSHOT_NAME}.*.tmp"))


# ---------------------------------------------------------------------------
# reader


class _Binary:
    """One binary child array, read through bounds-checked numpy views."""

    __slots__ = ("data", "length", "offsets")

    def __init__(self, array: pa.Array, name: str, path: Path) -> None:
        large = pa.types.is_large_binary(array.type)
        buffers = array.buffers()
        self.length = len(array)
        try:
            self.offsets = np.frombuffer(
                buffers[1],
                dtype=np.int64 if large else np.int32,
                count=self.length + 1,
                offset=array.offset * (8 if large else 4),
            )
        except (ValueError, TypeError) as exc:
            raise corrupt(path, f"{name}: offsets buffer too short", name) from exc
        self.data = memoryview(buffers[2]) if buffers[2] is not None else memoryview(b"")

    def get(self, index: int, path: Path, section: str) -> memoryview:
        start = int(self.offsets[index])
        end = int(self.offsets[index + 1])
        if not 0 <= start <= end <= len(self.data):
            raise corrupt(path, f"{section}[{index}]: record offsets out of bounds", section, index)
        return self.data[start:end]


def corrupt(path: Path, reason: str, section: str | None = None, index: int | None = None):
    return SnapshotCorruptError(
        f"snapshot {path} is corrupt: {reason}; rebuild it with `snapmeta build {path.parent}`",
        snapshot=str(path),
        reason=reason,
        section=section,
        index=index,
    )


def _fixed(array: pa.Array, dtype: type[np.generic], name: str, path: Path) -> np.ndarray:
    if array.null_count:
        raise corrupt(path, f"{name}: unexpected nulls", name)
    try:
        return np.frombuffer(
            array.buffers()[1],
            dtype=np.dtype(dtype).newbyteorder("<"),
            count=len(array),
            offset=array.offset * np.dtype(dtype).itemsize,
        )
    except (ValueError, TypeError) as exc:
        raise corrupt(path, f"{name}: buffer too short", name) from exc


def _pylist(array: pa.Array, section: str, path: Path) -> list[Any]:
    """Python values of a typed column, after Arrow's full validation.

    Full validation is O(len(array)); it is used only where the caller reads
    the whole column anyway. Without it, damaged offsets could make Arrow read
    outside the mapped buffers.
    """
    try:
        array.validate(full=True)
        return array.to_pylist()
    except (pa.ArrowException, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise corrupt(path, f"{section}: invalid column data ({exc})", section) from exc


class SnapshotFile:
    """A memory-mapped snapshot: O(1) checked access to any well or position.

    Opening reads the footer, the schema metadata and the buffer layout; it
    touches no entry. Every entry read afterwards is bounds-checked and
    verified against its CRC-32, so damage gives :class:`SnapshotCorruptError`
    rather than wrong metadata.
    """

    def __init__(
        self, path: Path, source: pa.MemoryMappedFile, batch: pa.RecordBatch, meta: dict[str, str]
    ) -> None:
        self.path = path
        self._source = source
        self._batch = batch
        self.meta = meta
        try:
            self.position_count = int(meta[META_PREFIX + "position_count"])
            self.well_count = int(meta[META_PREFIX + "well_count"])
            self.root_attributes_blob = int(meta[META_PREFIX + "root_attributes"])
            self.root_fingerprint: dict[str, Any] = {
                "path": meta[META_PREFIX + "root_document"],
                "size": int(meta[META_PREFIX + "root_size"]),
                "mtime_ns": int(meta[META_PREFIX + "root_mtime_ns"]),
                "digest": bytes.fromhex(meta[META_PREFIX + "root_digest"]),
            }
        except (KeyError, ValueError) as exc:
            raise corrupt(path, f"schema metadata: {exc}") from exc
        positions = batch.column("positions").values
        wells = batch.column("wells").values
        lookup = batch.column("lookup").values
        blobs = batch.column("blobs").values
        if len(positions) != self.position_count or len(wells) != self.well_count:
            raise corrupt(path, "section lengths do not match the header")
        self._positions = _Binary(positions.field("record"), "positions", path)
        self._position_sums = _fixed(positions.field("checksum"), np.uint32, "positions", path)
        self._wells = _Binary(wells.field("record"), "wells", path)
        self._well_sums = _fixed(wells.field("checksum"), np.uint32, "wells", path)
        self._slot_hash = _fixed(lookup.field("hash"), np.uint64, "lookup", path)
        self._slot_target = _fixed(lookup.field("target"), np.int64, "lookup", path)
        self._slot_sums = _fixed(lookup.field("checksum"), np.uint32, "lookup", path)
        capacity = len(self._slot_hash)
        if capacity == 0 or capacity & (capacity - 1):
            raise corrupt(path, "lookup: capacity is not a power of two", "lookup")
        self._mask = capacity - 1
        self._blobs = _Binary(blobs.field("data"), "blobs", path)
        self._blob_sums = _fixed(blobs.field("checksum"), np.uint32, "blobs", path)

    # -- header ---------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        return self.meta.get(META_PREFIX + key)

    @property
    def format_version(self) -> int:
        return int(self.meta[META_PREFIX + "format_version"])

    def plate_lists(self) -> tuple[list[str], list[str], list[dict[str, Any]]]:
        """Rows, columns and acquisitions, verified against the plate checksum."""
        batch = self._batch
        rows = _pylist(batch.column("rows").values, "rows", self.path)
        columns = _pylist(batch.column("columns").values, "columns", self.path)
        acquisitions = _pylist(batch.column("acquisitions").values, "acquisitions", self.path)
        expected = self.meta.get(META_PREFIX + "plate_checksum")
        if expected != str(plate_checksum(rows, columns, acquisitions)):
            raise corrupt(self.path, "plate section checksum mismatch", "plate")
        return rows, columns, acquisitions

    # -- entries ----------------------------------------------------------------

    def _record(self, column: _Binary, sums: np.ndarray, index: int, section: str) -> Any:
        data = column.get(index, self.path, section)
        if zlib.crc32(data) != int(sums[index]):
            raise corrupt(self.path, f"{section}[{index}]: checksum mismatch", section, index)
        try:
            return unpack(data)
        except Exception as exc:  # any msgpack failure here means damage
            raise corrupt(
                self.path, f"{section}[{index}]: undecodable record", section, index
            ) from exc

    def position(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.position_count:
            raise corrupt(self.path, f"positions[{index}]: index out of range", "positions", index)
        record = self._record(self._positions, self._position_sums, index, "positions")
        if not isinstance(record, dict) or tuple(record) != POSITION_NAMES:
            raise corrupt(self.path, f"positions[{index}]: unexpected record layout", "positions")
        return record

    def well(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.well_count:
            raise corrupt(self.path, f"wells[{index}]: index out of range", "wells", index)
        record = self._record(self._wells, self._well_sums, index, "wells")
        if not isinstance(record, dict) or tuple(record) != WELL_NAMES:
            raise corrupt(self.path, f"wells[{index}]: unexpected record layout", "wells")
        return record

    def blob(self, index: int) -> bytes:
        if not 0 <= index < len(self._blob_sums):
            raise corrupt(self.path, f"blobs[{index}]: index out of range", "blobs", index)
        data = self._blobs.get(index, self.path, "blobs")
        if zlib.crc32(data) != int(self._blob_sums[index]):
            raise corrupt(self.path, f"blobs[{index}]: checksum mismatch", "blobs", index)
        return bytes(data)

    def blob_or_none(self, index: int) -> bytes | None:
        return None if index == NO_BLOB else self.blob(index)

    def lookup(self, key: str) -> tuple[int, dict[str, Any]] | None:
        """``(target, record)`` of ``key``: a position row (>= 0) or ``-2 - well``.

        The record is decoded anyway to confirm the path, so it is returned
        rather than decoded twice.
        """
        h = key_hash(key)
        slot = h & self._mask
        for _ in range(self._mask + 1):
            stored_hash = int(self._slot_hash[slot])
            target = int(self._slot_target[slot])
            if int(self._slot_sums[slot]) != slot_checksum(slot, stored_hash, target):
                raise corrupt(self.path, f"lookup[{slot}]: checksum mismatch", "lookup", slot)
            if target == EMPTY_SLOT:
                return None
            if stored_hash == h:
                record = self.position(target) if target >= 0 else self.well(-2 - target)
                if record["path"] == key:
                    return target, record
            slot = (slot + 1) & self._mask
        return None

    def find(self, key: str) -> int | None:
        """Lookup target of ``key`` (see :meth:`lookup`), or None."""
        found = self.lookup(key)
        return None if found is None else found[0]

    def position_paths(self) -> list[str]:
        """Every position path in plate order, verified against ``paths_checksum``.

        Reads the typed ``path`` column: one checksum over all paths costs far
        less than decoding every record.
        """
        paths = _pylist(
            self._batch.column("positions").values.field("path"), "positions", self.path
        )
        if self.meta.get(META_PREFIX + "paths_checksum") != str(paths_checksum(paths)):
            raise corrupt(self.path, "position paths checksum mismatch", "positions")
        return paths

    def iter_positions(self) -> Iterator[dict[str, Any]]:
        for i in range(self.position_count):
            yield self.position(i)

    def iter_wells(self) -> Iterator[dict[str, Any]]:
        for i in range(self.well_count):
            yield self.well(i)

    def typed_positions(self) -> list[dict[str, Any]]:
        """The typed position columns as Python values (for verification)."""
        return _pylist(self._batch.column("positions").values, "positions", self.path)

    def typed_wells(self) -> list[dict[str, Any]]:
        return _pylist(self._batch.column("wells").values, "wells", self.path)

    def lookup_targets(self) -> Iterable[tuple[int, int, int]]:
        for i in range(self._mask + 1):
            yield i, int(self._slot_hash[i]), int(self._slot_target[i])

    def verify_lookup(self) -> None:
        for slot, h, target in self.lookup_targets():
            if int(self._slot_sums[slot]) != slot_checksum(slot, h, target):
                raise corrupt(self.path, f"lookup[{slot}]: checksum mismatch", "lookup", slot)

    @property
    def blob_count(self) -> int:
        return len(self._blob_sums)


def snapshot_not_found(path: Path) -> SnapshotNotFoundError:
    return SnapshotNotFoundError(
        f"no snapshot at {path}; create one with `snapmeta build {path.parent}`",
        store=str(path.parent),
        snapshot=str(path),
    )


def open_file(path: str | os.PathLike[str]) -> SnapshotFile:
    """Memory-map a snapshot file and check its header (O(1) in the plate size)."""
    path = Path(path)
    try:
        source = pa.memory_map(str(path), "r")
    except FileNotFoundError as exc:
        raise snapshot_not_found(path) from exc
    except (OSError, pa.ArrowException) as exc:
        # e.g. an empty file (nothing to map) or a directory under the name
        raise SnapshotFormatError(
            f"cannot map snapshot {path}: {exc}; rebuild it with `snapmeta build {path.parent}`",
            snapshot=str(path),
            reason=str(exc),
        ) from exc
    try:
        reader = ipc.open_file(source)
        schema = reader.schema
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        # any Arrow error here (invalid, not implemented, out of memory for a
        # damaged length) means the footer or schema is damaged
        raise corrupt(path, f"not an Arrow IPC file ({exc})") from exc
    meta = {
        k.decode(errors="replace"): v.decode(errors="replace")
        for k, v in (schema.metadata or {}).items()
    }
    if meta.get(META_PREFIX + "magic") != MAGIC:
        raise SnapshotFormatError(
            f"{path} is not a snapmeta snapshot (missing or wrong magic)",
            snapshot=str(path),
            reason="magic",
        )
    raw_version = meta.get(META_PREFIX + "format_version", "")
    if not raw_version.isdigit() or int(raw_version) not in SUPPORTED_VERSIONS:
        raise UnsupportedFormatVersionError(
            f"snapshot {path} has format version {raw_version!r}; this snapmeta reads "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}. Upgrade snapmeta or rebuild the "
            f"snapshot with `snapmeta build {path.parent}`",
            snapshot=str(path),
            reason="version",
            found_version=raw_version,
            supported=SUPPORTED_VERSIONS,
        )
    if meta.get(META_PREFIX + "header_checksum") != str(header_checksum(meta)):
        raise corrupt(path, "header checksum mismatch", "header")
    if not schema.remove_metadata().equals(SCHEMA):
        raise corrupt(path, "schema does not match format version 1", "schema")
    try:
        if reader.num_record_batches != 1:
            raise corrupt(path, "expected exactly one record batch")
        batch = reader.get_batch(0)
        batch.validate()
        if batch.num_rows != 1:
            raise corrupt(path, "expected exactly one row")
        return SnapshotFile(path, source, batch, meta)
    except SnapshotFormatError:
        raise
    except (pa.ArrowException, OSError, ValueError, IndexError, KeyError, TypeError) as exc:
        raise corrupt(path, f"unreadable record batch ({exc})") from exc
