"""iohub-compatible access to HCS plates, resolved from the snapmeta snapshot.

``from snapmeta.compat import open_ome_zarr`` is a drop-in for
``iohub.ngff.open_ome_zarr`` on *existing HCS plates*: code that opens a plate,
walks rows, wells and positions, reads channel names, axes and scales, and
reads or writes pixel data runs unchanged, but every lookup is served by the
memory-mapped snapshot instead of parsing a JSON document per node.

What is O(1) and what is not
    Opening the plate and ``plate["B/3/0"]`` (a position) cost what
    :func:`snapmeta.open_position` costs: a few ``stat`` calls and one decoded
    record; a well (``plate["B/3"]``) costs one record per field. Rows,
    iteration, ``positions()``, ``len`` and the plate's ``channel_names``/
    ``axes`` read the snapshot's position index once per plate object
    (O(positions) of in-memory work, no JSON). Pixel arrays are built from the
    array metadata stored in the snapshot; an array document is checked when
    its level is first opened.

Models
    ``metadata`` and ``axes`` are built on first access only. When iohub is
    importable they are iohub's own pydantic models (``PlateMeta``,
    ``ImagesMeta``, ``WellGroupMeta``, ``TimeAxisMeta``...), equal to what
    iohub builds; otherwise they are the light, read-only dataclasses defined
    here, with the same attribute names. This module imports neither iohub
    nor pydantic at import time.

Fallback
    A store without a snapshot, or whose snapshot is stale, is read through
    ``iohub.ngff.open_ome_zarr`` when iohub is installed, with one
    :class:`FallbackWarning` per plate. Without iohub a missing snapshot
    raises :class:`~snapmeta.errors.SnapshotNotFoundError` (run
    ``snapmeta build STORE``) and a stale one is served by snapmeta's own
    JSON fallback (:class:`~snapmeta.errors.SnapshotStaleWarning`).
    ``fallback=False`` raises instead.

Not covered (stays iohub's)
    Creating plates (``mode="w"``/``"w-"``, ``"a"`` on a missing store),
    creating wells, positions or arrays, channel editing, pyramids,
    transforms and ``dump_meta``: those methods exist on the compat objects
    but raise :class:`NotImplementedError` naming the iohub call to use.
    FOV and tiled layouts are not plates and are rejected. After any such
    write, rebuild the snapshot (``snapmeta build STORE``). See docs/compat.md.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import GenericAlias
from typing import Any, ClassVar, Literal

import zarr

from . import _open
from ._arrays import local_store
from ._freshness import Check
from .errors import (
    ChannelNotFoundError,
    NotAPlateError,
    PositionNotFoundError,
    SnapshotNotFoundError,
    StaleSnapshotError,
)

__all__ = [
    "AcquisitionMeta",
    "Attributes",
    "ChannelIndexError",
    "ChannelMeta",
    "DatasetMeta",
    "FallbackWarning",
    "ImageArray",
    "ImageMeta",
    "ImagesMeta",
    "MultiScaleMeta",
    "OMEROMeta",
    "Plate",
    "PlateAxisMeta",
    "PlateMeta",
    "Position",
    "Row",
    "TransformationMeta",
    "Well",
    "WellGroupMeta",
    "WellIndexMeta",
    "open_ome_zarr",
]

Mode = Literal["r", "r+", "a"]
_CREATION_KWARGS = frozenset({"name", "acquisitions", "overwriting_creation"})


class FallbackWarning(UserWarning):
    """The plate has no usable snapshot and is read through iohub instead."""


class ChannelIndexError(ChannelNotFoundError, ValueError):
    """No channel with this name.

    iohub raises :class:`ValueError` here and snapmeta a :class:`KeyError`
    (:class:`~snapmeta.errors.ChannelNotFoundError`); this is both.
    """


# ---------------------------------------------------------------------------
# optional iohub


_iohub_lock = threading.Lock()
_iohub_cache: dict[str, Any] = {}


def _iohub(name: str) -> Any:
    """``iohub.ngff.open_ome_zarr``, ``Plate`` or ``models``, or None without iohub."""
    if name not in _iohub_cache:
        with _iohub_lock:
            if name not in _iohub_cache:
                try:
                    import iohub.ngff as ngff  # type: ignore[import-untyped,unused-ignore]
                    from iohub.ngff import models  # type: ignore[import-untyped,unused-ignore]
                except ImportError:
                    found: dict[str, Any] = dict.fromkeys(("open", "Plate", "models"))
                else:
                    found = {"open": ngff.open_ome_zarr, "Plate": ngff.Plate, "models": models}
                _iohub_cache.update(found)
    return _iohub_cache[name]


_axes_adapter: Any = None


def _iohub_axes(axes: tuple[_open.Axis, ...]) -> list[Any] | None:
    """Axes as iohub's discriminated pydantic models, or None if iohub rejects them."""
    global _axes_adapter
    models = _iohub("models")
    if models is None:
        return None
    from pydantic import TypeAdapter, ValidationError

    if _axes_adapter is None:
        _axes_adapter = TypeAdapter(GenericAlias(list, (models.AxisMeta,)))
    raw = [
        {k: v for k, v in (("name", a.name), ("type", a.type), ("unit", a.unit)) if v is not None}
        for a in axes
    ]
    try:
        return _axes_adapter.validate_python(raw)
    except ValidationError:
        return None


# ---------------------------------------------------------------------------
# light metadata models, used when iohub is not installed


