"""Open plates and positions from a memory-mapped snapshot.

Nothing here parses JSON or imports pydantic on the way from ``open_*`` to a
``zarr.Array``: the snapshot is mapped once per process (and re-mapped when
it is replaced), one position is found through the stored hash table, and
its record is decoded and checksummed alone. Freshness checks cost one
``stat`` per document involved. When a document changed, that node is read
from its JSON instead, with a :class:`~snapmeta.errors.SnapshotStaleWarning`.
"""

from __future__ import annotations

import difflib
import json
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import zarr

from . import _format, _freshness, _ngff
from ._arrays import array_from_metadata, local_store, parse_metadata
from ._freshness import Check
from .errors import (
    ChannelNotFoundError,
    PlateValidationError,
    PositionNotFoundError,
    Problem,
    SnapshotStaleWarning,
    StaleSnapshotError,
)

__all__ = [
    "Acquisition",
    "ArrayInfo",
    "Axis",
    "Plate",
    "Position",
    "Well",
    "open_plate",
    "open_position",
]

Mode = Literal["r", "r+", "a"]
OnStale = Literal["fallback", "raise"]
MODES = ("r", "r+", "a")
ON_STALE = ("fallback", "raise")


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
    """A resolution level as the snapshot knows it, without any I/O."""

    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    scale: tuple[float, ...]
    translation: tuple[float, ...] | None


class Well:
    """One well: its place on the plate, its positions and (lazily) its attributes."""

    __slots__ = (
        "_attrs",
        "_raw",
        "column",
        "column_index",
        "path",
        "positions",
        "row",
        "row_index",
    )

    def __init__(self, record: dict[str, Any], positions: tuple[str, ...], raw: Any) -> None:
        self.path: str = record["path"]
        self.row: str = record["row"]
        self.column: str = record["column"]
        self.row_index: int = record["row_index"]
        self.column_index: int = record["column_index"]
        self.positions = positions
        self._raw = raw
        self._attrs: dict[str, Any] | None = None

    @property
    def attrs(self) -> dict[str, Any]:
        """The well group's full attributes, decoded on first access."""
        if self._attrs is None:
            self._attrs = self._raw()
        return self._attrs

    def __repr__(self) -> str:
        return f"<snapmeta.Well {self.path!r}: {len(self.positions)} positions>"


# ---------------------------------------------------------------------------
# per-process cache of mapped snapshots


@dataclass(slots=True)
class _Mapped:
    identity: tuple[int, int, int, int]
    snapshot: _format.SnapshotFile
    stores: dict[bool, Any] = field(default_factory=dict)
    # Parsed zarr metadata per blob: positions of a plate share a handful of
    # array documents, and zarr's parser costs more than the rest of an open.
    arrays: dict[int, Any] = field(default_factory=dict)


_cache: dict[str, _Mapped] = {}
_cache_lock = threading.Lock()


def _mapped(root: Path) -> _Mapped:
    """The mapped snapshot of ``root``; one ``stat`` tells whether it was replaced."""
    path = f"{root}/{_format.SNAPSHOT_NAME}"  # a str: pathlib costs more than the stat
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _format.snapshot_not_found(Path(path)) from None
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    key = path
    entry = _cache.get(key)
    if entry is not None and entry.identity == identity:
        return entry
    with _cache_lock:
        entry = _cache.get(key)
        if entry is None or entry.identity != identity:
            # The old mapping stays valid for handles that hold it: os.replace
            # gave the new snapshot a new inode.
            snapshot = _format.open_file(path)
            after = os.stat(path)
            if (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) != identity:
                # replaced between the stat and the mapping: which file is
                # mapped is unknown, so do not cache it under either identity
                return _Mapped(identity, snapshot)
            entry = _Mapped(identity, snapshot)
            _cache[key] = entry
    return entry


def clear_cache() -> None:
    """Forget every mapped snapshot of this process (handles keep theirs)."""
    with _cache_lock:
        _cache.clear()


def _store_for(entry: _Mapped, root: Path, mode: Mode) -> Any:
    read_only = mode == "r"
    store = entry.stores.get(read_only)
    if store is None:
        store = entry.stores[read_only] = local_store(root, read_only=read_only)
    return store


def _check_args(mode: str, check: str, on_stale: str) -> Check:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
    if on_stale not in ON_STALE:
        raise ValueError(
            f"on_stale must be one of {', '.join(map(repr, ON_STALE))}, not {on_stale!r}"
        )
    return _freshness.validate_check(check)


