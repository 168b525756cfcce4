"""Exceptions and warnings raised by snapmeta.

Every error derives from :class:`SnapmetaError` and also from the builtin a
caller would naturally catch, so ``except KeyError`` keeps working for a
missing position and ``except FileNotFoundError`` for a missing snapshot::

    SnapmetaError(Exception)
    ├── NotAPlateError(SnapmetaError, ValueError)            not an HCS plate, or not a local one
    ├── PlateValidationError(SnapmetaError, ValueError)      build: every problem, located
    ├── SnapshotNotFoundError(SnapmetaError, FileNotFoundError)
    ├── SnapshotWriteError(SnapmetaError, OSError)           cannot write the snapshot there
    ├── SnapshotFormatError(SnapmetaError, ValueError)       unreadable or unsupported file
    │   ├── SnapshotCorruptError                             a checksum or rule failed
    │   └── UnsupportedFormatVersionError                    another format version
    ├── StaleSnapshotError(SnapmetaError, ValueError)        the store changed since the build
    ├── UnsafeStoreError(SnapmetaError, OSError)             a path leads out of the store
    ├── PositionNotFoundError(SnapmetaError, KeyError)       unknown well, position or level
    └── ChannelNotFoundError(SnapmetaError, KeyError)        unknown channel label

    SnapshotStaleWarning(UserWarning)                        served from JSON instead

Each class declares its fields; they are keyword-only, all required, and
available as attributes. Errors pickle with their fields, so errors raised in
joblib, Dask or multiprocessing workers reach the parent intact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "ChannelNotFoundError",
    "NotAPlateError",
    "PlateValidationError",
    "PositionNotFoundError",
    "Problem",
    "SnapmetaError",
    "SnapshotCorruptError",
    "SnapshotFormatError",
    "SnapshotNotFoundError",
    "SnapshotStaleWarning",
    "SnapshotWriteError",
    "StaleSnapshotError",
    "UnsafeStoreError",
    "UnsupportedFormatVersionError",
]


def __dir__() -> list[str]:
    return __all__


class SnapmetaError(Exception):
    """Base class of every error raised by snapmeta.

    Subclasses list their fields as class annotations; the constructor takes
    the message and exactly those fields, as keywords.
    """

    fields: ClassVar[tuple[str, ...]] = ()
    message: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared: list[str] = []
        for klass in reversed(cls.__mro__):
            for name in getattr(klass, "__annotations__", {}):
                if name not in ("fields", "message") and name not in declared:
                    declared.append(name)
        cls.fields = tuple(declared)

    def __init__(self, message: str, **fields: Any) -> None:
        names = type(self).fields
        unknown = sorted(set(fields) - set(names))
        missing = [n for n in names if n not in fields]
        if unknown or missing:
            raise TypeError(
                f"{type(self).__name__}: "
                + "; ".join(
                    part
                    for part in (
                        f"unknown field(s) {', '.join(unknown)}" if unknown else "",
                        f"missing field(s) {', '.join(missing)}" if missing else "",
                    )
                    if part
                )
            )
        super().__init__(message)
        self.message = message
        for name in names:
            setattr(self, name, fields[name])

    def __reduce__(self) -> tuple[Any, ...]:
        values = {name: getattr(self, name) for name in type(self).fields}
        return (_rebuild, (type(self), self.message, values))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[SnapmetaError], message: str, fields: dict[str, Any]) -> SnapmetaError:
    return cls(message, **fields)


class NotAPlateError(SnapmetaError, ValueError):
    """The store is not a local HCS plate: missing, not a zarr group, no plate metadata,
    or a remote URL (not supported yet)."""

    store: str
    document: str | None


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation problem found while building a snapshot.

    ``document`` is the file (relative to the store) and ``field`` the
    location inside its NGFF metadata, e.g. ``multiscales[0].axes[2].type``.
    """

    document: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.document}: {self.field}" if self.field else self.document
        return f"{where}: {self.message}"


class PlateValidationError(SnapmetaError, ValueError):
    """The plate's metadata is invalid; ``problems`` lists every problem found."""

    store: str
    problems: tuple[Problem, ...]


class SnapshotNotFoundError(SnapmetaError, FileNotFoundError):
    """The plate has no snapshot in any place snapmeta looks (run ``snapmeta build STORE``)."""

    store: str
    snapshot: str


class SnapshotWriteError(SnapmetaError, OSError):
    """The snapshot cannot be written where it was asked to go (read-only, full, no access)."""

    store: str
    snapshot: str
    reason: str


class SnapshotFormatError(SnapmetaError, ValueError):
    """The snapshot file cannot be read as a snapmeta snapshot."""

    snapshot: str
    reason: str


class SnapshotCorruptError(SnapshotFormatError):
    """A checksum or a rule of the format failed: the file is damaged or was crafted."""

    section: str | None
    index: int | None


class UnsupportedFormatVersionError(SnapshotFormatError):
    """The snapshot was written in a format version this snapmeta does not read."""

    found_version: str
    supported: tuple[int, ...]


class StaleSnapshotError(SnapmetaError, ValueError):
    """The store's metadata changed after the snapshot was built.

    Raised with ``on_stale="raise"``, and by handles whose plate changed under
    them. By default snapmeta warns with :class:`SnapshotStaleWarning` and
    serves the changed node from its JSON documents.
    """

    store: str
    changed: tuple[str, ...]


class UnsafeStoreError(SnapmetaError, OSError):
    """A path in the store leads out of it (a symlink) or to something that is not a
    regular file (a FIFO, a device): snapmeta neither reads nor writes it."""

    store: str
    path: str
    reason: str


class PositionNotFoundError(SnapmetaError, KeyError):
    """No well, position or level with this path exists in the plate."""

    store: str
    key: str
    suggestions: tuple[str, ...]

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message
        return self.message


class ChannelNotFoundError(SnapmetaError, KeyError):
    """No channel with this label in the position."""

    key: str
    channels: tuple[str, ...]
    position: str

    def __str__(self) -> str:
        return self.message


class SnapshotStaleWarning(UserWarning):
    """The snapshot no longer matches the store; metadata was read from JSON."""
