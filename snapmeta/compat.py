"""iohub's ``open_ome_zarr`` for existing HCS plates, served by the snapmeta snapshot.

An adapter (``pip install "snapmeta[iohub]"``): plates, positions, channel names and
arrays come from the snapshot without parsing JSON; ``metadata`` and ``axes`` are
iohub's models, built lazily as the installed iohub builds them, and ``scale`` and
the like are iohub's own methods. See docs/compat.md.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import os
import warnings
from collections.abc import Callable, Iterator, MutableMapping
from functools import cached_property
from typing import Any, Literal, TypeVar

try:
    import iohub.ngff as _io
    from iohub.ngff import models as _models
except ImportError as exc:  # pragma: no cover - tested in a subprocess
    raise ImportError(
        "snapmeta.compat is an adapter for iohub, which is not installed: "
        'pip install "snapmeta[iohub]"'
    ) from exc
import zarr
from packaging.version import Version
from pydantic import ValidationError

from ._arrays import CheckedArray
from ._open import Plate as _CorePlate
from ._open import Position as _CorePosition
from ._open import Well as _CoreWell
from ._open import open_plate
from .errors import (
    PlateValidationError,
    PositionNotFoundError,
    Problem,
    SnapshotNotFoundError,
    StaleSnapshotError,
)

__all__ = [
    "Attributes",
    "FallbackWarning",
    "ImageArray",
    "Plate",
    "Position",
    "Row",
    "Well",
    "open_ome_zarr",
]

Mode = Literal["r", "r+", "a"]
_T = TypeVar("_T")

# Versions as the installed iohub derives them: from iohub 0.3.0 on, a plate without
# an "ome" wrapper is NGFF 0.4 (before, it had the `version` argument); from 0.3.2 on,
# image metadata without a "version" is given the node's version before validation.
_IOHUB = Version(importlib.metadata.version("iohub"))
_FLAT_IS_04 = Version("0.3.0") <= _IOHUB
_IMAGE_VERSION = Version("0.3.2") <= _IOHUB
_DEFAULT_VERSION = inspect.signature(_io.open_ome_zarr).parameters["version"].default
_KEYWORDS = {*inspect.signature(_io.open_ome_zarr).parameters}
_KEYWORDS |= {*inspect.signature(_io.Plate).parameters}


class FallbackWarning(UserWarning):
    """The plate is read through ``iohub.ngff.open_ome_zarr``: its snapshot is missing or stale."""


def _fall_back(message: str, stacklevel: int) -> None:
    warnings.warn(f"snapmeta.compat: {message}", FallbackWarning, stacklevel=stacklevel + 1)


def _normalize(key: object) -> str:
    parts = [p for p in str(key).replace("\\", "/").split("/") if p and p != "."]
    if ".." in parts:
        raise ValueError(f"The path {key!r} is invalid because it contains '..'.")
    return "/".join(parts)


def _only_iohub(what: str, *args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError(
        f"{what} creates or edits metadata, which snapmeta.compat does not do: open the plate "
        f"with iohub.ngff.open_ome_zarr(...) and call {what}(...) there, then rebuild the "
        "snapshot with `snapmeta build STORE` (or snapmeta.build_snapshot(STORE))."
    )


def _not_found(node: _Node, message: str, key: str, names: list[str]) -> PositionNotFoundError:
    """iohub's ``KeyError``, as snapmeta's (also a ``KeyError``)."""
    key = f"{node._key}/{key}".lstrip("/")
    return PositionNotFoundError(
        message, store=node._plate._root, key=key, suggestions=tuple(names)
    )


def _reopen(root: str, key: str, mode: Mode, check: Any, fallback: bool) -> Any:
    plate = open_ome_zarr(root, layout="hcs", mode=mode, check=check, fallback=fallback)
    return plate[key] if key else plate


class Attributes(MutableMapping[str, Any]):
    """A node's ``zattrs``: read from the snapshot until written. Writes go through zarr
    to the node's group document, as with iohub's ``zattrs`` (a zarr ``Attributes``),
    and fail in mode ``"r"`` as there; reads then come from that document."""

    def __init__(self, node: _Node, read: Callable[[], dict[str, Any]]) -> None:
        self._node, self._read = node, read
        self._data: dict[str, Any] | None = None

    @property
    def _dict(self) -> dict[str, Any]:
        if self._data is None:
            self._data = self._read()
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._dict[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._dict)

    def asdict(self) -> dict[str, Any]:
        return dict(self._dict)

    def _write(self, change: Callable[[Any], Any]) -> None:
        attrs = self._node.zgroup.attrs
        change(attrs)
        self._data = attrs.asdict()

    def __setitem__(self, key: str, value: Any) -> None:
        self._write(lambda attrs: attrs.__setitem__(key, value))

    def __delitem__(self, key: str) -> None:
        self._write(lambda attrs: attrs.__delitem__(key))

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._write(lambda attrs: attrs.update(*args, **kwargs))

    def put(self, d: dict[str, Any]) -> None:
        self._write(lambda attrs: attrs.put(d))


class _Node:
    """What every node shares: members sorted as iohub sorts zarr keys, pickling as a
    handle, ``zattrs``, and the iohub-only methods, which raise."""

    _ONLY_IOHUB = frozenset({"dump_meta"})
    _LEAF = False  # a position: its members are arrays, not groups
    _plate: Plate
    _key: str

    def _members(self) -> list[str]:
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        if name in type(self)._ONLY_IOHUB:
            return functools.partial(_only_iohub, f"{type(self).__name__}.{name}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setitem__(self, *args: Any) -> None:  # creating or deleting arrays or groups
        _only_iohub(f"{type(self).__name__}.__setitem__/__delitem__")

    __delitem__ = __setitem__

    def __iter__(self) -> Iterator[str]:
        return iter(self._members())

    def __len__(self) -> int:
        return len(self._members())

    def __contains__(self, key: object) -> bool:
        return _normalize(key) in self._members()

    def __getitem__(self, key: object) -> Any:
        return self._child(_normalize(key))

    def _child(self, name: str) -> Any:  # a listed name or a normalised key
        return self._plate._child(f"{self._key}/{name}")

    def group_keys(self) -> list[str]:
        return [] if self._LEAF else self._members()

    def array_keys(self) -> list[str]:
        return self._members() if self._LEAF else []

    def is_leaf(self) -> bool:
        return self._LEAF

    def is_root(self) -> bool:
        return not self._key

    def iteritems(self) -> Iterator[tuple[str, Any]]:
        for name in self._members():
            yield name, self._child(name)

    def __reduce__(self) -> tuple[Any, ...]:
        p = self._plate
        return (_reopen, (p._root, self._key, p._mode, p._check, p._fallback))

    def __repr__(self) -> str:
        return f"<snapmeta.compat.{type(self).__name__} {self._key!r} of {self._plate._root!r}>"

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release."""

    @property
    def version(self) -> str:
        return self._plate._version

    @property
    def channel_names(self) -> list[Any]:
        return self._plate.channel_names

    @property
    def axes(self) -> list[Any]:
        return self._plate.axes

    @cached_property
    def zgroup(self) -> zarr.Group:
        """The node's zarr group, opened on first use (this reads its document)."""
        mode: Literal["r", "r+"] = "r" if self._plate._mode == "r" else "r+"
        return zarr.open_group(self._plate._root, path=self._key, mode=mode)

    def print_tree(self, level: int | None = None) -> None:
        print(self.zgroup.tree(level=level))

    @cached_property
    def zattrs(self) -> Attributes:
        return Attributes(self, self._read_attrs)

    def _read_attrs(self) -> dict[str, Any]:
        return self.zgroup.attrs.asdict()

    maybe_wrapped_ome_attrs = _io.NGFFNode.maybe_wrapped_ome_attrs
    get_channel_index = _io.NGFFNode.get_channel_index