def _root_of(store: str | os.PathLike[str]) -> Path:
    if not isinstance(store, str | os.PathLike):
        raise TypeError(f"store must be a path (str or os.PathLike), not {type(store).__name__}")
    return Path(os.path.abspath(store))


# ---------------------------------------------------------------------------
# Position


class Position:
    """One field of view: metadata from the snapshot, arrays opened without I/O.

    Handles pickle as a few strings (store, path, mode, options); the
    receiving process maps the snapshot itself.
    """

    __slots__ = ("_attrs", "_checked", "_entry", "_mode", "_options", "_record", "_root")

    def __init__(
        self,
        root: Path,
        record: dict[str, Any],
        *,
        entry: _Mapped,
        from_snapshot: bool,
        mode: Mode,
        options: tuple[Check, OnStale],
    ) -> None:
        self._root = root
        self._record = record
        self._entry = entry
        self._mode = mode
        self._options = options
        self._attrs: dict[str, Any] | None = None
        # Levels whose array documents were checked (or read from JSON).
        self._checked: set[int] | None = set() if from_snapshot else None

    def __reduce__(self) -> tuple[Any, ...]:
        check, on_stale = self._options
        return (_reopen_position, (str(self._root), self.path, self._mode, check, on_stale))

    def __repr__(self) -> str:
        return f"<snapmeta.Position {self.path!r} of {str(self._root)!r}>"

    # -- identity -------------------------------------------------------------

    @property
    def path(self) -> str:
        """Path of the position inside the plate, e.g. ``"B/3/0"``."""
        return self._record["path"]

    @property
    def well(self) -> str:
        """Path of the well, e.g. ``"B/3"``."""
        return self._record["well"]

    @property
    def field(self) -> str:
        """The image path inside the well, e.g. ``"0"``."""
        return self._record["field"]

    @property
    def acquisition(self) -> int | None:
        return self._record["acquisition"]

    @property
    def store(self) -> Path:
        return self._root

    # -- channels and axes ------------------------------------------------------

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(self._record["channel_names"])

    def get_channel_index(self, name: str) -> int:
        """Index of a channel by its label; raises :class:`ChannelNotFoundError`."""
        names = self._record["channel_names"]
        try:
            return names.index(name)
        except ValueError:
            raise ChannelNotFoundError(
                f"no channel {name!r} in {self.path}; channels are {', '.join(names) or '(none)'}",
                key=name,
                channels=tuple(names),
                position=self.path,
            ) from None

    @property
    def axes(self) -> tuple[Axis, ...]:
        r = self._record
        return tuple(
            Axis(n, t, u)
            for n, t, u in zip(r["axis_names"], r["axis_types"], r["axis_units"], strict=True)
        )

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(self._record["axis_names"])

    @property
    def levels(self) -> tuple[str, ...]:
        """Dataset paths of the resolution levels, highest resolution first."""
        return tuple(self._record["levels"])

    def _level_index(self, level: str | int) -> int:
        levels = self._record["levels"]
        if isinstance(level, int) and not isinstance(level, bool):
            if 0 <= level < len(levels):
                return level
        elif level in levels:
            return levels.index(level)
        raise PositionNotFoundError(
            f"{self.path} has no level {level!r}; levels are {', '.join(levels)}",
            store=str(self._root),
            key=f"{self.path}/{level}",
            suggestions=tuple(levels),
        )

    def _level_record(self, i: int) -> dict[str, Any]:
        """The record, once level ``i``'s array documents are known to be fresh."""
        if self._checked is not None and i not in self._checked:
            self._check_level(i)
        return self._record

    def level(self, level: str | int = 0) -> ArrayInfo:
        """Shape, chunks, dtype and transforms of one level.

        No metadata is read: the first use of a level costs one ``stat`` per
        array document, as opening its array does.
        """
        i = self._level_index(level)
        r = self._level_record(i)
        scale = r["level_scale"][i]
        if r["global_scale"] is not None:
            scale = [a * b for a, b in zip(scale, r["global_scale"], strict=False)]
        translation = r["level_translation"][i]
        return ArrayInfo(
            path=r["levels"][i],
            shape=tuple(r["shape"][i]),
            chunks=tuple(r["chunks"][i]),
            dtype=r["dtype"][i],
            scale=tuple(scale),
            translation=None if translation is None else tuple(translation),
        )

    @property
    def scale(self) -> tuple[float, ...]:
        """Effective physical scale of level 0 (dataset scale x multiscale scale)."""
        return self.level(0).scale

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._level_record(0)["shape"][0])

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self._level_record(0)["chunks"][0])

    @property
    def dtype(self) -> str:
        return self._level_record(0)["dtype"][0]

    # -- data -----------------------------------------------------------------------

    def _blob(self, ref: int | bytes | None) -> bytes | None:
        if isinstance(ref, int):
            return None if ref < 0 else self._entry.snapshot.blob(ref)
        return ref

    def __getitem__(self, level: str | int) -> zarr.Array:
        """The zarr array of one level, opened from the snapshot's metadata."""
        i = self._level_index(level)
        record = self._level_record(i)  # the check may replace it with a JSON read
        path = f"{record['path']}/{record['levels'][i]}"
        if self._checked is None:
            # served from JSON: the record holds the array document itself
            metadata = parse_metadata(_format.unpack(record["array_metadata"][i]))
        else:
            ref = record["array_metadata"][i]
            cached = self._entry.arrays.get(ref)
            if cached is None:
                cached = parse_metadata(_format.unpack(self._entry.snapshot.blob(ref)))
                self._entry.arrays[ref] = cached
            metadata = cached
        return array_from_metadata(_store_for(self._entry, self._root, self._mode), path, metadata)

    def _check_level(self, i: int) -> None:
        # Array documents are checked when their level is first opened: most
        # workers touch level 0 only.
        docs = [
            d
            for d in self._record["documents"]
            if d["path"].startswith(f"{self.path}/{self._record['levels'][i]}/")
        ]
        changed = _freshness.changed_documents(self._root, docs, self._options[0])
        if changed:
            _stale(
                self._root,
                changed,
                self._options[1],
                f"{self.path} is read from its JSON documents",
            )
            self._record = _JsonPlate(self._root, self.zarr_format).position(self.path, None)
            self._checked = None
            return
        assert self._checked is not None
        self._checked.add(i)

    @property
    def data(self) -> zarr.Array:
        """The highest-resolution array (the first dataset)."""
        return self[0]

    @property
    def attrs(self) -> dict[str, Any]:
        """The position group's full attributes, decoded on first access."""
        if self._attrs is None:
            self._attrs = _attributes(self._root, self._record, self._blob, self._options[0])
        return self._attrs

    @property
    def zarr_format(self) -> int:
        return int(self._record["zarr_format"])