def _transforms(raw: Any) -> list[TransformationMeta] | None:
    if raw is None:
        return None
    return [
        TransformationMeta(t.get("type"), t.get("translation"), t.get("scale"), t.get("path"))
        for t in raw
    ]


@dataclass(frozen=True, slots=True)
class TransformationMeta:
    type: str | None
    translation: list[float] | None = None
    scale: list[float] | None = None
    path: str | None = None


@dataclass(frozen=True, slots=True)
class DatasetMeta:
    path: str
    coordinate_transformations: list[TransformationMeta] | None


@dataclass(frozen=True, slots=True)
class MultiScaleMeta:
    version: str | None
    axes: list[_open.Axis]
    datasets: list[DatasetMeta]
    name: str | None = None
    coordinate_transformations: list[TransformationMeta] | None = None
    type: str | None = None
    metadata: dict[str, Any] | None = None

    def get_dataset_paths(self) -> list[str]:
        return [d.path for d in self.datasets]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], version: str | None) -> MultiScaleMeta:
        axes = [
            _open.Axis(a, None, None)
            if isinstance(a, str)
            else _open.Axis(a["name"], a.get("type"), a.get("unit"))
            for a in d["axes"]
        ]
        datasets = [
            DatasetMeta(ds["path"], _transforms(ds.get("coordinateTransformations")))
            for ds in d["datasets"]
        ]
        return cls(
            d.get("version", version),
            axes,
            datasets,
            d.get("name"),
            _transforms(d.get("coordinateTransformations")),
            d.get("type"),
            d.get("metadata"),
        )


@dataclass(frozen=True, slots=True)
class ChannelMeta:
    label: str | None
    active: bool = False
    coefficient: float = 1.0
    color: str = "FFFFFF"
    family: str = "linear"
    inverted: bool = False
    window: dict[str, float] | None = None


@dataclass(frozen=True, slots=True)
class OMEROMeta:
    version: str | None
    id: int | None = None
    name: str | None = None
    channels: list[ChannelMeta] | None = None
    rdefs: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], version: str | None) -> OMEROMeta:
        channels = None
        if d.get("channels") is not None:
            channels = [
                ChannelMeta(
                    c.get("label"),
                    c.get("active", False),
                    c.get("coefficient", 1.0),
                    c.get("color", "FFFFFF"),
                    c.get("family", "linear"),
                    c.get("inverted", False),
                    c.get("window"),
                )
                for c in d["channels"]
            ]
        return cls(d.get("version", version), d.get("id"), d.get("name"), channels, d.get("rdefs"))


@dataclass(frozen=True, slots=True)
class ImagesMeta:
    multiscales: list[MultiScaleMeta]
    omero: OMEROMeta | None = None
    version: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImagesMeta:
        version = d.get("version")
        omero = d.get("omero")
        return cls(
            [MultiScaleMeta.from_dict(m, None) for m in d["multiscales"]],
            None if omero is None else OMEROMeta.from_dict(omero, None),
            version,
        )


@dataclass(frozen=True, slots=True)
class AcquisitionMeta:
    id: int
    name: str | None = None
    maximum_field_count: int | None = None
    description: str | None = None
    start_time: int | None = None
    end_time: int | None = None


@dataclass(frozen=True, slots=True)
class PlateAxisMeta:
    name: str


@dataclass(frozen=True, slots=True)
class WellIndexMeta:
    path: str
    row_index: int
    column_index: int


@dataclass(frozen=True, slots=True)
class PlateMeta:
    version: str | None
    rows: list[PlateAxisMeta]
    columns: list[PlateAxisMeta]
    wells: list[WellIndexMeta]
    name: str | None = None
    acquisitions: list[AcquisitionMeta] | None = None
    field_count: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlateMeta:
        acquisitions = None
        if d.get("acquisitions") is not None:
            acquisitions = [
                AcquisitionMeta(
                    a["id"],
                    a.get("name"),
                    a.get("maximumfieldcount"),
                    a.get("description"),
                    a.get("starttime"),
                    a.get("endtime"),
                )
                for a in d["acquisitions"]
            ]
        return cls(
            d.get("version"),
            [PlateAxisMeta(r["name"]) for r in d["rows"]],
            [PlateAxisMeta(c["name"]) for c in d["columns"]],
            [WellIndexMeta(w["path"], w["rowIndex"], w["columnIndex"]) for w in d["wells"]],
            d.get("name"),
            acquisitions,
            d.get("field_count"),
        )


@dataclass(frozen=True, slots=True)
class ImageMeta:
    path: str
    acquisition: int | None = None


@dataclass(frozen=True, slots=True)
class WellGroupMeta:
    version: str | None
    images: list[ImageMeta]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WellGroupMeta:
        return cls(
            d.get("version"), [ImageMeta(i["path"], i.get("acquisition")) for i in d["images"]]
        )


def _plate_meta(ome: Mapping[str, Any], version: str) -> Any:
    plate = dict(ome["plate"])
    plate.setdefault("version", version)
    models = _iohub("models")
    return PlateMeta.from_dict(plate) if models is None else models.PlateMeta(**plate)


def _well_meta(ome: Mapping[str, Any], version: str) -> Any:
    well = dict(ome["well"])
    well.setdefault("version", version)
    models = _iohub("models")
    return WellGroupMeta.from_dict(well) if models is None else models.WellGroupMeta(**well)


