"""Read a snapshot: map it, check what is touched, find nodes in O(1).

Opening maps the file and reads its footer, schema and plate entry: a few
pages, whatever the plate's size. Every other section is checked where it is
read: a variable-size entry by its CRC when it is decoded, a fixed-size
section by its section CRC when it is read whole (listing, a confirmed miss,
``verify``). A damaged or crafted file therefore gives
:class:`~snapmeta.errors.SnapshotCorruptError`, never wrong metadata.

Mapped snapshots are kept per process, keyed by path and file identity, so
workers on a node share the pages through the page cache and a replaced
snapshot (``os.replace`` gives it a new inode) is mapped anew.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
import threading
import zlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import pyarrow as pa
import pyarrow.ipc as ipc

from . import _format as fmt
from ._fsio import UnreadableFileError, UnsafePathError, check_relative, open_regular
from .errors import (
    SnapshotCorruptError,
    SnapshotFormatError,
    SnapshotNotFoundError,
    UnsupportedFormatVersionError,
)

__all__ = ["Identity", "SnapshotReader", "open_file"]

Identity = tuple[int, int, int, int]
T = TypeVar("T")
_EMPTY: Mapping[int, Any] = MappingProxyType({})

if sys.byteorder != "little":  # the format is little-endian; views below assume it
    raise ImportError("snapmeta reads snapshots on little-endian machines only")


def _corrupt(
    path: str, reason: str, section: str | None = None, index: int | None = None
) -> SnapshotCorruptError:
    return SnapshotCorruptError(
        f"snapshot {path} is corrupt: {reason}; rebuild it with `snapmeta build`",
        snapshot=path,
        reason=reason,
        section=section,
        index=index,
    )


class _Entries:
    """One ``list<binary>`` section as offsets and bytes, bounds-checked per entry."""

    __slots__ = ("count", "data", "name", "offsets")

    def __init__(self, name: str, column: pa.Array, path: str) -> None:
        values = _list_values(name, column, path)
        buffers = values.buffers()
        self.name = name
        self.count = len(values)
        self.offsets = _view(buffers[1], "i", self.count + 1, name, path)
        self.data = memoryview(buffers[2] if buffers[2] is not None else b"")

    def raw(self, index: int, path: str) -> memoryview:
        start = self.offsets[index]
        end = self.offsets[index + 1]
        if not 0 <= start <= end <= len(self.data):
            raise _corrupt(path, f"{self.name}[{index}]: offsets out of bounds", self.name, index)
        return self.data[start:end]


def _view(
    buffer: pa.Buffer | None, code: Literal["i", "I", "B"], count: int, name: str, path: str
) -> memoryview:
    size = {"i": 4, "I": 4, "B": 1}[code] * count
    if buffer is None or buffer.size < size:
        raise _corrupt(path, f"{name}: buffer too short", name)
    return memoryview(buffer).cast("B")[:size].cast(code)


def _list_values(name: str, column: pa.Array, path: str) -> pa.Array:
    """The values of a one-row list column, after checks that touch no data page.

    Readers use the values directly; the list's own offsets (which must be
    ``[0, n]``) are checked with the whole-section checks, so that an open
    reads only the pages it needs.
    """
    if len(column) != 1 or column.null_count:
        raise _corrupt(path, f"{name}: expected one non-null list", name)
    values = column.values
    if values.null_count:
        raise _corrupt(path, f"{name}: null values", name)
    return values


def _check_list_offsets(name: str, column: pa.Array, path: str) -> None:
    offsets = _view(column.buffers()[1], "i", 2, name, path)
    if offsets[0] != 0 or offsets[1] != len(column.values):
        raise _corrupt(path, f"{name}: list offsets do not cover the values", name)


class SnapshotReader:
    """A mapped snapshot. Thread-safe; decoded shared entries are cached."""

    def __init__(self, path: str, fd: int, identity: Identity, data: mmap.mmap) -> None:
        self.path = path
        self.identity = identity
        # The descriptor becomes this reader's (and closed by it) only once the file
        # passed every check below; until then open_file owns and closes it.
        self._fd = -1
        self._mmap = data
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], Any] = {}
        self._checked: set[str] = set()
        buf = pa.py_buffer(data)
        if data[:6] != b"ARROW1":
            raise _corrupt(path, "not an Arrow IPC file (no leading magic)")
        try:
            reader = ipc.open_file(pa.BufferReader(buf))
            schema = reader.schema
        except (pa.ArrowException, OSError, ValueError, EOFError) as exc:
            raise _corrupt(path, f"not an Arrow IPC file ({exc})") from exc
        _check_version(path, schema)
        if not schema.equals(fmt.SCHEMA, check_metadata=True):
            raise _corrupt(path, "the schema is not format 2's", "schema")
        _check_leading_schema(path, buf, schema)
        try:
            if reader.num_record_batches != 1:
                raise _corrupt(path, "expected exactly one record batch")
            batch = reader.get_batch(0)
            batch.validate()
        except SnapshotFormatError:
            raise
        except (pa.ArrowException, OSError, ValueError, IndexError, EOFError) as exc:
            raise _corrupt(path, f"unreadable record batch ({exc})") from exc
        if batch.num_rows != 1 or batch.column("plate").null_count:
            raise _corrupt(path, "expected exactly one row")
        self._batch = batch
        lookup = _list_values("lookup", batch.column("lookup"), path)
        self._slots = _view(lookup.buffers()[1], "I", len(lookup), "lookup", path)
        capacity = len(self._slots)
        if capacity < 8 or capacity & (capacity - 1):
            raise _corrupt(path, "lookup: capacity is not a power of two", "lookup")
        self._mask = capacity - 1
        self._paths = _Entries("paths", batch.column("paths"), path)
        self._nodes = _Entries("nodes", batch.column("nodes"), path)
        if self._paths.count != self._nodes.count:
            raise _corrupt(path, "paths and nodes differ in length", "nodes")
        contents = _list_values("contents", batch.column("contents"), path)
        self.content_count = len(contents)
        self._contents = _view(contents.buffers()[1], "B", 16 * len(contents), "contents", path)
        self._shared = {
            name: _Entries(name, batch.column(name), path) for name in fmt.SHARED_SECTIONS
        }
        plate_column = batch.column("plate")
        plate_buffers = plate_column.buffers()
        offsets = _view(plate_buffers[1], "i", 2, "plate", path)
        plate_data = memoryview(plate_buffers[2] if plate_buffers[2] is not None else b"")
        if not 0 <= offsets[0] <= offsets[1] <= len(plate_data):
            raise _corrupt(path, "plate: offsets out of bounds", "plate")
        self.plate = self._decode(
            lambda: fmt.decode_plate(
                fmt.open_entry("plate", plate_data[offsets[0] : offsets[1]], "plate", None),
                self.content_count,
            )
        )
        if self.plate.wells + self.plate.positions != self._nodes.count:
            raise _corrupt(path, "node count does not match the plate entry", "plate")
        self.node_count = self._nodes.count
        self._fd = fd

    # -- helpers -------------------------------------------------------------------

    def _decode(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except fmt.FormatError as exc:
            raise _corrupt(self.path, str(exc), exc.section, exc.index) from exc

    def _shared_entry(self, section: str, index: int, decode: Callable[[Any], T]) -> T:
        key = (section, index)
        found = self._cache.get(key)
        if found is None:
            entries = self._shared[section]
            if not 0 <= index < entries.count:
                raise _corrupt(self.path, f"{section}[{index}]: out of range", section, index)
            raw = entries.raw(index, self.path)
            found = self._decode(
                lambda: decode(fmt.open_entry(fmt.entry_name(section, index), raw, section, index))
            )
            self._cache[key] = found
        return found

    # -- shared entries ----------------------------------------------------------------

    def template(self, index: int) -> fmt.Template:
        return self._shared_entry("templates", index, lambda v: fmt.decode_template(v, index))

    def leaf_count(self, template: int) -> int:
        return len(self.template(template).defaults)

    def image(self, index: int) -> fmt.Image:
        return self._shared_entry(
            "images",
            index,
            lambda v: fmt.decode_image(
                v,
                index,
                self.leaf_count,
                self._shared["templates"].count,
                self._shared["arrays"].count,
            ),
        )

    def array(self, index: int) -> dict[str, Any]:
        """The array document (JSON value) of entry ``index``. Callers must not mutate it."""

        zarr_format = self.plate.zarr_format
        return self._shared_entry(
            "arrays", index, lambda v: fmt.decode_array(v, index, zarr_format)
        )

    def array_key(self, index: int) -> tuple[Identity, int]:
        """Key of entry ``index``'s parsed metadata in per-process caches."""
        return (self.identity, index)

    def digest(self, content: int) -> bytes:
        if not 0 <= content < self.content_count:
            raise _corrupt(self.path, f"contents[{content}]: out of range", "contents", content)
        return bytes(self._contents[16 * content : 16 * content + 16])

    @property
    def counts(self) -> dict[str, int]:
        return {name: e.count for name, e in self._shared.items()}

    # -- nodes -----------------------------------------------------------------------

    def node_path(self, index: int) -> str:
        """Path of node ``index``, checked to be a well or position path inside the plate."""
        try:
            path = str(self._paths.raw(index, self.path), "utf-8")
            check_relative(path)
        except (UnicodeDecodeError, UnsafePathError) as exc:
            raise _corrupt(self.path, f"paths[{index}]: {exc}", "paths", index) from exc
        if path.count("/") not in (1, 2):
            raise _corrupt(self.path, f"paths[{index}]: not a plate path", "paths", index)
        return path

    def find(self, path: str) -> tuple[int, memoryview] | None:
        """``(node index, payload)`` of ``path``, or None.

        A hit is exact: the entry's CRC covers the path asked for. None may
        hide damage; callers confirm a miss with :meth:`check_sections`.
        """
        key = path.encode()
        seed = zlib.crc32(b"\0", zlib.crc32(key))
        mask = self._mask
        slot = zlib.crc32(key) & mask
        slots = self._slots
        nodes = self._nodes
        for _ in range(mask + 1):
            target = slots[slot]
            if target == fmt.NO_SLOT:
                return None
            index = target - 1
            if index >= nodes.count:
                raise _corrupt(self.path, f"lookup[{slot}]: node out of range", "lookup", slot)
            entry = nodes.raw(index, self.path)
            if len(entry) >= 5 and zlib.crc32(entry[4:], seed) == int.from_bytes(
                entry[:4], "little"
            ):
                return index, entry[4:]
            if self.node_path(index) == path:
                raise _corrupt(self.path, f"nodes[{index}]: checksum mismatch", "nodes", index)
            slot = (slot + 1) & mask
        return None

    def node_payload(self, index: int) -> tuple[str, memoryview]:
        """Path and checked payload of node ``index`` (for listing and verify)."""
        if not 0 <= index < self.node_count:
            raise _corrupt(self.path, f"nodes[{index}]: out of range", "nodes", index)
        path = self.node_path(index)
        entry = self._nodes.raw(index, self.path)
        if len(entry) < 5 or fmt.crc32(path, b"\0", entry[4:]) != int.from_bytes(
            entry[:4], "little"
        ):
            raise _corrupt(self.path, f"nodes[{index}]: checksum mismatch", "nodes", index)
        return path, entry[4:]

    def unpack(self, payload: memoryview, index: int) -> Any:
        try:
            return fmt.unpack(payload)
        except Exception as exc:
            raise _corrupt(
                self.path, f"nodes[{index}]: undecodable record", "nodes", index
            ) from exc

    def well(self, index: int, payload: memoryview) -> fmt.WellRecord:
        value = self.unpack(payload, index)
        return self._decode(
            lambda: fmt.decode_well(
                value,
                index,
                self.plate.mtime_base,
                self.leaf_count,
                self._shared["templates"].count,
                self.content_count,
            )
        )

    def position(self, index: int, payload: memoryview) -> tuple[fmt.PositionRecord, fmt.Image]:
        value = self.unpack(payload, index)
        try:
            image_index, raw_patch, acquisition, docs = fmt.decode_position(
                value,
                index,
                self.plate.mtime_base,
                self._shared["images"].count,
                self.content_count,
            )
            image = self._cache.get(("images", image_index)) or self.image(image_index)
            if len(docs) != fmt.position_documents(self.plate.zarr_format, len(image.levels)):
                raise fmt.FormatError("nodes", index, "document count does not match the levels")
            patch = (
                fmt.decode_patch(raw_patch, self.leaf_count(image.template), "nodes", index)
                if raw_patch
                else _EMPTY
            )
            return fmt.PositionRecord(image_index, patch, acquisition, docs), image
        except fmt.FormatError as exc:
            raise _corrupt(self.path, str(exc), exc.section, exc.index) from exc

    # -- whole sections ------------------------------------------------------------------

    def paths(self) -> list[str]:
        """Every node path in plate order, checked against the section CRC."""
        paths = [self.node_path(i) for i in range(self.node_count)]
        self._check_once("paths", lambda: fmt.paths_checksum(paths))
        return paths

    def check_paths(self) -> None:
        """Check the paths section whole, once per process (node paths are then trusted)."""
        if "paths" not in self._checked:
            self.paths()

    def confirm_miss(self, path: str) -> None:
        """Raise if ``path`` is a node after all: the lookup would then be damaged."""
        self.check_sections()
        known = self._cache.get(("paths", -1))
        if known is None:
            known = self._cache[("paths", -1)] = frozenset(self.paths())
        if path in known:
            raise _corrupt(self.path, f"lookup: {path!r} exists but is not found", "lookup")

    def check_sections(self) -> None:
        """Check the lookup and path sections whole (confirms a miss is real)."""
        self.check_lists()
        self.paths()
        self._check_once("lookup", lambda: zlib.crc32(self._slots))

    def check_lists(self) -> None:
        """Every list column's offsets are ``[0, n]`` (the single value holds all entries)."""
        if "lists" not in self._checked:
            for field in fmt.SCHEMA:
                if field.name != "plate":
                    _check_list_offsets(field.name, self._batch.column(field.name), self.path)
            self._checked.add("lists")

    def check_contents(self) -> None:
        self._check_once("contents", lambda: zlib.crc32(self._contents))

    def _check_once(self, section: str, compute: Callable[[], int]) -> None:
        if section in self._checked:
            return
        if compute() != self.plate.checksums[section]:
            raise _corrupt(self.path, f"{section}: section checksum mismatch", section)
        self._checked.add(section)

    def still_mapped_whole(self) -> bool:
        """Whether the mapped file still has the size and mtime it was mapped with.

        A truncation would make the next page touched SIGBUS; a rewrite in
        place would mix two files' bytes.
        """
        try:
            st = os.fstat(self._fd)
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) == self.identity[2:]

    def close(self) -> None:
        # The mapping stays valid until every view of it is gone; closing the
        # descriptor releases the file itself.
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _check_version(path: str, schema: pa.Schema) -> None:
    metadata = schema.metadata or {}
    found = metadata.get(fmt.META_KEY)
    if found is None:
        if b"snapmeta.format_version" in metadata:  # written by snapmeta 0.1
            raw = metadata[b"snapmeta.format_version"].decode(errors="replace")
            raise UnsupportedFormatVersionError(
                f"snapshot {path} has format version {raw}, from an older snapmeta; this "
                f"snapmeta reads version {fmt.FORMAT_VERSION}. Rebuild it with `snapmeta build`",
                snapshot=path,
                reason="version",
                found_version=raw,
                supported=(fmt.FORMAT_VERSION,),
            )
        raise SnapshotFormatError(
            f"{path} is not a snapmeta snapshot", snapshot=path, reason="no snapmeta.format key"
        )
    if found != str(fmt.FORMAT_VERSION).encode():
        raw = found.decode(errors="replace")
        raise UnsupportedFormatVersionError(
            f"snapshot {path} has format version {raw!r}; this snapmeta reads version "
            f"{fmt.FORMAT_VERSION}. Upgrade snapmeta or rebuild it with `snapmeta build`",
            snapshot=path,
            reason="version",
            found_version=raw,
            supported=(fmt.FORMAT_VERSION,),
        )


