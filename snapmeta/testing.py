"""Synthetic HCS OME-Zarr plates for tests, benchmarks and demos.

``write_plate`` writes a plate of any size, NGFF 0.4 (zarr 2) or 0.5 (zarr
3), quickly enough for plates of 100,000 positions: use it to try snapmeta,
or to test code that reads plates, without a microscope::

    from snapmeta.testing import write_plate
    write_plate("demo.ome.zarr", rows=8, columns=12, fields=2, ngff="0.4")

It is used by ``snapmeta demo``, snapmeta's own tests and its benchmarks.
Creating that many groups and arrays through zarr's hierarchy API costs
several milliseconds per node, so
the metadata documents are serialised here once per distinct shape and then
written with plain file writes. Chunk data, when requested, is still written
through zarr so that the encoded bytes are exactly what zarr would produce.

The layout follows the OME-NGFF 0.4 (zarr format 2) and 0.5 (zarr format 3)
specifications and mirrors what iohub writes for an HCS plate, so that both
zarr and iohub read a generated plate as they would read one written by iohub.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["DEFAULT_CHANNEL_NAMES", "VOXEL_SIZE", "row_name", "write_plate"]


def __dir__() -> list[str]:
    return __all__


#: Channel names used when ``channel_names`` is not given; extended with
#: ``"Channel<i>"`` when the channel axis is longer.
DEFAULT_CHANNEL_NAMES: tuple[str, ...] = ("DAPI", "GFP", "Cy5", "mCherry", "Cy3", "BF")

# Display colours chosen the way iohub picks them from the fluorophore name, so
# viewers show a generated plate like an iohub-written one.
_CHANNEL_COLORS: dict[str, str] = {
    "DAPI": "0000FF",
    "GFP": "00FF00",
    "Cy5": "FFA500",
    "mCherry": "FF00FF",
    "Cy3": "FFFF00",
}
_FALLBACK_COLOR = "FFFFFF"

#: Level-0 voxel size per TCZYX axis (seconds, channel index, micrometers).
#: Powers of two keep every level's scale and translation exact in JSON.
VOXEL_SIZE: tuple[float, ...] = (1.0, 1.0, 2.0, 0.5, 0.5)

_AXES: tuple[dict[str, str], ...] = (
    {"name": "t", "type": "time", "unit": "second"},
    {"name": "c", "type": "channel"},
    {"name": "z", "type": "space", "unit": "micrometer"},
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
)
_DIMENSION_NAMES = [axis["name"] for axis in _AXES]

_BLOSC_V2 = {"id": "blosc", "cname": "zstd", "clevel": 5, "shuffle": 1, "blocksize": 0}
_ZSTD_V3 = {"name": "zstd", "configuration": {"level": 0, "checksum": False}}

# Enough calls to drive a progress bar smoothly without the callback becoming
# a measurable share of the run time.
_MAX_PROGRESS_CALLS = 100


@dataclass(frozen=True)
class _Position:
    """One field of view: where it goes and which index seeds its data."""

    index: int
    well: str
    field: str


def write_plate(
    path: str | os.PathLike[str],
    *,
    rows: int | Sequence[str] = 8,
    columns: int | Sequence[str] = 12,
    fields: int | Sequence[int] = 1,
    ngff: Literal["0.4", "0.5"] = "0.5",
    levels: int = 1,
    shape: tuple[int, ...] = (1, 2, 4, 64, 64),
    chunks: tuple[int, ...] | None = None,
    dtype: str = "uint16",
    channel_names: Sequence[str] | None = None,
    wells: Sequence[str] | None = None,
    acquisitions: int = 1,
    data: Literal["none", "fill", "random"] = "fill",
    name: str = "snapmeta demo plate",
    seed: int = 0,
    compressor: Literal["default", "none"] = "default",
    progress: Callable[[int, int], None] | None = None,
) -> pathlib.Path:
    """Write a synthetic HCS OME-Zarr plate.

    Parameters
    ----------
    path : str or os.PathLike
        Directory of the new plate. It may exist only as an empty directory.
    rows : int or sequence of str, default 8
        Row names, or their number: ``"A"`` ... ``"Z"``, ``"AA"``, ``"AB"`` ...
    columns : int or sequence of str, default 12
        Column names, or their number: ``"1"``, ``"2"`` ...
    fields : int or sequence of int, default 1
        Fields of view per well. A sequence gives per-well counts, cycled over
        the wells in plate order.
    ngff : {"0.4", "0.5"}, default "0.5"
        OME-NGFF version. 0.4 is written as zarr format 2 (``.zgroup``,
        ``.zattrs``, ``.zarray``), 0.5 as zarr format 3 (``zarr.json`` with
        the metadata under ``attributes["ome"]``).
    levels : int, default 1
        Number of resolution levels ``"0"``, ``"1"`` ... Each level halves Y
        and X (never below 1) and doubles their scale.
    shape : tuple of int, default (1, 2, 4, 64, 64)
        Level-0 TCZYX shape.
    chunks : tuple of int, optional
        TCZYX chunk shape, clipped to each level's shape. Defaults to one
        YX plane per chunk, ``(1, 1, 1, Y, X)`` of each level.
    dtype : str, default "uint16"
        Numeric (integer or floating point) NumPy data type of the arrays.
    channel_names : sequence of str, optional
        One unique name per channel. Defaults to ``DEFAULT_CHANNEL_NAMES``
        truncated or extended to ``shape[1]``.
    wells : sequence of str, optional
        ``"row/column"`` paths of the wells to write, for sparse plates.
        Defaults to every row and column combination in row-major order.
    acquisitions : int, default 1
        Number of acquisitions. Field ``i`` of every well belongs to
        acquisition ``i % acquisitions``.
    data : {"none", "fill", "random"}, default "fill"
        ``"none"`` writes no chunks, so arrays read as the fill value 0.
        ``"fill"`` fills every level of a position with the position index
        (cast to `dtype`, so it wraps for narrow integer types). ``"random"``
        draws level 0 from ``numpy.random.default_rng(seed + index)``,
        uniform over the full integer range or ``[0, 1)`` for floats, and
        derives level ``k`` by taking every ``2**k``-th pixel in Y and X.
        Positions are indexed from 0 in well order, then field order.
    name : str, default "snapmeta demo plate"
        Plate name stored in the plate metadata.
    seed : int, default 0
        Base seed of ``data="random"``.
    compressor : {"default", "none"}, default "default"
        ``"default"`` is Blosc/zstd level 5 with byte shuffle for zarr
        format 2, and zstd level 0 without checksum for zarr format 3.
    progress : callable, optional
        Called as ``progress(done_positions, total_positions)`` at most about
        100 times, the last time with ``done_positions == total_positions``.

    Returns
    -------
    pathlib.Path
        Path of the plate.

    Raises
    ------
    FileExistsError
        If `path` exists and is not an empty directory.
    ValueError
        If the arguments are inconsistent, e.g. the number of channel names
        differs from ``shape[1]``, ``len(shape) != 5`` or a well path does not
        name a known row and column.
    """
    version = _check_choice("ngff", ngff, ("0.4", "0.5"))
    _check_choice("data", data, ("none", "fill", "random"))
    _check_choice("compressor", compressor, ("default", "none"))
    row_names = _axis_names("rows", rows, row_name)
    column_names = _axis_names("columns", columns, lambda i: str(i + 1))
    level0 = _check_shape(shape)
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a positive integer, got {levels!r}")
    level_shapes = [_level_shape(level0, k) for k in range(levels)]
    level_chunks = [_chunk_shape(chunks, s) for s in level_shapes]
    np_dtype = _check_dtype(dtype)
    channels = _channel_names(channel_names, level0[1])
    well_paths = _well_paths(wells, row_names, column_names)
    field_counts = _field_counts(fields, len(well_paths))
    if isinstance(acquisitions, bool) or not isinstance(acquisitions, int) or acquisitions < 1:
        raise ValueError(f"acquisitions must be a positive integer, got {acquisitions!r}")
    if acquisitions > max(field_counts):
        # An acquisition without any image would need a maximumfieldcount of
        # 0, which the specification and iohub reject.
        raise ValueError(
            f"acquisitions ({acquisitions}) exceeds the largest field count "
            f"per well ({max(field_counts)})"
        )

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        # default_rng rejects negative seeds; fail before anything is written.
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(name, str):
        raise ValueError(f"name must be a string, got {name!r}")

    root = pathlib.Path(path)
    _prepare_root(root)

    writer = _V2Writer() if version == "0.4" else _V3Writer()
    plate_doc = _plate_metadata(
        version, name, row_names, column_names, well_paths, field_counts, acquisitions
    )
    writer.group(root, plate_doc)

    positions: list[_Position] = []
    row_groups: set[str] = set()
    well_docs: dict[int, bytes] = {}
    for well_path, count in zip(well_paths, field_counts, strict=True):
        row = well_path.split("/")[0]
        if row not in row_groups:
            writer.group(root / row, None)
            row_groups.add(row)
        if count not in well_docs:
            well_docs[count] = writer.group_doc(_well_metadata(version, count, acquisitions))
        well_dir = os.path.join(root, well_path)
        os.mkdir(well_dir)
        writer.write_group_bytes(well_dir, well_docs[count])
        first = len(positions)
        positions.extend(_Position(first + f, well_path, str(f)) for f in range(count))

    position_bytes = _PositionDocs(writer, version, channels, level_shapes, np_dtype)
    array_bytes = [
        writer.array_doc(s, c, np_dtype, compressor)
        for s, c in zip(level_shapes, level_chunks, strict=True)
    ]
    fill = _DataWriter(data, np_dtype, seed, level_shapes, writer.zarr_format)

    # Positions are written serially: the cost is file-system metadata
    # updates that serialise in the kernel, and zarr funnels chunk writes
    # through one event loop, so a thread pool measured no faster on 2 cores.
    total = len(positions)
    done = 0
    for batch in _batches(positions, total):
        for pos in batch:
            pos_dir = os.path.join(root, pos.well, pos.field)
            os.mkdir(pos_dir)
            writer.write_group_bytes(pos_dir, position_bytes.get(pos.field))
            for level, doc in enumerate(array_bytes):
                level_dir = os.path.join(pos_dir, str(level))
                os.mkdir(level_dir)
                writer.write_array_bytes(level_dir, doc)
            fill.write(pos_dir, pos.index)
        done += len(batch)
        if progress is not None:
            progress(done, total)
    return root


def _check_choice(label: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{label} must be one of {allowed}, got {value!r}")
    return value


def row_name(index: int) -> str:
    """The label of row ``index`` (0-based): ``A`` ... ``Z``, ``AA``, ``AB`` ...

    Spreadsheet-style bijective base 26, as plate maps label rows past Z.
    """
    name = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        name = chr(ord("A") + rem) + name
    return name


def _axis_names(
    label: str, value: int | Sequence[str], generate: Callable[[int], str]
) -> list[str]:
    if isinstance(value, bool):
        raise ValueError(f"{label} must be an int or a sequence of names, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{label} must be at least 1, got {value}")
        return [generate(i) for i in range(value)]
    if isinstance(value, str):
        raise ValueError(f"{label} must be a sequence of names, not a single string")
    names = list(value)
    if not names:
        raise ValueError(f"{label} must not be empty")
    for item in names:
        if not isinstance(item, str) or not item.isascii() or not item.isalnum():
            raise ValueError(f"{label} names must be alphanumeric strings, got {item!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{label} names must be unique, got {names}")
    return names


def _check_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    dims = tuple(shape)
    if len(dims) != 5:
        raise ValueError(f"shape must have 5 (TCZYX) dimensions, got {dims}")
    if any(not isinstance(d, (int, np.integer)) or d < 1 for d in dims):
        raise ValueError(f"shape entries must be positive integers, got {dims}")
    return tuple(int(d) for d in dims)


def _level_shape(level0: tuple[int, ...], level: int) -> tuple[int, ...]:
    factor = 2**level
    t, c, z, y, x = level0
    return (t, c, z, max(1, y // factor), max(1, x // factor))


def _chunk_shape(chunks: tuple[int, ...] | None, level: tuple[int, ...]) -> tuple[int, ...]:
    if chunks is None:
        return (1, 1, 1, level[3], level[4])
    dims = tuple(chunks)
    if len(dims) != 5 or any(not isinstance(d, (int, np.integer)) or d < 1 for d in dims):
        raise ValueError(f"chunks must be 5 positive integers, got {dims}")
    # Lower levels shrink; a chunk larger than the array would only waste
    # space in the single chunk that covers it.
    return tuple(min(int(c), s) for c, s in zip(dims, level, strict=True))


def _check_dtype(dtype: str) -> np.dtype[Any]:
    try:
        np_dtype = np.dtype(dtype)
    except TypeError as exc:
        raise ValueError(f"dtype {dtype!r} is not a NumPy data type") from exc
    if np_dtype.kind not in "iuf":
        raise ValueError(f"dtype must be an integer or floating point type, got {dtype!r}")
    # Native little-endian only: that is what both zarr formats are written
    # with here, and what the "fill"/"random" content is generated in.
    return np_dtype.newbyteorder("<")


def _channel_names(names: Sequence[str] | None, count: int) -> list[str]:
    if names is None:
        extra = [f"Channel{i}" for i in range(len(DEFAULT_CHANNEL_NAMES), count)]
        return [*DEFAULT_CHANNEL_NAMES, *extra][:count]
    if isinstance(names, str):
        raise ValueError("channel_names must be a sequence of names, not a single string")
    result = list(names)
    if len(result) != count:
        raise ValueError(f"{len(result)} channel names given but shape[1] is {count}: {result}")
    if any(not isinstance(n, str) or not n for n in result) or len(set(result)) != count:
        raise ValueError(f"channel names must be unique non-empty strings, got {result}")
    return result


def _well_paths(
    wells: Sequence[str] | None, row_names: list[str], column_names: list[str]
) -> list[str]:
    if wells is None:
        return [f"{r}/{c}" for r in row_names for c in column_names]
    if isinstance(wells, str):
        raise ValueError("wells must be a sequence of 'row/column' paths, not a single string")
    result = list(wells)
    if not result:
        raise ValueError("wells must not be empty")
    known_rows = set(row_names)
    known_columns = set(column_names)
    for well in result:
        parts = well.split("/") if isinstance(well, str) else []
        if len(parts) != 2 or parts[0] not in known_rows or parts[1] not in known_columns:
            raise ValueError(f"well {well!r} is not a 'row/column' path of a known row and column")
    if len(set(result)) != len(result):
        raise ValueError(f"wells must be unique, got {result}")
    return result


def _field_counts(fields: int | Sequence[int], n_wells: int) -> list[int]:
    if isinstance(fields, bool):
        raise ValueError(f"fields must be an int or a sequence of ints, got {fields!r}")
    pattern = [fields] if isinstance(fields, (int, np.integer)) else list(fields)
    if not pattern:
        raise ValueError("fields must not be empty")
    for count in pattern:
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"field counts must be positive integers, got {count!r}")
    return [int(pattern[i % len(pattern)]) for i in range(n_wells)]


def _prepare_root(root: pathlib.Path) -> None:
    occupied = root.exists() or root.is_symlink()
    if occupied and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and is not an empty directory")
    root.mkdir(parents=True, exist_ok=True)


def _batches(items: list[_Position], total: int) -> Iterator[list[_Position]]:
    size = max(1, math.ceil(total / _MAX_PROGRESS_CALLS))
    for start in range(0, total, size):
        yield items[start : start + size]


def _plate_metadata(
    version: str,
    name: str,
    row_names: list[str],
    column_names: list[str],
    well_paths: list[str],
    field_counts: list[int],
    acquisitions: int,
) -> dict[str, Any]:
    row_index = {r: i for i, r in enumerate(row_names)}
    column_index = {c: i for i, c in enumerate(column_names)}
    wells = []
    for well in well_paths:
        row, column = well.split("/")
        wells.append(
            {"path": well, "rowIndex": row_index[row], "columnIndex": column_index[column]}
        )
    max_fields = max(field_counts)
    plate: dict[str, Any] = {
        "name": name,
        "acquisitions": [
            {
                "id": a,
                "name": f"acquisition {a}",
                # Fields a, a + n, a + 2n ... of the fullest well.
                "maximumfieldcount": len(range(a, max_fields, acquisitions)),
            }
            for a in range(acquisitions)
        ],
        "rows": [{"name": r} for r in row_names],
        "columns": [{"name": c} for c in column_names],
        "wells": wells,
        "field_count": max_fields,
    }
    return _ome_attrs(version, "plate", plate)


def _well_metadata(version: str, count: int, acquisitions: int) -> dict[str, Any]:
    # The acquisition id is written even for a single acquisition, as iohub
    # does, so readers never have to guess it.
    images = [{"path": str(f), "acquisition": f % acquisitions} for f in range(count)]
    return _ome_attrs(version, "well", {"images": images})


def _ome_attrs(version: str, key: str, value: dict[str, Any]) -> dict[str, Any]:
    # 0.4 versions each object; 0.5 moved the version to the "ome" namespace.
    if version == "0.4":
        return {key: {"version": version, **value}}
    return {"ome": {"version": version, key: value}}


def _window(np_dtype: np.dtype[Any]) -> dict[str, float]:
    if np_dtype.kind == "f":
        low, high = 0.0, 1.0
    else:
        info = np.iinfo(np_dtype)
        low, high = float(info.min), float(info.max)
    return {"start": low, "end": high, "min": low, "max": high}


def _image_metadata(
    version: str,
    fov: str,
    channels: list[str],
    level_shapes: list[tuple[int, ...]],
    np_dtype: np.dtype[Any],
) -> dict[str, Any]:
    datasets = []
    for level in range(len(level_shapes)):
        factor = float(2**level)
        scale = [*VOXEL_SIZE[:3], VOXEL_SIZE[3] * factor, VOXEL_SIZE[4] * factor]
        # Pixel centres of a 2**level downsampling sit half a coarse pixel
        # minus half a fine pixel from the origin.
        offset = [(factor - 1.0) / 2.0 * VOXEL_SIZE[3], (factor - 1.0) / 2.0 * VOXEL_SIZE[4]]
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": [0.0, 0.0, 0.0, *offset]},
                ],
            }
        )
    multiscale: dict[str, Any] = {
        "name": fov,
        "axes": [dict(axis) for axis in _AXES],
        "datasets": datasets,
    }
    window = _window(np_dtype)
    omero: dict[str, Any] = {
        "id": 0,
        "name": fov,
        "channels": [
            {
                "active": True,
                "coefficient": 1.0,
                "color": _CHANNEL_COLORS.get(label, _FALLBACK_COLOR),
                "family": "linear",
                "inverted": False,
                "label": label,
                "window": dict(window),
            }
            for label in channels
        ],
        "rdefs": {"defaultT": 0, "defaultZ": 0, "model": "color", "projection": "normal"},
    }
    if version == "0.4":
        multiscale = {"version": version, **multiscale}
        return {"multiscales": [multiscale], "omero": {"version": version, **omero}}
    return {"ome": {"version": version, "multiscales": [multiscale], "omero": omero}}


class _PositionDocs:
    """Serialised position metadata, cached per field name.

    Every position of a plate differs only in its field name, so each
    distinct document is built and encoded once.
    """

    def __init__(
        self,
        writer: _Writer,
        version: str,
        channels: list[str],
        level_shapes: list[tuple[int, ...]],
        np_dtype: np.dtype[Any],
    ) -> None:
        self._writer = writer
        self._args = (version, channels, level_shapes, np_dtype)
        self._cache: dict[str, bytes] = {}

    def get(self, fov: str) -> bytes:
        doc = self._cache.get(fov)
        if doc is None:
            version, channels, level_shapes, np_dtype = self._args
            attrs = _image_metadata(version, fov, channels, level_shapes, np_dtype)
            doc = self._cache[fov] = self._writer.group_doc(attrs)
        return doc


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2).encode()


def _write_file(path: str, content: bytes) -> None:
    with open(path, "wb") as f:
        f.write(content)


class _Writer(ABC):
    """Encodes and writes the nodes of one zarr format."""

    zarr_format: Literal[2, 3]

    @abstractmethod
    def group_doc(self, attrs: dict[str, Any] | None) -> bytes:
        """Encode a group's attributes into the bytes `write_group_bytes` takes."""

    @abstractmethod
    def array_doc(
        self,
        shape: tuple[int, ...],
        chunks: tuple[int, ...],
        np_dtype: np.dtype[Any],
        compressor: str,
    ) -> bytes:
        """Encode an array's metadata document."""

    @abstractmethod
    def write_group_bytes(self, directory: str, doc: bytes) -> None:
        """Write an encoded group into an existing directory."""

    @abstractmethod
    def write_array_bytes(self, directory: str, doc: bytes) -> None:
        """Write an encoded array document into an existing directory."""

    def group(self, directory: pathlib.Path, attrs: dict[str, Any] | None) -> None:
        directory.mkdir(exist_ok=True)
        self.write_group_bytes(os.fspath(directory), self.group_doc(attrs))


