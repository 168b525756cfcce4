"""Build a snapshot: read every metadata document once, validate, write atomically.

Wells are read in batches, concurrently (reading small files is dominated by
round trips on GPFS or Lustre, and threads overlap them even under the GIL),
and each batch is encoded in plate order before the next is read, so the
builder's memory does not grow with the plate beyond the encoded snapshot.

Timestamps: a document edited after the builder read it, in the same
timestamp tick, keeps its size and mtime, and a stat check cannot see the
edit (git's "racily clean" problem). The builder notes its start on the
destination's clock and waits one tick before reading anything. A document
whose mtime is after the start may have changed after it was read: it is
stored with a smudged mtime, so readers always compare its digest.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from . import _format as fmt
from . import _locate, _ngff
from ._fsio import resolves_inside
from ._version import __version__
from ._writer import (
    ARRAY_DOCUMENTS,
    SnapshotWriter,
    TempFile,
    stale_temp_files,
    write_array_node,
)
from .errors import NotAPlateError, Problem, SnapshotWriteError

__all__ = ["ProgressCallback", "build_snapshot"]

log = logging.getLogger("snapmeta")

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)``; stages are ``"wells"`` and ``"write"``."""

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_WORKERS = min(32, 8 * (os.cpu_count() or 1))
_BATCH = 256  # wells read concurrently before they are encoded (and their positions)
_FINE_TICK_NS = 10_000_000  # a kernel timestamp tick is a jiffy: 10 ms at most
_CLOCK_SKEW_NS = 5_000_000_000  # for destinations on another filesystem than the plate


def _write_error(target: Path, root: str, exc: OSError) -> SnapshotWriteError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some space, or write the snapshot elsewhere"
    else:
        advice = "the plate may be read-only; write the snapshot elsewhere"
    return SnapshotWriteError(
        f"cannot write the snapshot {target}: {exc.strerror or exc}; {advice} with "
        f"`snapmeta build {root} --output DIR` (or set {_locate.ENV_SNAPSHOT_DIR}=DIR, "
        "which openers search too)",
        store=root,
        snapshot=str(target),
        reason=exc.strerror or str(exc),
    )


def _tick(mtime_ns: int) -> int:
    """The timestamp granularity an mtime suggests (1 s or 2 s for coarse filesystems)."""
    if mtime_ns % 2_000_000_000 == 0:
        return 2_000_000_000
    if mtime_ns % 1_000_000_000 == 0:
        return 1_000_000_000
    return _FINE_TICK_NS


def _start_clock(temp: TempFile, root: str) -> tuple[int, int]:
    """``(start, tick)`` on the plate's clock, after waiting one tick past the start.

    Every document read after this returns was last modified either before
    ``start`` (and any later edit gets a new mtime) or after it (racy).
    """
    same_fs = os.stat(temp.path).st_dev == os.stat(root).st_dev
    if not same_fs:
        start = time.time_ns() - _CLOCK_SKEW_NS
        return start, _FINE_TICK_NS
    start = temp.touch()
    tick = _tick(start)
    for _ in range(400):
        now = temp.touch()
        if now >= start + tick:
            # two coarse stamps in a row: a fine-grained clock would not do that
            tick = max(_FINE_TICK_NS, min(tick, _tick(now)))
            if now >= start + tick:
                break
        time.sleep(min(tick, 1_000_000_000) / 4e9)
    return start, tick


