"""Reading NGFF 0.4 (zarr v2) and 0.5 (zarr v3) plate documents into records.

Shared by the builder and by the JSON fallback a stale snapshot takes. It
never imports pydantic: validation happens in ``_validate`` at build time,
and the extraction here is defensive enough that malformed input raises
``NgffReadError`` with a location instead of a bare ``KeyError``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._format import digest, pack

V2_ATTRS = ".zattrs"
V2_ARRAY = ".zarray"
V2_GROUP = ".zgroup"
V3_NODE = "zarr.json"
ATTRIBUTE_SEPARATORS = (",", ":")


class NgffReadError(Exception):
    """A document is missing or malformed; ``document`` and ``field`` locate it."""

    def __init__(self, document: str, field: str, message: str) -> None:
        super().__init__(f"{document}: {field}: {message}" if field else f"{document}: {message}")
        self.document = document
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Document:
    """One metadata file as read: its bytes (None if absent) and fingerprint."""

    path: str
    data: bytes | None
    size: int
    mtime_ns: int
    digest: bytes

    def fingerprint(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "digest": self.digest,
        }

    def json(self) -> Any:
        if self.data is None:
            raise NgffReadError(self.path, "", "document is missing")
        try:
            return json.loads(self.data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise NgffReadError(self.path, "", f"invalid JSON ({exc})") from exc


MISSING_DIGEST = bytes(16)


def read_document(root: Path, relpath: str) -> Document:
    """Read one document; the stat comes from the open descriptor (see docs/format.md)."""
    try:
        with open(root / relpath, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return Document(relpath, None, -1, 0, MISSING_DIGEST)
    except OSError as exc:  # a directory under the name, a symlink loop, EACCES
        raise NgffReadError(relpath, "", f"cannot read ({exc.strerror or exc})") from exc
    return Document(relpath, data, st.st_size, st.st_mtime_ns, digest(data))


def join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def detect_zarr_format(root: Path) -> int | None:
    if (root / V3_NODE).is_file():
        return 3
    if (root / V2_ATTRS).is_file() or (root / V2_GROUP).is_file():
        return 2
    return None


def root_document(zarr_format: int) -> str:
    return V3_NODE if zarr_format == 3 else V2_ATTRS


def group_documents(node: str, zarr_format: int) -> list[str]:
    """Documents whose content a group's snapshot entry mirrors."""
    return [join(node, V3_NODE if zarr_format == 3 else V2_ATTRS)]


def array_documents(node: str, zarr_format: int) -> list[str]:
    if zarr_format == 3:
        return [join(node, V3_NODE)]
    return [join(node, V2_ARRAY), join(node, V2_ATTRS)]


def attributes_of(doc: Document, zarr_format: int, *, optional: bool = False) -> dict[str, Any]:
    """The node's full user attributes (v2 ``.zattrs``; v3 ``zarr.json`` ``attributes``)."""
    if doc.data is None and optional:
        return {}
    value = doc.json()
    if zarr_format == 3:
        if not isinstance(value, dict):
            raise NgffReadError(doc.path, "", "expected a JSON object")
        value = value.get("attributes", {})
    if not isinstance(value, dict):
        raise NgffReadError(
            doc.path, "attributes" if zarr_format == 3 else "", "expected an object"
        )
    return value


def ome_of(attrs: dict[str, Any], zarr_format: int) -> dict[str, Any]:
    """NGFF metadata: top-level attributes in 0.4, the ``ome`` key in 0.5."""
    if zarr_format == 3:
        ome = attrs.get("ome", {})
        return ome if isinstance(ome, dict) else {}
    return attrs


def encode_attributes(attrs: Any) -> bytes:
    # Compact JSON of the parsed value: the value round-trips exactly (NaN and
    # Infinity included, as Python's json writes them), the original
    # whitespace does not.
    return json.dumps(
        attrs, ensure_ascii=False, allow_nan=True, separators=ATTRIBUTE_SEPARATORS
    ).encode()


def ngff_version(ome: dict[str, Any], key: str, zarr_format: int) -> str:
    version = ome.get("version")
    if version is None and isinstance(ome.get(key), dict):
        version = ome[key].get("version")
    if version is None:
        return "0.5" if zarr_format == 3 else "0.4"
    return str(version)