def _check_leading_schema(path: str, buf: pa.Buffer, footer: pa.Schema) -> None:
    """The schema message at the start of the file must equal the footer's."""
    try:
        message = ipc.read_message(pa.BufferReader(buf.slice(8)))
        leading = ipc.read_schema(message)
    except (pa.ArrowException, OSError, ValueError, EOFError) as exc:
        raise _corrupt(path, f"unreadable leading schema ({exc})", "schema") from exc
    if not leading.equals(footer, check_metadata=True):
        raise _corrupt(path, "the leading schema differs from the footer's", "schema")


def open_file(path: str) -> SnapshotReader:
    """Map and check a snapshot file (O(1) in the plate size)."""
    try:
        fd, st = open_regular(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise SnapshotNotFoundError(
            f"no snapshot at {path}", store=os.path.dirname(path), snapshot=path
        ) from exc
    except UnreadableFileError as exc:
        raise SnapshotFormatError(
            f"cannot read snapshot {path}: {exc.strerror}", snapshot=path, reason=str(exc.strerror)
        ) from exc
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    try:
        if st.st_size < 64:
            raise _corrupt(path, f"{st.st_size} bytes is too short for a snapshot")
        try:
            data = mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ, flags=mmap.MAP_SHARED)
        except (OSError, ValueError) as exc:
            raise SnapshotFormatError(
                f"cannot map snapshot {path}: {exc}", snapshot=path, reason=str(exc)
            ) from exc
        return SnapshotReader(path, fd, identity, data)
    except BaseException:
        os.close(fd)
        raise