def _attributes(root: Path, record: dict[str, Any], blob: Any, check: Check) -> dict[str, Any]:
    raw = blob(record["attributes"])
    if raw is None:
        # Too large to inline: read the document, but only if it still is the
        # one the snapshot fingerprinted.
        fp = record["documents"][0]  # the node's own attribute document
        if _freshness.document_changed(root, fp, "digest"):
            raise StaleSnapshotError(
                f"{root / fp['path']} changed since the snapshot was built; "
                f"rebuild it with `snapmeta build {root}`",
                store=str(root),
                changed=(fp["path"],),
            )
        zarr_format = int(record.get("zarr_format", 2 if fp["path"].endswith(".zattrs") else 3))
        doc = _ngff.read_document(root, fp["path"])
        return _ngff.attributes_of(doc, zarr_format)
    return json.loads(raw)


def _reopen_position(root: str, path: str, mode: Mode, check: Check, on_stale: OnStale) -> Position:
    return open_position(root, path, mode=mode, check=check, on_stale=on_stale)


# ---------------------------------------------------------------------------
# Plate


def _stale(root: Path, changed: list[str], on_stale: OnStale, what: str) -> None:
    message = (
        f"snapshot of {root} is stale ({', '.join(changed[:5])}"
        f"{' ...' if len(changed) > 5 else ''} changed); {what}. "
        f"Rebuild it with `snapmeta build {root}`"
    )
    if on_stale == "raise":
        raise StaleSnapshotError(message, store=str(root), changed=tuple(changed))
    warnings.warn(message, SnapshotStaleWarning, stacklevel=4)