def _images_meta(ome: Mapping[str, Any]) -> Any:
    models = _iohub("models")
    return ImagesMeta.from_dict(ome) if models is None else models.ImagesMeta.model_validate(ome)


# ---------------------------------------------------------------------------
# helpers


def _normalize(key: object) -> str:
    """iohub's (zarr's) key normalisation: ``str``, forward slashes, no empty segments."""
    text = str(key).replace("\\", "/").strip("/")
    parts = [p for p in text.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"The path {key!r} is invalid because it contains '.' or '..' segments.")
    return "/".join(parts)


def _version_of(zarr_format: int) -> str:
    return "0.4" if zarr_format == 2 else "0.5"


def _pad5(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1,) * (5 - len(shape)) + tuple(shape)


def _not_found(root: Path, key: str) -> PositionNotFoundError:
    return PositionNotFoundError(
        f"no node {key!r} in plate {root}", store=str(root), key=key, suggestions=()
    )


def _iohub_only(what: str, call: str) -> Callable[..., Any]:
    def unsupported(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"{what} is not covered by snapmeta.compat (it writes metadata). Open the plate with "
            f"iohub.ngff.open_ome_zarr(...) and call {call}, then refresh the snapshot with "
            "`snapmeta build STORE` (or snapmeta.build_snapshot(STORE))."
        )

    unsupported.__name__ = what.rsplit(".", 1)[-1]
    return unsupported


class Attributes(MutableMapping[str, Any]):
    """A node's attributes: read from the snapshot, written to the node's JSON document.

    Behaves like ``zarr``'s ``Attributes`` (what iohub's ``zattrs`` returns).
    A write goes through zarr to the document, so it makes the snapshot
    stale for this node until ``snapmeta build`` runs again; in mode ``"r"``
    it fails as it does in iohub.
    """

    __slots__ = ("_data", "_load", "_mode", "_node", "_root", "_zarr_format")

    def __init__(
        self, load: Callable[[], dict[str, Any]], root: Path, node: str, mode: str, zarr_format: int
    ):
        self._load = load
        self._data: dict[str, Any] | None = None
        self._root = root
        self._node = node
        self._mode = mode
        self._zarr_format = zarr_format

    @property
    def _dict(self) -> dict[str, Any]:
        if self._data is None:
            self._data = self._load()
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._dict[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._dict)

    def __repr__(self) -> str:
        return f"<snapmeta.compat.Attributes of {self._node or '/'!r}: {self._dict!r}>"

    def asdict(self) -> dict[str, Any]:
        return dict(self._dict)

    def _write(self, change: Callable[[Any], None]) -> None:
        group = _open_group(self._root, self._node, self._mode, self._zarr_format)
        change(group.attrs)
        self._data = group.attrs.asdict()

    def __setitem__(self, key: str, value: Any) -> None:
        self._write(lambda attrs: attrs.__setitem__(key, value))

    def __delitem__(self, key: str) -> None:
        self._write(lambda attrs: attrs.__delitem__(key))

    def update(self, *args: Any, **kwargs: Any) -> None:  # one write, not one per key
        self._write(lambda attrs: attrs.update(dict(*args, **kwargs)))

    def put(self, d: dict[str, Any]) -> None:
        self._write(lambda attrs: attrs.put(d))


def _open_group(root: Path, node: str, mode: str, zarr_format: int) -> zarr.Group:
    """The zarr group of a node (reads its JSON document: not the O(1) path)."""
    store = local_store(root, read_only=mode == "r")
    return zarr.open_group(
        store=store,
        path=node,
        mode="r" if mode == "r" else "r+",
        zarr_format=2 if zarr_format == 2 else 3,
    )


def _reopen(root: str, key: str, mode: Mode, check: Check, fallback: bool) -> Any:
    plate = open_ome_zarr(root, layout="hcs", mode=mode, check=check, fallback=fallback)
    return plate if not key else plate[key]


class _Handle:
    """Shared by every compat node: identity, pickling, context manager, iohub-only methods."""

    __slots__ = ()
    _IOHUB_ONLY: ClassVar[dict[str, str]] = {}

    _plate: Plate
    _key: str

    def __reduce__(self) -> tuple[Any, ...]:
        p = self._plate
        return (_reopen, (str(p._root), self._key, p._mode, p._check, p._fallback))

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        p = self._plate
        return (f"snapmeta.compat.{type(self).__name__}", str(p._root), self._key, p._mode)

    def __getattr__(self, name: str) -> Any:
        call = type(self)._IOHUB_ONLY.get(name)
        if call is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return _iohub_only(f"{type(self).__name__}.{name}", call)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (iohub closes the zarr store here)."""

    @property
    def version(self) -> str:
        """NGFF version, ``"0.4"`` or ``"0.5"``."""
        return self._plate._version

    @property
    def zgroup(self) -> zarr.Group:
        """The node's zarr group, opened on first access (reads its JSON document)."""
        return _open_group(
            self._plate._root, self._key, self._plate._mode, self._plate._zarr_format
        )

    def print_tree(self, level: int | None = None) -> None:
        print(self.zgroup.tree(level=level))

    def is_root(self) -> bool:
        return not self._key

    def iteritems(self) -> Iterator[tuple[str, Any]]:
        for key in self:  # type: ignore[attr-defined]
            yield key, self[key]  # type: ignore[index]


# ---------------------------------------------------------------------------
# arrays