def _get(obj: Any, key: str | int, document: str, field: str) -> Any:
    try:
        return obj[key]
    except (KeyError, IndexError, TypeError) as exc:
        raise NgffReadError(document, field, "missing or wrong type") from exc


def _transforms(
    items: Any, document: str, field: str
) -> tuple[list[float] | None, list[float] | None]:
    scale = translation = None
    for i, item in enumerate(items or []):
        kind = _get(item, "type", document, f"{field}[{i}].type")
        if kind == "scale":
            scale = [float(v) for v in _get(item, "scale", document, f"{field}[{i}].scale")]
        elif kind == "translation":
            translation = [
                float(v) for v in _get(item, "translation", document, f"{field}[{i}].translation")
            ]
    return scale, translation


def _array_summary(meta: dict[str, Any], zarr_format: int, document: str) -> dict[str, Any]:
    if zarr_format == 3:
        chunks = _get(meta, "chunk_grid", document, "chunk_grid")
        chunk_shape = _get(
            _get(chunks, "configuration", document, "chunk_grid"),
            "chunk_shape",
            document,
            "chunk_grid.configuration.chunk_shape",
        )
        encoding = meta.get("chunk_key_encoding", {"name": "default"})
        config = encoding.get("configuration", {}) if isinstance(encoding, dict) else {}
        default_sep = "." if isinstance(encoding, dict) and encoding.get("name") == "v2" else "/"
        dtype = _get(meta, "data_type", document, "data_type")
        return {
            "shape": [int(v) for v in _get(meta, "shape", document, "shape")],
            "chunks": [int(v) for v in chunk_shape],
            "dtype": dtype if isinstance(dtype, str) else json.dumps(dtype),
            "order": None,
            "dimension_separator": config.get("separator", default_sep),
            "fill_value": _fill_text(meta.get("fill_value")),
        }
    dtype = _get(meta, "dtype", document, "dtype")
    return {
        "shape": [int(v) for v in _get(meta, "shape", document, "shape")],
        "chunks": [int(v) for v in _get(meta, "chunks", document, "chunks")],
        "dtype": dtype if isinstance(dtype, str) else json.dumps(dtype),
        "order": meta.get("order", "C"),
        "dimension_separator": meta.get("dimension_separator", "."),
        "fill_value": _fill_text(meta.get("fill_value")),
    }


def _fill_text(value: Any) -> str:
    # JSON text of the fill value; Python's json spells NaN/Infinity as zarr v2 does
    return json.dumps(value)


@dataclass(frozen=True, slots=True)
class PositionSource:
    """Everything read from disk for one position, before it becomes a record."""

    path: str
    group: Document
    attributes: dict[str, Any]
    arrays: list[tuple[str, list[Document], dict[str, Any]]]


def read_position(root: Path, path: str, zarr_format: int) -> PositionSource:
    """Read a position's group document and the array documents of every level."""
    (group_rel,) = group_documents(path, zarr_format)
    group = read_document(root, group_rel)
    attrs = attributes_of(group, zarr_format)
    ome = ome_of(attrs, zarr_format)
    multiscales = _get(ome, "multiscales", group_rel, "multiscales")
    datasets = _get(
        _get(multiscales, 0, group_rel, "multiscales"),
        "datasets",
        group_rel,
        "multiscales[0].datasets",
    )
    arrays = []
    for i, dataset in enumerate(datasets if isinstance(datasets, list) else []):
        level = _get(dataset, "path", group_rel, f"multiscales[0].datasets[{i}].path")
        docs = [
            read_document(root, rel) for rel in array_documents(join(path, str(level)), zarr_format)
        ]
        meta = docs[0].json()
        if not isinstance(meta, dict):
            raise NgffReadError(docs[0].path, "", "expected a JSON object")
        if zarr_format == 2 and docs[1].data is not None:
            # zarr v2 keeps array attributes beside .zarray; zarr's metadata
            # parser accepts them under "attributes", as in v3
            meta = {**meta, "attributes": attributes_of(docs[1], 2)}
        arrays.append((str(level), docs, meta))
    return PositionSource(path, group, attrs, arrays)


