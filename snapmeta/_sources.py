"""Where node metadata comes from: the snapshot, or the JSON documents.

Both sources hand out the same resolved records (:class:`PositionMeta`,
:class:`WellMeta`, :class:`PlateMeta`), so a view never knows which one it
was served from: falling back to JSON for a stale node is a switch of source,
not a branch in every method. The JSON source validates what it reads with
the builder's own rules (and imports pydantic to do so).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import _format as fmt
from ._fsio import UnsafePathError, check_relative
from ._reader import SnapshotReader
from .errors import (
    NotAPlateError,
    PositionNotFoundError,
    Problem,
    SnapshotCorruptError,
)


def _doc_names(zarr_format: int) -> tuple[str, tuple[str, ...]]:
    if zarr_format == 3:
        return "zarr.json", ("zarr.json",)
    return ".zattrs", (".zarray", ".zattrs")


class PositionMeta:
    """One position's metadata, resolved from either source.

    Values are leaves of the position's attributes: ``template`` holds the
    shared structure and defaults, ``patch`` this position's own leaves.
    ``fingerprints`` covers every document the metadata depends on, in record
    order: the well's, the group's, then each level's array documents.
    """

    __slots__ = (
        "acquisition",
        "array_document",
        "array_key",
        "digest_of",
        "fingerprints",
        "from_snapshot",
        "image",
        "patch",
        "path",
        "template",
        "zarr_format",
    )

    def __init__(
        self,
        path: str,
        zarr_format: int,
        image: fmt.Image,
        template: fmt.Template,
        patch: Mapping[int, Any],
        acquisition: int | None,
        fingerprints: tuple[fmt.Fingerprint | None, ...],
        array_document: Callable[[int], dict[str, Any]],
        array_key: Callable[[int], Any],
        digest_of: Callable[[int], bytes],
        from_snapshot: bool,
    ) -> None:
        self.path = path
        self.zarr_format = zarr_format
        self.image = image
        self.template = template
        self.patch = patch
        self.acquisition = acquisition
        self.fingerprints = fingerprints
        self.array_document = array_document
        self.array_key = array_key
        self.digest_of = digest_of
        self.from_snapshot = from_snapshot

    def leaf(self, ref: int) -> Any:
        patch = self.patch
        return patch[ref] if ref in patch else self.template.defaults[ref]

    def attributes(self) -> dict[str, Any]:
        leaves = list(self.template.defaults)
        for i, v in self.patch.items():
            leaves[i] = v
        return fmt.join_leaves(self.template.shape, leaves)  # type: ignore[no-any-return]

    def level_path(self, i: int) -> str:
        """The level's array path inside the position, checked to stay inside it."""
        value = self.leaf(self.image.levels[i].path)
        if type(value) is not str:
            raise UnsafePathError(f"{self.path}: level {i} path is not a string")
        return check_relative(value)

    def structure_documents(self) -> tuple[list[str], tuple[fmt.Fingerprint | None, ...]]:
        """The well's and the group's documents, with their fingerprints."""
        group = _doc_names(self.zarr_format)[0]
        well = self.path.rpartition("/")[0]
        return [f"{well}/{group}", f"{self.path}/{group}"], self.fingerprints[:2]

    def level_documents(self, i: int) -> tuple[list[str], tuple[fmt.Fingerprint | None, ...]]:
        """Level ``i``'s array documents, with their fingerprints."""
        names = _doc_names(self.zarr_format)[1]
        start = 2 + len(names) * i
        base = f"{self.path}/{self.level_path(i)}"
        return [f"{base}/{n}" for n in names], self.fingerprints[start : start + len(names)]

    def all_documents(self) -> tuple[list[str], tuple[fmt.Fingerprint | None, ...]]:
        docs, fps = self.structure_documents()
        for i in range(len(self.image.levels)):
            level_docs, level_fps = self.level_documents(i)
            docs += level_docs
            fps += level_fps
        return docs, fps