class ImageArray(zarr.Array):
    """A zarr array of a position, as iohub's ``ImageArray``.

    It *is* a ``zarr.Array`` (NumPy-style slicing and assignment,
    ``np.asarray``, ``shape``/``dtype``/``chunks``), opened from the
    snapshot's array metadata, plus iohub's helpers. It pickles as its plate
    path and key, and re-opens from the snapshot in the receiving process.
    """

    _reopen_args: tuple[str, str, Mode, Check, bool] | None = None

    def __reduce_ex__(self, protocol: Any) -> Any:
        if self._reopen_args is None:  # e.g. made by with_config(): plain zarr pickling
            return super().__reduce_ex__(protocol)
        return (_reopen, self._reopen_args)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (
            "snapmeta.compat.ImageArray",
            str(self.store_path),
            self.read_only,
            self.shape,
            str(self.dtype),
        )

    @property
    def frames(self) -> int:
        return _pad5(self.shape)[0]

    @property
    def channels(self) -> int:
        return _pad5(self.shape)[1]

    @property
    def slices(self) -> int:
        return _pad5(self.shape)[2]

    @property
    def height(self) -> int:
        return _pad5(self.shape)[3]

    @property
    def width(self) -> int:
        return _pad5(self.shape)[4]

    def numpy(self) -> Any:
        """The whole array in memory (``self[:]``)."""
        return self[:]

    def dask_array(self) -> Any:
        """A dask array over this array; its graph carries only this handle."""
        import dask.array as da

        return da.from_zarr(self)

    def downscale(self) -> Any:
        raise NotImplementedError

    def tensorstore(self, **kwargs: Any) -> Any:
        raise NotImplementedError("open the array with iohub.ngff for tensorstore access")


# ---------------------------------------------------------------------------
# Position


