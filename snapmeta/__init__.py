"""snapmeta: open one position of a huge HCS OME-Zarr plate as cheaply as one file.

``build_snapshot`` reads and validates a plate's metadata once and writes a
memory-mappable Arrow snapshot; ``open_plate`` and ``open_position`` then find
any position in O(1) without parsing JSON.
"""

from ._build import build_snapshot
from ._open import (
    Acquisition,
    ArrayInfo,
    Axis,
    FanOut,
    Plate,
    Position,
    Well,
    open_plate,
    open_position,
)
from ._verify import VerifyReport, verify
from ._version import __version__
from .errors import (
    ChannelNotFoundError,
    NotAPlateError,
    PlateValidationError,
    PositionNotFoundError,
    SnapmetaError,
    SnapshotCorruptError,
    SnapshotFormatError,
    SnapshotNotFoundError,
    SnapshotStaleWarning,
    SnapshotWriteError,
    StaleSnapshotError,
    UnsafeStoreError,
    UnsupportedFormatVersionError,
)

__all__ = [
    "Acquisition",
    "ArrayInfo",
    "Axis",
    "ChannelNotFoundError",
    "FanOut",
    "NotAPlateError",
    "Plate",
    "PlateValidationError",
    "Position",
    "PositionNotFoundError",
    "SnapmetaError",
    "SnapshotCorruptError",
    "SnapshotFormatError",
    "SnapshotNotFoundError",
    "SnapshotStaleWarning",
    "SnapshotWriteError",
    "StaleSnapshotError",
    "UnsafeStoreError",
    "UnsupportedFormatVersionError",
    "VerifyReport",
    "Well",
    "__version__",
    "build_snapshot",
    "open_plate",
    "open_position",
    "verify",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("snapmeta._"):
        # reprs and docs show the public path, snapmeta.Plate
        _obj.__module__ = "snapmeta"
del _name, _obj