@dataclass(frozen=True, slots=True)
class WellMeta:
    path: str
    positions: tuple[str, ...]
    template: fmt.Template
    patch: Mapping[int, Any]
    documents: tuple[str, ...]
    fingerprints: tuple[fmt.Fingerprint | None, ...]
    digest_of: Callable[[int], bytes]

    def attributes(self) -> dict[str, Any]:
        leaves = list(self.template.defaults)
        for i, v in self.patch.items():
            leaves[i] = v
        return fmt.join_leaves(self.template.shape, leaves)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class PlateMeta:
    ngff_version: str
    zarr_format: int
    plate: Mapping[str, Any]  # the plate object, without its wells
    root_document: str
    root: fmt.Fingerprint
    digest_of: Callable[[int], bytes]


def _check_node_path(path: str) -> str:
    check_relative(path)
    if path.count("/") not in (1, 2):
        raise UnsafePathError(f"{path!r} is not a well or position path")
    return path


class SnapshotSource:
    """Records from a mapped snapshot."""

    def __init__(self, reader: SnapshotReader) -> None:
        self.reader = reader
        plate = reader.plate
        self.zarr_format = plate.zarr_format
        self.group_doc, self.array_docs = _doc_names(plate.zarr_format)

    def plate(self) -> PlateMeta:
        p = self.reader.plate
        return PlateMeta(
            p.ngff_version, p.zarr_format, p.plate, self.group_doc, p.root, self.reader.digest
        )

    def find(self, path: str) -> tuple[int, memoryview] | None:
        return self.reader.find(path)

    def position(self, path: str, index: int, payload: memoryview) -> PositionMeta:
        reader = self.reader
        record, image = reader.position(index, payload)
        template = reader.template(image.template)
        for level in image.levels:  # untrusted input: checked before any path is built
            ref = level.path
            name = record.patch[ref] if ref in record.patch else template.defaults[ref]
            if type(name) is not str:
                raise reader_corrupt(reader, index, "a level path is not text")
            try:
                check_relative(name)
            except UnsafePathError as exc:
                raise reader_corrupt(reader, index, f"level path: {exc}") from None
        meta = PositionMeta(
            path,
            self.zarr_format,
            image,
            template,
            record.patch,
            record.acquisition,
            record.documents,
            reader.array,
            reader.array_key,
            reader.digest,
            True,
        )
        return meta

    def well(self, path: str, index: int, payload: memoryview) -> WellMeta:
        reader = self.reader
        record = reader.well(index, payload)
        if index + record.count >= reader.node_count:
            raise reader_corrupt(reader, index, "well position count runs past the nodes")
        # the paths section's CRC, checked once, vouches for the positions' paths
        reader.check_paths()
        positions = tuple(reader.node_path(index + 1 + i) for i in range(record.count))
        for p in positions:
            if p.count("/") != 2 or p.rpartition("/")[0] != path:
                raise reader_corrupt(reader, index, "well positions do not follow the well")
        return WellMeta(
            path,
            positions,
            reader.template(record.template),
            record.patch,
            (f"{path}/{self.group_doc}",),
            record.documents,
            reader.digest,
        )

    def paths(self) -> list[str]:
        return self.reader.paths()


def reader_corrupt(reader: SnapshotReader, index: int, reason: str) -> SnapshotCorruptError:
    return SnapshotCorruptError(
        f"snapshot {reader.path} is corrupt: nodes[{index}]: {reason}; rebuild it with "
        "`snapmeta build`",
        snapshot=reader.path,
        reason=reason,
        section="nodes",
        index=index,
    )


