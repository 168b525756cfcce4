"""Open plates and positions: thin views over records from a source.

The way from ``open_position`` to a ``zarr.Array`` is a straight line:
find the mapped snapshot (kept per process), look the position up (O(1), one
checksummed record), check the documents it depends on, hand out a
:class:`Position`; ``position["0"]`` checks the level's array documents and
builds the array from cached parsed metadata. No JSON is parsed and pydantic
is never imported on that way. A node whose documents changed is served from
its JSON documents instead (a source switch), with a warning.
"""

from __future__ import annotations

import functools
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import zarr

from . import _arrays, _format, _locate, _reader
from ._freshness import (
    Check,
    LocalWalk,
    OnStale,
    Policy,
    Walk,
    changed_documents,
    store_is_slow,
)
from ._fsio import UnsafePathError, check_relative
from ._sources import JsonSource, PositionMeta, SnapshotSource, WellMeta, not_found
from .errors import (
    ChannelNotFoundError,
    PositionNotFoundError,
    SnapshotCorruptError,
    SnapshotFormatError,
    SnapshotNotFoundError,
    SnapshotStaleWarning,
    StaleSnapshotError,
    UnsupportedFormatVersionError,
)

__all__ = [
    "Acquisition",
    "ArrayInfo",
    "Axis",
    "FanOut",
    "Plate",
    "Position",
    "Well",
    "open_plate",
    "open_position",
]

Mode = Literal["r", "r+", "a"]
MODES: tuple[Mode, ...] = ("r", "r+", "a")


@dataclass(frozen=True, slots=True)
class Axis:
    """One NGFF axis."""

    name: str
    type: str | None
    unit: str | None


@dataclass(frozen=True, slots=True)
class Acquisition:
    """One plate acquisition (NGFF ``plate.acquisitions[]``)."""

    id: int
    name: str | None
    description: str | None
    maximum_field_count: int | None
    start_time: int | None
    end_time: int | None


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    """A resolution level as the snapshot knows it, without reading the array.

    ``scale`` and ``translation`` are the level's effective transform by
    NGFF's rules: the dataset's transforms, then the multiscale's, so
    ``scale = s_level * s_global`` and
    ``translation = t_level * s_global + t_global``. ``translation`` is None
    when neither transform list has a translation.
    """

    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    scale: tuple[float, ...]
    translation: tuple[float, ...] | None


# ---------------------------------------------------------------------------
# per-process state: which snapshot serves a plate, parsed array metadata


@dataclass(slots=True)
class _Entry:
    """The snapshot serving a plate in this process."""

    root: str
    path: str
    source: SnapshotSource
    stores: dict[bool, Any]
    slow: bool  # stats are round trips: walk directories, check concurrently

    def walk(self) -> Walk | LocalWalk:
        """State for one round of checks: directory handles, or directories seen."""
        return Walk(self.root) if self.slow else LocalWalk()


_entries: dict[tuple[str, str | None], _Entry] = {}
_parsed: dict[Any, Any] = {}
_POLICIES: dict[tuple[str, str], Policy] = {}


def clear_cache() -> None:
    """Forget every mapped snapshot and parsed metadata of this process."""
    _entries.clear()
    _parsed.clear()
    _reader.clear_cache()


def _policy(check: str, on_stale: str) -> Policy:
    policy = _POLICIES.get((check, on_stale))
    if policy is None:
        policy = _POLICIES[(check, on_stale)] = Policy(check, on_stale)  # type: ignore[arg-type]
    return policy


def _locate_snapshot(root: str, snapshot: str | None, *, refresh: bool) -> _Entry:
    """The entry of ``root``; without ``refresh``, the cached one (no I/O)."""
    key = (root, snapshot)
    entry = _entries.get(key)
    if entry is not None and not refresh:
        # A snapshot truncated or rewritten in place (cp, truncate, rsync
        # --inplace as root; mode 0444 stops other users) would kill this
        # process with SIGBUS on the next page it touches: one fstat, on
        # local disks only, where it costs a microsecond, not a round trip.
        if entry.slow or entry.source.reader.still_mapped_whole():
            return entry
        refresh = True
    missing: list[str] = []
    for candidate in _locate.snapshot_candidates(root, snapshot):
        try:
            st = _locate.check_in_store(root, candidate)
            if st is None and not _locate.is_external(root, candidate):
                raise SnapshotNotFoundError(
                    f"no snapshot at {candidate}", store=root, snapshot=candidate
                )
            reader = _reader.mapped(candidate, st)
        except SnapshotNotFoundError:
            missing.append(candidate)
            continue
        if _locate.is_external(root, candidate) and reader.plate.location != root:
            # a snapshot of the same name made for another plate: not ours
            missing.append(candidate)
            continue
        if entry is None or entry.source.reader is not reader:
            slow = entry.slow if entry is not None else store_is_slow(root)
            entry = _Entry(root, candidate, SnapshotSource(reader), {}, slow)
            _entries[key] = entry
        return entry
    if not os.path.isdir(root):
        raise SnapshotNotFoundError(
            f"{root} does not exist or is not a directory", store=root, snapshot=missing[-1]
        )
    legacy = os.path.join(root, _locate.LEGACY_NAME)
    if snapshot is None and os.path.isfile(legacy):
        raise UnsupportedFormatVersionError(
            f"{root} has a snapshot in format 1 ({legacy}), which this snapmeta does not "
            f"read; rebuild it with `snapmeta build {root}`",
            snapshot=legacy,
            reason="version",
            found_version="1",
            supported=(2,),
        )
    raise SnapshotNotFoundError(
        f"no snapshot of {root} (looked at {', '.join(missing)}); create one with "
        f"`snapmeta build {root}`",
        store=root,
        snapshot=missing[0],
    )