class Position(_Handle):
    """One field of view, with the surface of iohub's ``Position``.

    Everything but ``metadata``/``axes`` (built lazily) and ``zgroup`` comes
    from the snapshot record of the position; arrays are opened from the
    snapshot's array metadata without reading any document.
    """

    __slots__ = ("__dict__", "_arrays", "_core", "_delegated", "_key", "_plate")

    _IOHUB_ONLY: ClassVar[dict[str, str]] = {
        name: f"Position.{name}(...)"
        for name in (
            "create_image",
            "create_zeros",
            "append_channel",
            "rename_channel",
            "update_channel",
            "initialize_pyramid",
            "compute_pyramid",
            "delete_pyramid",
            "set_transform",
            "set_scale",
            "set_contrast_limits",
            "write_xarray",
            "dump_meta",
        )
    }

    def __init__(self, plate: Plate, core: _open.Position) -> None:
        self._plate = plate
        self._core = core
        self._key = core.path
        self._arrays: dict[str, ImageArray] = {}
        self._delegated = False

    def _serve(
        self, native: Callable[[_open.Position], Any], delegate: Callable[[Any], Any]
    ) -> Any:
        """``native(core)``; if the snapshot proves stale for this position (an array
        document or a large attribute document changed after the lookup), the
        plate falls back once and this position is served by the fallback."""
        plate = self._plate
        for _ in range(3):
            if self._delegated:
                return delegate(plate._iohub_plate[self._key])
            try:
                return native(self._core)
            except StaleSnapshotError as exc:
                if plate._iohub_plate is None and not plate._lenient:
                    plate._degrade(exc)  # raises with fallback=False
                if plate._iohub_plate is not None:
                    self._delegated = True
                else:  # snapmeta's JSON fallback, which warns itself
                    self._core = plate._core[self._key]
                    self._arrays.clear()
        raise AssertionError("unreachable")  # pragma: no cover

    def __repr__(self) -> str:
        return f"<snapmeta.compat.Position {self._key!r} of {str(self._plate._root)!r}>"

    @property
    def native(self) -> _open.Position:
        """The underlying :class:`snapmeta.Position` (opened with ``on_stale="raise"``)."""
        return self._core

    # -- channels and axes ----------------------------------------------------

    @property
    def channel_names(self) -> list[Any]:
        names = list(self._core.channel_names)
        if not names and "omero" not in self._ome:  # iohub numbers channels without OMERO metadata
            return list(range(_pad5(self._core.shape)[1]))
        return names

    def get_channel_index(self, name: str) -> int:
        names = self.channel_names
        if name not in names:
            raise ChannelIndexError(
                f"Channel {name} is not in the existing channels: {names}",
                key=name,
                channels=tuple(names),
                position=self._key,
            )
        return names.index(name)

    @property
    def axes(self) -> list[Any]:
        """Axis models: iohub's ``TimeAxisMeta``/``ChannelAxisMeta``/``SpaceAxisMeta`` if
        iohub is installed, else :class:`snapmeta.Axis`."""
        axes = self.__dict__.get("axes")
        if axes is None:
            core_axes = self._core.axes
            axes = _iohub_axes(core_axes) or list(core_axes)
            self.__dict__["axes"] = axes
        return axes

    @property
    def axis_names(self) -> list[str]:
        """Lower-case axis names, as iohub returns them."""
        return [name.lower() for name in self._core.axis_names]

    def get_axis_index(self, axis_name: str) -> int:
        return self.axis_names.index(axis_name.lower())

    @property
    def scale(self) -> list[float]:
        """Effective scale of the highest-resolution level."""
        return [float(s) for s in self._core.scale]

    def _all_transforms(self, image: str) -> list[Mapping[str, Any]]:
        ms = self._ome["multiscales"][0]
        transforms = list(ms.get("coordinateTransformations") or [])
        if image != "*":
            if image not in self._core.levels:
                raise ValueError(f"Key {image} not recognized.")
            for dataset in ms["datasets"]:
                if dataset["path"] == image:
                    transforms.extend(dataset.get("coordinateTransformations") or [])
        return transforms

    def get_effective_scale(self, image: str) -> list[float]:
        if image != "*" and image in self._core.levels:
            return [float(s) for s in self._core.level(image).scale]
        full = [1.0] * len(self._core.axis_names)
        for t in self._all_transforms(image):
            if t.get("type") == "scale":
                full = [a * float(b) for a, b in zip(full, t["scale"], strict=True)]
        return full

    def get_effective_translation(self, image: str) -> list[float]:
        full = [0.0] * len(self._core.axis_names)
        for t in self._all_transforms(image):
            if t.get("type") == "translation":
                full = [a + float(b) for a, b in zip(full, t["translation"], strict=True)]
        return full

    # -- attributes and models ------------------------------------------------

    @property
    def zattrs(self) -> Attributes:
        attrs = self.__dict__.get("zattrs")
        if attrs is None:
            p = self._plate
            attrs = Attributes(
                lambda: self._serve(lambda core: core.attrs, lambda io: io.zattrs.asdict()),
                p._root,
                self._key,
                p._mode,
                p._zarr_format,
            )
            self.__dict__["zattrs"] = attrs
        return attrs

    @property
    def maybe_wrapped_ome_attrs(self) -> Mapping[str, Any]:
        return self._ome

    @property
    def _ome(self) -> Mapping[str, Any]:
        attrs = self.zattrs
        return attrs.get("ome") or attrs

    @property
    def metadata(self) -> Any:
        """``ImagesMeta`` (iohub's pydantic model if installed), built on first access."""
        meta = self.__dict__.get("metadata")
        if meta is None:
            meta = self.__dict__["metadata"] = _images_meta(self._ome)
        return meta

    # -- arrays -----------------------------------------------------------------

    def array_keys(self) -> list[str]:
        """Names of the resolution levels (the arrays the snapshot knows), sorted as iohub does."""
        return sorted(self._core.levels)

    def group_keys(self) -> list[str]:
        return []

    def is_leaf(self) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.array_keys())

    def __len__(self) -> int:
        return len(self._core.levels)

    def __contains__(self, key: object) -> bool:
        try:
            return _normalize(key) in self._core.levels
        except ValueError:
            return False

    def __getitem__(self, key: int | str) -> ImageArray:
        """An array of the position by name (``pos["0"]``; ``pos[0]`` means the name ``"0"``)."""
        name = _normalize(key)
        array = self._arrays.get(name)
        if array is None:
            if name not in self._core.levels:
                raise PositionNotFoundError(
                    f"no array {name!r} in {self._key}; arrays are {', '.join(self.array_keys())}",
                    store=str(self._plate._root),
                    key=f"{self._key}/{name}",
                    suggestions=tuple(self._core.levels),
                )
            opened = self._serve(lambda core: core[name], lambda io: io[name])
            if not isinstance(opened, zarr.Array) or self._delegated:
                return opened  # the fallback's own array
            array = ImageArray(opened.async_array)
            p = self._plate
            array._reopen_args = (
                str(p._root),
                f"{self._key}/{name}",
                p._mode,
                p._check,
                p._fallback,
            )
            self._arrays[name] = array
        return array

    def __setitem__(self, key: str, value: Any) -> None:
        _iohub_only("Position.__setitem__", "Position.create_image(name, data)")()

    @property
    def data(self) -> ImageArray:
        """The array named ``"0"`` (as iohub, not the first dataset)."""
        try:
            return self["0"]
        except KeyError:
            raise KeyError(
                f"There is no array named '0' in the group of: {self.array_keys()}"
            ) from None

    def images(self) -> Iterator[tuple[str, ImageArray]]:
        for key in self.array_keys():
            yield key, self[key]


# ---------------------------------------------------------------------------
# Row and Well