# ---------------------------------------------------------------------------
# per-process cache

_cache: dict[str, SnapshotReader] = {}
_cache_lock = threading.Lock()


def cached(path: str) -> SnapshotReader | None:
    """The reader mapped for ``path`` in this process, without touching the filesystem."""
    return _cache.get(path)


def mapped(path: str, st: os.stat_result | None = None) -> SnapshotReader:
    """The reader of the snapshot at ``path`` now: one ``stat`` (or ``st``, taken by the
    caller) tells whether the cached mapping is still the file there; a replaced file
    is mapped anew."""
    try:
        if st is None:
            st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise SnapshotNotFoundError(
            f"no snapshot at {path}", store=os.path.dirname(path), snapshot=path
        ) from None
    except OSError as exc:  # a symlink loop, EACCES
        raise SnapshotFormatError(
            f"cannot read snapshot {path}: {exc.strerror}", snapshot=path, reason=str(exc.strerror)
        ) from None
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    reader = _cache.get(path)
    if reader is not None and reader.identity == identity and reader.still_mapped_whole():
        return reader
    with _cache_lock:
        reader = _cache.get(path)
        if reader is None or reader.identity != identity or not reader.still_mapped_whole():
            # Handles holding the old reader keep its mapping: os.replace gave
            # the new snapshot a new inode.
            reader = _cache[path] = open_file(path)
    return reader


def clear_cache() -> None:
    """Forget every mapped snapshot of this process (handles keep theirs)."""
    with _cache_lock:
        _cache.clear()