def _store(entry_stores: dict[bool, Any], root: str, mode: Mode) -> Any:
    read_only = mode == "r"
    store = entry_stores.get(read_only)
    if store is None:
        store = entry_stores[read_only] = _arrays.local_store(root, read_only=read_only)
    return store


def _check_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
    return mode


def _key(root: str, path: object, depths: tuple[int, ...] = (2,)) -> str:
    """A well or position path asked for, checked before it touches the filesystem."""
    if not isinstance(path, str):
        raise TypeError(f"position paths are strings like 'B/3/0', not {type(path).__name__}")
    key = path.strip("/")
    try:
        check_relative(key)
    except UnsafePathError:
        raise PositionNotFoundError(
            f"{path!r} is not a path inside plate {root} (like 'B/3/0')",
            store=root,
            key=path,
            suggestions=(),
        ) from None
    if key.count("/") not in depths:
        kind = "well" if depths == (1,) else "position"
        raise PositionNotFoundError(
            f"{path!r} is not a {kind} path of plate {root} (like "
            f"{'B/3' if kind == 'well' else 'B/3/0'})",
            store=root,
            key=path,
            suggestions=(),
        )
    return key


# ---------------------------------------------------------------------------
# Position


class Position:
    """One field of view: metadata from the snapshot, arrays opened without I/O.

    Handles pickle as a few strings (store, path, mode, options); the
    receiving process maps the snapshot itself.
    """

    __slots__ = (
        "_checked",
        "_entry",
        "_meta",
        "_mode",
        "_policy",
        "_root",
        "_snapshot",
        "_walk",
    )

    def __init__(
        self,
        root: str,
        meta: PositionMeta,
        entry: _Entry,
        mode: Mode,
        policy: Policy,
        snapshot: str | None,
        walk: Walk | LocalWalk | None = None,
    ) -> None:
        self._root = root
        self._walk = walk
        self._meta = meta
        self._entry = entry
        self._mode = mode
        self._policy = policy
        self._snapshot = snapshot
        self._checked = 0  # bit i: level i's documents were checked

    def __reduce__(self) -> tuple[Any, ...]:
        p = self._policy
        return (
            _reopen_position,
            (self._root, self._meta.path, self._mode, p.check, p.on_stale, self._snapshot),
        )

    def __repr__(self) -> str:
        return f"<snapmeta.Position {self._meta.path!r} of {self._root!r}>"

    # -- identity ---------------------------------------------------------------------

    @property
    def path(self) -> str:
        """Path of the position inside the plate, e.g. ``"B/3/0"``."""
        return self._meta.path

    @property
    def well(self) -> str:
        """Path of the well, e.g. ``"B/3"``."""
        return self._meta.path.rpartition("/")[0]

    @property
    def field(self) -> str:
        """The image path inside the well, e.g. ``"0"``."""
        return self._meta.path.rpartition("/")[2]

    @property
    def acquisition(self) -> int | None:
        return self._meta.acquisition

    @property
    def store(self) -> str:
        return self._root

    @property
    def zarr_format(self) -> int:
        return self._meta.zarr_format

    @property
    def from_snapshot(self) -> bool:
        """False when this position's metadata was read from its JSON documents."""
        return self._meta.from_snapshot

    # -- channels and axes -----------------------------------------------------------------

    @property
    def channel_names(self) -> tuple[str, ...]:
        meta = self._meta
        out = []
        for i, ref in enumerate(meta.image.channels):
            label = None if ref is None else meta.leaf(ref)
            out.append(label if type(label) is str else str(i))
        return tuple(out)

    def get_channel_index(self, name: str) -> int:
        """Index of a channel by its label; raises :class:`ChannelNotFoundError`."""
        names = self.channel_names
        try:
            return names.index(name)
        except ValueError:
            raise ChannelNotFoundError(
                f"no channel {name!r} in {self.path}; channels are {', '.join(names) or '(none)'}",
                key=name,
                channels=names,
                position=self.path,
            ) from None

    @property
    def axes(self) -> tuple[Axis, ...]:
        meta = self._meta
        out = []
        for name, kind, unit in meta.image.axes:
            out.append(
                Axis(
                    str(meta.leaf(name)) if name is not None else "",
                    None if kind is None else _opt_str(meta.leaf(kind)),
                    None if unit is None else _opt_str(meta.leaf(unit)),
                )
            )
        return tuple(out)

    @property
    def axis_names(self) -> tuple[str, ...]:
        meta = self._meta
        return tuple(
            str(meta.leaf(name)) if name is not None else "" for name, _, _ in meta.image.axes
        )

    @property
    def levels(self) -> tuple[str, ...]:
        """Dataset paths of the resolution levels, highest resolution first."""
        return tuple(self._meta.level_path(i) for i in range(len(self._meta.image.levels)))

    def _level_index(self, level: str | int) -> int:
        count = len(self._meta.image.levels)
        if isinstance(level, int) and not isinstance(level, bool):
            if 0 <= level < count:
                return level
        elif isinstance(level, str):
            for i in range(count):
                if self._meta.level_path(i) == level:
                    return i
        levels = self.levels
        raise PositionNotFoundError(
            f"{self.path} has no level {level!r}; levels are {', '.join(levels)}",
            store=self._root,
            key=f"{self.path}/{level}",
            suggestions=levels,
        )

    def _fresh_level(self, i: int) -> PositionMeta:
        """The metadata, once level ``i``'s array documents are known to match it."""
        if self._checked >> i & 1:
            return self._meta
        meta = self._meta
        if meta.from_snapshot:
            docs, fps = meta.level_documents(i)
            walk = self._walk
            if walk is None or not walk.fresh():
                walk = self._walk = self._entry.walk()
            changed = changed_documents(
                self._root, docs, fps, self._policy.check, meta.digest_of, walk=walk
            )
            if changed:
                self._policy.stale(
                    self._root, changed, f"{meta.path} is read from its JSON documents"
                )
                self._meta = meta = _json_position(self._root, meta.zarr_format, meta.path)
                self._checked = 0
                if i >= len(meta.image.levels):
                    raise StaleSnapshotError(
                        f"{meta.path} has no level {i} any more: the plate changed since the "
                        f"snapshot was built. Rebuild it with `snapmeta build {self._root}`",
                        store=self._root,
                        changed=tuple(changed),
                    )
        self._checked |= 1 << i
        return meta

    def _transform(
        self, meta: PositionMeta, i: int
    ) -> tuple[tuple[float, ...], tuple[float, ...] | None]:
        image = meta.image
        ndim = len(image.axes)
        level = image.levels[i]

        def values(ref: int | None) -> list[float] | None:
            if ref is None:
                return None
            out = []
            for k in range(ndim):
                value = meta.leaf(ref + k)
                if type(value) not in (int, float):
                    raise self._corrupt("a transform value is not a number", "images")
                out.append(float(value))
            return out

        s_level = values(level.scale) or [1.0] * ndim
        t_level = values(level.translation)
        s_global = values(image.scale)
        t_global = values(image.translation)
        scale = (
            s_level if s_global is None else [a * b for a, b in zip(s_level, s_global, strict=True)]
        )
        if t_level is None and t_global is None:
            return tuple(scale), None
        translation = t_level or [0.0] * ndim
        if s_global is not None:
            translation = [t * s for t, s in zip(translation, s_global, strict=True)]
        if t_global is not None:
            translation = [t + g for t, g in zip(translation, t_global, strict=True)]
        return tuple(scale), tuple(translation)

    def level(self, level: str | int = 0) -> ArrayInfo:
        """Shape, chunks, dtype and effective transform of one level.

        The first use of a level checks its array documents (a ``stat`` each),
        as opening its array does; nothing is read.
        """
        i = self._level_index(level)
        meta = self._fresh_level(i)
        self._parsed(meta, i)  # what zarr cannot read is not served either
        document = meta.array_document(meta.image.levels[i].array)
        shape, chunks, dtype = _array_summary(document)
        scale, translation = self._transform(meta, i)
        return ArrayInfo(meta.level_path(i), shape, chunks, dtype, scale, translation)

    @property
    def scale(self) -> tuple[float, ...]:
        """Effective physical scale of level 0 (dataset scale x multiscale scale)."""
        return self._transform(self._meta, 0)[0]

    @property
    def translation(self) -> tuple[float, ...] | None:
        """Effective translation of level 0 (see :class:`ArrayInfo`)."""
        return self._transform(self._meta, 0)[1]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.level(0).shape

    @property
    def chunks(self) -> tuple[int, ...]:
        return self.level(0).chunks

    @property
    def dtype(self) -> str:
        return self.level(0).dtype

    # -- data -----------------------------------------------------------------------

    def __getitem__(self, level: str | int) -> zarr.Array[Any]:
        """The zarr array of one level, opened from the snapshot's metadata."""
        return self._array(level, _arrays.CheckedArray)

    def _array(self, level: str | int, cls: type[_arrays.CheckedArray]) -> zarr.Array[Any]:
        """The array of ``level`` as an instance of ``cls`` (compat's ImageArray)."""
        i = self._level_index(level)
        meta = self._fresh_level(i)
        parsed = self._parsed(meta, i)
        path = f"{meta.path}/{meta.level_path(i)}"
        return _arrays.array_from_metadata(
            _store(self._entry.stores, self._root, self._mode),
            path,
            parsed,
            recheck=functools.partial(self._recheck, i),
            cls=cls,
            changed=functools.partial(self._forget_check, i),
            before_write=functools.partial(self._before_write, i),
        )

    def _parsed(self, meta: PositionMeta, i: int) -> Any:
        """zarr's parsed metadata of level ``i`` (cached per distinct array entry)."""
        array = meta.image.levels[i].array
        key = meta.array_key(array)
        parsed = _parsed.get(key) if key is not None else None
        if parsed is None:
            try:
                parsed = _arrays.parse_metadata(meta.array_document(array))
            except Exception as exc:  # zarr raises many kinds for a bad document
                if not meta.from_snapshot:
                    raise
                raise self._corrupt(
                    f"zarr cannot read the array document ({exc})", "arrays"
                ) from exc
            if key is not None:
                _parsed[key] = parsed
        return parsed

    def _corrupt(self, reason: str, section: str) -> SnapshotCorruptError:
        reader = self._entry.source.reader
        return SnapshotCorruptError(
            f"snapshot {reader.path} is corrupt: {self.path}: {reason}; rebuild it with "
            f"`snapmeta build {self._root}`",
            snapshot=reader.path,
            reason=reason,
            section=section,
            index=None,
        )

    def _before_write(self, i: int) -> None:
        """A writable array checks its level's documents before every write: a plate
        deleted and written again since the handle was opened gets no stray chunk."""
        meta = self._meta
        docs, fps = meta.level_documents(i)
        check = "stat" if self._policy.check == "none" else self._policy.check
        changed = changed_documents(self._root, docs, fps, check, meta.digest_of)
        if changed:
            raise StaleSnapshotError(
                f"{meta.path}/{meta.level_path(i)} changed since this array was opened "
                f"({', '.join(changed)}): the plate was modified, deleted or replaced; nothing "
                "was written. Open the position again",
                store=self._root,
                changed=tuple(changed),
            )

    def _forget_check(self, i: int) -> None:
        """An array of level ``i`` wrote its document: check it again on next use."""
        self._checked &= ~(1 << i)

    def _recheck(self, i: int, exc: BaseException) -> None:
        """Called when zarr fails on an array of this handle: did the plate change, or
        does the snapshot's array entry disagree with the array's document?"""
        if isinstance(exc, StaleSnapshotError):
            return
        meta = self._meta
        docs, fps = meta.level_documents(i)
        changed = changed_documents(self._root, docs, fps, "digest", meta.digest_of)
        if changed:
            raise StaleSnapshotError(
                f"{meta.path}/{meta.level_path(i)} changed since this handle was opened "
                f"({', '.join(changed)}): the plate was modified, deleted or replaced. Open the "
                f"position again (and rebuild the snapshot with `snapmeta build {self._root}`)",
                store=self._root,
                changed=tuple(changed),
            ) from exc
        if meta.from_snapshot and not _entry_matches_documents(self._root, meta, i, docs):
            raise self._corrupt(
                "its array entry differs from the array's document", "arrays"
            ) from exc

    @property
    def data(self) -> zarr.Array[Any]:
        """The highest-resolution array (the first dataset)."""
        return self[0]

    @property
    def attrs(self) -> dict[str, Any]:
        """The position group's full attributes (a new dict on every access)."""
        return self._meta.attributes()


