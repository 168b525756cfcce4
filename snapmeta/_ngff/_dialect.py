"""The two on-disk dialects: NGFF 0.4 on zarr format 2, NGFF 0.5 on zarr format 3.

Everything that differs between them is here: document names, where the
attributes sit inside a document, and where NGFF keeps its metadata among
the attributes.
"""

from __future__ import annotations

from typing import Any

V2_ATTRS = ".zattrs"
V2_ARRAY = ".zarray"
V2_GROUP = ".zgroup"
V3_NODE = "zarr.json"


class NgffReadError(Exception):
    """A document is missing or malformed; ``document`` and ``field`` locate it."""

    def __init__(self, document: str, field: str, message: str, *, missing: bool = False) -> None:
        super().__init__(f"{document}: {field}: {message}" if field else f"{document}: {message}")
        self.document = document
        self.field = field
        self.message = message
        self.missing = missing


def join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def group_document(node: str, zarr_format: int) -> str:
    """The document holding a group's attributes."""
    return join(node, V3_NODE if zarr_format == 3 else V2_ATTRS)


def array_documents(node: str, zarr_format: int) -> tuple[str, ...]:
    """The documents of an array: its metadata, then (zarr 2) its attributes."""
    if zarr_format == 3:
        return (join(node, V3_NODE),)
    return (join(node, V2_ARRAY), join(node, V2_ATTRS))


def attributes_of(value: Any, zarr_format: int, document: str) -> dict[str, Any]:
    """A node's user attributes from its parsed group document."""
    if zarr_format == 3:
        if not isinstance(value, dict):
            raise NgffReadError(document, "", "expected a JSON object")
        if value.get("node_type", "group") != "group":
            raise NgffReadError(document, "node_type", "expected a group")
        value = value.get("attributes", {})
        if not isinstance(value, dict):
            raise NgffReadError(document, "attributes", "expected a JSON object")
        return value
    if not isinstance(value, dict):
        raise NgffReadError(document, "", "expected a JSON object")
    return value


def ome_of(attrs: dict[str, Any], zarr_format: int) -> dict[str, Any]:
    """NGFF metadata: the attributes themselves in 0.4, their ``ome`` member in 0.5."""
    if zarr_format == 3:
        ome = attrs.get("ome", {})
        return ome if isinstance(ome, dict) else {}
    return attrs


def ome_prefix(zarr_format: int) -> tuple[str, ...]:
    """Where :func:`ome_of` looks, as a path of keys from the attributes."""
    return ("ome",) if zarr_format == 3 else ()


def ngff_version(ome: dict[str, Any], key: str, zarr_format: int) -> str:
    version = ome.get("version")
    if version is None and isinstance(ome.get(key), dict):
        version = ome[key].get("version")
    if version is None:
        return "0.5" if zarr_format == 3 else "0.4"
    return str(version)


def array_document(
    metadata: Any, attributes: Any | None, zarr_format: int, document: str
) -> dict[str, Any]:
    """The array's metadata document as stored in a snapshot.

    zarr 2 keeps array attributes in ``.zattrs`` beside ``.zarray``; they are
    stored under ``"attributes"``, which is where zarr's parser takes them.
    """
    if not isinstance(metadata, dict):
        raise NgffReadError(document, "", "expected a JSON object")
    if zarr_format == 3:
        if metadata.get("node_type") != "array":
            raise NgffReadError(document, "node_type", "expected an array")
        return metadata
    if attributes is None:
        return metadata
    if not isinstance(attributes, dict):
        raise NgffReadError(
            document.rsplit("/", 1)[0] + "/" + V2_ATTRS, "", "expected a JSON object"
        )
    return {**metadata, "attributes": attributes}


def detect_zarr_format(names: set[str]) -> int | None:
    """The zarr format of a store root from the names of its documents."""
    if V3_NODE in names:
        return 3
    if V2_ATTRS in names or V2_GROUP in names:
        return 2
    return None