def _fill_value(np_dtype: np.dtype[Any]) -> int | float:
    # zarr writes 0.0 for floating point arrays; matching it keeps a metadata
    # round trip through zarr byte-for-byte stable.
    return 0.0 if np_dtype.kind == "f" else 0


class _V2Writer(_Writer):
    """Zarr format 2: attributes in ``.zattrs`` next to ``.zgroup``."""

    zarr_format: Literal[2, 3] = 2
    _ZGROUP = _encode({"zarr_format": 2})

    def group_doc(self, attrs: dict[str, Any] | None) -> bytes:
        # Only the attributes vary; .zgroup is shared by every group.
        return _encode(attrs) if attrs else b""

    def array_doc(
        self,
        shape: tuple[int, ...],
        chunks: tuple[int, ...],
        np_dtype: np.dtype[Any],
        compressor: str,
    ) -> bytes:
        return _encode(
            {
                "zarr_format": 2,
                "shape": list(shape),
                "chunks": list(chunks),
                "dtype": np_dtype.str,
                "compressor": dict(_BLOSC_V2) if compressor == "default" else None,
                "fill_value": _fill_value(np_dtype),
                "order": "C",
                "filters": None,
                "dimension_separator": "/",
            }
        )

    def write_group_bytes(self, directory: str, doc: bytes) -> None:
        _write_file(os.path.join(directory, ".zgroup"), self._ZGROUP)
        if doc:
            _write_file(os.path.join(directory, ".zattrs"), doc)

    def write_array_bytes(self, directory: str, doc: bytes) -> None:
        _write_file(os.path.join(directory, ".zarray"), doc)