class _Builder:
    def __init__(self, root: str, zarr_format: int, racy_after: int, workers: int) -> None:
        self.root = root
        self.zarr_format = zarr_format
        self.racy_after = racy_after
        self.workers = workers
        self.reader = _ngff.StoreReader(root, zarr_format)
        self.problems: list[Problem] = []
        self.smudged = 0
        self.writer: SnapshotWriter | None = None
        self._layouts: dict[int, tuple[fmt.Image, frozenset[int]]] = {}

    def fingerprint(self, doc: _ngff.Document) -> fmt.Fingerprint | None:
        assert self.writer is not None
        if doc.data is None:
            return None
        mtime = doc.mtime_ns
        if mtime > self.racy_after:
            mtime = fmt.SMUDGED
            self.smudged += 1
        return fmt.Fingerprint(doc.size, mtime, self.writer.content(doc.digest))

    def run(self, progress: ProgressCallback | None) -> tuple[SnapshotWriter, _ngff.RootContent]:
        from ._ngff import _validate

        try:
            root_content = self.reader.root_node()
        except _ngff.NgffReadError as exc:
            raise NotAPlateError(
                f"{self.root} is not an HCS plate: {exc}",
                store=self.root,
                document=f"{self.root}/{exc.document}",
            ) from exc
        problems = _validate.validate_plate(root_content.document.path, root_content.plate)
        if problems:
            raise _ngff.invalid(self.root, problems)
        self.writer = SnapshotWriter(root_content.document.mtime_ns)
        wells = [str(w["path"]) for w in root_content.plate["wells"]]
        with ThreadPoolExecutor(self.workers, thread_name_prefix="snapmeta-build") as pool:
            if progress is not None:
                progress("wells", 0, len(wells))
            done = 0
            for batch in _batches(wells, _BATCH):
                self._batch(pool, batch)
                done += len(batch)
                if progress is not None:
                    progress("wells", done, len(wells))
        if self.problems:
            raise _ngff.invalid(self.root, self.problems)
        return self.writer, root_content

    def _batch(self, pool: ThreadPoolExecutor, wells: list[str]) -> None:
        def read_well(path: str) -> tuple[Any, list[Problem]]:
            problems: list[Problem] = []
            return self.reader.well_node(path, problems), problems

        well_results = list(pool.map(read_well, wells))
        jobs = [
            f"{content.path}/{field}"
            for content, _ in well_results
            if content is not None
            for field, _ in content.images
        ]

        def read_position(path: str) -> tuple[Any, list[Problem]]:
            problems: list[Problem] = []
            return self.reader.position_node(path, problems), problems

        # Positions are read in chunks too: a well can hold hundreds of fields.
        pending: list[tuple[Any, list[Problem]]] = []
        chunks = iter(range(0, len(jobs), _BATCH))
        for content, problems in well_results:
            self.problems.extend(problems)
            if content is None:
                continue
            while len(pending) < len(content.images):
                start = next(chunks)
                pending.extend(pool.map(read_position, jobs[start : start + _BATCH]))
            read, pending = pending[: len(content.images)], pending[len(content.images) :]
            self._encode(content, read)

    def _encode(self, well: _ngff.WellContent, read: list[tuple[Any, list[Problem]]]) -> None:
        writer = self.writer
        assert writer is not None
        for _, problems in read:
            self.problems.extend(problems)
        if self.problems:
            return  # nothing will be written: stop encoding, keep collecting problems
        well_fp = self.fingerprint(well.document)
        template, patch = writer.template(well.attributes)
        writer.add_well(well.path, fmt.WellRecord(template, patch, len(well.images), (well_fp,)))
        for (content, _), (_, acquisition) in zip(read, well.images, strict=True):
            arrays = [writer.array_document(level.array) for level in content.levels]
            template, patch = writer.template(content.attributes)
            image = writer.image(self._layout(content, template, patch, arrays))
            docs = [well_fp, self.fingerprint(content.group)]
            for level in content.levels:
                docs.extend(self.fingerprint(d) for d in level.documents)
            writer.add_position(
                content.path, fmt.PositionRecord(image, patch, acquisition, tuple(docs))
            )

    def _layout(
        self,
        content: _ngff.PositionContent,
        template: int,
        patch: dict[int, Any],
        arrays: list[int],
    ) -> fmt.Image:
        """The position's image; computed once per template unless a patch touches it."""
        cached = self._layouts.get(template)
        if cached is None or not cached[1].isdisjoint(patch):
            layout, deps = _ngff.image_layout(
                content.attributes, self.zarr_format, template, arrays
            )
            if cached is None:
                self._layouts[template] = (layout, deps)
        else:
            layout = cached[0]
        if len(arrays) != len(layout.levels):
            raise AssertionError("a template fixes the number of levels")
        levels = tuple(
            fmt.Level(lv.path, a, lv.scale, lv.translation)
            for lv, a in zip(layout.levels, arrays, strict=True)
        )
        return fmt.Image(
            template, layout.axes, layout.channels, levels, layout.scale, layout.translation
        )