class _Children(_Handle):
    """A row or a well: a sorted view of its children, each reached through the plate."""

    __slots__ = ()

    def _children(self) -> list[str]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[str]:
        return iter(self._children())

    def __len__(self) -> int:
        return len(self._children())

    def __contains__(self, key: object) -> bool:
        try:
            return _normalize(key) in self._children()
        except ValueError:
            return False

    def group_keys(self) -> list[str]:
        return self._children()

    def __getitem__(self, key: str) -> Any:
        return self._plate[f"{self._key}/{_normalize(key)}"]

    def _items(self) -> Iterator[tuple[str, Any]]:
        for name in self._children():
            yield name, self._plate[f"{self._key}/{name}"]

    @property
    def channel_names(self) -> list[Any]:
        return self._plate.channel_names

    @property
    def axes(self) -> list[Any]:
        return self._plate.axes

    def _load_attrs(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def zattrs(self) -> Attributes:
        """The group's attributes (a well's come from the snapshot)."""
        attrs = self.__dict__.get("zattrs")
        if attrs is None:
            p = self._plate
            attrs = Attributes(self._load_attrs, p._root, self._key, p._mode, p._zarr_format)
            self.__dict__["zattrs"] = attrs
        return attrs


class Well(_Children):
    """A well: iterates its positions (field names, sorted as iohub does).

    Built from :meth:`snapmeta.Plate.well`: fields and attributes come from the
    snapshot, checked against the well's document when the well is looked up.
    """

    __slots__ = ("__dict__", "_core", "_key", "_plate")

    _IOHUB_ONLY: ClassVar[dict[str, str]] = {
        "create_position": "Well.create_position(name)",
        "dump_meta": "Well.dump_meta()",
    }

    def __init__(self, plate: Plate, core: _open.Well) -> None:
        self._plate = plate
        self._core = core
        self._key = core.path

    def __repr__(self) -> str:
        return f"<snapmeta.compat.Well {self._key!r} of {str(self._plate._root)!r}>"

    @property
    def native(self) -> _open.Well:
        """The underlying :class:`snapmeta.Well`."""
        return self._core

    def _children(self) -> list[str]:
        return sorted(path.rpartition("/")[2] for path in self._core.positions)

    def positions(self) -> Iterator[tuple[str, Any]]:
        return self._items()

    def _load_attrs(self) -> dict[str, Any]:
        return dict(self._core.attrs)

    @property
    def metadata(self) -> Any:
        """``WellGroupMeta`` (iohub's if installed), built on first access."""
        meta = self.__dict__.get("metadata")
        if meta is None:
            attrs = self.zattrs
            meta = self.__dict__["metadata"] = _well_meta(attrs.get("ome") or attrs, self.version)
        return meta


class Row(_Children):
    """A plate row: iterates its wells (column names, sorted as iohub does)."""

    __slots__ = ("__dict__", "_key", "_plate")

    def __init__(self, plate: Plate, name: str) -> None:
        self._plate = plate
        self._key = name

    def __repr__(self) -> str:
        return f"<snapmeta.compat.Row {self._key!r} of {str(self._plate._root)!r}>"

    def _children(self) -> list[str]:
        return sorted(self._plate._layout()[self._key])

    def wells(self) -> Iterator[tuple[str, Any]]:
        return self._items()

    def _load_attrs(self) -> dict[str, Any]:
        return self.zgroup.attrs.asdict()


class Plate(_Handle):
    """An HCS plate with the surface of iohub's ``Plate``, served by the snapshot.

    As in iohub, the plate's members are its rows: ``iter(plate)``,
    ``len(plate)`` and ``"A" in plate`` are about rows, while ``plate[key]``
    takes a row, well, position or array path. Plate-wide views read the
    snapshot's position index once per plate object.

    If the snapshot turns out to be stale for a node after opening, the plate
    switches (once, with a :class:`FallbackWarning`) to iohub for the rest of
    its life; objects already handed out stay valid.
    """

    __slots__ = (
        "__dict__",
        "_check",
        "_core",
        "_fallback",
        "_index",
        "_iohub_plate",
        "_key",
        "_lenient",
        "_mode",
        "_plate",
        "_root",
        "_version",
        "_zarr_format",
    )

    _IOHUB_ONLY: ClassVar[dict[str, str]] = {
        name: f"Plate.{name}(...)"
        for name in (
            "create_well",
            "create_position",
            "create_positions",
            "rename_well",
            "dump_meta",
        )
    }

    def __init__(
        self, core: _open.Plate, *, mode: Mode, check: Check, fallback: bool, lenient: bool = False
    ):
        self._core = core
        self._root = core.store
        self._mode = mode
        self._check = check
        self._fallback = fallback
        self._lenient = lenient
        self._zarr_format = core.zarr_format
        self._version = core.version or _version_of(self._zarr_format)
        self._index: dict[str, dict[str, list[str]]] | None = None
        self._iohub_plate: Any = None
        self._plate = self
        self._key = ""

    def __repr__(self) -> str:
        return f"<snapmeta.compat.Plate {str(self._root)!r}>"

    @property
    def native(self) -> _open.Plate:
        """The underlying :class:`snapmeta.Plate` (opened with ``on_stale="raise"``)."""
        return self._core

    # -- staleness ------------------------------------------------------------

    def _serve(self, native: Callable[[], Any], delegate: Callable[[Any], Any]) -> Any:
        """``native()``, or ``delegate(iohub_plate)`` once the snapshot proved stale."""
        for _ in range(3):
            if self._iohub_plate is not None:
                return delegate(self._iohub_plate)
            try:
                return native()
            except StaleSnapshotError as exc:
                self._degrade(exc)
        raise AssertionError("unreachable")  # pragma: no cover

    def _degrade(self, exc: StaleSnapshotError) -> None:
        if not self._fallback or self._lenient:
            raise exc
        self._index = None
        iohub_open = _iohub("open")
        if iohub_open is None:
            # snapmeta's own JSON fallback; it warns with SnapshotStaleWarning
            self._core = _open.open_plate(
                self._root, mode=self._mode, check=self._check, on_stale="fallback"
            )
            self._lenient = True
            return
        warnings.warn(
            f"snapmeta.compat: {exc}. Reading the plate through iohub.ngff.open_ome_zarr "
            "from now on.",
            FallbackWarning,
            stacklevel=4,
        )
        self._iohub_plate = iohub_open(self._root, layout="hcs", mode=self._mode)

    def _layout(self) -> dict[str, dict[str, list[str]]]:
        """row -> column -> fields (plate order), from the snapshot's position index."""
        index = self._index
        if index is None:
            index = {}
            for path in self._core:
                well, _, field = path.rpartition("/")
                row, _, col = well.partition("/")
                index.setdefault(row, {}).setdefault(col, []).append(field)
            self._index = index
        return index

    def _rows(self) -> list[str]:
        return self._serve(lambda: sorted(self._layout()), lambda io: list(io))

    # -- members ------------------------------------------------------------------

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows())

    def __len__(self) -> int:
        return len(self._rows())

    def __contains__(self, key: object) -> bool:
        try:
            key = _normalize(key)
        except ValueError:
            return False
        return key in self._rows()

    def group_keys(self) -> list[str]:
        return self._rows()

    def array_keys(self) -> list[str]:
        return []

    def is_leaf(self) -> bool:
        return False

    def __getitem__(self, key: object) -> Any:
        """A row (``"A"``), well (``"A/1"``), position (``"A/1/0"``) or array (``"A/1/0/0"``)."""
        path = _normalize(key)
        return self._serve(lambda: self._native_item(path), lambda io: io[path])

    def _native_item(self, path: str) -> Any:
        parts = path.split("/") if path else []
        if len(parts) >= 3:
            position = Position(self, self._core["/".join(parts[:3])])
            return position if len(parts) == 3 else position["/".join(parts[3:])]
        if len(parts) == 2:
            return Well(self, self._core.well(path))
        if len(parts) == 1 and parts[0] in self._layout():
            return Row(self, parts[0])
        raise _not_found(self._root, path)

    def rows(self) -> Iterator[tuple[str, Any]]:
        for name in self._rows():
            yield name, self[name]

    def wells(self) -> Iterator[tuple[str, Any]]:
        """``(path, Well)`` for every well, rows then columns in iohub's (sorted) order."""
        layout = self._serve(self._layout, lambda io: None)
        if layout is None:
            yield from self._iohub_plate.wells()
            return
        for row in sorted(layout):
            for col in sorted(layout[row]):
                yield f"{row}/{col}", self[f"{row}/{col}"]

    def positions(self) -> Iterator[tuple[str, Any]]:
        """``(path, Position)`` for every position, in iohub's order."""
        layout = self._serve(self._layout, lambda io: None)
        if layout is None:
            yield from self._iohub_plate.positions()
            return
        for row in sorted(layout):
            for col in sorted(layout[row]):
                for field in sorted(layout[row][col]):
                    path = f"{row}/{col}/{field}"
                    yield path, self[path]

    # -- metadata -------------------------------------------------------------------

    def _first_position(self) -> Position | None:
        """iohub's "first position": first field of the first well, in metadata order."""
        layout = self._layout()  # insertion order is plate order
        for row, columns in layout.items():
            for col, fields in columns.items():
                return self._native_item(f"{row}/{col}/{fields[0]}")
        return None

    @property
    def channel_names(self) -> list[Any]:
        """Channel names of the first position (as iohub)."""
        names = self.__dict__.get("channel_names")
        if names is None:

            def native() -> list[Any]:
                pos = self._first_position()
                if pos is None:
                    raise ValueError("No position found to read channel names from.")
                return pos.channel_names

            names = self.__dict__["channel_names"] = self._serve(
                native, lambda io: io.channel_names
            )
        return names

    @property
    def axes(self) -> list[Any]:
        """Axes of the first position (as iohub): models built on first access."""
        axes = self.__dict__.get("axes")
        if axes is None:

            def native() -> list[Any]:
                pos = self._first_position()
                return pos.axes if pos is not None else _default_axes()

            axes = self.__dict__["axes"] = self._serve(native, lambda io: io.axes)
        return axes

    @property
    def zattrs(self) -> Attributes:
        attrs = self.__dict__.get("zattrs")
        if attrs is None:
            attrs = Attributes(
                lambda: self._serve(lambda: self._core.attrs, lambda io: io.zattrs.asdict()),
                self._root,
                "",
                self._mode,
                self._zarr_format,
            )
            self.__dict__["zattrs"] = attrs
        return attrs

    @property
    def maybe_wrapped_ome_attrs(self) -> Mapping[str, Any]:
        attrs = self.zattrs
        return attrs.get("ome") or attrs

    @property
    def metadata(self) -> Any:
        """``PlateMeta`` (iohub's pydantic model if installed), built on first access.

        ``.wells``, ``.rows``, ``.columns``, ``.acquisitions`` and ``.field_count``
        are those of the plate document.
        """
        meta = self.__dict__.get("metadata")
        if meta is None:
            meta = self.__dict__["metadata"] = _plate_meta(
                self.maybe_wrapped_ome_attrs, self._version
            )
        return meta


