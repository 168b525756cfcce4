"""Read and validate a plate's documents, node by node.

Used by the builder for every node and by the JSON fallback for the nodes it
serves, so both apply the same rules: every path stays inside the store,
every file read is bounded, and every node is validated before use.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import _format as fmt
from .._fsio import (
    UnreadableFileError,
    UnsafePathError,
    check_relative,
    read_regular,
    resolves_inside,
)
from ..errors import PlateValidationError, Problem
from . import _dialect as dialect
from ._dialect import NgffReadError


@dataclass(frozen=True, slots=True)
class Document:
    """One metadata file as read: its bytes (None if absent) and what identifies them."""

    path: str
    data: bytes | None
    size: int
    mtime_ns: int
    digest: bytes

    def json(self) -> Any:
        if self.data is None:
            raise NgffReadError(self.path, "", "document is missing", missing=True)
        try:
            value = json.loads(self.data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise NgffReadError(self.path, "", f"invalid JSON ({exc})") from exc
        if _depth(value) > MAX_DEPTH:
            raise NgffReadError(self.path, "", f"nested deeper than {MAX_DEPTH} levels")
        return value


MISSING_DIGEST = bytes(16)
# Far deeper than any metadata; what recursion (and MessagePack's 511 levels) can take.
MAX_DEPTH = 200


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value (containers only), level by level, without
    recursion; stops counting past :data:`MAX_DEPTH`."""
    depth = 0
    level = [value] if type(value) in (dict, list) else []
    while level and depth <= MAX_DEPTH:
        depth += 1
        deeper: list[Any] = []
        for node in level:
            children = node.values() if type(node) is dict else node
            deeper.extend(c for c in children if type(c) in (dict, list))
        level = deeper
    return depth


@dataclass(frozen=True, slots=True)
class RootContent:
    document: Document
    attributes: dict[str, Any]
    plate: dict[str, Any]
    ngff_version: str


@dataclass(frozen=True, slots=True)
class WellContent:
    path: str
    document: Document
    attributes: dict[str, Any]
    images: tuple[tuple[str, int | None], ...]  # (field, acquisition)


@dataclass(frozen=True, slots=True)
class LevelContent:
    path: str
    documents: tuple[Document, ...]
    array: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PositionContent:
    path: str
    group: Document
    attributes: dict[str, Any]
    levels: tuple[LevelContent, ...]


def _validate() -> Any:
    # pydantic is imported when a document is first validated, so that importing
    # snapmeta (and the snapshot open path) never pays for it
    from . import _validate

    return _validate


def invalid(root: str, problems: Sequence[Problem]) -> PlateValidationError:
    """The error for a plate with ``problems``: the first 50 in the message, all attached."""
    problems = tuple(problems)
    shown = "\n".join(f"  {p}" for p in problems[:50])
    more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
    return PlateValidationError(
        f"{root}: {len(problems)} problem(s) in the plate metadata:\n{shown}{more}",
        store=root,
        problems=problems,
    )


def as_problem(exc: NgffReadError) -> Problem:
    return Problem(exc.document, exc.field, exc.message)


