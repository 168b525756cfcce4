"""zarr arrays built from metadata held in memory: no store read to open.

zarr 3 has no public constructor for an array whose metadata the caller
already has; ``AsyncArray(metadata, store_path)`` is the internal one that
``zarr.open_array`` itself ends in. pyproject pins zarr to the tested minor
range and tests/test_arrays.py checks the result against ``zarr.open_array``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import zarr
from zarr.core.array import AsyncArray, parse_array_metadata
from zarr.core.metadata import ArrayMetadata
from zarr.storage import LocalStore, StorePath


def local_store(root: Path, *, read_only: bool) -> LocalStore:
    return LocalStore(root, read_only=read_only)


def parse_metadata(document: dict[str, Any]) -> ArrayMetadata:
    """zarr's own parse of an array document (``.zarray`` or ``zarr.json``)."""
    return parse_array_metadata(document)


def array_from_metadata(store: LocalStore, path: str, metadata: ArrayMetadata) -> zarr.Array:
    """An array over ``metadata``, which may be shared by many positions.

    zarr updates attributes in place (``metadata.attributes.update``), so the
    handle gets its own metadata object with its own attributes: a write
    through one array must never reach another array's document.
    """
    own = copy.copy(metadata)
    object.__setattr__(own, "attributes", copy.deepcopy(metadata.attributes))
    return zarr.Array(AsyncArray(own, StorePath(store, path)))
