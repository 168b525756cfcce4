"""The snapshot format, version 2: schema, record types, encodings, checksums.

This module is the single definition of the bytes on disk; ``docs/format.md``
describes the same for readers in other languages. It does no file I/O: the
writer (``_writer``) and the reader (``_reader``) are built on it.

A snapshot is an uncompressed Arrow IPC file with one record batch of one
row. Each column is a *section*. Wells and positions ("nodes") each have one
entry: a path (for listing) and a checksummed MessagePack record. Everything
positions share (attribute templates, image layouts, array metadata,
document digests) is stored once and referenced by index.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import msgpack
import pyarrow as pa

FORMAT_VERSION: Final = 2
META_KEY: Final = b"snapmeta.format"
# Big integers that MessagePack cannot hold travel as decimal text in this ext type.
EXT_BIG_INT: Final = 1
NO_SLOT: Final = 0

JSON: TypeAlias = Any
Ref: TypeAlias = int | None


# Node-sized sections first, the small shared ones last: they end next to the
# footer, so one read from the end of the file gets all of them.
def _section(name: str, item: pa.DataType) -> pa.Field:
    return pa.field(name, pa.list_(pa.field("item", item, nullable=False)), nullable=False)


SCHEMA: Final = pa.schema(
    [
        _section("lookup", pa.uint32()),
        _section("paths", pa.string()),
        _section("nodes", pa.binary()),
        _section("contents", pa.binary(16)),
        _section("arrays", pa.binary()),
        _section("templates", pa.binary()),
        _section("images", pa.binary()),
        pa.field("plate", pa.binary(), nullable=False),
    ],
    metadata={META_KEY: str(FORMAT_VERSION).encode()},
)
SHARED_SECTIONS: Final = ("arrays", "templates", "images")
FIXED_SECTIONS: Final = ("lookup", "paths", "contents")


class FormatError(Exception):
    """A value in the file breaks a rule of the format (the reader adds the file name)."""

    def __init__(self, section: str, index: int | None, reason: str) -> None:
        where = section if index is None else f"{section}[{index}]"
        super().__init__(f"{where}: {reason}")
        self.section = section
        self.index = index
        self.reason = reason


# ---------------------------------------------------------------------------
# checksums and digests (all from every language's standard library)


def crc32(*parts: bytes | memoryview | str) -> int:
    """CRC-32 (ISO-HDLC, as zlib) of the concatenated parts; text is UTF-8."""
    value = 0
    for part in parts:
        value = zlib.crc32(part.encode() if isinstance(part, str) else part, value)
    return value


def content_digest(data: bytes) -> bytes:
    """The first 16 bytes of the SHA-256 of a document's bytes."""
    return hashlib.sha256(data).digest()[:16]


def key_hash(path: str) -> int:
    """Lookup hash of a node path: CRC-32 of its UTF-8 bytes."""
    return zlib.crc32(path.encode())


def lookup_capacity(nodes: int) -> int:
    """Slots for ``nodes`` entries: a power of two, load factor at most 2/3."""
    capacity = 8
    while capacity * 2 < nodes * 3:
        capacity *= 2
    return capacity


def paths_checksum(paths: Iterable[str]) -> int:
    """CRC-32 of every path followed by a NUL byte, in node order."""
    value = 0
    for path in paths:
        value = zlib.crc32(path.encode() + b"\0", value)
    return value


# ---------------------------------------------------------------------------
# payload encoding: MessagePack with native values


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_BIG_INT:
        try:
            return int(data.decode("ascii"))
        except ValueError:
            pass
    raise ValueError(f"unknown or malformed MessagePack ext type {code}")


def _default(value: Any) -> Any:
    if isinstance(value, int):  # only reached when out of the 64-bit ranges
        return msgpack.ExtType(EXT_BIG_INT, str(value).encode("ascii"))
    raise TypeError(f"cannot encode {type(value).__name__}")


