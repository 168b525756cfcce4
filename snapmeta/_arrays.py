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

import copy
from collections.abc import Callable
from typing import Any

import zarr
from zarr.storage import LocalStore, StorePath

__all__ = ["array_from_metadata", "local_store", "parse_metadata"]


def local_store(root: str, *, read_only: bool) -> LocalStore:
    return LocalStore(root, read_only=read_only)


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

    def __getitem__(self, selection: Any) -> Any:
        try:
            return super().__getitem__(selection)
        except Exception as exc:
            self._recheck(exc)
            raise

    def __setitem__(self, selection: Any, value: Any) -> None:
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
    return array