class _V3Writer(_Writer):
    """Zarr format 3: one ``zarr.json`` per node."""

    zarr_format: Literal[2, 3] = 3

    def group_doc(self, attrs: dict[str, Any] | None) -> bytes:
        return _encode({"zarr_format": 3, "node_type": "group", "attributes": attrs or {}})

    def array_doc(
        self,
        shape: tuple[int, ...],
        chunks: tuple[int, ...],
        np_dtype: np.dtype[Any],
        compressor: str,
    ) -> bytes:
        # zarr drops the endian setting for single-byte types; doing the same
        # keeps the document identical to what zarr itself would write.
        if np_dtype.itemsize == 1:
            codecs: list[dict[str, Any]] = [{"name": "bytes"}]
        else:
            codecs = [{"name": "bytes", "configuration": {"endian": "little"}}]
        if compressor == "default":
            codecs.append(json.loads(json.dumps(_ZSTD_V3)))
        return _encode(
            {
                "zarr_format": 3,
                "node_type": "array",
                "shape": list(shape),
                "data_type": np_dtype.name,
                "chunk_grid": {
                    "name": "regular",
                    "configuration": {"chunk_shape": list(chunks)},
                },
                "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                "fill_value": _fill_value(np_dtype),
                "codecs": codecs,
                "attributes": {},
                "dimension_names": list(_DIMENSION_NAMES),
                "storage_transformers": [],
            }
        )

    def write_group_bytes(self, directory: str, doc: bytes) -> None:
        _write_file(os.path.join(directory, "zarr.json"), doc)

    def write_array_bytes(self, directory: str, doc: bytes) -> None:
        _write_file(os.path.join(directory, "zarr.json"), doc)