class StoreReader:
    """Reads the documents of one store, confined to it."""

    def __init__(self, root: str, zarr_format: int) -> None:
        self.root = root
        self.zarr_format = zarr_format
        self._inside: dict[str, bool] = {}
        self._real_root = os.path.realpath(root)
        self._arrays_checked: dict[tuple[bytes, int, int | None, int | None], list[Problem]] = {}

    def _dir_inside(self, rel: str) -> bool:
        """Whether directory ``rel`` stays inside the store: each component is
        ``lstat``-ed once per reader, and a symlink must resolve inside."""
        if not rel:
            return True
        inside = self._inside.get(rel)
        if inside is None:
            parent = rel.rpartition("/")[0]
            inside = self._dir_inside(parent)
            if inside:
                try:
                    if stat.S_ISLNK(os.lstat(f"{self.root}/{rel}").st_mode):
                        inside = resolves_inside(self.root, rel, self._real_root)
                except OSError:
                    pass  # missing: whatever is read below it is missing too
            if len(self._inside) > 8192:  # a bounded cache: rows and wells stay hot
                self._inside.clear()
            self._inside[rel] = inside
        return inside

    def document(self, relpath: str) -> Document:
        """Read one document; its stat comes from the open descriptor."""
        try:
            check_relative(relpath)
        except UnsafePathError as exc:
            raise NgffReadError(relpath, "", str(exc)) from exc
        if not self._dir_inside(relpath.rpartition("/")[0]):
            raise NgffReadError(relpath, "", "resolves outside the store (symlink)")
        full = f"{self.root}/{relpath}"
        try:
            try:
                data, st = read_regular(full, nofollow=True)
            except UnreadableFileError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                # the document is a symlink: follow it only inside the store
                if not resolves_inside(self.root, relpath, self._real_root):
                    raise NgffReadError(
                        relpath, "", "resolves outside the store (symlink)"
                    ) from None
                data, st = read_regular(full)
        except (FileNotFoundError, NotADirectoryError):
            return Document(relpath, None, -1, 0, MISSING_DIGEST)
        except UnreadableFileError as exc:
            raise NgffReadError(relpath, "", f"cannot read ({exc.strerror})") from exc
        except OSError as exc:  # EACCES, EIO
            raise NgffReadError(relpath, "", f"cannot read ({exc.strerror or exc})") from exc
        return Document(relpath, data, st.st_size, st.st_mtime_ns, fmt.content_digest(data))

    def _check_array(
        self,
        document: str,
        array: dict[str, Any],
        ndim: int,
        channels: int | None,
        c_axis: int | None,
    ) -> list[Problem]:
        # positions share a handful of array documents; zarr's parser is slow
        key = (fmt.pack(array), ndim, channels, c_axis)
        found = self._arrays_checked.get(key)
        if found is None:
            found = self._arrays_checked[key] = _validate().validate_array(
                "", array, ndim, channels, c_axis
            )
        return [Problem(document, p.field, p.message) for p in found]

    # -- nodes ---------------------------------------------------------------------------

    def root_node(self) -> RootContent:
        """The root document and its plate metadata (validated)."""
        rel = dialect.group_document("", self.zarr_format)
        doc = self.document(rel)
        attrs = dialect.attributes_of(doc.json(), self.zarr_format, rel)
        ome = dialect.ome_of(attrs, self.zarr_format)
        plate = ome.get("plate")
        if not isinstance(plate, dict):
            raise NgffReadError(rel, "plate", "no HCS plate metadata")
        version = dialect.ngff_version(ome, "plate", self.zarr_format)
        return RootContent(doc, attrs, plate, version)

    def well_node(self, path: str, problems: list[Problem]) -> WellContent | None:
        rel = dialect.group_document(path, self.zarr_format)
        try:
            doc = self.document(rel)
            if doc.data is None:
                problems.append(
                    Problem(rel, "", f"well {path!r} is listed in the plate but missing on disk")
                )
                return None
            attrs = dialect.attributes_of(doc.json(), self.zarr_format, rel)
        except NgffReadError as exc:
            problems.append(as_problem(exc))
            return None
        well = dialect.ome_of(attrs, self.zarr_format).get("well")
        found = _validate().validate_well(rel, well)
        if found:
            problems.extend(found)
            return None
        assert isinstance(well, dict)
        images = tuple((str(i["path"]), i.get("acquisition")) for i in well["images"])
        return WellContent(path, doc, attrs, images)

    def position_node(self, path: str, problems: list[Problem]) -> PositionContent | None:
        rel = dialect.group_document(path, self.zarr_format)
        try:
            group = self.document(rel)
            if group.data is None:
                problems.append(
                    Problem(
                        rel, "", f"position {path!r} is listed in the metadata but missing on disk"
                    )
                )
                return None
            attrs = dialect.attributes_of(group.json(), self.zarr_format, rel)
        except NgffReadError as exc:
            problems.append(as_problem(exc))
            return None
        ome = dialect.ome_of(attrs, self.zarr_format)
        found = _validate().validate_image(rel, ome)
        if found:
            problems.extend(found)
            return None
        ms = ome["multiscales"][0]
        axes = ms["axes"]
        names = [a["name"] for a in axes]
        c_axis = next((i for i, a in enumerate(axes) if a.get("type") == "channel"), None)
        if c_axis is None and "c" in names:
            c_axis = names.index("c")
        omero = ome.get("omero")
        channels = len(omero["channels"]) if isinstance(omero, dict) else None
        levels = []
        for dataset in ms["datasets"]:
            node = dialect.join(path, dataset["path"])
            try:
                docs = tuple(
                    self.document(r) for r in dialect.array_documents(node, self.zarr_format)
                )
                if docs[0].data is None:
                    problems.append(
                        Problem(
                            docs[0].path,
                            "",
                            f"array of {path!r} is listed in the metadata but missing on disk",
                        )
                    )
                    continue
                attributes = docs[1].json() if len(docs) > 1 and docs[1].data is not None else None
                array = dialect.array_document(
                    docs[0].json(), attributes, self.zarr_format, docs[0].path
                )
            except NgffReadError as exc:
                problems.append(as_problem(exc))
                continue
            found = self._check_array(docs[0].path, array, len(axes), channels, c_axis)
            if found:
                problems.extend(found)
                continue
            levels.append(LevelContent(dataset["path"], docs, array))
        if len(levels) != len(ms["datasets"]):
            return None
        return PositionContent(path, group, attrs, tuple(levels))