def _batches(items: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def detect_format(root: str) -> int:
    if not os.path.isdir(root):
        raise NotAPlateError(
            f"{root} does not exist or is not a directory", store=root, document=None
        )
    try:
        names = set(os.listdir(root))
    except OSError as exc:
        raise NotAPlateError(
            f"{root}: cannot list the directory ({exc.strerror})", store=root, document=None
        ) from exc
    zarr_format = _ngff.detect_zarr_format(names)
    if zarr_format is None:
        raise NotAPlateError(
            f"{root} is not a zarr group: found neither zarr.json nor .zattrs/.zgroup",
            store=root,
            document=None,
        )
    return zarr_format


def build_snapshot(
    store: Any,
    *,
    output: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    workers: int | None = None,
) -> Path:
    """Read and validate a plate's metadata once and write its snapshot.

    Parameters
    ----------
    store
        The plate: a path, a ``file://`` URL, a ``zarr.storage.LocalStore`` or
        a local ``zarr.Group`` (NGFF 0.4 on zarr 2 or NGFF 0.5 on zarr 3).
    output
        Where to write the snapshot: a file, or a directory of snapshots (for
        plates you cannot write). Defaults to ``$SNAPMETA_SNAPSHOT_DIR`` if
        set, else the plate itself.
    progress
        Optional ``progress(stage, done, total)`` callback.
    workers
        Threads reading documents concurrently.

    Returns
    -------
    Path
        The snapshot file.

    Raises
    ------
    NotAPlateError
        The path is not a local zarr group with HCS plate metadata.
    PlateValidationError
        The metadata is invalid; ``.problems`` lists every problem found.
    SnapshotWriteError
        The snapshot cannot be written there (checked before reading the plate).
    """
    root = _locate.plate_root(store)
    zarr_format = detect_format(root)
    target = _locate.build_target(root, output)
    if not _locate.is_external(root, str(target)) and not resolves_inside(
        root, _locate.IN_STORE_ARRAY
    ):
        raise SnapshotWriteError(
            f"{target.parent} leads out of the store (a symlink); snapmeta does not write "
            f"through it. Remove it, or write the snapshot elsewhere with `--output DIR`",
            store=root,
            snapshot=str(target),
            reason="symlink out of the store",
        )
    created = not target.parent.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = TempFile(target)
    except OSError as exc:
        raise _write_error(target, root, exc) from exc
    try:
        return _build(root, zarr_format, target, temp, progress, workers)
    except BaseException:
        if created:  # a failed first build leaves the plate as it was
            with contextlib.suppress(OSError):
                target.parent.rmdir()
        raise


def _build(
    root: str,
    zarr_format: int,
    target: Path,
    temp: TempFile,
    progress: ProgressCallback | None,
    workers: int | None,
) -> Path:
    try:
        racy_after, tick = _start_clock(temp, root)
        builder = _Builder(root, zarr_format, racy_after, workers or DEFAULT_WORKERS)
        writer, root_content = builder.run(progress)
        if progress is not None:
            progress("write", 0, 1)
        if builder.smudged:
            log.info(
                "%s: %d document(s) were modified after the build started; readers will "
                "compare their content. Rebuild once the plate is quiet.",
                root,
                builder.smudged,
            )
        root_fp = builder.fingerprint(root_content.document)
        assert root_fp is not None
        writer.write(
            temp,
            {
                "ngff_version": root_content.ngff_version,
                "zarr_format": zarr_format,
                "plate": {k: v for k, v in root_content.plate.items() if k != "wells"},
                "root": root_fp,
                "build_start_ns": racy_after,
                "granularity_ns": tick,
                "location": root,
                "writer": f"snapmeta {__version__}",
            },
        )
        if not _locate.is_external(root, str(target)):
            # Describe the chunk that is there now: racing builders each rename
            # their chunk, then describe; the last description wins, so it is
            # checked against the chunk once more.
            for _ in range(3):
                size = target.stat().st_size
                write_array_node(target.parent, zarr_format, size)
                if target.stat().st_size == size:
                    break
    except OSError as exc:
        temp.discard()
        raise _write_error(target, root, exc) from exc
    except BaseException:
        temp.discard()
        raise
    legacy = Path(root) / _locate.LEGACY_NAME
    if not _locate.is_external(root, str(target)) and legacy.exists():
        # format 1's file, which zarr lists with a warning and no reader uses
        with contextlib.suppress(OSError):
            legacy.unlink()
    for leftover in stale_temp_files(target, ARRAY_DOCUMENTS):
        with contextlib.suppress(OSError):
            leftover.unlink()
    if progress is not None:
        progress("write", 1, 1)
    return target
