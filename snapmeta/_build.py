"""Build a snapshot: read every metadata document once, validate, write atomically."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from . import _format, _ngff
from ._ngff import NgffReadError
from ._version import __version__
from .errors import NotAPlateError, PlateValidationError, Problem

__all__ = ["ProgressCallback", "build_snapshot"]

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)``; stages are ``"wells"``,
``"positions"`` and ``"write"``."""

T = TypeVar("T")
R = TypeVar("R")

# Reading small files is dominated by syscall latency (high on GPFS/Lustre);
# threads overlap it even under the GIL.
DEFAULT_WORKERS = min(32, 8 * (os.cpu_count() or 1))


def _map(
    pool: ThreadPoolExecutor,
    fn: Callable[[T], R],
    items: list[T],
    stage: str,
    progress: ProgressCallback | None,
) -> list[R]:
    total = len(items)
    if progress is not None:
        progress(stage, 0, total)
    results: list[R] = []
    step = max(1, total // 100)
    for i, result in enumerate(pool.map(fn, items), 1):
        results.append(result)
        if progress is not None and (i % step == 0 or i == total):
            progress(stage, i, total)
    return results


def _as_problem(exc: NgffReadError) -> Problem:
    return Problem(exc.document, exc.field, exc.message)


def build_snapshot(
    store: str | os.PathLike[str],
    *,
    progress: ProgressCallback | None = None,
    inline_limit: int = _format.DEFAULT_INLINE_LIMIT,
    workers: int | None = None,
) -> Path:
    """Read and validate a plate's metadata once and write its snapshot.

    Parameters
    ----------
    store
        Path of an HCS OME-Zarr plate (NGFF 0.4 on zarr v2 or 0.5 on zarr v3).
    progress
        Optional ``progress(stage, done, total)`` callback.
    inline_limit
        Attribute documents larger than this many bytes are not copied into
        the snapshot; they are read from their JSON file when asked for.
    workers
        Threads used to read documents concurrently.

    Returns
    -------
    Path
        The snapshot file, ``STORE/.snapmeta.arrow``.

    Raises
    ------
    NotAPlateError
        The path is not a zarr group with HCS plate metadata.
    PlateValidationError
        The metadata is invalid; ``.problems`` lists every problem found.
    """
    root = Path(store)
    content = collect_content(root, progress=progress, inline_limit=inline_limit, workers=workers)
    if progress is not None:
        progress("write", 0, 1)
    for leftover in _format.stale_temp_files(root):
        # A temp file older than an hour belongs to a builder that died; a
        # younger one may be a concurrent build in progress.
        _remove_if_old(leftover)
    path = _format.new_file(_format.snapshot_path(root), content)
    if progress is not None:
        progress("write", 1, 1)
    return path


def _remove_if_old(path: Path, age_s: float = 3600.0) -> None:
    try:
        if time.time() - path.stat().st_mtime > age_s:
            path.unlink()
    except FileNotFoundError:
        pass


def _read_position(
    root: Path,
    job: tuple[str, str, str, int, int | None],
    zarr_format: int,
    inline_limit: int,
    validate: Any,
) -> tuple[list[Problem], dict[str, Any] | None]:
    path, well, field, well_index, acquisition = job
    try:
        source = _ngff.read_position(root, path, zarr_format)
    except NgffReadError as exc:
        if exc.message == "document is missing":
            what = (
                "position"
                if exc.document == _ngff.group_documents(path, zarr_format)[0]
                else "array"
            )
            return [
                Problem(
                    exc.document,
                    "",
                    f"{what} of {path!r} is listed in the metadata but missing on disk",
                )
            ], None
        return [_as_problem(exc)], None
    ome = _ngff.ome_of(source.attributes, zarr_format)
    doc = source.group.path
    problems = validate.validate_image(doc, ome)
    if problems:
        return problems, None
    axes = ome["multiscales"][0]["axes"]
    names = [a["name"] for a in axes]
    c_axis = next((i for i, a in enumerate(axes) if a.get("type") == "channel"), None)
    if c_axis is None and "c" in names:
        c_axis = names.index("c")
    omero = ome.get("omero")
    channels = len(omero["channels"]) if isinstance(omero, dict) else None
    for _level, docs, meta in source.arrays:
        problems.extend(validate.validate_array(docs[0].path, meta, len(axes), channels, c_axis))
    if problems:
        return problems, None
    try:
        record = _ngff.position_record(
            source,
            well=well,
            field=field,
            well_index=well_index,
            acquisition=acquisition,
            zarr_format=zarr_format,
            inline_limit=inline_limit,
        )
    except NgffReadError as exc:
        return [_as_problem(exc)], None
    return [], record


def _read_or_problem(root: Path, relpath: str) -> _ngff.Document | Problem:
    try:
        return _ngff.read_document(root, relpath)
    except NgffReadError as exc:
        return _as_problem(exc)


def _invalid(root: Path, problems: Iterable[Problem]) -> PlateValidationError:
    problems = tuple(problems)
    shown = "\n".join(f"  {p}" for p in problems[:50])
    more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
    return PlateValidationError(
        f"{root}: {len(problems)} problem(s) in the plate metadata:\n{shown}{more}",
        store=str(root),
        problems=problems,
    )


def collect_content(
    root: Path,
    *,
    progress: ProgressCallback | None,
    inline_limit: int,
    workers: int | None,
) -> _format.SnapshotContent:
    """Read and validate every metadata document of the plate at ``root``."""
    from . import _validate  # pydantic is imported here, never on the open path

    if not root.is_dir():
        raise NotAPlateError(
            f"{root} does not exist or is not a directory", store=str(root), document=None
        )
    zarr_format = _ngff.detect_zarr_format(root)
    if zarr_format is None:
        raise NotAPlateError(
            f"{root} is not a zarr group: found neither zarr.json nor .zattrs/.zgroup",
            store=str(root),
            document=None,
        )
    root_rel = _ngff.root_document(zarr_format)
    try:
        root_doc = _ngff.read_document(root, root_rel)
        root_attrs = _ngff.attributes_of(root_doc, zarr_format)
        plate = _ngff.plate_of(root_attrs, zarr_format, root_rel)
    except NgffReadError as exc:
        raise NotAPlateError(
            f"{root} is not an HCS plate: {exc}", store=str(root), document=str(root / root_rel)
        ) from exc
    ome = _ngff.ome_of(root_attrs, zarr_format)
    version = _ngff.ngff_version(ome, "plate", zarr_format)
    problems = _validate.validate_plate(root_rel, plate)
    if problems:
        raise _invalid(root, problems)

    rows = [r["name"] for r in plate["rows"]]
    columns = [c["name"] for c in plate["columns"]]
    well_refs = plate["wells"]
    n_workers = workers or DEFAULT_WORKERS

    with ThreadPoolExecutor(n_workers, thread_name_prefix="snapmeta-build") as pool:
        well_docs = _map(
            pool,
            lambda ref: _read_or_problem(root, _ngff.group_documents(ref["path"], zarr_format)[0]),
            well_refs,
            "wells",
            progress,
        )
        wells: list[dict[str, Any]] = []
        jobs: list[tuple[str, str, str, int, int | None]] = []
        for ref, doc in zip(well_refs, well_docs, strict=True):
            if isinstance(doc, Problem):
                problems.append(doc)
                continue
            if doc.data is None:
                problems.append(
                    Problem(
                        doc.path,
                        "",
                        f"well {ref['path']!r} is listed in the plate but missing on disk",
                    )
                )
                continue
            try:
                well_attrs = _ngff.attributes_of(doc, zarr_format)
                found = _validate.validate_well(
                    doc.path, _ngff.ome_of(well_attrs, zarr_format).get("well")
                )
                if found:
                    problems.extend(found)
                    continue
                _, images = _ngff.well_images(doc, zarr_format)
            except NgffReadError as exc:
                problems.append(_as_problem(exc))
                continue
            first = len(jobs)
            for field, acquisition in images:
                jobs.append(
                    (_ngff.join(ref["path"], field), ref["path"], field, len(wells), acquisition)
                )
            encoded = _ngff.encode_attributes(well_attrs)
            wells.append(
                {
                    "path": ref["path"],
                    "row": rows[ref["rowIndex"]],
                    "column": columns[ref["columnIndex"]],
                    "row_index": ref["rowIndex"],
                    "column_index": ref["columnIndex"],
                    "first_position": first,
                    "position_count": len(images),
                    "attributes": encoded if len(encoded) <= inline_limit else None,
                    "attributes_size": len(encoded),
                    "documents": [doc.fingerprint()],
                }
            )
        results = _map(
            pool,
            lambda job: _read_position(root, job, zarr_format, inline_limit, _validate),
            jobs,
            "positions",
            progress,
        )
    positions = []
    for found, record in results:
        problems.extend(found)
        if record is not None:
            positions.append(record)
    if problems:
        raise _invalid(root, problems)

    meta = {
        "magic": _format.MAGIC,
        "format_version": str(_format.FORMAT_VERSION),
        "writer": f"snapmeta {__version__}",
        "ngff_version": version,
        "zarr_format": str(zarr_format),
        "root_document": root_rel,
        "root_size": str(root_doc.size),
        "root_mtime_ns": str(root_doc.mtime_ns),
        "root_digest": root_doc.digest.hex(),
        "inline_limit": str(inline_limit),
    }
    if plate.get("name") is not None:
        meta["plate_name"] = str(plate["name"])
    if plate.get("field_count") is not None:
        meta["field_count"] = str(plate["field_count"])
    acquisitions = [
        {
            "id": a["id"],
            "name": a.get("name"),
            "description": a.get("description"),
            "maximum_field_count": a.get("maximumfieldcount"),
            "start_time": a.get("starttime"),
            "end_time": a.get("endtime"),
        }
        for a in plate.get("acquisitions") or []
    ]
    root_encoded = _ngff.encode_attributes(root_attrs)
    content = _format.SnapshotContent(
        meta={_format.META_PREFIX + k: v for k, v in meta.items()},
        rows=rows,
        columns=columns,
        acquisitions=acquisitions,
        wells=wells,
        positions=positions,
        root_attributes=root_encoded if len(root_encoded) <= inline_limit else None,
    )
    return content