def pack(value: Any) -> bytes:
    """MessagePack: smallest integer forms, float64 for every float, str for text."""
    try:
        packed = msgpack.packb(value, use_bin_type=True, default=_default)
    except OverflowError:  # msgpack raises this itself for big ints in some paths
        packed = msgpack.packb(_big_ints(value), use_bin_type=True, default=_default)
    return bytes(packed)


def _big_ints(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return msgpack.ExtType(EXT_BIG_INT, str(value).encode("ascii"))
    if isinstance(value, dict):
        return {k: _big_ints(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_big_ints(v) for v in value]
    return value


def unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_ext_hook)


def seal(name: str, payload: bytes) -> bytes:
    """An entry: CRC-32 (little-endian) of ``name NUL payload``, then the payload."""
    return crc32(name, b"\0", payload).to_bytes(4, "little") + payload


def open_entry(name: str, entry: bytes | memoryview, section: str, index: int | None) -> Any:
    """The decoded payload of an entry, after its checksum."""
    if len(entry) < 5:
        raise FormatError(section, index, "entry too short")
    if int.from_bytes(entry[:4], "little") != crc32(name, b"\0", entry[4:]):
        raise FormatError(section, index, "checksum mismatch")
    try:
        return unpack(entry[4:])
    except Exception as exc:  # any MessagePack failure behind a good CRC is a bad writer
        raise FormatError(section, index, f"undecodable payload ({exc})") from exc


def entry_name(section: str, index: int) -> str:
    """Checksum name of a shared entry; a node's name is its path."""
    return f"{section}/{index}"


# ---------------------------------------------------------------------------
# strict type checks for decoded values: a crafted file that passes its
# checksums still gets a FormatError, never another exception


def _int(value: Any, section: str, index: int | None, what: str, low: int = 0) -> int:
    if type(value) is not int or value < low:
        raise FormatError(section, index, f"{what}: expected an integer >= {low}")
    return value


def _ref(value: Any, section: str, index: int | None, what: str, leaves: int) -> Ref:
    if value is None:
        return None
    if type(value) is not int or not 0 <= value < leaves:
        raise FormatError(section, index, f"{what}: leaf reference out of range")
    return value


def _list(
    value: Any, section: str, index: int | None, what: str, size: int | None = None
) -> list[Any]:
    if type(value) is not list or (size is not None and len(value) != size):
        expected = "a list" if size is None else f"a list of {size}"
        raise FormatError(section, index, f"{what}: expected {expected}")
    return value


def _str(value: Any, section: str, index: int | None, what: str) -> str:
    if type(value) is not str:
        raise FormatError(section, index, f"{what}: expected a string")
    return value


# ---------------------------------------------------------------------------
# records


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What a document looked like when the snapshot was built.

    ``mtime_ns`` is -1 for a document whose timestamp could not prove later
    edits ("racily clean"): its stat never matches, so its digest decides.
    """

    size: int
    mtime_ns: int
    content: int


SMUDGED: Final = -1


def encode_documents(docs: Sequence[Fingerprint | None], base: int) -> list[Any]:
    out: list[Any] = []
    previous = base
    for fp in docs:
        if fp is None:
            out.append(None)
        elif fp.mtime_ns == SMUDGED:
            out.append([fp.size, None, fp.content])
        else:
            out.append([fp.size, fp.mtime_ns - previous, fp.content])
            previous = fp.mtime_ns
    return out


def decode_documents(
    value: Any, base: int, contents: int, section: str, index: int | None
) -> tuple[Fingerprint | None, ...]:
    if type(value) is not list:
        raise FormatError(section, index, "documents: expected a list")
    out: list[Fingerprint | None] = []
    previous = base
    for item in value:
        if item is None:
            out.append(None)
            continue
        if type(item) is not list or len(item) != 3:
            raise FormatError(section, index, "document: expected a list of 3")
        size, delta, content = item
        if (
            type(size) is not int
            or size < 0
            or type(content) is not int
            or not 0 <= content < contents
        ):
            raise FormatError(section, index, "document: bad size or content reference")
        if delta is None:
            out.append(Fingerprint(size, SMUDGED, content))
            continue
        if type(delta) is not int:
            raise FormatError(section, index, "document mtime: expected an integer")
        previous += delta
        out.append(Fingerprint(size, previous, content))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Template:
    """The structure of a JSON value with its leaves lifted out.

    ``shape`` is the value with every leaf (anything that is not an object or
    an array) replaced by null; ``defaults`` are the leaves in depth-first
    order, object members in document order.
    """

    shape: JSON
    defaults: tuple[Any, ...]


def split_leaves(value: JSON) -> tuple[JSON, list[Any]]:
    """``(shape, leaves)`` of a JSON value (see :class:`Template`)."""
    leaves: list[Any] = []

    def walk(node: JSON) -> JSON:
        if type(node) is dict:
            return {k: walk(v) for k, v in node.items()}
        if type(node) is list:
            return [walk(v) for v in node]
        leaves.append(node)
        return None

    return walk(value), leaves


def join_leaves(shape: JSON, leaves: Sequence[Any]) -> JSON:
    """Inverse of :func:`split_leaves`."""
    it = iter(leaves)

    def walk(node: JSON) -> JSON:
        if type(node) is dict:
            return {k: walk(v) for k, v in node.items()}
        if type(node) is list:
            return [walk(v) for v in node]
        return next(it)

    return walk(shape)


def count_leaves(shape: JSON) -> int:
    if type(shape) is dict:
        return sum(count_leaves(v) for v in shape.values())
    if type(shape) is list:
        return sum(count_leaves(v) for v in shape)
    return 1


def same_leaf(a: Any, b: Any) -> bool:
    """Leaf equality that keeps types apart (1, 1.0, True) and NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if type(a) is float and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def make_patch(defaults: Sequence[Any], leaves: Sequence[Any]) -> dict[int, Any]:
    """The leaves that differ from the defaults, by index."""
    if len(defaults) != len(leaves):
        raise ValueError("leaves do not match the template")
    if [type(v) for v in defaults] == [type(v) for v in leaves] and list(defaults) == list(leaves):
        return {}  # equal (a NaN never compares equal, so it takes the long way)
    pairs = enumerate(zip(defaults, leaves, strict=True))
    return {i: v for i, (d, v) in pairs if not same_leaf(d, v)}


def encode_patch(patch: Mapping[int, Any]) -> list[Any]:
    out: list[Any] = []
    for key in sorted(patch):
        out += (key, patch[key])
    return out


LEAF_TYPES: Final = (type(None), bool, int, float, str)


def decode_patch(value: Any, leaves: int, section: str, index: int | None) -> dict[int, Any]:
    if value == []:
        return {}
    items = _list(value, section, index, "patch")
    if len(items) % 2:
        raise FormatError(section, index, "patch: odd length")
    patch: dict[int, Any] = {}
    previous = -1
    for i in range(0, len(items), 2):
        key = items[i]
        if type(key) is not int or not previous < key < leaves:
            raise FormatError(section, index, "patch: leaf indexes must increase within range")
        value_ = items[i + 1]
        if type(value_) not in LEAF_TYPES:
            raise FormatError(section, index, "patch: a leaf must be a JSON scalar")
        patch[key] = value_
        previous = key
    return patch


def decode_template(value: Any, index: int) -> Template:
    shape, defaults = _list(value, "templates", index, "template", 2)
    defaults = _list(defaults, "templates", index, "defaults")
    if not _json_shape(shape):  # first: it bounds the depth the walks below recurse to
        raise FormatError("templates", index, "the shape is not a JSON value")
    if count_leaves(shape) != len(defaults):
        raise FormatError("templates", index, "defaults do not match the shape")
    if any(type(d) not in LEAF_TYPES for d in defaults):
        raise FormatError("templates", index, "a default must be a JSON scalar")
    return Template(shape, tuple(defaults))


def _json_shape(value: Any, depth: int = 0) -> bool:
    """Whether a template shape holds only maps with text keys, arrays and nils."""
    if depth > 256:
        return False
    if type(value) is dict:
        return all(type(k) is str and _json_shape(v, depth + 1) for k, v in value.items())
    if type(value) is list:
        return all(_json_shape(v, depth + 1) for v in value)
    return value is None


@dataclass(frozen=True, slots=True)
class Level:
    """One resolution level: leaf references into the position's attributes."""

    path: int
    array: int
    scale: Ref
    translation: Ref


@dataclass(frozen=True, slots=True)
class Image:
    """Where a position's NGFF facts sit among its attribute leaves.

    Every value a position serves is a leaf of its own attributes, so the
    facts and the attributes can never disagree. A transform reference is
    the first of ``len(axes)`` consecutive leaves.
    """

    template: int
    axes: tuple[tuple[Ref, Ref, Ref], ...]
    channels: tuple[Ref, ...]
    levels: tuple[Level, ...]
    scale: Ref
    translation: Ref

    def encode(self) -> list[Any]:
        return [
            self.template,
            [list(a) for a in self.axes],
            list(self.channels),
            [[lv.path, lv.array, lv.scale, lv.translation] for lv in self.levels],
            self.scale,
            self.translation,
        ]


def decode_image(
    value: Any, index: int, leaf_count: Callable[[int], int], templates: int, arrays: int
) -> Image:
    """``leaf_count(t)`` is the number of leaves of template ``t``."""
    s = "images"
    template, axes, channels, levels, scale, translation = _list(value, s, index, "image", 6)
    if type(template) is not int or not 0 <= template < templates:
        raise FormatError(s, index, "template reference out of range")
    n = leaf_count(template)
    ndim = len(_list(axes, s, index, "axes"))

    def span(ref: Any, what: str) -> Ref:
        first = _ref(ref, s, index, what, n)
        if first is not None and first + ndim > n:
            raise FormatError(s, index, f"{what}: transform runs past the leaves")
        return first

    decoded_axes = tuple(
        tuple(_ref(r, s, index, "axis", n) for r in _list(a, s, index, "axis", 3)) for a in axes
    )
    decoded_levels = []
    for item in _list(levels, s, index, "levels"):
        path, array, lscale, ltrans = _list(item, s, index, "level", 4)
        if type(array) is not int or not 0 <= array < arrays:
            raise FormatError(s, index, "array reference out of range")
        level_path = _ref(path, s, index, "level path", n)
        if level_path is None:
            raise FormatError(s, index, "level path: missing")
        decoded_levels.append(
            Level(level_path, array, span(lscale, "scale"), span(ltrans, "translation"))
        )
    if not decoded_levels:
        raise FormatError(s, index, "an image has one level at least")
    return Image(
        template,
        decoded_axes,  # type: ignore[arg-type]
        tuple(_ref(r, s, index, "channel", n) for r in _list(channels, s, index, "channels")),
        tuple(decoded_levels),
        span(scale, "scale"),
        span(translation, "translation"),
    )


@dataclass(frozen=True, slots=True)
class WellRecord:
    template: int
    patch: Mapping[int, Any]
    count: int
    documents: tuple[Fingerprint | None, ...]


@dataclass(frozen=True, slots=True)
class PositionRecord:
    image: int
    patch: Mapping[int, Any]
    acquisition: int | None
    documents: tuple[Fingerprint | None, ...]


def encode_well(record: WellRecord, base: int) -> bytes:
    return pack(
        [
            record.template,
            encode_patch(record.patch),
            record.count,
            encode_documents(record.documents, base),
        ]
    )


def encode_position(record: PositionRecord, base: int) -> bytes:
    return pack(
        [
            record.image,
            encode_patch(record.patch),
            record.acquisition,
            encode_documents(record.documents, base),
        ]
    )


@dataclass(frozen=True, slots=True)
class PlateRecord:
    """Plate-level facts: the one authoritative header of a snapshot."""

    ngff_version: str
    zarr_format: int
    plate: Mapping[str, JSON]  # the root's plate object without its "wells"
    root: Fingerprint
    mtime_base: int
    build_start_ns: int
    granularity_ns: int
    wells: int
    positions: int
    location: str
    writer: str
    checksums: Mapping[str, int]

    def encode(self) -> bytes:
        return pack(
            {
                "ngff_version": self.ngff_version,
                "zarr_format": self.zarr_format,
                "plate": dict(self.plate),
                "root": [self.root.size, self.root.mtime_ns, self.root.content],
                "mtime_base": self.mtime_base,
                "build_start_ns": self.build_start_ns,
                "granularity_ns": self.granularity_ns,
                "wells": self.wells,
                "positions": self.positions,
                "location": self.location,
                "writer": self.writer,
                "checksums": dict(self.checksums),
            }
        )


PLATE_KEYS: Final = (
    "ngff_version",
    "zarr_format",
    "plate",
    "root",
    "mtime_base",
    "build_start_ns",
    "granularity_ns",
    "wells",
    "positions",
    "location",
    "writer",
    "checksums",
)


def _check_plate_object(plate: dict[str, Any]) -> None:
    """The facts a reader serves from the plate object have the types NGFF gives them."""
    s = "plate"
    for key in ("rows", "columns"):
        items = plate.get(key)
        if type(items) is not list or not items:
            raise FormatError(s, None, f"plate.{key}: expected a non-empty list")
        for item in items:
            if type(item) is not dict or type(item.get("name")) is not str:
                raise FormatError(s, None, f"plate.{key}: every item needs a text name")
    acquisitions = plate.get("acquisitions")
    if acquisitions is not None:
        if type(acquisitions) is not list:
            raise FormatError(s, None, "plate.acquisitions: expected a list")
        for item in acquisitions:
            if type(item) is not dict or type(item.get("id")) is not int:
                raise FormatError(s, None, "plate.acquisitions: every item needs an integer id")
            for key in ("maximumfieldcount", "starttime", "endtime"):
                if item.get(key) is not None and type(item[key]) is not int:
                    raise FormatError(s, None, f"plate.acquisitions[].{key}: expected an integer")
            for key in ("name", "description"):
                if item.get(key) is not None and type(item[key]) is not str:
                    raise FormatError(s, None, f"plate.acquisitions[].{key}: expected text")
    if plate.get("name") is not None and type(plate["name"]) is not str:
        raise FormatError(s, None, "plate.name: expected text")
    if plate.get("field_count") is not None and type(plate["field_count"]) is not int:
        raise FormatError(s, None, "plate.field_count: expected an integer")


def decode_array(value: Any, index: int, zarr_format: int) -> dict[str, Any]:
    """An array entry: the array document, with what a reader uses checked."""
    s = "arrays"
    if type(value) is not dict:
        raise FormatError(s, index, "expected a JSON object")
    shape = value.get("shape")
    if type(shape) is not list or any(type(v) is not int or v < 0 for v in shape):
        raise FormatError(s, index, "shape: expected a list of non-negative integers")
    if zarr_format == 3:
        grid = value.get("chunk_grid")
        config = grid.get("configuration") if type(grid) is dict else None
        chunks = config.get("chunk_shape") if type(config) is dict else None
        dtype = value.get("data_type")
    else:
        chunks = value.get("chunks")
        dtype = value.get("dtype")
    if (
        type(chunks) is not list
        or len(chunks) != len(shape)
        or any(type(v) is not int or v < 1 for v in chunks)
    ):
        raise FormatError(s, index, "chunks: expected one positive integer per dimension")
    if type(dtype) not in (str, list, dict):
        raise FormatError(s, index, "missing or malformed data type")
    return value


def decode_plate(value: Any, contents: int) -> PlateRecord:
    s = "plate"
    if type(value) is not dict or tuple(value) != PLATE_KEYS:
        raise FormatError(s, None, f"expected a map with keys {', '.join(PLATE_KEYS)}")
    if value["zarr_format"] not in (2, 3) or type(value["zarr_format"]) is not int:
        raise FormatError(s, None, "zarr_format: expected 2 or 3")
    plate = value["plate"]
    if type(plate) is not dict or "wells" in plate:
        raise FormatError(s, None, "plate: expected the plate object without wells")
    _check_plate_object(plate)
    size, mtime, content = _list(value["root"], s, None, "root", 3)
    _int(size, s, None, "root size")
    _int(mtime, s, None, "root mtime", low=SMUDGED)
    if type(content) is not int or not 0 <= content < contents:
        raise FormatError(s, None, "root content reference out of range")
    checksums = value["checksums"]
    if type(checksums) is not dict or sorted(checksums) != sorted(FIXED_SECTIONS):
        raise FormatError(s, None, "checksums: expected one per fixed-size section")
    for name in FIXED_SECTIONS:
        _int(checksums[name], s, None, f"checksums.{name}")
    return PlateRecord(
        ngff_version=_str(value["ngff_version"], s, None, "ngff_version"),
        zarr_format=value["zarr_format"],
        plate=plate,
        root=Fingerprint(size, mtime, content),
        mtime_base=_int(value["mtime_base"], s, None, "mtime_base", low=-(2**63)),
        build_start_ns=_int(value["build_start_ns"], s, None, "build_start_ns", low=-(2**63)),
        granularity_ns=_int(value["granularity_ns"], s, None, "granularity_ns"),
        wells=_int(value["wells"], s, None, "wells"),
        positions=_int(value["positions"], s, None, "positions"),
        location=_str(value["location"], s, None, "location"),
        writer=_str(value["writer"], s, None, "writer"),
        checksums=checksums,
    )


# ---------------------------------------------------------------------------
# node records


def is_well_path(path: str) -> bool:
    """Wells are ``row/column``, positions ``row/column/field``."""
    return path.count("/") == 1


def decode_well(
    value: Any,
    index: int,
    base: int,
    leaf_count: Callable[[int], int],
    templates: int,
    contents: int,
) -> WellRecord:
    s = "nodes"
    template, patch, count, documents = _list(value, s, index, "well", 4)
    if type(template) is not int or not 0 <= template < templates:
        raise FormatError(s, index, "template reference out of range")
    docs = decode_documents(documents, base, contents, s, index)
    if len(docs) != 1 or docs[0] is None:
        raise FormatError(s, index, "a well has exactly one document")
    return WellRecord(
        template,
        decode_patch(patch, leaf_count(template), s, index),
        _int(count, s, index, "position count", low=1),
        docs,
    )


def decode_position(
    value: Any, index: int, base: int, images: int, contents: int
) -> tuple[int, list[Any], int | None, tuple[Fingerprint | None, ...]]:
    """The raw fields of a position record; the patch is checked against its image later."""
    if type(value) is not list or len(value) != 4:
        raise FormatError("nodes", index, "position: expected a list of 4")
    image, patch, acquisition, documents = value
    if type(image) is not int or not 0 <= image < images:
        raise FormatError("nodes", index, "image reference out of range")
    if acquisition is not None and type(acquisition) is not int:
        raise FormatError("nodes", index, "acquisition: expected an integer or nil")
    docs = decode_documents(documents, base, contents, "nodes", index)
    if len(docs) < 3 or docs[0] is None or docs[1] is None:
        raise FormatError("nodes", index, "a position lists its well, group and array documents")
    return image, patch, acquisition, docs


def position_documents(zarr_format: int, levels: int) -> int:
    """How many fingerprints a position record holds."""
    return 2 + levels * (1 if zarr_format == 3 else 2)


def iter_pairs(items: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
    for i in range(0, len(items), 2):
        yield items[i], items[i + 1]