def position_record(
    source: PositionSource,
    *,
    well: str,
    field: str,
    well_index: int,
    acquisition: int | None,
    zarr_format: int,
    inline_limit: int,
) -> dict[str, Any]:
    """The snapshot entry of one position (``_format.POSITION_NAMES`` keys).

    ``attributes``/``array_metadata`` hold bytes; the
    snapshot writer turns them into blob references.
    """
    doc = source.group.path
    ome = ome_of(source.attributes, zarr_format)
    ms = _get(_get(ome, "multiscales", doc, "multiscales"), 0, doc, "multiscales")
    axes = _get(ms, "axes", doc, "multiscales[0].axes")
    names: list[str] = []
    types: list[str | None] = []
    units: list[str | None] = []
    for i, axis in enumerate(axes):
        if isinstance(axis, str):  # NGFF 0.3 spelled axes as bare names
            names.append(axis)
            types.append(None)
            units.append(None)
            continue
        names.append(str(_get(axis, "name", doc, f"multiscales[0].axes[{i}].name")))
        types.append(axis.get("type"))
        units.append(axis.get("unit"))
    levels, scales, translations = [], [], []
    for i, dataset in enumerate(_get(ms, "datasets", doc, "multiscales[0].datasets")):
        levels.append(str(_get(dataset, "path", doc, f"multiscales[0].datasets[{i}].path")))
        scale, translation = _transforms(
            dataset.get("coordinateTransformations"),
            doc,
            f"multiscales[0].datasets[{i}].coordinateTransformations",
        )
        scales.append(scale if scale is not None else [1.0] * len(names))
        translations.append(translation)
    global_scale, global_translation = _transforms(
        ms.get("coordinateTransformations"), doc, "multiscales[0].coordinateTransformations"
    )
    omero = ome.get("omero")
    channels = omero.get("channels", []) if isinstance(omero, dict) else []
    channel_names = [
        str(ch.get("label", i)) if isinstance(ch, dict) else str(i) for i, ch in enumerate(channels)
    ]
    summaries = []
    array_meta, documents = [], [source.group.fingerprint()]
    for _level, docs, meta in source.arrays:
        summaries.append(_array_summary(meta, zarr_format, docs[0].path))
        array_meta.append(pack(meta))
        documents.extend(d.fingerprint() for d in docs)
    encoded = encode_attributes(source.attributes)
    return {
        "path": source.path,
        "well": well,
        "field": field,
        "well_index": well_index,
        "acquisition": acquisition,
        "channel_names": channel_names,
        "axis_names": names,
        "axis_types": types,
        "axis_units": units,
        "levels": levels,
        "level_scale": scales,
        "level_translation": translations,
        "global_scale": global_scale,
        "global_translation": global_translation,
        "zarr_format": zarr_format,
        "shape": [s["shape"] for s in summaries],
        "chunks": [s["chunks"] for s in summaries],
        "dtype": [s["dtype"] for s in summaries],
        "fill_value": [s["fill_value"] for s in summaries],
        "order": [s["order"] for s in summaries],
        "dimension_separator": [s["dimension_separator"] for s in summaries],
        "array_metadata": array_meta,
        "attributes": encoded if len(encoded) <= inline_limit else None,
        "attributes_size": len(encoded),
        "documents": documents,
    }


def well_images(
    doc: Document, zarr_format: int
) -> tuple[dict[str, Any], list[tuple[str, int | None]]]:
    """A well's attributes and its (image path, acquisition) list."""
    attrs = attributes_of(doc, zarr_format)
    well = _get(ome_of(attrs, zarr_format), "well", doc.path, "well")
    images = []
    for i, image in enumerate(_get(well, "images", doc.path, "well.images")):
        path = _get(image, "path", doc.path, f"well.images[{i}].path")
        acq = image.get("acquisition") if isinstance(image, dict) else None
        if acq is not None and (not isinstance(acq, int) or isinstance(acq, bool)):
            raise NgffReadError(doc.path, f"well.images[{i}].acquisition", "must be an integer")
        images.append((str(path), acq))
    return attrs, images


def plate_of(attrs: dict[str, Any], zarr_format: int, document: str) -> dict[str, Any]:
    plate = ome_of(attrs, zarr_format).get("plate")
    if not isinstance(plate, dict):
        raise NgffReadError(document, "plate", "no HCS plate metadata")
    return plate