class Plate:
    """An HCS plate opened through its snapshot.

    ``plate["B/3/0"]`` returns a :class:`Position` in O(1). Plate-wide views
    (iteration, ``len``, ``positions()``, ``wells``) check every well document
    once per ``Plate``, since they depend on all of them.
    """

    __slots__ = (
        "_check",
        "_entry",
        "_json",
        "_mode",
        "_on_stale",
        "_root",
        "_stale_json",
        "_structure_checked",
    )

    def __init__(self, root: Path, *, mode: Mode, check: Check, on_stale: OnStale) -> None:
        self._root = root
        self._mode = mode
        self._check = check
        self._on_stale = on_stale
        self._entry = _mapped(root)
        self._json: _JsonPlate | None = None
        self._stale_json: _JsonPlate | None = None
        self._structure_checked = False
        root_fp = self._entry.snapshot.root_fingerprint
        if _freshness.document_changed(root, root_fp, check):
            _stale(root, [root_fp["path"]], on_stale, "the plate is read from its JSON documents")
            self._use_json()

    def _use_json(self) -> None:
        self._json = _JsonPlate(self._root, int(self._entry.snapshot.get_meta("zarr_format") or 2))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen_plate, (str(self._root), self._mode, self._check, self._on_stale))

    def __repr__(self) -> str:
        return f"<snapmeta.Plate {str(self._root)!r}: {len(self)} positions>"

    def __enter__(self) -> Plate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: the mapping belongs to the per-process cache, and
        positions already handed out keep it alive."""

    # -- plate metadata -----------------------------------------------------------

    @property
    def store(self) -> Path:
        return self._root

    @property
    def snapshot_path(self) -> Path:
        return _format.snapshot_path(self._root)

    @property
    def name(self) -> str | None:
        if self._json is not None:
            return self._json.plate.get("name")
        return self._entry.snapshot.get_meta("plate_name")

    @property
    def version(self) -> str:
        """NGFF version of the plate metadata."""
        if self._json is not None:
            return self._json.version
        return self._entry.snapshot.get_meta("ngff_version") or ""

    @property
    def zarr_format(self) -> int:
        return int(self._entry.snapshot.get_meta("zarr_format") or 2)

    @property
    def field_count(self) -> int | None:
        if self._json is not None:
            return self._json.plate.get("field_count")
        raw = self._entry.snapshot.get_meta("field_count")
        return None if raw is None else int(raw)

    @property
    def rows(self) -> tuple[str, ...]:
        if self._json is not None:
            return tuple(r["name"] for r in self._json.plate["rows"])
        return tuple(self._entry.snapshot.plate_lists()[0])

    @property
    def columns(self) -> tuple[str, ...]:
        if self._json is not None:
            return tuple(c["name"] for c in self._json.plate["columns"])
        return tuple(self._entry.snapshot.plate_lists()[1])

    @property
    def acquisitions(self) -> tuple[Acquisition, ...]:
        if self._json is not None:
            return tuple(
                Acquisition(
                    a["id"],
                    a.get("name"),
                    a.get("description"),
                    a.get("maximumfieldcount"),
                    a.get("starttime"),
                    a.get("endtime"),
                )
                for a in self._json.plate.get("acquisitions") or []
            )
        return tuple(Acquisition(**a) for a in self._entry.snapshot.plate_lists()[2])

    @property
    def wells(self) -> tuple[str, ...]:
        """Well paths in plate order."""
        self._check_structure()
        if self._json is not None:
            return tuple(w["path"] for w in self._json.plate["wells"])
        snap = self._entry.snapshot
        # Positions are stored well by well and every well has one at least,
        # so the checksummed path column lists the wells without decoding
        # every well record.
        wells = tuple(dict.fromkeys(p.rpartition("/")[0] for p in snap.position_paths()))
        if len(wells) != snap.well_count:
            raise _format.corrupt(snap.path, "wells do not match the position paths", "wells")
        return wells

    @property
    def attrs(self) -> dict[str, Any]:
        """The root group's full attributes, decoded on first access."""
        if self._json is not None:
            return self._json.attrs
        snap = self._entry.snapshot
        record = {
            "attributes": snap.root_attributes_blob,
            "documents": [snap.root_fingerprint],
            "zarr_format": self.zarr_format,
        }
        return _attributes(self._root, record, snap.blob_or_none, self._check)

    # -- structure ------------------------------------------------------------------

    def _check_structure(self) -> None:
        if self._structure_checked or self._json is not None:
            return
        snap = self._entry.snapshot
        changed = []
        for well in snap.iter_wells():
            changed += _freshness.changed_documents(self._root, well["documents"], self._check)
        if changed:
            _stale(
                self._root,
                changed,
                self._on_stale,
                "the plate layout is read from its JSON documents",
            )
            self._use_json()
        self._structure_checked = True

    def _paths(self) -> list[str]:
        self._check_structure()
        if self._json is not None:
            return self._json.position_paths()
        return self._entry.snapshot.position_paths()

    def __len__(self) -> int:
        self._check_structure()
        if self._json is not None:
            return len(self._json.position_paths())
        return self._entry.snapshot.position_count

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths())

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            self._resolve(key)
        except PositionNotFoundError:
            return False
        return True

    def positions(self) -> Iterator[tuple[str, Position]]:
        """``(path, Position)`` for every position, in plate order."""
        for path in self._paths():
            yield path, self[path]

    def well(self, path: str) -> Well:
        """The well at ``path`` (e.g. ``"B/3"``), checked against its document."""
        key = path.strip("/")
        snap = self._entry.snapshot
        if self._json is None:
            found = snap.lookup(key)
            if found is None or found[0] >= -1:
                raise self._not_found(key)
            record = found[1]
            changed = _freshness.changed_documents(self._root, record["documents"], self._check)
            if not changed:
                first, count = record["first_position"], record["position_count"]
                fields = tuple(snap.position(i)["path"] for i in range(first, first + count))
                root, check = self._root, self._check

                def load() -> dict[str, Any]:
                    return _attributes(root, record, snap.blob_or_none, check)

                return Well(record, fields, load)
            _stale(
                self._root, changed, self._on_stale, f"well {key} is read from its JSON document"
            )
        return self._json_for_stale().well(key, self)

    def __getitem__(self, key: str) -> Position:
        record, from_snapshot = self._resolve(key)
        return Position(
            self._root,
            record,
            entry=self._entry,
            from_snapshot=from_snapshot,
            mode=self._mode,
            options=(self._check, self._on_stale),
        )

    def _resolve(self, key: str) -> tuple[dict[str, Any], bool]:
        """The record of position ``key``, from the snapshot if still fresh."""
        if not isinstance(key, str):
            raise TypeError(f"position paths are strings like 'B/3/0', not {type(key).__name__}")
        key = key.strip("/")
        if self._json is not None:
            return self._json.position(key, self), False
        snap = self._entry.snapshot
        found = snap.lookup(key)
        if found is None or found[0] < 0:
            well_path = key.rsplit("/", 1)[0] if key.count("/") == 2 else None
            well_found = snap.lookup(well_path) if well_path else None
            if well_found is not None and well_found[0] < -1:
                well = well_found[1]
                changed = _freshness.changed_documents(self._root, well["documents"], self._check)
                if changed:
                    _stale(
                        self._root,
                        changed,
                        self._on_stale,
                        f"{key} is read from its JSON documents",
                    )
                    return self._json_for_stale().position(key, self), False
            raise self._not_found(key)
        record = found[1]
        # The well and group documents here; array documents when their level
        # is first used. The well's images list decides membership: a position
        # dropped from it but left on disk is no longer in the plate.
        well = snap.well(record["well_index"])
        changed = _freshness.changed_documents(
            self._root, [*well["documents"], *record["documents"][:1]], self._check
        )
        if changed:
            _stale(self._root, changed, self._on_stale, f"{key} is read from its JSON documents")
            return self._json_for_stale().position(key, self), False
        return record, True

    def _json_for_stale(self) -> _JsonPlate:
        """JSON reader for nodes found stale; parses the plate document once per Plate."""
        if self._stale_json is None:
            self._stale_json = _JsonPlate(self._root, self.zarr_format)
        return self._stale_json

    def _not_found(self, key: str) -> PositionNotFoundError:
        candidates = self._paths() if len(self) <= 100_000 else []
        near = tuple(difflib.get_close_matches(key, candidates, n=3))
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        return PositionNotFoundError(
            f"no position {key!r} in plate {self._root}{hint}",
            store=str(self._root),
            key=key,
            suggestions=near,
        )


