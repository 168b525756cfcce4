"""Write a snapshot: deduplicate shared parts, stream node records, replace atomically.

Node records are appended to flat buffers as the builder produces them, so
memory grows by the encoded bytes of a node (about 100 bytes), not by Python
objects. Shared parts (attribute templates, image layouts, array documents,
document digests) are stored once and referenced by index.

The file is written to a temporary file in the destination directory,
fsynced, made read-only and moved over the old snapshot with ``os.replace``:
readers never see a partial file, and readers that have the old snapshot
mapped keep a valid mapping, because the new file is a new inode.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
import zlib
from array import array as IntArray
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from . import _format as fmt

__all__ = ["SnapshotWriter", "TempFile", "stale_temp_files"]

TEMP_SUFFIX = ".tmp"
_MAX_SECTION = 2**31 - 1  # Arrow binary offsets are int32


class TempFile:
    """The snapshot's temporary file, created when the build starts.

    Creating it first proves the destination is writable before any document
    is read, and its mtime is the build's start on the destination's clock.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = target.with_name(
            f"{target.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}"
        )
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def mtime_ns(self) -> int:
        return os.fstat(self.fd).st_mtime_ns

    def touch(self) -> int:
        """Set the file's times to now (the filesystem's clock) and return its mtime."""
        os.utime(self.fd, None)
        return self.mtime_ns()

    def commit(self, data_writer: Any) -> None:
        with os.fdopen(os.dup(self.fd), "wb", closefd=True) as fh:
            fh.truncate(0)
            data_writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.fchmod(self.fd, 0o444)  # plain cp/truncate/rsync --inplace onto it then fail
        os.close(self.fd)
        self.fd = -1
        os.replace(self.path, self.target)
        _fsync_dir(self.target.parent)

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; some filesystems refuse fsync on directories.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_array_node(array_dir: Path, zarr_format: int, size: int) -> None:
    """Describe the in-store snapshot (the chunk ``0`` of ``array_dir``) as a zarr array.

    The description is rewritten after the chunk: a reader of the snapshot
    maps the chunk file and never needs it; zarr needs it to list the plate.
    """
    attributes = {
        "snapmeta": {
            "format": fmt.FORMAT_VERSION,
            "about": "metadata snapshot of this plate, written by snapmeta: the chunk is an "
            "Arrow IPC file; rebuild it with `snapmeta build`",
        }
    }
    docs: dict[str, dict[str, Any]]
    if zarr_format == 3:
        docs = {
            "zarr.json": {
                "zarr_format": 3,
                "node_type": "array",
                "shape": [size],
                "data_type": "uint8",
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [size]}},
                "chunk_key_encoding": {"name": "v2", "configuration": {"separator": "."}},
                "fill_value": 0,
                "codecs": [{"name": "bytes"}],
                "attributes": attributes,
            }
        }
    else:
        docs = {
            ".zarray": {
                "zarr_format": 2,
                "shape": [size],
                "chunks": [size],
                "dtype": "|u1",
                "compressor": None,
                "fill_value": 0,
                "order": "C",
                "filters": None,
                "dimension_separator": ".",
            },
            ".zattrs": attributes,
        }
    write_json_documents(array_dir, docs)


ARRAY_DOCUMENTS = (".zarray", ".zattrs", "zarr.json")


