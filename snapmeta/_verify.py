"""Full verification: every checksum, every entry, every document, and a fresh re-read.

``verify`` compares everything a reader can serve (plate facts, the well
list, every well's and position's attributes, NGFF layout and array
metadata) with what the plate's documents say now, validated as the builder
validates them. It never writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _format as fmt
from . import _locate, _reader
from ._freshness import changed_documents
from ._sources import JsonSource, PositionMeta, SnapshotSource
from .errors import SnapmetaError

__all__ = ["VerifyReport", "verify"]


@dataclass(slots=True)
class VerifyReport:
    """What :func:`verify` checked and what it found."""

    store: str
    snapshot: str = ""
    positions: int = 0
    wells: int = 0
    documents: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = (
            f"{self.store}: checked {self.positions} positions, {self.wells} wells, "
            f"{self.documents} documents"
        )
        if self.ok:
            return head + ": the snapshot is intact and up to date"
        shown = "\n".join(f"  {p}" for p in self.problems[:100])
        more = f"\n  ... and {len(self.problems) - 100} more" if len(self.problems) > 100 else ""
        return f"{head}: {len(self.problems)} problem(s)\n{shown}{more}"


def _same(a: Any, b: Any) -> bool:
    # canonical encodings: key order, int/float and NaN all count
    return fmt.pack(a) == fmt.pack(b)


def _position_facts(meta: PositionMeta) -> list[Any]:
    """Everything a Position serves, as plain values."""
    image = meta.image

    def leaf(ref: int | None) -> Any:
        return None if ref is None else meta.leaf(ref)

    def span(ref: int | None) -> Any:
        return None if ref is None else [meta.leaf(ref + k) for k in range(len(image.axes))]

    return [
        meta.acquisition,
        [[leaf(r) for r in axis] for axis in image.axes],
        [leaf(r) for r in image.channels],
        [
            [leaf(lv.path), span(lv.scale), span(lv.translation), meta.array_document(lv.array)]
            for lv in image.levels
        ],
        span(image.scale),
        span(image.translation),
        meta.attributes(),
    ]


def verify(
    store: Any,
    *,
    snapshot: str | os.PathLike[str] | None = None,
    reread: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> VerifyReport:
    """Check a snapshot completely (O(plate)); never modifies the store."""
    root = _locate.plate_root(store)
    report = VerifyReport(root)
    path = None
    for candidate in _locate.snapshot_candidates(root, snapshot):
        if os.path.lexists(candidate):
            path = candidate
            break
    if path is None:
        report.problems.append(f"no snapshot of {root}; create one with `snapmeta build {root}`")
        return report
    report.snapshot = path
    try:
        _locate.check_in_store(root, path)
        reader = _reader.open_file(path)
        source = SnapshotSource(reader)
        _check_whole(root, reader, source, report, progress)
    except SnapmetaError as exc:  # damaged: nothing it says can be compared
        report.problems.append(str(exc))
        return report
    if _locate.is_external(root, path) and reader.plate.location != root:
        report.problems.append(
            f"the snapshot was built for {reader.plate.location}, not for {root}"
        )
    damaged = any(not p.startswith("stale") for p in report.problems)
    if reread and not damaged:  # a damaged snapshot has nothing to compare
        _reread(root, reader, source, report, progress)
    return report


def _check_whole(
    root: str,
    reader: _reader.SnapshotReader,
    source: SnapshotSource,
    report: VerifyReport,
    progress: Callable[[str, int, int], None] | None,
) -> None:
    reader.check_sections()
    reader.check_contents()
    for name, count in reader.counts.items():
        for i in range(count):
            {"arrays": reader.array, "templates": reader.template, "images": reader.image}[name](i)
    paths = reader.paths()
    docs: list[str] = [source.group_doc]
    fps: list[fmt.Fingerprint | None] = [reader.plate.root]
    well_count = 0
    for index, path in enumerate(paths):
        if progress is not None and index % 1000 == 0:
            progress("snapshot", index, len(paths))
        found = reader.find(path)
        if found is None or found[0] != index:
            report.problems.append(f"lookup: {path!r} does not lead to its entry")
            continue
        if fmt.is_well_path(path):
            well = source.well(path, *found)
            docs.extend(well.documents)
            fps.extend(well.fingerprints)
            well_count += 1
        else:
            node_docs, node_fps = source.position(path, *found).all_documents()
            docs.extend(node_docs)
            fps.extend(node_fps)
    report.wells = well_count
    report.positions = len(paths) - well_count
    if report.wells != reader.plate.wells or report.positions != reader.plate.positions:
        report.problems.append("the node counts differ from the plate entry")
    unique = dict(zip(docs, fps, strict=True))  # a position lists its well's document too
    report.documents = len(unique)
    for changed in changed_documents(
        root, list(unique), list(unique.values()), "digest", reader.digest
    ):
        report.problems.append(f"stale: {changed} changed since the snapshot was built")


def _reread(
    root: str,
    reader: _reader.SnapshotReader,
    source: SnapshotSource,
    report: VerifyReport,
    progress: Callable[[str, int, int], None] | None,
) -> None:
    try:
        fresh = JsonSource(root, reader.plate.zarr_format)
        fresh_plate = fresh.plate()
        fresh_paths = fresh.paths()
    except SnapmetaError as exc:
        report.problems.append(f"re-reading the plate failed: {exc}")
        return
    plate = source.plate()
    for what, ours, theirs in (
        ("NGFF version", plate.ngff_version, fresh_plate.ngff_version),
        ("zarr format", plate.zarr_format, fresh_plate.zarr_format),
        ("plate metadata", plate.plate, fresh_plate.plate),
    ):
        if not _same(ours, theirs):
            report.problems.append(f"stale: the {what} differs from the root document")
    paths = reader.paths()
    if paths != fresh_paths:
        added = sorted(set(fresh_paths) - set(paths))
        removed = sorted(set(paths) - set(fresh_paths))
        for p in added[:20]:
            report.problems.append(f"stale: {p} exists in the plate but not in the snapshot")
        for p in removed[:20]:
            report.problems.append(f"stale: {p} is in the snapshot but no longer in the plate")
        if not added and not removed:
            report.problems.append("stale: the order of wells or positions changed")
    for index, path in enumerate(paths):
        if progress is not None and index % 1000 == 0:
            progress("re-read", index, len(paths))
        if path not in fresh_paths:
            continue
        found = reader.find(path)
        if found is None:
            report.problems.append(f"lookup: {path!r} cannot be found")
            continue
        try:
            if fmt.is_well_path(path):
                ours_w = source.well(path, *found)
                theirs_w = fresh.well(path)
                if theirs_w is None or not _same(
                    [ours_w.positions, ours_w.attributes()],
                    [theirs_w.positions, theirs_w.attributes()],
                ):
                    report.problems.append(f"stale: well {path} differs from its document")
            else:
                ours_p = source.position(path, *found)
                theirs_p = fresh.position(path)
                if theirs_p is None or not _same(
                    _position_facts(ours_p), _position_facts(theirs_p)
                ):
                    report.problems.append(f"stale: position {path} differs from its documents")
        except SnapmetaError as exc:
            report.problems.append(f"{path}: {exc}")