def _reopen_plate(root: str, mode: Mode, check: Check, on_stale: OnStale) -> Plate:
    return open_plate(root, mode=mode, check=check, on_stale=on_stale)


class _JsonPlate:
    """The slow path: plate structure and positions read from JSON documents.

    Used only for nodes whose documents changed since the snapshot was built.
    """

    def __init__(self, root: Path, zarr_format: int) -> None:
        self.root = root
        self.zarr_format = zarr_format
        rel = _ngff.root_document(zarr_format)
        doc = _ngff.read_document(root, rel)
        try:
            self.attrs = _ngff.attributes_of(doc, zarr_format)
            self.plate = _ngff.plate_of(self.attrs, zarr_format, rel)
        except _ngff.NgffReadError as exc:
            raise _read_error(root, exc) from exc
        self.version = _ngff.ngff_version(
            _ngff.ome_of(self.attrs, zarr_format), "plate", zarr_format
        )
        self._wells: dict[str, list[tuple[str, int | None]]] = {}

    def _images(self, well: str) -> list[tuple[str, int | None]]:
        images = self._wells.get(well)
        if images is None:
            doc = _ngff.read_document(self.root, _ngff.group_documents(well, self.zarr_format)[0])
            try:
                _, images = _ngff.well_images(doc, self.zarr_format)
            except _ngff.NgffReadError:
                images = []
            self._wells[well] = images
        return images

    def well(self, key: str, plate: Plate) -> Well:
        ref = next((w for w in self.plate.get("wells", []) if w.get("path") == key), None)
        if ref is None:
            raise plate._not_found(key)
        rows = [r["name"] for r in self.plate["rows"]]
        columns = [c["name"] for c in self.plate["columns"]]
        record = {
            "path": key,
            "row": rows[ref["rowIndex"]],
            "column": columns[ref["columnIndex"]],
            "row_index": ref["rowIndex"],
            "column_index": ref["columnIndex"],
        }
        doc = _ngff.read_document(self.root, _ngff.group_documents(key, self.zarr_format)[0])
        fields = tuple(f"{key}/{field}" for field, _ in self._images(key))
        return Well(record, fields, lambda: _ngff.attributes_of(doc, self.zarr_format))

    def position_paths(self) -> list[str]:
        return [
            f"{w['path']}/{field}"
            for w in self.plate.get("wells", [])
            for field, _ in self._images(w["path"])
        ]

    def position(self, key: str, plate: Plate | None) -> dict[str, Any]:
        wells = [w["path"] for w in self.plate.get("wells", [])]
        well, _, field = key.rpartition("/")
        images = dict(self._images(well)) if well in wells else {}
        if field not in images:
            raise (
                plate._not_found(key)
                if plate is not None and plate._json is self
                else PositionNotFoundError(
                    f"no position {key!r} in plate {self.root}",
                    store=str(self.root),
                    key=key,
                    suggestions=(),
                )
            )
        try:
            source = _ngff.read_position(self.root, key, self.zarr_format)
            return _ngff.position_record(
                source,
                well=well,
                field=field,
                well_index=wells.index(well),
                acquisition=images[field],
                zarr_format=self.zarr_format,
                inline_limit=1 << 62,
            )
        except _ngff.NgffReadError as exc:
            raise _read_error(self.root, exc) from exc