def write_json_documents(directory: Path, docs: dict[str, dict[str, Any]]) -> None:
    """Replace each document atomically (temp file, fsync, rename), then fsync the directory."""
    for name, doc in docs.items():
        target = directory / name
        tmp = target.with_name(f"{name}.{os.getpid()}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=2)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
    _fsync_dir(directory)


def stale_temp_files(
    target: Path, others: tuple[str, ...] = (), older_than_s: float = 3600.0
) -> list[Path]:
    """Temp files of builders that died long ago (younger ones may be running):
    the snapshot's, and those of the ``others`` files written beside it."""
    now = time.time()
    found = []
    candidates = [
        p for name in (target.name, *others) for p in target.parent.glob(f"{name}.*{TEMP_SUFFIX}")
    ]
    for path in candidates:
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > older_than_s:
                found.append(path)
    return found


class _Section:
    """A variable-size section being appended to: flat bytes plus int32 offsets."""

    __slots__ = ("data", "name", "offsets")

    def __init__(self, name: str) -> None:
        self.name = name
        self.data = bytearray()
        self.offsets = IntArray("i", [0])

    def append(self, value: bytes) -> int:
        if len(self.data) + len(value) > _MAX_SECTION:
            raise OverflowError(f"the {self.name} section would exceed 2 GiB")
        self.data += value
        self.offsets.append(len(self.data))
        return len(self.offsets) - 2

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def arrow_single(self, value: bytes) -> pa.Array:
        self.append(value)
        return self.arrow(pa.binary())

    def arrow(self, type_: pa.DataType) -> pa.Array:
        return pa.Array.from_buffers(
            type_, len(self), [None, pa.py_buffer(self.offsets), pa.py_buffer(self.data)]
        )


class _Shared:
    """A deduplicated shared section: each distinct payload is stored once."""

    __slots__ = ("index", "section")

    def __init__(self, name: str) -> None:
        self.section = _Section(name)
        self.index: dict[bytes, int] = {}

    def add(self, payload: bytes) -> int:
        found = self.index.get(payload)
        if found is None:
            number = len(self.section)
            found = self.index[payload] = self.section.append(
                fmt.seal(fmt.entry_name(self.section.name, number), payload)
            )
        return found


class SnapshotWriter:
    """Collects a plate's entries in plate order and writes them as one snapshot.

    Call :meth:`content`, :meth:`array`, :meth:`template` and :meth:`image`
    to get the indexes of shared parts, then :meth:`add_well` for each well
    followed by :meth:`add_position` for each of its positions.
    """

    def __init__(self, mtime_base: int) -> None:
        self.mtime_base = mtime_base
        self._paths = _Section("paths")
        self._nodes = _Section("nodes")
        self._hashes = IntArray("I")
        self._paths_crc = 0
        self._contents: dict[bytes, int] = {}
        self._arrays = _Shared("arrays")
        self._templates = _Shared("templates")
        self._template_defaults: dict[bytes, tuple[int, tuple[Any, ...]]] = {}
        self._images = _Shared("images")
        self._seen: dict[bytes, tuple[int, dict[int, Any]]] = {}
        self.wells = 0
        self.positions = 0

    # -- shared parts -------------------------------------------------------------------

    def content(self, digest: bytes) -> int:
        if len(digest) != 16:
            raise ValueError("a content digest has 16 bytes")
        return self._contents.setdefault(digest, len(self._contents))

    def array_document(self, document: Mapping[str, Any]) -> int:
        return self._arrays.add(fmt.pack(dict(document)))

    def template(self, value: Any) -> tuple[int, dict[int, Any]]:
        """``(template index, patch)`` for a node's attributes."""
        packed = fmt.pack(value)
        seen = self._seen.get(packed)
        if seen is not None:  # many nodes have identical attributes
            return seen[0], dict(seen[1])
        shape, leaves = fmt.split_leaves(value)
        key = fmt.pack(shape)
        found = self._template_defaults.get(key)
        if found is None:
            index = self._templates.add(fmt.pack([shape, leaves]))
            found = self._template_defaults[key] = (index, tuple(leaves))
        index, defaults = found
        patch = fmt.make_patch(defaults, leaves)
        if len(self._seen) >= 4096:
            self._seen.clear()
        self._seen[packed] = (index, patch)
        return index, dict(patch)

    def image(self, image: fmt.Image) -> int:
        return self._images.add(fmt.pack(image.encode()))

    # -- nodes ---------------------------------------------------------------------------

    def _add(self, path: str, payload: bytes) -> None:
        encoded = path.encode()
        self._paths.append(encoded)
        self._paths_crc = zlib.crc32(encoded + b"\0", self._paths_crc)
        self._nodes.append(fmt.seal(path, payload))
        self._hashes.append(fmt.key_hash(path))

    def add_well(self, path: str, record: fmt.WellRecord) -> None:
        self._add(path, fmt.encode_well(record, self.mtime_base))
        self.wells += 1

    def add_position(self, path: str, record: fmt.PositionRecord) -> None:
        self._add(path, fmt.encode_position(record, self.mtime_base))
        self.positions += 1

    # -- output --------------------------------------------------------------------------

    def _lookup(self) -> IntArray[int]:
        capacity = fmt.lookup_capacity(len(self._hashes))
        slots = IntArray("I", bytes(4 * capacity))
        mask = capacity - 1
        for node, h in enumerate(self._hashes):
            slot = h & mask
            while slots[slot] != fmt.NO_SLOT:
                slot = (slot + 1) & mask
            slots[slot] = node + 1
        return slots

    def batch(self, plate: Mapping[str, Any]) -> pa.RecordBatch:
        """The record batch; ``plate`` gives the plate entry's remaining fields."""
        slots = self._lookup()
        digests = b"".join(self._contents)
        record = fmt.PlateRecord(
            **plate,
            mtime_base=self.mtime_base,
            wells=self.wells,
            positions=self.positions,
            checksums={
                "lookup": fmt.crc32(slots.tobytes()),
                "paths": self._paths_crc,
                "contents": fmt.crc32(digests),
            },
        )

        def one_row(values: pa.Array) -> pa.Array:
            offsets = pa.Array.from_buffers(
                pa.int32(), 2, [None, pa.py_buffer(IntArray("i", [0, len(values)]))]
            )
            return pa.ListArray.from_arrays(
                offsets, values, type=pa.list_(pa.field("item", values.type, nullable=False))
            )

        columns = [
            one_row(pa.Array.from_buffers(pa.uint32(), len(slots), [None, pa.py_buffer(slots)])),
            one_row(self._paths.arrow(pa.string())),
            one_row(self._nodes.arrow(pa.binary())),
            one_row(
                pa.Array.from_buffers(
                    pa.binary(16), len(self._contents), [None, pa.py_buffer(digests)]
                )
            ),
            one_row(self._arrays.section.arrow(pa.binary())),
            one_row(self._templates.section.arrow(pa.binary())),
            one_row(self._images.section.arrow(pa.binary())),
            _Section("plate").arrow_single(fmt.seal("plate", record.encode())),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=fmt.SCHEMA)

    def write(self, temp: TempFile, plate: Mapping[str, Any]) -> None:
        """Write the snapshot into ``temp`` and move it into place."""
        batch = self.batch(plate)

        def write_ipc(fh: Any) -> None:
            with ipc.new_file(fh, batch.schema) as writer:
                writer.write_batch(batch)

        temp.commit(write_ipc)