class _DataWriter:
    """Writes the deterministic chunk content of one position through zarr."""

    def __init__(
        self,
        mode: str,
        np_dtype: np.dtype[Any],
        seed: int,
        level_shapes: list[tuple[int, ...]],
        zarr_format: Literal[2, 3],
    ) -> None:
        self._mode = mode
        self._dtype = np_dtype
        self._seed = seed
        self._shapes = level_shapes
        self._zarr_format = zarr_format

    def write(self, position_dir: str, index: int) -> None:
        if self._mode == "none":
            return
        # Imported lazily: metadata-only plates never pay zarr's import cost.
        import zarr

        for level, values in enumerate(self._levels(index)):
            array = zarr.open_array(
                store=os.path.join(position_dir, str(level)),
                mode="r+",
                zarr_format=self._zarr_format,
            )
            array[...] = values

    def _levels(self, index: int) -> Iterator[np.ndarray[Any, Any]]:
        if self._mode == "fill":
            value = np.array(index).astype(self._dtype)
            for level_shape in self._shapes:
                yield np.full(level_shape, value, dtype=self._dtype)
            return
        rng = np.random.default_rng(self._seed + index)
        if self._dtype.kind == "f":
            base = rng.random(self._shapes[0]).astype(self._dtype)
        else:
            info = np.iinfo(self._dtype)
            base = rng.integers(
                info.min, info.max, size=self._shapes[0], dtype=self._dtype, endpoint=True
            )
        for level, level_shape in enumerate(self._shapes):
            step = 2**level
            yield base[..., ::step, ::step][..., : level_shape[3], : level_shape[4]]
