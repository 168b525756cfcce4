"""zarr arrays built from metadata held in memory: no store read to open one.

This is the only module that constructs zarr arrays, and it uses zarr's
public classes (``zarr.AsyncArray``, ``zarr.Array``, ``zarr.storage``).

- Parsing an array document costs more than the rest of an open, so parsed
  metadata is cached per distinct document; building an ``AsyncArray`` costs
  as much again (its codec pipeline), so one prototype is built per document
  and copied for each position, with the position's own path.
- zarr updates attributes in place on the metadata object, so every handle
  gets its own metadata copy with its own attributes: a write through one
  handle never reaches another array's document.
- With the zarrs codec pipeline active (iohub 0.3.11 switches it on), zarr
  stops honouring read-only stores for chunk writes; arrays opened in mode
  ``"r"`` refuse writes themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import os
import stat
import uuid
from collections.abc import Callable
from typing import Any

import zarr
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.buffer import default_buffer_prototype
from zarr.storage import LocalStore, StorePath

from ._fsio import (
    DIR_FLAGS,
    READ_FLAGS,
    UnreadableFileError,
    UnsafePathError,
    check_relative,
    open_beneath,
    open_regular,
    resolves_inside,
)

__all__ = ["array_from_metadata", "local_store", "parse_metadata"]


class GuardedStore(LocalStore):
    """zarr's local store, refusing chunk paths that lead out of the store or to
    anything but a regular file (a FIFO would hang a read, ``/dev/zero`` never end it).

    Where the kernel can (Linux openat2 with ``RESOLVE_BENEATH``), a chunk is
    opened by one walk that refuses to leave the store, without blocking, and
    checked to be a regular file: the same path walk zarr's own read makes, so
    no extra round trip. A write or delete replaces or removes the directory
    entry and never follows it, so only its directory is resolved that way, once
    per directory and store object. What the kernel cannot decide (an absolute
    symlink, an old kernel) is checked component by component: one ``lstat`` per
    directory, and a symlink must resolve inside the store. The zarrs codec
    pipeline does not know this class and leaves its I/O to zarr.
    """

    def __init__(self, root: str, *, read_only: bool) -> None:
        super().__init__(root, read_only=read_only)
        self._base = str(root)
        self._dirs: set[str] = set()

    def _checked_key(self, key: str) -> None:
        try:
            check_relative(key)
        except UnsafePathError as exc:
            raise self._refuse(key, str(exc)) from None

    def _guard(self, key: str) -> None:
        """The slow check: each directory on the key's path, one at a time."""
        self._checked_key(key)
        parent = key.rpartition("/")[0]
        if parent and not self._dir_inside(parent):
            raise self._refuse(key, "a directory on its path leads out of the store")

    def _guard_write(self, key: str) -> None:
        parent = key.rpartition("/")[0]
        if parent in self._dirs:
            return
        fd = self._parent_fd(key, create=False)
        if fd is not None:
            os.close(fd)
            self._remember(parent)

    def _parent_fd(self, key: str, *, create: bool) -> int | None:
        """A descriptor of the key's directory, resolved inside the store and, with
        ``create``, made where missing. None where there is no such directory yet
        (without ``create``: what exists of the path is inside, and zarr creates
        the rest) or where the kernel cannot decide, the lstat walk having passed."""
        self._checked_key(key)
        parent = key.rpartition("/")[0]
        try:
            return open_beneath(self._base, parent or ".", DIR_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            if not create:
                return None
            fd = self._make_dirs(parent)
        except OSError:
            fd = None  # escape, absolute symlink or no openat2: decide slowly
        if fd is None:
            self._guard(key)
        return fd

    def _remember(self, rel: str) -> None:
        if len(self._dirs) > 65536:
            self._dirs.clear()
        self._dirs.add(rel)

    def _dir_inside(self, rel: str) -> bool:
        """Whether directory ``rel`` stays inside the store, one ``lstat`` per new
        directory (its parent is known by then)."""
        if rel in self._dirs:
            return True
        up = rel.rpartition("/")[0]
        if up and not self._dir_inside(up):
            return False
        try:
            st = os.lstat(f"{self._base}/{rel}")
        except OSError:
            return True  # missing: zarr creates it (a write) or finds nothing (a read)
        if stat.S_ISLNK(st.st_mode) and not resolves_inside(self._base, rel):
            return False
        self._remember(rel)
        return True

    def _refuse(self, key: str, reason: str) -> Exception:
        from .errors import UnsafeStoreError

        return UnsafeStoreError(
            f"{self._base}/{key}: {reason}; snapmeta does not read or write it",
            store=self._base,
            path=key,
            reason=reason,
        )

    def _open_chunk(self, key: str) -> tuple[int, os.stat_result] | None:
        """A regular file's descriptor and status, or None where no chunk is."""
        self._checked_key(key)
        try:
            fd = open_beneath(self._base, key, READ_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EAGAIN, errno.ELOOP):
                raise self._refuse(key, exc.strerror or str(exc)) from None
            return self._open_chunk_slowly(key)
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise self._refuse(key, "not a regular file")
        return fd, st

    def _open_chunk_slowly(self, key: str) -> tuple[int, os.stat_result] | None:
        self._guard(key)
        path = f"{self._base}/{key}"
        try:
            try:
                return open_regular(path, nofollow=True)
            except UnreadableFileError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                if not resolves_inside(self._base, key):
                    raise self._refuse(key, "a symlink out of the store") from None
                return open_regular(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except UnreadableFileError as exc:
            raise self._refuse(key, str(exc.strerror)) from None

    def _read(self, key: str, byte_range: Any) -> bytes | None:
        opened = self._open_chunk(key)
        if opened is None:
            return None
        fd, st = opened
        try:
            size = st.st_size
            if byte_range is None:
                start, end = 0, size
            elif isinstance(byte_range, RangeByteRequest):
                start, end = byte_range.start, min(byte_range.end, size)
            elif isinstance(byte_range, OffsetByteRequest):
                start, end = byte_range.offset, size
            elif isinstance(byte_range, SuffixByteRequest):
                start, end = max(0, size - byte_range.suffix), size
            else:
                raise TypeError(f"Unexpected byte_range, got {byte_range}.")
            chunks = []
            position = start
            while position < end:
                chunk = os.pread(fd, min(end - position, 1 << 24), position)
                if not chunk:
                    break
                chunks.append(chunk)
                position += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        if prototype is None:  # zarr's own default; its pipeline always passes one
            prototype = default_buffer_prototype()
        # a thread per read, as zarr's own store does: chunks of one call load together
        data = await asyncio.to_thread(self._read, key, byte_range)
        return None if data is None else prototype.buffer.from_bytes(data)

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
        reads = [asyncio.to_thread(self._read, key, byte_range) for key, byte_range in key_ranges]
        return [
            None if data is None else prototype.buffer.from_bytes(data)
            for data in await asyncio.gather(*reads)
        ]

    async def set(self, key: str, value: Any) -> None:
        if self.read_only:
            raise ValueError("store was opened in read-only mode and does not support writing")
        await asyncio.to_thread(self._put, key, value)

    async def set_if_not_exists(self, key: str, value: Any) -> None:
        self._guard_write(key)
        await super().set_if_not_exists(key, value)

    async def delete(self, key: str) -> None:
        self._guard_write(key)
        await super().delete(key)

    def _put(self, key: str, value: Any) -> None:
        """zarr's write (a temporary file renamed over the chunk), done inside the
        directory the confinement check opened: one path walk per write where
        zarr makes four (mkdir, create, and both sides of the rename)."""
        dir_fd = self._parent_fd(key, create=True)
        if dir_fd is None:  # the lstat walk passed: zarr's path-based steps
            directory = os.path.join(self._base, key.rpartition("/")[0])
            os.makedirs(directory, exist_ok=True)
            dir_fd = os.open(directory, DIR_FLAGS)
        try:
            _write_replacing(dir_fd, key.rpartition("/")[2], value)
        finally:
            os.close(dir_fd)

    def _make_dirs(self, parent: str) -> int | None:
        """Create the missing directories of ``parent`` one at a time, each inside
        the one before, and return a descriptor of the last; None where a
        component is a symlink or not a directory."""
        fd = os.open(self._base, DIR_FLAGS)
        for name in parent.split("/"):
            child = _child_dir(fd, name)
            os.close(fd)
            if child is None:
                return None
            fd = child
        return fd


def _child_dir(dir_fd: int, name: str) -> int | None:
    """A descriptor of directory ``name`` in ``dir_fd``, made if missing; None if
    it is a symlink or not a directory."""
    flags = DIR_FLAGS | os.O_NOFOLLOW
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):  # a concurrent writer made it
            os.mkdir(name, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError:
        return None


def _write_replacing(dir_fd: int, name: str, value: Any) -> None:
    """Write ``name`` in directory ``dir_fd`` as zarr's local store does: a
    ``.partial`` file renamed over it, removed again on failure (no fsync)."""
    temp = f"{name}.{uuid.uuid4().hex}.partial"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(value.as_buffer_like()).cast("B")
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise


def local_store(root: str, *, read_only: bool) -> LocalStore:
    return GuardedStore(root, read_only=read_only)


_PARSE_STORE = StorePath(zarr.storage.MemoryStore(), "")


def parse_metadata(document: dict[str, Any]) -> Any:
    """zarr's own parse of an array document (``.zarray`` + attributes, or ``zarr.json``).

    The document is deep-copied first: zarr keeps references into it.
    """
    parsed: Any = copy.deepcopy(document)
    return zarr.AsyncArray(parsed, _PARSE_STORE).metadata


class ReadOnlyAsyncArray(zarr.AsyncArray):  # type: ignore[type-arg]
    """Refuses chunk writes when its store is read-only, whatever the codec pipeline."""

    async def _set_selection(self, *args: Any, **kwargs: Any) -> Any:
        if self.store_path.read_only:
            raise ValueError(
                f"{self.store_path} was opened read-only (mode 'r'); open it with mode='r+' "
                "to write"
            )
        return await super()._set_selection(*args, **kwargs)


class CheckedArray(zarr.Array):  # type: ignore[type-arg]
    """A zarr array that, when zarr fails on it, asks whether its documents changed
    since it was opened (a deleted or replaced plate) and says so."""

    _snapmeta_recheck: Callable[[BaseException], None] | None = None
    _snapmeta_changed: Callable[[], None] | None = None
    _snapmeta_before_write: Callable[[], None] | None = None

    def __getitem__(self, selection: Any) -> Any:
        try:
            return super().__getitem__(selection)
        except Exception as exc:
            self._recheck(exc)
            raise

    def __setitem__(self, selection: Any, value: Any) -> None:
        before = self._snapmeta_before_write
        if before is not None and not self.read_only:
            before()
        try:
            super().__setitem__(selection, value)
        except Exception as exc:
            self._recheck(exc)
            raise

    def _recheck(self, exc: BaseException) -> None:
        recheck = self._snapmeta_recheck
        if recheck is not None:
            recheck(exc)

    # Writes of the array's document: the handle that opened it must check
    # the document again next time, since the snapshot no longer mirrors it.

    def resize(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().resize(*args, **kwargs)
        finally:
            self._changed()

    def append(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().append(*args, **kwargs)
        finally:
            self._changed()

    def update_attributes(self, *args: Any, **kwargs: Any) -> Any:
        try:
            updated = super().update_attributes(*args, **kwargs)
        finally:
            self._changed()
        if isinstance(updated, CheckedArray):
            updated._snapmeta_recheck = self._snapmeta_recheck
            updated._snapmeta_changed = self._snapmeta_changed
            updated._snapmeta_before_write = self._snapmeta_before_write
        return updated

    def _changed(self) -> None:
        changed = self._snapmeta_changed
        if changed is not None:
            changed()


_prototypes: dict[tuple[int, bool, int], Any] = {}


def _own(metadata: Any) -> Any:
    own = copy.copy(metadata)
    attributes = metadata.attributes
    object.__setattr__(own, "attributes", copy.deepcopy(attributes) if attributes else {})
    return own


def array_from_metadata(
    store: LocalStore,
    path: str,
    metadata: Any,
    recheck: Callable[[BaseException], None] | None = None,
    cls: type[CheckedArray] = CheckedArray,
    changed: Callable[[], None] | None = None,
    before_write: Callable[[], None] | None = None,
) -> CheckedArray:
    """An array over ``metadata`` (shared, never modified) at ``path`` in ``store``."""
    key = (id(metadata), store.read_only, id(store))
    proto = _prototypes.get(key)
    if proto is None or proto[0] is not metadata or proto[1] is not store:
        kind = ReadOnlyAsyncArray if store.read_only else zarr.AsyncArray
        proto = (metadata, store, kind(metadata, StorePath(store, path)))
        if len(_prototypes) > 4096:
            _prototypes.clear()
        _prototypes[key] = proto
    # A copy of the prototype shares its codec pipeline (built for identical
    # metadata in the same store) and skips AsyncArray.__init__.
    async_array = copy.copy(proto[2])
    object.__setattr__(async_array, "metadata", _own(metadata))
    object.__setattr__(async_array, "store_path", StorePath(store, path))
    array = cls(async_array)
    if recheck is not None:
        array._snapmeta_recheck = recheck
    if changed is not None:
        array._snapmeta_changed = changed
    if before_write is not None:
        array._snapmeta_before_write = before_write
    return array