class JsonSource:
    """Records read from the plate's JSON documents and validated as the builder does."""

    def __init__(self, root: str, zarr_format: int) -> None:
        from . import _ngff  # pydantic comes with it: only a stale node pays for it

        self._ngff = _ngff
        self.root = root
        self.zarr_format = zarr_format
        self.group_doc, self.array_docs = _doc_names(zarr_format)
        self.store = _ngff.StoreReader(root, zarr_format)
        try:
            self._root = self.store.root_node()
        except _ngff.NgffReadError as exc:
            raise NotAPlateError(
                f"{root} is not an HCS plate: {exc}", store=root, document=exc.document
            ) from exc
        from ._ngff import _validate

        problems = _validate.validate_plate(self._root.document.path, self._root.plate)
        if problems:
            raise self._ngff.invalid(root, problems)
        self._wells: dict[str, Any] = {}

    def _digests(
        self, docs: Sequence[Any]
    ) -> tuple[tuple[fmt.Fingerprint | None, ...], Callable[[int], bytes]]:
        digests = [d.digest for d in docs]
        fps = tuple(
            None if d.data is None else fmt.Fingerprint(d.size, d.mtime_ns, i)
            for i, d in enumerate(docs)
        )
        return fps, digests.__getitem__

    def plate(self) -> PlateMeta:
        plate = {k: v for k, v in self._root.plate.items() if k != "wells"}
        fps, digest_of = self._digests([self._root.document])
        assert fps[0] is not None
        return PlateMeta(
            self._root.ngff_version, self.zarr_format, plate, self.group_doc, fps[0], digest_of
        )

    def well_paths(self) -> list[str]:
        return [str(w["path"]) for w in self._root.plate["wells"]]

    def _well(self, path: str) -> Any:
        found = self._wells.get(path)
        if found is None:
            if path not in self.well_paths():
                return None
            problems: list[Problem] = []
            found = self.store.well_node(path, problems)
            if found is None:
                raise self._ngff.invalid(self.root, problems)
            self._wells[path] = found
        return found

    def well(self, path: str) -> WellMeta | None:
        content = self._well(path)
        if content is None:
            return None
        shape, leaves = fmt.split_leaves(content.attributes)
        fps, digest_of = self._digests([content.document])
        return WellMeta(
            path,
            tuple(f"{path}/{field}" for field, _ in content.images),
            fmt.Template(shape, tuple(leaves)),
            {},
            (content.document.path,),
            fps,
            digest_of,
        )

    def position(self, path: str) -> PositionMeta | None:
        well_path, _, field = path.rpartition("/")
        well = self._well(well_path)
        if well is None:
            return None
        acquisitions = dict(well.images)
        if field not in acquisitions:
            return None
        problems: list[Problem] = []
        content = self.store.position_node(path, problems)
        if content is None:
            raise self._ngff.invalid(self.root, problems)
        arrays = [level.array for level in content.levels]
        image, _ = self._ngff.image_layout(
            content.attributes, self.zarr_format, 0, list(range(len(arrays)))
        )
        shape, leaves = fmt.split_leaves(content.attributes)
        docs = [well.document, content.group]
        for level in content.levels:
            docs.extend(level.documents)
        fps, digest_of = self._digests(docs)
        return PositionMeta(
            path,
            self.zarr_format,
            image,
            fmt.Template(shape, tuple(leaves)),
            {},
            acquisitions[field],
            fps,
            arrays.__getitem__,
            lambda i: None,
            digest_of,
            False,
        )

    def paths(self) -> list[str]:
        out = []
        for well in self.well_paths():
            out.append(well)
            content = self._well(well)
            out.extend(f"{well}/{field}" for field, _ in content.images)
        return out


def not_found(root: str, key: str, candidates: Sequence[str]) -> PositionNotFoundError:
    near = (
        tuple(difflib.get_close_matches(key, candidates, n=3)) if len(candidates) < 200_000 else ()
    )
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    return PositionNotFoundError(
        f"no {'well' if key.count('/') == 1 else 'position'} {key!r} in plate {root}{hint}",
        store=root,
        key=key,
        suggestions=near,
    )