def _default_axes() -> list[Any]:
    """iohub's default TCZYX axes, for a plate without positions."""
    axes = (
        _open.Axis("T", "time", "second"),
        _open.Axis("C", "channel", None),
        *(_open.Axis(n, "space", "micrometer") for n in "ZYX"),
    )
    return _iohub_axes(axes) or list(axes)


# ---------------------------------------------------------------------------
# entry point


def open_ome_zarr(
    store_path: str | os.PathLike[str],
    layout: Literal["auto", "hcs"] = "auto",
    mode: Mode = "r",
    channel_names: list[str] | None = None,
    axes: list[Any] | None = None,
    version: Literal["0.4", "0.5"] = "0.4",
    disable_path_checking: bool = False,
    *,
    check: Literal["none", "stat", "digest"] = "stat",
    fallback: bool = True,
    **kwargs: Any,
) -> Any:
    """Open an existing HCS plate like ``iohub.ngff.open_ome_zarr``, through its snapshot.

    Parameters
    ----------
    store_path
        Path of the plate.
    layout
        ``"auto"`` or ``"hcs"``. ``"fov"`` and ``"tiled"`` are not plates:
        open them with iohub.
    mode
        ``"r"`` (read-only), ``"r+"`` or ``"a"`` (read/write an existing
        plate). ``"w"``/``"w-"`` create plates and are iohub's.
    channel_names, axes, version, disable_path_checking, **kwargs
        Accepted for compatibility. iohub uses them only to create a plate,
        so they are ignored for an existing one (the snapshot knows the
        version, channels and axes); they are passed on to iohub on fallback.
    check
        snapmeta freshness check: ``"stat"`` (default), ``"digest"``, ``"none"``.
    fallback
        When the snapshot is missing or stale, read the plate through iohub
        (if installed) with one :class:`FallbackWarning`. ``False`` raises
        :class:`~snapmeta.errors.SnapshotNotFoundError` or
        :class:`~snapmeta.errors.StaleSnapshotError` instead.

    Returns
    -------
    Plate
        A :class:`Plate`, or an ``iohub.ngff.Plate`` on fallback.
    """
    if mode in ("w", "w-"):
        raise ValueError(
            f"mode={mode!r} creates a plate, which snapmeta.compat does not do: create it with "
            "iohub.ngff.open_ome_zarr(..., layout='hcs', mode=...), then run "
            "`snapmeta build STORE`."
        )
    if mode not in ("r", "r+", "a"):
        raise ValueError(f"Invalid persistence mode '{mode}'.")
    if layout in ("fov", "tiled"):
        raise ValueError(
            f"layout={layout!r}: snapmeta.compat opens HCS plates only; open single positions "
            "with iohub.ngff.open_ome_zarr(..., layout=...) (or snapmeta.open_position for a "
            "position of a plate)."
        )
    if layout not in ("auto", "hcs"):
        raise ValueError(f"Unknown layout: {layout}")
    unknown = set(kwargs) - _CREATION_KWARGS
    if unknown:
        raise TypeError(
            f"open_ome_zarr() got unexpected keyword arguments: {', '.join(sorted(unknown))}"
        )
    if not isinstance(store_path, str | os.PathLike):
        raise TypeError(
            f"store_path must be a path (str or os.PathLike), not {type(store_path).__name__}"
        )
    root = Path(os.path.abspath(store_path))
    try:
        core = _open.open_plate(root, mode=mode, check=check, on_stale="raise")
    except SnapshotNotFoundError as exc:
        if not root.is_dir():
            if mode == "a":
                raise FileNotFoundError(
                    f"{root} does not exist; mode='a' would create a plate, which snapmeta.compat "
                    "does not do: create it with iohub.ngff.open_ome_zarr(..., layout='hcs')."
                ) from None
            raise FileNotFoundError(f"Dataset directory not found at {root}.") from None
        reason = f"{root} has no snapmeta snapshot"
        passthrough = dict(
            channel_names=channel_names,
            axes=axes,
            version=version,
            disable_path_checking=disable_path_checking,
            **kwargs,
        )
        return _fall_back(root, mode, check, fallback, reason, exc, passthrough)
    except StaleSnapshotError as exc:
        passthrough = dict(
            channel_names=channel_names,
            axes=axes,
            version=version,
            disable_path_checking=disable_path_checking,
            **kwargs,
        )
        return _fall_back(root, mode, check, fallback, str(exc), exc, passthrough)
    return Plate(core, mode=mode, check=check, fallback=fallback)