def _entry_matches_documents(root: str, meta: PositionMeta, i: int, docs: list[str]) -> bool:
    """Whether the snapshot's array entry of level ``i`` is what its documents say."""
    import json

    from ._fsio import read_regular

    try:
        values: list[Any] = []
        for doc in docs:
            try:
                data, _ = read_regular(f"{root}/{doc}")
            except FileNotFoundError:
                values.append(None)
                continue
            values.append(json.loads(data))
    except (OSError, ValueError):
        return False
    document = values[0]
    if meta.zarr_format == 2 and isinstance(document, dict) and values[1] is not None:
        document = {**document, "attributes": values[1]}
    expected = meta.array_document(meta.image.levels[i].array)
    return _format.pack(document) == _format.pack(expected)


def _opt_str(value: Any) -> str | None:
    return value if value is None or type(value) is str else str(value)


def _array_summary(doc: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    import numpy as np

    if doc.get("zarr_format") == 3:
        shape = tuple(int(v) for v in doc["shape"])
        grid = doc.get("chunk_grid", {})
        chunks = tuple(int(v) for v in grid.get("configuration", {}).get("chunk_shape", shape))
        raw = doc.get("data_type")
    else:
        shape = tuple(int(v) for v in doc["shape"])
        chunks = tuple(int(v) for v in doc["chunks"])
        raw = doc.get("dtype")
    try:
        dtype = str(np.dtype(raw if not isinstance(raw, list) else [tuple(f) for f in raw]))
    except (TypeError, ValueError):
        dtype = raw if isinstance(raw, str) else str(raw)
    return shape, chunks, dtype


def _json_position(root: str, zarr_format: int, path: str) -> PositionMeta:
    meta = JsonSource(root, zarr_format).position(path)
    if meta is None:
        raise StaleSnapshotError(
            f"{path} is no longer a position of {root}: the plate changed since the snapshot "
            f"was built. Rebuild it with `snapmeta build {root}`",
            store=root,
            changed=(path,),
        )
    return meta


def _reopen_position(
    root: str, path: str, mode: Mode, check: Check, on_stale: OnStale, snapshot: str | None
) -> Position:
    return open_position(root, path, mode=mode, check=check, on_stale=on_stale, snapshot=snapshot)


# ---------------------------------------------------------------------------
# Well


class Well:
    """One well: its place on the plate, its positions and (lazily) its attributes."""

    __slots__ = ("_meta", "column", "column_index", "row", "row_index")

    def __init__(self, meta: WellMeta, rows: Sequence[str], columns: Sequence[str]) -> None:
        self._meta = meta
        self.row, _, self.column = meta.path.partition("/")
        self.row_index = list(rows).index(self.row) if self.row in rows else -1
        self.column_index = list(columns).index(self.column) if self.column in columns else -1

    @property
    def path(self) -> str:
        return self._meta.path

    @property
    def positions(self) -> tuple[str, ...]:
        """Paths of the well's positions, in the well's order."""
        return self._meta.positions

    @property
    def attrs(self) -> dict[str, Any]:
        """The well group's full attributes (a new dict on every access)."""
        return self._meta.attributes()

    def __repr__(self) -> str:
        return f"<snapmeta.Well {self.path!r}: {len(self.positions)} positions>"


# ---------------------------------------------------------------------------
# Plate


class Plate:
    """An HCS plate opened through its snapshot.

    ``plate["B/3/0"]`` returns a :class:`Position` in O(1). ``len``,
    iteration and ``positions()`` depend on every well document; they are
    checked once per ``Plate``. As soon as a ``Plate`` finds a structural
    document changed (the root or a well), it answers everything from the
    JSON documents from then on, so its answers never mix two states.
    """

    __slots__ = (
        "_entry",
        "_json",
        "_last_walk",
        "_mode",
        "_plate",
        "_policy",
        "_root",
        "_snapshot",
        "_structure_checked",
    )

    def __init__(
        self, root: str, entry: _Entry, mode: Mode, policy: Policy, snapshot: str | None
    ) -> None:
        self._root = root
        self._entry = entry
        self._mode = mode
        self._policy = policy
        self._snapshot = snapshot
        self._json: JsonSource | None = None
        self._last_walk: Walk | LocalWalk | None = None
        self._structure_checked = False
        self._plate = entry.source.plate()
        changed = changed_documents(
            root,
            [self._plate.root_document],
            [self._plate.root],
            policy.check,
            self._plate.digest_of,
            walk=entry.walk(),
        )
        if changed:
            self._switch_to_json(changed, "the plate is read from its JSON documents")

    def _switch_to_json(self, changed: Sequence[str], what: str) -> None:
        self._policy.stale(self._root, changed, what, stacklevel=5)
        self._json = JsonSource(self._root, self._plate.zarr_format)
        self._plate = self._json.plate()

    def __reduce__(self) -> tuple[Any, ...]:
        p = self._policy
        return (_reopen_plate, (self._root, self._mode, p.check, p.on_stale, self._snapshot))

    def __repr__(self) -> str:
        count = self._entry.source.reader.plate.positions if self._json is None else "(from JSON)"
        return f"<snapmeta.Plate {self._root!r}: {count} positions>"

    def __enter__(self) -> Plate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: the mapping belongs to the per-process cache."""

    # -- plate metadata ---------------------------------------------------------------

    @property
    def store(self) -> str:
        return self._root

    @property
    def snapshot_path(self) -> str:
        """The snapshot file this plate was opened through."""
        return self._entry.path

    @property
    def from_snapshot(self) -> bool:
        return self._json is None

    @property
    def name(self) -> str | None:
        name = self._plate.plate.get("name")
        return name if name is None or isinstance(name, str) else str(name)

    @property
    def version(self) -> str:
        """NGFF version of the plate metadata."""
        return self._plate.ngff_version

    @property
    def zarr_format(self) -> int:
        return self._plate.zarr_format

    @property
    def field_count(self) -> int | None:
        value = self._plate.plate.get("field_count")
        return value if isinstance(value, int) else None

    @property
    def rows(self) -> tuple[str, ...]:
        return tuple(str(r["name"]) for r in self._plate.plate["rows"])

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(str(c["name"]) for c in self._plate.plate["columns"])

    @property
    def acquisitions(self) -> tuple[Acquisition, ...]:
        return tuple(
            Acquisition(
                a["id"],
                a.get("name"),
                a.get("description"),
                a.get("maximumfieldcount"),
                a.get("starttime"),
                a.get("endtime"),
            )
            for a in self._plate.plate.get("acquisitions") or []
        )

    @property
    def attrs(self) -> dict[str, Any]:
        """The root group's full attributes, read from the root document.

        The snapshot keeps the plate's facts but not the root attributes
        (their well list grows with the plate): this reads and parses the
        root document, and raises :class:`StaleSnapshotError` if it no
        longer is the document the snapshot was built from.
        """
        import json

        from ._fsio import read_regular

        plate = self._plate
        full = f"{self._root}/{plate.root_document}"
        data, _ = read_regular(full)
        from ._format import content_digest

        if self._json is None and content_digest(data) != plate.digest_of(plate.root.content):
            raise StaleSnapshotError(
                f"{full} changed since the snapshot was built; rebuild it with "
                f"`snapmeta build {self._root}`",
                store=self._root,
                changed=(plate.root_document,),
            )
        doc = json.loads(data)
        attrs = doc.get("attributes", {}) if plate.zarr_format == 3 else doc
        return dict(attrs)

    # -- structure -----------------------------------------------------------------------

    @property
    def wells(self) -> tuple[str, ...]:
        """Well paths in plate order."""
        if self._json is not None:
            return tuple(self._json.well_paths())
        return tuple(p for p in self._entry.source.paths() if p.count("/") == 1)

    def _check_structure(self) -> None:
        """Check every well document once per Plate (positions depend on them)."""
        if self._structure_checked or self._json is not None:
            return
        source = self._entry.source
        reader = source.reader
        paths = source.paths()
        docs: list[str] = []
        fps: list[Any] = []
        for index, path in enumerate(paths):
            if path.count("/") == 1:
                well = source.well(path, index, reader.node_payload(index)[1])
                docs.extend(well.documents)
                fps.extend(well.fingerprints)
        changed = []
        step = 256 if self._entry.slow else len(docs) or 1
        for start in range(0, len(docs), step):
            # one walk per chunk: a bounded number of directory handles
            walk = self._entry.walk()
            changed += changed_documents(
                self._root,
                docs[start : start + step],
                fps[start : start + step],
                self._policy.check,
                reader.digest,
                walk=walk,
            )
            walk.close()
        if changed:
            self._switch_to_json(changed, "the plate layout is read from its JSON documents")
        self._structure_checked = True

    def _paths(self) -> list[str]:
        self._check_structure()
        if self._json is not None:
            return [p for p in self._json.paths() if p.count("/") == 2]
        return [p for p in self._entry.source.paths() if p.count("/") == 2]

    def __len__(self) -> int:
        return len(self._paths())

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths())

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            self._resolve(_key(self._root, key, (1, 2)), kind=None)
        except PositionNotFoundError:
            return False
        return True

    def positions(self) -> Iterator[tuple[str, Position]]:
        """``(path, Position)`` for every position, in plate order."""
        for path in self._paths():
            yield path, self[path]

    def well(self, path: str) -> Well:
        """The well at ``path`` (e.g. ``"B/3"``), checked against its document."""
        meta = self._resolve(_key(self._root, path, (1,)), kind="well")
        assert isinstance(meta, WellMeta)
        return Well(meta, self.rows, self.columns)

    def __getitem__(self, key: str) -> Position:
        meta = self._resolve(_key(self._root, key), kind="position")
        assert isinstance(meta, PositionMeta)
        walk, self._last_walk = self._last_walk, None
        return Position(
            self._root, meta, self._entry, self._mode, self._policy, self._snapshot, walk
        )

    def _resolve(self, key: str, kind: str | None) -> PositionMeta | WellMeta:
        """The record of ``key`` from the current source, its documents checked."""
        depth = key.count("/")
        if (
            depth not in (1, 2)
            or (kind == "well" and depth != 1)
            or (kind == "position" and depth != 2)
        ):
            raise self._not_found(key)
        if self._json is None:
            walk = self._entry.walk()
            found = _from_snapshot(self._root, self._entry.source, key, self._policy, walk)
            if isinstance(found, PositionMeta | WellMeta):
                if isinstance(found, PositionMeta):
                    self._last_walk = walk
                return found
            if isinstance(found, _Changed) and not found.structural:
                self._policy.stale(
                    self._root,
                    found.documents,
                    f"{key} is read from its JSON documents",
                    stacklevel=5,
                )
                return _json_position(self._root, self._plate.zarr_format, key)
            if found is not None:
                self._switch_to_json(
                    found.documents, f"{key} and the plate layout are read from JSON"
                )
        if self._json is None:
            raise self._not_found(key)
        meta = self._json.well(key) if depth == 1 else self._json.position(key)
        if meta is None:
            raise self._not_found(key)
        return meta

    def fan_out(self) -> FanOut:
        """Verify the whole plate once, for workers that then skip per-document checks.

        Checks every document any position depends on (the root, every well,
        every position and every level), concurrently on network
        filesystems, and returns a small picklable :class:`FanOut` to hand to
        workers (joblib, Dask, SLURM array tasks). Raises
        :class:`StaleSnapshotError` if the snapshot no longer matches the
        plate: rebuild it first.
        """
        if self._json is not None:
            raise StaleSnapshotError(
                f"the snapshot of {self._root} is stale; rebuild it with "
                f"`snapmeta build {self._root}` before fanning out",
                store=self._root,
                changed=(),
            )
        source = self._entry.source
        reader = source.reader
        docs: list[str] = [source.group_doc]
        fps: list[Any] = [reader.plate.root]
        for index, path in enumerate(source.paths()):
            payload = reader.node_payload(index)[1]
            if path.count("/") == 1:
                well = source.well(path, index, payload)
                docs += well.documents
                fps += well.fingerprints
            else:
                node_docs, node_fps = source.position(path, index, payload).all_documents()
                docs += node_docs[1:]  # the well's document is checked with the well
                fps += node_fps[1:]
        check = "stat" if self._policy.check == "none" else self._policy.check
        changed: list[str] = []
        step = 256 if self._entry.slow else max(1, len(docs))
        for start in range(0, len(docs), step):
            walk = self._entry.walk()  # one per chunk: a bounded number of handles
            changed += changed_documents(
                self._root,
                docs[start : start + step],
                fps[start : start + step],
                check,
                reader.digest,
                walk=walk,
            )
            walk.close()
        if changed:
            shown = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
            raise StaleSnapshotError(
                f"the snapshot of {self._root} is stale ({shown} changed); rebuild it with "
                f"`snapmeta build {self._root}` before fanning out",
                store=self._root,
                changed=tuple(changed),
            )
        return FanOut(self._root, self._entry.path, reader.identity, self._mode, self._snapshot)

    def _not_found(self, key: str) -> PositionNotFoundError:
        try:
            candidates = (
                self._json.paths() if self._json is not None else self._entry.source.paths()
            )
        except SnapshotFormatError:
            candidates = []
        return not_found(self._root, key, candidates)


@dataclass(frozen=True, slots=True)
class _Changed:
    """Documents found changed; ``structural`` when the plate's layout depends on them."""

    documents: list[str]
    structural: bool


def _from_snapshot(
    root: str,
    source: SnapshotSource,
    key: str,
    policy: Policy,
    walk: Walk | LocalWalk | None,
    extra: tuple[list[str], list[Any]] = ([], []),
) -> PositionMeta | WellMeta | _Changed | None:
    """``key``'s checked record, the documents found changed, or None (not in the plate).

    ``extra`` documents (the root's, for ``open_position``) are checked in the
    same round.
    """
    found = source.find(key)
    depth = key.count("/")
    extra_docs, extra_fps = extra
    if found is None:
        # Confirm the miss against the well's document: a position added
        # after the build shows as a changed well document.
        well_key = key.rpartition("/")[0] if depth == 2 else None
        well_found = source.find(well_key) if well_key else None
        docs: list[str] = list(extra_docs)
        fps: list[Any] = list(extra_fps)
        if well_found is not None:
            well = source.well(well_key, *well_found)  # type: ignore[arg-type]
            docs += well.documents
            fps += well.fingerprints
        changed = changed_documents(root, docs, fps, policy.check, source.reader.digest, walk=walk)
        if changed:
            return _Changed(changed, True)
        source.reader.confirm_miss(key)  # a damaged lookup must not pass for a miss
        return None
    index, payload = found
    if depth == 1:
        well = source.well(key, index, payload)
        changed = changed_documents(
            root,
            [*extra_docs, *well.documents],
            [*extra_fps, *well.fingerprints],
            policy.check,
            well.digest_of,
            walk=walk,
        )
        return _Changed(changed, True) if changed else well
    meta = source.position(key, index, payload)
    docs, own_fps = meta.structure_documents()
    fps = list(own_fps)
    if isinstance(walk, Walk):
        # Level 0's documents in the same round, not waited for: nearly every
        # caller opens level 0 next, and then finds them checked already.
        for doc in meta.level_documents(0)[0]:
            walk.stat(doc)
    changed = changed_documents(
        root, [*extra_docs, *docs], [*extra_fps, *fps], policy.check, meta.digest_of, walk=walk
    )
    if not changed:
        return meta
    # the root's or the well's document: the plate's layout may have changed
    return _Changed(changed, any(d in changed for d in (*extra_docs, docs[0])))


def _reopen_plate(
    root: str, mode: Mode, check: Check, on_stale: OnStale, snapshot: str | None
) -> Plate:
    return open_plate(root, mode=mode, check=check, on_stale=on_stale, snapshot=snapshot)


# ---------------------------------------------------------------------------
# fan-out


_identity_seen: dict[str, tuple[int, tuple[int, int, int, int]]] = {}
# In a fan-out, a worker re-checks which file the snapshot is at most this often.
IDENTITY_RECHECK_NS = 1_000_000_000


def _recent_identity(path: str, max_age_ns: int | None = None) -> tuple[int, int, int, int]:
    """The snapshot file's identity, from a stat at most ``max_age_ns`` old
    (:data:`IDENTITY_RECHECK_NS` by default)."""
    now = time.monotonic_ns()
    seen = _identity_seen.get(path)
    limit = IDENTITY_RECHECK_NS if max_age_ns is None else max_age_ns
    if seen is None or now - seen[0] >= limit:
        try:
            st = os.stat(path)  # the file the reader mapped, through a symlink too
            identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            identity = (0, 0, 0, 0)
        seen = _identity_seen[path] = (now, identity)
    return seen[1]


class FanOut:
    """A plate verified once by a parent, for workers that trust it (see
    :meth:`Plate.fan_out`).

    ``fan_out.open_position(path)`` skips every per-document check: it costs
    at most one ``stat``, of the snapshot file, at most once a second per
    process. If the snapshot was rebuilt since the verification (so the plate
    changed), the open checks the position's documents as
    :func:`open_position` does, with a warning. Any other change to the plate
    during the fan-out is *not* detected: fan out only while the plate is not
    being written. Pickles as a few strings and numbers.
    """

    __slots__ = ("identity", "mode", "root", "snapshot", "snapshot_path")

    def __init__(
        self,
        root: str,
        snapshot_path: str,
        identity: tuple[int, int, int, int],
        mode: Mode,
        snapshot: str | None,
    ) -> None:
        self.root = root
        self.snapshot_path = snapshot_path
        self.identity = identity
        self.mode = mode
        self.snapshot = snapshot

    def __reduce__(self) -> tuple[Any, ...]:
        return (FanOut, (self.root, self.snapshot_path, self.identity, self.mode, self.snapshot))

    def __repr__(self) -> str:
        return f"<snapmeta.FanOut {self.root!r}>"

    def _snapshot_unchanged(self) -> bool:
        return _recent_identity(self.snapshot_path) == self.identity

    def open_position(self, path: str, *, mode: Mode | None = None) -> Position:
        """Open one position without checking its documents (see the class)."""
        mode = self.mode if mode is None else _check_mode(mode)
        if not self._snapshot_unchanged():
            warnings.warn(
                f"the snapshot of {self.root} changed since the fan-out was verified; "
                f"{path} is checked document by document",
                SnapshotStaleWarning,
                stacklevel=2,
            )
            return open_position(self.root, path, mode=mode, snapshot=self.snapshot)
        entry = _locate_snapshot(self.root, self.snapshot, refresh=False)
        if entry.source.reader.identity != self.identity:
            entry = _locate_snapshot(self.root, self.snapshot, refresh=True)
            if entry.source.reader.identity != self.identity:
                return open_position(self.root, path, mode=mode, snapshot=self.snapshot)
        key = _key(self.root, path)
        found = entry.source.find(key)
        if found is None:
            raise not_found(self.root, key, entry.source.paths())
        meta = entry.source.position(key, *found)
        return Position(self.root, meta, entry, mode, _policy("none", "raise"), self.snapshot)


# ---------------------------------------------------------------------------
# entry points


def open_plate(
    store: Any,
    *,
    mode: Mode = "r",
    check: Check = "stat",
    on_stale: OnStale = "fallback",
    snapshot: str | os.PathLike[str] | None = None,
) -> Plate:
    """Open a plate through its snapshot.

    Parameters
    ----------
    store
        The plate: a path, a ``file://`` URL, a ``zarr.storage.LocalStore`` or a
        local ``zarr.Group``.
    mode
        ``"r"`` (read-only arrays), ``"r+"`` or ``"a"`` (arrays writable).
        snapmeta never creates plates; ``"a"`` is accepted for code written
        against iohub and behaves like ``"r+"``.
    check
        Freshness check level: ``"stat"`` (default), ``"digest"`` or ``"none"``.
    on_stale
        ``"fallback"`` (default) warns and reads changed nodes from JSON;
        ``"raise"`` raises :class:`~snapmeta.errors.StaleSnapshotError`.
    snapshot
        Where the snapshot is, if not in the plate or in ``$SNAPMETA_SNAPSHOT_DIR``.

    Raises
    ------
    SnapshotNotFoundError
        The plate has no snapshot yet (run ``snapmeta build STORE``).
    SnapshotFormatError
        The snapshot is damaged or from an unsupported format version.
    """
    mode = _check_mode(mode)
    policy = _policy(check, on_stale)
    root = _locate.plate_root(store)
    snap = None if snapshot is None else os.fspath(snapshot)
    entry = _locate_snapshot(root, snap, refresh=True)
    return Plate(root, entry, mode, policy, snap)


def open_position(
    store: Any,
    path: str,
    *,
    mode: Mode = "r",
    check: Check = "stat",
    on_stale: OnStale = "fallback",
    snapshot: str | os.PathLike[str] | None = None,
) -> Position:
    """Open one position of a plate: the worker's entry point.

    Equivalent to ``open_plate(store, ...)[path]`` and cheaper: the snapshot
    mapped in this process is reused, one checksummed record is decoded, and
    only the documents the position depends on are checked: the root, well
    and position documents now, a level's array documents when the level is
    first used. No document is read and no JSON is parsed.
    """
    if mode not in MODES:
        _check_mode(mode)
    policy = _POLICIES.get((check, on_stale)) or _policy(check, on_stale)
    root = (
        os.path.abspath(store)
        if type(store) is str and "://" not in store
        else _locate.plate_root(store)
    )
    key = _key(root, path)
    snap = None if snapshot is None else os.fspath(snapshot)
    entry = _locate_snapshot(root, snap, refresh=False)
    if policy.check == "none" and _recent_identity(entry.path, 0) != entry.source.reader.identity:
        # no document is checked: only this stat notices a rebuilt snapshot
        entry = _locate_snapshot(root, snap, refresh=True)
    for attempt in range(3):
        source = entry.source
        walk = entry.walk()
        found = None
        if key.count("/") == 2:
            plate = source.reader.plate
            found = _from_snapshot(
                root, source, key, policy, walk, ([source.group_doc], [plate.root])
            )
            if isinstance(found, PositionMeta):
                return Position(root, found, entry, mode, policy, snap, walk)
        # A miss or a change: the snapshot may have been rebuilt since this
        # process mapped it.
        fresh = _locate_snapshot(root, snap, refresh=True)
        if fresh.source.reader is not source.reader and attempt < 2:
            entry = fresh
            continue
        if isinstance(found, _Changed) and not found.structural:
            policy.stale(root, found.documents, f"{key} is read from its JSON documents")
            return Position(
                root, _json_position(root, plate.zarr_format, key), entry, mode, policy, snap
            )
        break
    return open_plate(root, mode=mode, check=check, on_stale=on_stale, snapshot=snap)[key]
