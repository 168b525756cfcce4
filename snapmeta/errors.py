"""Exceptions and warnings raised by snapmeta.

Every error derives from :class:`SnapmetaError` and also from the builtin a
caller would naturally catch, so ``except KeyError`` keeps working for a
missing position and ``except FileNotFoundError`` for a missing snapshot::

    SnapmetaError(Exception)
    ├── NotAPlateError(SnapmetaError, ValueError)          store is not an HCS plate
    ├── PlateValidationError(SnapmetaError, ValueError)    build: every problem, located
    ├── SnapshotNotFoundError(SnapmetaError, FileNotFoundError)
    ├── SnapshotFormatError(SnapmetaError, ValueError)     unreadable or unsupported file
    │   ├── SnapshotCorruptError                           checksum/structure mismatch
    │   └── UnsupportedFormatVersionError                  written by a newer snapmeta
    ├── StaleSnapshotError(SnapmetaError, ValueError)      store changed since the build
    ├── PositionNotFoundError(SnapmetaError, KeyError)     unknown position path
    └── ChannelNotFoundError(SnapmetaError, KeyError)      unknown channel label

    SnapshotStaleWarning(UserWarning)                      served from JSON instead

All exceptions pickle with their fields, so errors raised inside joblib, Dask
or multiprocessing workers reach the parent intact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    "StaleSnapshotError",
    "UnsupportedFormatVersionError",
]


def __dir__() -> list[str]:
    return __all__


class SnapmetaError(Exception):
    """Base class of every error raised by snapmeta."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self._fields = fields
        for name, value in fields.items():
            setattr(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses share one constructor shape, so pickling needs only the
        # message and the keyword fields.
        return (_rebuild, (type(self), self.message, self._fields))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[SnapmetaError], message: str, fields: dict[str, Any]) -> SnapmetaError:
    return cls(message, **fields)


class NotAPlateError(SnapmetaError, ValueError):
    """The store exists but holds no readable HCS plate metadata.

    Fields: ``store``, ``document`` (the file that was expected to hold it).
    """


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
    """The plate's metadata is invalid; ``problems`` lists every problem found.

    Fields: ``store``, ``problems`` (a tuple of :class:`Problem`).
    """


class SnapshotNotFoundError(SnapmetaError, FileNotFoundError):
    """The store has no snapshot (run ``snapmeta build STORE``).

    Fields: ``store``, ``snapshot`` (the expected snapshot path).
    """


class SnapshotFormatError(SnapmetaError, ValueError):
    """The snapshot file cannot be read as a snapmeta snapshot.

    Fields: ``snapshot``, ``reason``.
    """


class SnapshotCorruptError(SnapshotFormatError):
    """A checksum or structural check failed: the file is damaged.

    Fields: ``snapshot``, ``reason`` and, when known, ``section`` and ``index``.
    """


class UnsupportedFormatVersionError(SnapshotFormatError):
    """The snapshot was written in a format version this snapmeta cannot read.

    Fields: ``snapshot``, ``found_version``, ``supported`` (tuple of versions).
    """


class StaleSnapshotError(SnapmetaError, ValueError):
    """The store's metadata changed after the snapshot was built.

    Raised only with ``on_stale="raise"``; by default snapmeta warns with
    :class:`SnapshotStaleWarning` and serves the node from its JSON documents.
    Fields: ``store``, ``changed`` (tuple of document paths relative to the store).
    """


class PositionNotFoundError(SnapmetaError, KeyError):
    """No position (or well) with this path exists in the plate.

    Fields: ``store``, ``key``, ``suggestions`` (nearby existing paths).
    """

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message; keep it readable.
        return self.message


class ChannelNotFoundError(SnapmetaError, KeyError):
    """No channel with this label in the position.

    Fields: ``key``, ``channels``, ``position``.
    """

    def __str__(self) -> str:
        return self.message


class SnapshotStaleWarning(UserWarning):
    """The snapshot no longer matches the store; metadata was read from JSON."""