def _read_error(root: Path, exc: _ngff.NgffReadError) -> PlateValidationError:
    problem = Problem(exc.document, exc.field, exc.message)
    return PlateValidationError(f"{root}: {problem}", store=str(root), problems=(problem,))


# ---------------------------------------------------------------------------
# entry points


def open_plate(
    store: str | os.PathLike[str],
    *,
    mode: Mode = "r",
    check: Check = "stat",
    on_stale: OnStale = "fallback",
) -> Plate:
    """Open a plate through its snapshot.

    Parameters
    ----------
    store
        Path of the plate.
    mode
        ``"r"`` (read-only arrays), ``"r+"`` or ``"a"`` (arrays writable).
        snapmeta never creates plates; ``"a"`` is accepted for code written
        against iohub and behaves like ``"r+"`` on existing arrays.
    check
        Freshness check level: ``"stat"`` (default), ``"digest"`` or ``"none"``.
    on_stale
        ``"fallback"`` (default) warns and reads changed nodes from JSON;
        ``"raise"`` raises :class:`~snapmeta.errors.StaleSnapshotError`.

    Raises
    ------
    SnapshotNotFoundError
        The plate has no snapshot yet (run ``snapmeta build STORE``).
    SnapshotFormatError
        The snapshot is damaged or from an unsupported format version.
    """
    check = _check_args(mode, check, on_stale)
    return Plate(_root_of(store), mode=mode, check=check, on_stale=on_stale)


def open_position(
    store: str | os.PathLike[str],
    path: str,
    *,
    mode: Mode = "r",
    check: Check = "stat",
    on_stale: OnStale = "fallback",
) -> Position:
    """Open one position of a plate: the worker's entry point.

    Equivalent to ``open_plate(store, ...)[path]`` and just as cheap: one
    ``stat`` each of the snapshot, the root, well and position documents, a
    hash lookup, and one ``stat`` per array document when a level is first
    used. No document is read and no JSON parsed.
    """
    return open_plate(store, mode=mode, check=check, on_stale=on_stale)[path]