def _validated(node: _Node, build: Callable[[], Any]) -> Any:
    """An iohub model of ``node``; iohub's rejection of its metadata as snapmeta's error."""
    try:
        return build()
    except ValidationError as exc:
        name = "zarr.json" if node._plate._core.zarr_format == 3 else ".zattrs"
        doc = f"{node._key}/{name}".lstrip("/")
        problems = [Problem(doc, ".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors()]
        raise PlateValidationError(
            f"{doc}: iohub's models reject this metadata: {exc}",
            store=node._plate._root,
            problems=tuple(problems),
        ) from exc


def _iohub_meta(model: Any, node: _Node, key: str) -> Any:
    """A plate's or well's model as iohub builds it: given the node's version if it has
    none (iohub also adds it to its in-memory attributes; compat does not)."""
    meta = dict(node.maybe_wrapped_ome_attrs[key])
    meta.setdefault("version", node.version)
    return _validated(node, lambda: model(**meta))


class ImageArray(CheckedArray):
    """A level of a position: a ``zarr.Array`` built from the snapshot, with iohub's helpers.

    It pickles as a handle (plate, path, mode), built again from the snapshot
    where it is unpickled. In mode ``"r"`` it refuses writes, also under the
    zarrs codec pipeline that iohub 0.3.11 switches on. Its attribute writes and
    ``resize`` go to its document through zarr, as iohub's do.
    """

    _compat: tuple[str, str, Mode, Any, bool] | None = None

    def __reduce_ex__(self, protocol: Any) -> Any:
        if self._compat is None:  # made by zarr (e.g. with_config()): zarr's pickling
            return super().__reduce_ex__(protocol)
        return (_reopen, self._compat)

    def _get_dim(self, i: int) -> int:
        return ((1,) * (5 - len(self.shape)) + tuple(self.shape))[i]

    frames = property(lambda self: self._get_dim(0))
    channels = property(lambda self: self._get_dim(1))
    slices = property(lambda self: self._get_dim(2))
    height = property(lambda self: self._get_dim(3))
    width = property(lambda self: self._get_dim(4))

    @property
    def native(self) -> ImageArray:
        """The zarr array (iohub 0.3.11's ``ImageArray`` wraps one; this is one)."""
        return self

    def numpy(self) -> Any:
        return self[:]

    def dask_array(self) -> Any:
        import dask.array as da

        return da.from_zarr(self)  # type: ignore[no-untyped-call]

    def write_from_dask(self, dask_array: Any) -> None:
        dask_array.store(self, lock=False)


class Position(_Node):
    """A field of view: channel names, levels and arrays from the snapshot record.

    ``metadata`` (iohub's ``ImagesMeta``) and ``axes`` are built on first use;
    ``scale``, ``get_effective_scale``, ``get_effective_translation``,
    ``get_axis_index`` and ``update_channel`` are iohub's methods.
    """

    _ONLY_IOHUB = _Node._ONLY_IOHUB | {
        *("create_image", "create_zeros", "append_channel", "rename_channel"),
        *("set_contrast_limits", "initialize_pyramid", "compute_pyramid", "delete_pyramid"),
        *("set_transform", "set_scale", "write_xarray", "create_labels_group", "create_label"),
    }
    _LEAF = True

    def __init__(self, plate: Plate, core: _CorePosition) -> None:
        self._plate, self._core, self._key = plate, core, core.path

    @property
    def native(self) -> _CorePosition:
        """The :class:`snapmeta.Position` behind this position."""
        return self._core

    def _members(self) -> list[str]:
        return sorted(self._core.levels)

    def _read_attrs(self) -> dict[str, Any]:
        return self._core.attrs

    @cached_property
    def metadata(self) -> Any:
        attrs = dict(self.maybe_wrapped_ome_attrs)
        if _IMAGE_VERSION and "version" not in attrs:
            attrs["version"] = self.version
        return _validated(self, lambda: _models.ImagesMeta.model_validate(attrs))

    @property
    def axes(self) -> list[Any]:
        axes: list[Any] = self.metadata.multiscales[0].axes
        return axes

    @cached_property
    def channel_names(self) -> list[Any]:
        names = list(self._core.channel_names)
        if names and all(name != str(i) for i, name in enumerate(names)):
            return names  # every channel has a string label, which is what iohub reads
        if self.metadata.omero is not None:
            return [channel.label for channel in self.metadata.omero.channels]
        return list(range(self[self.metadata.multiscales[0].datasets[0].path].channels))

    @property
    def axis_names(self) -> list[str]:
        return [name.lower() for name in self._core.axis_names]

    scale = _io.Position.scale
    get_axis_index = _io.Position.get_axis_index
    _get_all_transforms = _io.Position._get_all_transforms
    get_effective_scale = _io.Position.get_effective_scale
    get_effective_translation = _io.Position.get_effective_translation
    _find_axis = _io.Position._find_axis
    _get_channel_axis = _io.Position._get_channel_axis
    update_channel = _io.Position.update_channel

    def _child(self, name: str) -> Any:
        """The array *named* ``name`` (``pos[0]`` is ``pos["0"]``, as in iohub)."""
        return self._plate._guard(lambda: self._array(name), lambda io: io[f"{self._key}/{name}"])

    def _array(self, name: str) -> ImageArray:
        array: ImageArray = self._core._array(name, ImageArray)  # type: ignore[assignment]
        p = self._plate
        array._compat = (p._root, f"{self._key}/{name}", p._mode, p._check, p._fallback)
        return array

    @property
    def data(self) -> Any:
        try:
            return self["0"]
        except KeyError:
            keys = self._members()
            message = f"There is no array named '0' in the group of: {keys}"
            raise _not_found(self, message, "0", keys) from None

    images = _Node.iteritems


class Well(_Node):
    """A well: its positions (field names) and iohub's ``WellGroupMeta``."""

    _ONLY_IOHUB = _Node._ONLY_IOHUB | {"create_position"}

    def __init__(self, plate: Plate, core: _CoreWell) -> None:
        self._plate, self._core, self._key = plate, core, core.path

    def _members(self) -> list[str]:
        return sorted(path.rpartition("/")[2] for path in self._core.positions)

    def _read_attrs(self) -> dict[str, Any]:
        return self._core.attrs

    @cached_property
    def metadata(self) -> Any:
        return _iohub_meta(_models.WellGroupMeta, self, "well")

    positions = _Node.iteritems


class Row(_Node):
    """A plate row: its wells (column names). Its attributes are read from its document."""

    def __init__(self, plate: Plate, name: str) -> None:
        self._plate, self._key = plate, name

    def _members(self) -> list[str]:
        return list(self._plate._layout[self._key])

    wells = _Node.iteritems


class Plate(_Node):
    """An HCS plate. As in iohub, its members are its rows (``list``, ``len``, ``in``);
    ``plate[key]`` takes a row, well, position or array path.

    Once the snapshot proves stale (a node changed after the build), the plate
    is read through iohub for the rest of its life, with one :class:`FallbackWarning`;
    objects handed out before stay valid.
    """

    _ONLY_IOHUB = _Node._ONLY_IOHUB | {
        *("create_well", "create_position", "create_positions", "rename_well"),
    }

    def __init__(
        self, core: _CorePlate, mode: Mode, check: Any, fallback: bool, io_kwargs: dict[str, Any]
    ) -> None:
        self._core, self._root, self._mode = core, core.store, mode
        self._check, self._fallback, self._io_kwargs = check, fallback, io_kwargs
        self._plate, self._key, self._io = self, "", None
        if core.zarr_format == 3:  # iohub: the version of the "ome" wrapper
            self._version = core.version
        else:
            self._version = "0.4" if _FLAT_IS_04 else io_kwargs["version"]

    @property
    def native(self) -> _CorePlate:
        """The :class:`snapmeta.Plate` behind this plate (opened with ``on_stale="raise"``)."""
        return self._core

    def _guard(self, native: Callable[[], _T], delegate: Callable[[Any], _T]) -> _T:
        """``native()``; once the snapshot proved stale, ``delegate(iohub's plate)``."""
        if self._io is None:
            try:
                return native()
            except StaleSnapshotError as exc:
                if not self._fallback:
                    raise
                _fall_back(f"{exc}; this plate is read through iohub from now on", 3)
                self._io = _io.open_ome_zarr(self._root, "hcs", self._mode, **self._io_kwargs)
        return delegate(self._io)

    @cached_property
    def _layout(self) -> dict[str, list[str]]:
        """Row -> columns of the plate's wells, sorted as iohub sorts group names."""
        layout: dict[str, list[str]] = {}
        for well in sorted(self._core.wells, key=lambda path: path.split("/")):
            row, _, column = well.partition("/")
            layout.setdefault(row, []).append(column)
        return layout

    def _members(self) -> list[str]:
        return self._guard(lambda: list(self._layout), lambda io: list(io))

    def _child(self, path: str) -> Any:
        return self._guard(lambda: self._item(path), lambda io: io[path])

    def _item(self, path: str) -> Any:
        parts = path.split("/")
        if len(parts) >= 3:
            position = Position(self, self._core["/".join(parts[:3])])
            return position if len(parts) == 3 else position["/".join(parts[3:])]
        if len(parts) == 2:
            return Well(self, self._core.well(path))
        if path in self._layout:
            return Row(self, path)
        raise _not_found(self, f"no row {path!r} in {self._root}", path, list(self._layout))

    rows = _Node.iteritems

    def wells(self) -> Iterator[tuple[str, Any]]:
        for row, row_node in self.rows():
            for column, well in row_node.wells():
                yield f"{row}/{column}", well

    def positions(self) -> Iterator[tuple[str, Any]]:
        for path, well in self.wells():
            for name, position in well.positions():
                yield f"{path}/{name}", position

    def _read_attrs(self) -> dict[str, Any]:
        return self._guard(lambda: self._core.attrs, lambda io: io.zattrs.asdict())

    @cached_property
    def metadata(self) -> Any:
        """iohub's ``PlateMeta``; the root document is read on first use."""
        return _iohub_meta(_models.PlateMeta, self, "plate")

    def _first(self, name: str) -> list[Any]:
        """``name`` of iohub's first position: the first field of the plate's first well."""

        def native() -> Any:
            well = self._core.well(self._core.wells[0])
            return getattr(Position(self, self._core[well.positions[0]]), name)

        value: list[Any] = self._guard(native, lambda io: getattr(io, name))
        return value

    @cached_property
    def channel_names(self) -> list[Any]:
        return self._first("channel_names")

    @cached_property
    def axes(self) -> list[Any]:
        return self._first("axes")


def open_ome_zarr(
    store_path: str | os.PathLike[str],
    layout: Literal["auto", "hcs"] = "auto",
    mode: Mode = "r",
    channel_names: list[str] | None = None,
    axes: list[Any] | None = None,
    version: Literal["0.4", "0.5"] | None = None,
    disable_path_checking: bool = False,
    *,
    check: Literal["none", "stat", "digest"] = "stat",
    fallback: bool = True,
    **kwargs: Any,
) -> Any:
    """Open an existing HCS plate like ``iohub.ngff.open_ome_zarr``, through its snapshot.

    iohub's arguments (``version`` defaults to iohub's default) are passed to
    iohub when it opens the plate; compat, like iohub, ignores them for an
    existing plate, except ``version`` for an NGFF 0.4 plate on iohub < 0.3.0.
    ``check`` is snapmeta's freshness check (``"stat"``, ``"digest"``,
    ``"none"``). A missing or stale snapshot opens the plate with iohub, with
    one :class:`FallbackWarning`; ``fallback=False`` raises snapmeta's
    ``SnapshotNotFoundError`` or ``StaleSnapshotError`` instead.

    Returns a :class:`Plate`, or iohub's ``Plate`` on fallback.
    """
    if mode not in ("r", "r+", "a"):
        raise ValueError(
            f"mode={mode!r}: snapmeta.compat opens existing plates ('r', 'r+', 'a'); create "
            "plates with iohub.ngff.open_ome_zarr, then run `snapmeta build STORE`."
        )
    if layout not in ("auto", "hcs"):
        raise ValueError(
            f"layout={layout!r}: snapmeta.compat opens HCS plates only; open other layouts "
            "with iohub.ngff.open_ome_zarr."
        )
    if set(kwargs) - _KEYWORDS:
        raise TypeError(f"open_ome_zarr() got unexpected keywords: {set(kwargs) - _KEYWORDS}")
    root = os.path.abspath(store_path)
    io_kwargs = dict(
        channel_names=channel_names,
        axes=axes,
        version=version or _DEFAULT_VERSION,
        disable_path_checking=disable_path_checking,
        **kwargs,
    )
    try:
        core = open_plate(root, mode=mode, check=check, on_stale="raise")
        return Plate(core, mode, check, fallback, io_kwargs)
    except (SnapshotNotFoundError, StaleSnapshotError) as exc:
        if not os.path.isdir(root):
            raise FileNotFoundError(
                f"Dataset directory not found at {root} (snapmeta.compat opens existing plates; "
                "create plates with iohub.ngff.open_ome_zarr)."
            ) from None
        if not fallback:
            raise
        _fall_back(f"{exc}; reading the plate through iohub.ngff.open_ome_zarr (JSON)", 2)
    return _io.open_ome_zarr(root, "hcs", mode, **io_kwargs)
