"""Build-time validation of NGFF plate metadata with pydantic.

This is the only module that imports pydantic. The builder uses it, and so
does the JSON fallback, which serves a changed node only after the same
checks; the snapshot open path never imports it. Each function returns a list of
:class:`~snapmeta.errors.Problem` (empty when valid) so the builder can
report every problem of a plate at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._arrays import parse_metadata
from .._fsio import UnsafePathError, check_relative
from ..errors import Problem


class _Model(BaseModel):
    # NGFF allows extra keys everywhere; they stay in the node's attributes.
    # Strict: "0", 0.0 or false are not integers in NGFF, and the snapshot
    # stores the values as written, so coercing them here would hide errors.
    model_config = ConfigDict(extra="allow", strict=True)


class _Named(_Model):
    name: str


class _Acquisition(_Model):
    id: Annotated[int, Field(ge=0)]
    name: str | None = None
    maximumfieldcount: Annotated[int, Field(gt=0)] | None = None
    description: str | None = None
    starttime: Annotated[int, Field(ge=0)] | None = None
    endtime: Annotated[int, Field(ge=0)] | None = None


class _WellRef(_Model):
    path: str
    rowIndex: Annotated[int, Field(ge=0)]
    columnIndex: Annotated[int, Field(ge=0)]


class _Plate(_Model):
    rows: Annotated[list[_Named], Field(min_length=1)]
    columns: Annotated[list[_Named], Field(min_length=1)]
    wells: Annotated[list[_WellRef], Field(min_length=1)]
    acquisitions: list[_Acquisition] | None = None
    field_count: Annotated[int, Field(gt=0)] | None = None
    name: str | None = None
    version: str | None = None


class _Image(_Model):
    path: str
    acquisition: int | None = None


class _Well(_Model):
    images: Annotated[list[_Image], Field(min_length=1)]
    version: str | None = None


class _Axis(_Model):
    name: str
    type: str | None = None
    unit: str | None = None


class _Scale(_Model):
    type: Literal["scale"]
    scale: Annotated[list[float], Field(min_length=1)]


class _Translation(_Model):
    type: Literal["translation"]
    translation: Annotated[list[float], Field(min_length=1)]


_Transform = Annotated[_Scale | _Translation, Field(discriminator="type")]


class _Dataset(_Model):
    path: str
    coordinateTransformations: Annotated[list[_Transform], Field(min_length=1, max_length=2)]


class _Multiscale(_Model):
    axes: Annotated[list[_Axis], Field(min_length=2, max_length=5)]
    datasets: Annotated[list[_Dataset], Field(min_length=1)]
    coordinateTransformations: Annotated[list[_Transform], Field(max_length=2)] | None = None
    name: str | None = None
    version: str | None = None


class _Channel(_Model):
    label: str | None = None


class _Omero(_Model):
    channels: list[_Channel]


class _ImageGroup(_Model):
    multiscales: Annotated[list[_Multiscale], Field(min_length=1)]
    omero: _Omero | None = None


def _location(prefix: str, loc: Sequence[int | str], tags: frozenset[str]) -> str:
    out = prefix
    after_index = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            after_index = True
            continue
        if after_index and part in tags:
            # a discriminated union puts its tag into the path; the index says enough
            after_index = False
            continue
        out += f".{part}" if out else str(part)
        after_index = False
    return out


_TAGS = frozenset({"scale", "translation"})


def _problems(document: str, prefix: str, model: type[BaseModel], value: Any) -> list[Problem]:
    try:
        model.model_validate(value)
    except ValidationError as exc:
        return [
            Problem(document, _location(prefix, err["loc"], _TAGS), err["msg"])
            for err in exc.errors()
        ]
    return []


def validate_plate(document: str, plate: Any) -> list[Problem]:
    problems = _problems(document, "plate", _Plate, plate)
    if problems:
        return problems
    rows = [r["name"] for r in plate["rows"]]
    columns = [c["name"] for c in plate["columns"]]
    seen: set[str] = set()
    for i, well in enumerate(plate["wells"]):
        where = f"plate.wells[{i}]"
        path = well["path"]
        if path in seen:
            problems.append(Problem(document, f"{where}.path", f"duplicate well {path!r}"))
        seen.add(path)
        r, c = well["rowIndex"], well["columnIndex"]
        if r >= len(rows):
            problems.append(
                Problem(
                    document, f"{where}.rowIndex", f"{r} is outside the {len(rows)} declared rows"
                )
            )
        if c >= len(columns):
            problems.append(
                Problem(
                    document,
                    f"{where}.columnIndex",
                    f"{c} is outside the {len(columns)} declared columns",
                )
            )
        if r < len(rows) and c < len(columns) and path != f"{rows[r]}/{columns[c]}":
            problems.append(
                Problem(
                    document,
                    f"{where}.path",
                    f"{path!r} does not match row {rows[r]!r} and column {columns[c]!r}",
                )
            )
    for kind, names in (("rows", rows), ("columns", columns)):
        if len(set(names)) != len(names):
            problems.append(Problem(document, f"plate.{kind}", "names are not unique"))
        for i, name in enumerate(names):
            if not _safe_name(name):
                problems.append(
                    Problem(document, f"plate.{kind}[{i}].name", f"{name!r} is not a plain name")
                )
    return problems


def _safe_name(name: str) -> bool:
    # Names become path segments: never let one climb out of the store.
    return bool(name) and name not in (".", "..") and not any(c in name for c in ("/", "\\", "\0"))


def validate_well(document: str, well: Any) -> list[Problem]:
    problems = _problems(document, "well", _Well, well)
    if not problems:
        paths = [image["path"] for image in well["images"]]
        if len(set(paths)) != len(paths):
            problems.append(Problem(document, "well.images", "image paths are not unique"))
        for i, path in enumerate(paths):
            if not _safe_name(path):
                problems.append(
                    Problem(document, f"well.images[{i}].path", f"{path!r} is not a plain name")
                )
    return problems


def validate_image(document: str, ome: Any) -> list[Problem]:
    problems = _problems(document, "", _ImageGroup, ome)
    if problems:
        return problems
    ms = ome["multiscales"][0]
    ndim = len(ms["axes"])
    names = [a["name"] for a in ms["axes"]]
    if len(set(names)) != ndim:
        problems.append(Problem(document, "multiscales[0].axes", "axis names are not unique"))
    for i, dataset in enumerate(ms["datasets"]):
        for j, transform in enumerate(dataset["coordinateTransformations"]):
            values = transform.get(transform["type"])
            if len(values) != ndim:
                problems.append(
                    Problem(
                        document,
                        f"multiscales[0].datasets[{i}].coordinateTransformations[{j}].{transform['type']}",
                        f"has {len(values)} values for {ndim} axes",
                    )
                )
        if dataset["coordinateTransformations"][0]["type"] != "scale":
            problems.append(
                Problem(
                    document,
                    f"multiscales[0].datasets[{i}].coordinateTransformations[0]",
                    "must be a scale",
                )
            )
    paths = [d["path"] for d in ms["datasets"]]
    for i, path in enumerate(paths):
        try:
            check_relative(path)
        except UnsafePathError:
            problems.append(
                Problem(
                    document,
                    f"multiscales[0].datasets[{i}].path",
                    f"{path!r} leaves the image group",
                )
            )
    if len(set(paths)) != len(paths):
        problems.append(
            Problem(document, "multiscales[0].datasets", "dataset paths are not unique")
        )
    return problems


def validate_array(
    document: str, meta: dict[str, Any], ndim: int, channels: int | None, c_axis: int | None
) -> list[Problem]:
    """Check an array document with zarr's own parser and against the axes."""
    problems = []
    try:
        parsed = parse_metadata(meta)
    except Exception as exc:  # zarr raises many types for bad metadata
        return [Problem(document, "", f"zarr cannot read this array metadata: {exc}")]
    if len(parsed.shape) != ndim:
        problems.append(
            Problem(
                document,
                "shape",
                f"has {len(parsed.shape)} dimensions but the image has {ndim} axes",
            )
        )
    elif channels is not None and c_axis is not None and parsed.shape[c_axis] != channels:
        problems.append(
            Problem(
                document,
                "shape",
                f"channel axis has length {parsed.shape[c_axis]} "
                f"but omero lists {channels} channels",
            )
        )
    return problems
