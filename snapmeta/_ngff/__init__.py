"""Reading NGFF plates from their JSON documents: build side and JSON fallback.

``_dialect`` holds the zarr 2 / zarr 3 differences, ``_read`` reads and
validates nodes (with ``_validate``, the only importer of pydantic), and
``_layout`` maps a position's NGFF facts onto its attribute leaves.
"""

from ._dialect import NgffReadError, array_documents, detect_zarr_format, group_document
from ._layout import image_layout
from ._read import (
    Document,
    LevelContent,
    PositionContent,
    RootContent,
    StoreReader,
    WellContent,
    as_problem,
    invalid,
)

__all__ = [
    "Document",
    "LevelContent",
    "NgffReadError",
    "PositionContent",
    "RootContent",
    "StoreReader",
    "WellContent",
    "array_documents",
    "as_problem",
    "detect_zarr_format",
    "group_document",
    "image_layout",
    "invalid",
]