def _fall_back(
    root: Path,
    mode: Mode,
    check: Check,
    fallback: bool,
    reason: str,
    exc: SnapshotNotFoundError | StaleSnapshotError,
    passthrough: dict[str, Any],
) -> Any:
    iohub_open = _iohub("open") if fallback else None
    if iohub_open is None:
        if isinstance(exc, SnapshotNotFoundError):
            raise SnapshotNotFoundError(
                f"{reason}: build one with `snapmeta build {root}` (or snapmeta.build_snapshot)"
                + ("" if fallback else "; fallback=False")
                + ". Without a snapshot, open the plate with "
                "iohub.ngff.open_ome_zarr.",
                store=str(root),
                snapshot=getattr(exc, "snapshot", None),
            ) from None
        if not fallback:
            raise exc
        # stale, iohub not installed: snapmeta's JSON fallback (warns itself)
        core = _open.open_plate(root, mode=mode, check=check, on_stale="fallback")
        return Plate(core, mode=mode, check=check, fallback=fallback, lenient=True)
    warnings.warn(
        f"snapmeta.compat: {reason}; reading it through iohub.ngff.open_ome_zarr, which parses "
        f"its JSON documents. Run `snapmeta build {root}` to open it through the snapshot.",
        FallbackWarning,
        stacklevel=3,
    )
    node = iohub_open(root, layout="auto", mode=mode, **passthrough)
    if not isinstance(node, _iohub("Plate")):
        node.close()
        raise NotAPlateError(
            f"{root} is not an HCS plate; snapmeta.compat opens plates only. "
            "Open it with iohub.ngff.open_ome_zarr.",
            store=str(root),
            document=None,
        )
    return node
