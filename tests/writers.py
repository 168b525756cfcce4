"""Ground-truth HCS OME-Zarr plates for snapmeta's tests.

Every ``write_*``/``assemble_*`` function writes one small plate on disk and
returns a :class:`WrittenPlate` that describes what was written. The
description is built from the inputs handed to the writer (and, for third-party
writers, from their documented behaviour), never by reading the plate back, so
tests can compare a snapshot against it.

Writers:

- :func:`write_iohub_plate`: iohub 0.3.0a7 ``open_ome_zarr(layout="hcs")``,
  NGFF 0.4 (zarr format 2) or 0.5 (zarr format 3).
- :func:`write_omezarr_plate`: ome-zarr-py ``write_plate_metadata``,
  ``write_well_metadata``, ``write_image`` and ``write_multiscale``, NGFF 0.4
  (zarr format 2) or 0.5 (zarr format 3, the library default).
- :func:`write_zarr_plate`: plain zarr API, NGFF 0.4 on zarr format 2 or NGFF
  0.5 on zarr format 3, with sparse wells, uneven fields, two acquisitions,
  two levels and custom (unicode, nested, NaN on v2) attributes.
- :func:`assemble_ngff_example_plate` / :func:`assemble_bf2raw_plate`: plates
  assembled from the official NGFF example documents in ``tests/data/ngff``.

iohub and ome-zarr are imported lazily, so importing this module only needs
numpy and zarr.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

__all__ = [
    "NGFF_DATA_DIR",
    "NGFF_VERSIONS",
    "ExpectedPosition",
    "WrittenPlate",
    "assemble_bf2raw_plate",
    "assemble_ngff_example_plate",
    "load_ngff_example",
    "ramp",
    "strip_json_comments",
    "write_iohub_plate",
    "write_omezarr_plate",
    "write_zarr_plate",
]

NGFF_DATA_DIR = Path(__file__).resolve().parent / "data" / "ngff"
"""Verbatim copy of the official NGFF 0.4/0.5 examples and schemas."""

NGFF_VERSIONS: tuple[str, ...] = ("0.4", "0.5")
_ZARR_FORMAT_FOR_VERSION = {"0.4": 2, "0.5": 3}

# Scale of level 0 used by the writers that take a physical pixel size.
_TCZYX = ["t", "c", "z", "y", "x"]
_PIXEL_SCALE = {"t": 1.0, "c": 1.0, "z": 2.0, "y": 0.325, "x": 0.325}


@dataclass(frozen=True)
class ExpectedPosition:
    """What one field of view (image group ``row/col/field``) must contain.

    Attributes:
        channel_names: ``omero.channels[*].label`` in order, or ``None`` if the
            position has no ``omero`` block.
        axis_names: ``multiscales[0].axes[*].name`` in order.
        levels: ``multiscales[0].datasets[*].path`` in order.
        shapes: Array shape of each level, same order as ``levels``.
        dtype: Array dtype (identical for every level).
        data: Expected content of level 0, or ``None`` if not deterministic.
        scales: Per level, the ``scale`` vector of the dataset's ``scale``
            transform, or ``None`` if not tracked.
        acquisition: ``acquisition`` of the position in the well's ``images``
            list, or ``None`` if the well entry has none.
        custom_attrs: Non-OME attributes on the position group (top level for
            zarr format 2, next to ``ome`` for zarr format 3).
    """

    channel_names: list[str] | None
    axis_names: list[str]
    levels: list[str]
    shapes: list[tuple[int, ...]]
    dtype: np.dtype[Any]
    data: np.ndarray | None
    scales: list[list[float]] | None = None
    acquisition: int | None = None
    custom_attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WrittenPlate:
    """Description of a plate written by one of this module's functions.

    Attributes:
        path: Root of the plate store (a local directory).
        ngff_version: ``"0.4"`` or ``"0.5"``.
        zarr_format: 2 or 3.
        positions: Expected content per position path (``"A/1/0"``), in plate
            order (wells as listed by the plate, fields as listed by the well).
        writer: Short name of the writer (``"iohub"``, ``"ome-zarr"``,
            ``"zarr"``, ``"ngff-example"``, ``"bf2raw-example"``).
        plate_name: ``plate.name`` or ``None`` if absent.
        rows: ``plate.rows[*].name`` in order.
        columns: ``plate.columns[*].name`` in order.
        wells: ``plate.wells[*].path`` in order.
        acquisition_ids: ``plate.acquisitions[*].id`` in order (empty if the
            plate has no ``acquisitions``).
        field_count: ``plate.field_count`` or ``None`` if absent.
        node_attrs: When the attributes were composed here rather than by a
            third-party writer, the exact attributes (``.zattrs`` content for
            zarr format 2, ``zarr.json["attributes"]`` for format 3) of every
            group written, keyed by group path (``""`` is the root, then
            ``"A"``, ``"A/1"``, ``"A/1/0"``, ...). ``None`` otherwise.
    """

    path: Path
    ngff_version: str
    zarr_format: int
    positions: dict[str, ExpectedPosition]
    writer: str = ""
    plate_name: str | None = None
    rows: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    wells: list[str] = field(default_factory=list)
    acquisition_ids: list[int] = field(default_factory=list)
    field_count: int | None = None
    node_attrs: dict[str, dict[str, Any]] | None = None

    @property
    def well_fields(self) -> dict[str, list[str]]:
        """Field (image) names per well path, in plate order."""
        out: dict[str, list[str]] = {well: [] for well in self.wells}
        for pos in self.positions:
            well, _, fov = pos.rpartition("/")
            out.setdefault(well, []).append(fov)
        return out


# --------------------------------------------------------------------------- helpers


def ramp(shape: Sequence[int], dtype: Any = np.uint16, offset: int = 0) -> np.ndarray:
    """Deterministic array ``(arange + offset) % modulus`` of ``shape``/``dtype``.

    The modulus keeps values representable for integer dtypes, so different
    offsets give different (but reproducible) content per position.
    """
    dt = np.dtype(dtype)
    size = math.prod(shape)
    values = np.arange(offset, offset + size, dtype=np.int64)
    if dt.kind in "ui":
        values %= int(np.iinfo(dt).max) + 1 if dt.kind == "u" else int(np.iinfo(dt).max)
    return values.astype(dt).reshape(tuple(shape))


def _check_version(version: str) -> int:
    if version not in _ZARR_FORMAT_FOR_VERSION:
        raise ValueError(f"NGFF version must be one of {NGFF_VERSIONS}, got {version!r}")
    return _ZARR_FORMAT_FOR_VERSION[version]


def _v2_array_kwargs(zarr_format: int) -> dict[str, Any]:
    """Chunk-key encoding giving ``dimension_separator: "/"`` on zarr format 2."""
    if zarr_format == 2:
        return {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
    return {}


def _scale_of(
    level_shape: Sequence[int], base_shape: Sequence[int], base: Sequence[float]
) -> list[float]:
    return [b * (n0 / n) for b, n0, n in zip(base, base_shape, level_shape, strict=True)]


def strip_json_comments(text: str) -> str:
    """Remove ``//`` line comments and ``/* */`` block comments outside strings."""
    out: list[str] = []
    i, n = 0, len(text)
    in_string = False
    while i < n:
        ch = text[i]
        if in_string:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if ch == '"':
                in_string = False
            i += 1
        elif ch == '"':
            in_string = True
            out.append(ch)
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end == -1 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end == -1 else end + 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def load_ngff_example(version: str, name: str) -> dict[str, Any]:
    """Parse ``tests/data/ngff/<version>/examples/<name>`` (comments stripped).

    Args:
        version: ``"0.4"`` or ``"0.5"``.
        name: Path below ``examples/``, e.g. ``"plate_strict/plate_6wells.json"``.

    Returns:
        The whole document: the ``.zattrs`` content for 0.4, the complete
        ``zarr.json`` document (with ``attributes``) for 0.5.
    """
    _check_version(version)
    path = NGFF_DATA_DIR / version / "examples" / name
    return json.loads(strip_json_comments(path.read_text(encoding="utf-8")))


def _example_attrs(version: str, name: str) -> dict[str, Any]:
    """Attributes carried by an example document (unwrapping 0.5 ``zarr.json``)."""
    doc = load_ngff_example(version, name)
    if version == "0.4":
        return doc
    if doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        raise ValueError(f"{name}: not a zarr v3 group document")
    return doc["attributes"]


def _ome(attrs: Mapping[str, Any], version: str) -> Mapping[str, Any]:
    return attrs if version == "0.4" else attrs["ome"]


def _wrap_ome(ome: dict[str, Any], version: str) -> dict[str, Any]:
    """Place OME keys where ``version`` wants them (top level or under ``ome``)."""
    if version == "0.4":
        return ome
    return {"ome": {"version": "0.5", **ome}}


class _GroupWriter:
    """Creates groups below a root, remembering the attributes of each."""

    def __init__(self, path: Path, zarr_format: int, root_attrs: dict[str, Any]) -> None:
        self.zarr_format = zarr_format
        self.attrs: dict[str, dict[str, Any]] = {"": copy.deepcopy(root_attrs)}
        self.root = zarr.create_group(
            store=str(path), zarr_format=zarr_format, attributes=root_attrs, overwrite=False
        )
        self._groups: dict[str, zarr.Group] = {"": self.root}

    def group(self, key: str, attrs: dict[str, Any] | None = None) -> zarr.Group:
        """Create group ``key`` (parents first, with empty attributes)."""
        parent_key, _, name = key.rpartition("/")
        if parent_key not in self._groups:
            self.group(parent_key)
        attrs = attrs or {}
        grp = self._groups[parent_key].create_group(name, attributes=attrs)
        self._groups[key] = grp
        self.attrs[key] = copy.deepcopy(attrs)
        return grp

    def has(self, key: str) -> bool:
        return key in self._groups

    def array(self, group: zarr.Group, name: str, data: np.ndarray, **kwargs: Any) -> zarr.Array:
        arr = group.create_array(
            name=name,
            shape=data.shape,
            dtype=data.dtype,
            chunks=kwargs.pop("chunks", data.shape),
            **_v2_array_kwargs(self.zarr_format),
            **kwargs,
        )
        arr[...] = data
        return arr


# --------------------------------------------------------------------------- iohub

_IOHUB_CHANNELS = ["DAPI", "GFP"]
# (row, column, field, acquisition); iohub lists rows/columns in creation order
# and auto-assigns indices, so wells are created in row-major order.
_IOHUB_LAYOUT = [
    ("A", "1", "0", 0),
    ("A", "1", "1", 1),
    ("A", "2", "0", 0),
    ("B", "2", "0", 0),
    ("B", "2", "1", 1),
]
_IOHUB_SHAPE = (2, 2, 3, 8, 10)  # T, C, Z, Y, X; odd Z exercises ceil rounding


def write_iohub_plate(path: str | Path, *, version: str = "0.4") -> WrittenPlate:
    """Write a plate with iohub 0.3.0a7 (``open_ome_zarr(layout="hcs")``).

    iohub supports NGFF ``"0.4"`` (zarr format 2, attributes at top level) and
    ``"0.5"`` (zarr format 3, attributes under ``ome``). Wells ``A/1`` (2
    fields), ``A/2`` (1 field) and ``B/2`` (2 fields, ``B/1`` left empty),
    acquisitions 0 and 1, TCZYX ``uint16`` level 0 of shape ``(2, 2, 3, 8, 10)``
    with scale ``z=2.0, y=x=0.325`` and a level 1 from ``initialize_pyramid``
    (Z/Y/X halved with ceiling, scale doubled; its data stays zero-filled).
    ``plate.dump_meta(field_count=True)`` makes iohub store the *total* number
    of positions (5) as ``field_count``, not the maximum per well (2).

    iohub also writes, beyond the NGFF minimum: an ``omero`` block per position
    (``name`` = field name, every channel ``"active": true``, colors guessed
    from the channel names, ``rdefs``), ``version`` inside ``plate``/``well``/
    ``multiscales``/``omero`` even on 0.5, ``multiscales[0].name`` = ``"0"``,
    empty row groups, ``dimension_names`` on 0.5 arrays and zstd Blosc chunks.

    Args:
        path: Store directory to create (must not exist).
        version: NGFF version, ``"0.4"`` or ``"0.5"``.

    Returns:
        The expected content; axis names are iohub's upper-case ``T C Z Y X``.
    """
    from iohub.ngff import open_ome_zarr
    from iohub.ngff.models import (
        AcquisitionMeta,
        ChannelAxisMeta,
        SpaceAxisMeta,
        TimeAxisMeta,
        TransformationMeta,
    )

    zarr_format = _check_version(version)
    path = Path(path)
    axes = [
        TimeAxisMeta(name="T", unit="second"),
        ChannelAxisMeta(name="C"),
        *(SpaceAxisMeta(name=name, unit="micrometer") for name in ("Z", "Y", "X")),
    ]
    axis_names = [ax.name for ax in axes]
    base_scale = [_PIXEL_SCALE[name.lower()] for name in axis_names]
    plate_name = "iohub test plate"
    acquisitions = [
        AcquisitionMeta(id=0, name="first pass"),
        AcquisitionMeta(id=1, name="second pass"),
    ]
    level1_shape = tuple(
        -(-n // 2) if name in {"Z", "Y", "X"} else n
        for n, name in zip(_IOHUB_SHAPE, axis_names, strict=True)
    )
    level1_scale = [
        s * 2 if name in {"Z", "Y", "X"} else s
        for s, name in zip(base_scale, axis_names, strict=True)
    ]

    positions: dict[str, ExpectedPosition] = {}
    with open_ome_zarr(
        path,
        layout="hcs",
        mode="w-",
        channel_names=list(_IOHUB_CHANNELS),
        axes=axes,
        version=version,
        name=plate_name,
        acquisitions=acquisitions,
    ) as plate:
        for index, (row, col, fov, acq) in enumerate(_IOHUB_LAYOUT):
            data = ramp(_IOHUB_SHAPE, np.uint16, offset=1000 * index)
            pos = plate.create_position(row, col, fov, acq_index=acq)
            pos.create_image(
                "0", data, transform=[TransformationMeta(type="scale", scale=list(base_scale))]
            )
            pos.initialize_pyramid(levels=2)
            positions[f"{row}/{col}/{fov}"] = ExpectedPosition(
                channel_names=list(_IOHUB_CHANNELS),
                axis_names=list(axis_names),
                levels=["0", "1"],
                shapes=[_IOHUB_SHAPE, level1_shape],
                dtype=np.dtype(np.uint16),
                data=data,
                scales=[list(base_scale), level1_scale],
                acquisition=acq,
            )
        plate.dump_meta(field_count=True)

    wells = list(dict.fromkeys(f"{r}/{c}" for r, c, _, _ in _IOHUB_LAYOUT))
    return WrittenPlate(
        path=path,
        ngff_version=version,
        zarr_format=zarr_format,
        positions=positions,
        writer="iohub",
        plate_name=plate_name,
        rows=list(dict.fromkeys(r for r, _, _, _ in _IOHUB_LAYOUT)),
        columns=list(dict.fromkeys(c for _, c, _, _ in _IOHUB_LAYOUT)),
        wells=wells,
        acquisition_ids=[a.id for a in acquisitions],
        field_count=len(_IOHUB_LAYOUT),
    )


# --------------------------------------------------------------------------- ome-zarr

_OMEZARR_CHANNELS = [
    {
        "label": "DAPI",
        "color": "0000FF",
        "active": True,
        "window": {"start": 0.0, "end": 1500.0, "min": 0.0, "max": 65535.0},
    },
    {
        "label": "mCherry",
        "color": "FF0000",
        "active": False,
        "window": {"start": 10.0, "end": 900.0, "min": 0.0, "max": 65535.0},
    },
]
_OMEZARR_SHAPE = (1, 2, 4, 16, 12)  # T, C, Z, Y, X (even Y/X: no rounding ambiguity)
# well -> [(field, acquisition, use write_multiscale)]
_OMEZARR_WELLS: dict[str, list[tuple[str, int, bool]]] = {
    "A/1": [("0", 0, False), ("1", 1, True)],
    "B/3": [("0", 0, False)],
}


def _omero_argument(omero: dict[str, Any]) -> Any:
    """ome-zarr-py 0.21 takes omero metadata as an ome-zarr-models ``Omero``, older a dict."""
    try:
        from ome_zarr.classes import image
    except ImportError:
        return omero
    model = getattr(image, "Omero", None)
    return omero if model is None else model.model_validate(omero)


def write_omezarr_plate(path: str | Path, *, version: str = "0.5") -> WrittenPlate:
    """Write a plate with ome-zarr-py 0.18 writer functions.

    With zarr 3 installed, ome-zarr-py writes NGFF 0.5 on zarr format 3 by
    default (``CurrentFormat`` is ``FormatV05``); ``version="0.4"`` passes
    ``fmt=FormatV04()`` and a zarr format 2 root. Rows ``A``/``B``, columns
    ``1``-``3``, wells ``A/1`` (2 fields) and ``B/3`` (1 field), acquisitions
    0 and 1. ``A/1/1`` is written by ``write_multiscale`` from an explicit
    pyramid, the others by ``write_image`` (Y/X downsampled by 2, Z kept).
    Dataset paths are ``s0``/``s1``; ome-zarr adds a ``translation`` transform
    to every level (not tracked here): half a level-0 pixel in physical units
    from ``write_image`` (0.1625), but in pixels from ``write_multiscale``
    (0.5). ``write_image`` drops units given in ``axes`` (hence
    ``axes_units``), requires ``color`` and ``window`` per omero channel and,
    on 0.5, adds ``version`` inside ``omero``; ``write_plate_metadata`` also
    puts ``version`` inside ``plate`` on 0.5.

    Args:
        path: Store directory to create (must not exist).
        version: NGFF version, ``"0.4"`` or ``"0.5"``.

    Returns:
        The expected content.
    """
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import (
        write_image,
        write_multiscale,
        write_plate_metadata,
        write_well_metadata,
    )

    zarr_format = _check_version(version)
    fmt = FormatV04() if version == "0.4" else FormatV05()
    path = Path(path)
    rows, columns = ["A", "B"], ["1", "2", "3"]
    wells = list(_OMEZARR_WELLS)
    plate_name = "ome-zarr test plate"
    acquisitions = [
        {"id": 0, "name": "Meas_01", "maximumfieldcount": 1},
        {"id": 1, "name": "Meas_02", "maximumfieldcount": 1},
    ]
    field_count = max(len(fields) for fields in _OMEZARR_WELLS.values())
    axes = [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "c", "type": "channel"},
        *({"name": name, "type": "space", "unit": "micrometer"} for name in ("z", "y", "x")),
    ]
    base_scale = [_PIXEL_SCALE[name] for name in _TCZYX]
    level1_shape = (*_OMEZARR_SHAPE[:3], _OMEZARR_SHAPE[3] // 2, _OMEZARR_SHAPE[4] // 2)
    level1_scale = [*base_scale[:3], base_scale[3] * 2, base_scale[4] * 2]

    root = zarr.open_group(str(path), mode="w-", zarr_format=zarr_format)
    write_plate_metadata(
        root,
        rows,
        columns,
        wells,
        fmt=fmt,
        acquisitions=acquisitions,
        field_count=field_count,
        name=plate_name,
    )
    positions: dict[str, ExpectedPosition] = {}
    index = 0
    for well_path, fields in _OMEZARR_WELLS.items():
        row, col = well_path.split("/")
        well_group = root.require_group(row).require_group(col)
        write_well_metadata(
            well_group, [{"path": fov, "acquisition": acq} for fov, acq, _ in fields], fmt=fmt
        )
        for fov, acq, explicit_pyramid in fields:
            data = ramp(_OMEZARR_SHAPE, np.uint16, offset=777 * index)
            index += 1
            image_group = well_group.create_group(fov)
            omero = {"channels": copy.deepcopy(_OMEZARR_CHANNELS)}
            if explicit_pyramid:
                write_multiscale(
                    [data, data[..., ::2, ::2]],
                    image_group,
                    fmt=fmt,
                    axes=copy.deepcopy(axes),
                    scale=dict(_PIXEL_SCALE),
                    name=f"{well_path}/{fov}",
                    metadata={"omero": omero},
                )
            else:
                write_image(
                    data,
                    image_group,
                    scale_factors=[2],
                    fmt=fmt,
                    axes=copy.deepcopy(axes),
                    scale=dict(_PIXEL_SCALE),
                    # write_image drops the units given in `axes`; pass them again
                    axes_units={ax["name"]: ax["unit"] for ax in axes if "unit" in ax},
                    name=f"{well_path}/{fov}",
                    omero=_omero_argument(omero),
                )
            positions[f"{well_path}/{fov}"] = ExpectedPosition(
                channel_names=[ch["label"] for ch in _OMEZARR_CHANNELS],
                axis_names=list(_TCZYX),
                levels=["s0", "s1"],
                shapes=[_OMEZARR_SHAPE, level1_shape],
                dtype=np.dtype(np.uint16),
                data=data,
                scales=[list(base_scale), list(level1_scale)],
                acquisition=acq,
            )

    return WrittenPlate(
        path=path,
        ngff_version=version,
        zarr_format=zarr_format,
        positions=positions,
        writer="ome-zarr",
        plate_name=plate_name,
        rows=rows,
        columns=columns,
        wells=wells,
        acquisition_ids=[a["id"] for a in acquisitions],
        field_count=field_count,
    )


# --------------------------------------------------------------------------- plain zarr

_ZARR_CHANNELS = [
    {
        "label": "Hoechst 33342",
        "color": "0000FF",
        "active": True,
        "coefficient": 1.0,
        "family": "linear",
        "inverted": False,
        "window": {"start": 100.0, "end": 3000.0, "min": 0.0, "max": 65535.0},
    },
    {
        "label": "Alexa Fluor™ 488 – α-tubulin",
        "color": "00FF00",
        "active": True,
        "coefficient": 1.0,
        "family": "linear",
        "inverted": False,
        "window": {"start": 50.0, "end": 2000.0, "min": 0.0, "max": 65535.0},
    },
]
_ZARR_SHAPE = (1, 2, 3, 16, 16)  # T, C, Z, Y, X
# well -> [(field, acquisition)]; row B and columns 2/3 of row A stay empty.
_ZARR_WELLS: dict[str, list[tuple[str, int]]] = {
    "A/1": [("0", 0), ("1", 1)],
    "A/4": [("0", 0)],
    "C/2": [("0", 0), ("1", 1), ("2", 1)],
}
_ZARR_CUSTOM_POSITION = "A/1/0"
_ZARR_SHARDED_POSITION = "C/2/0"


def _zarr_custom_attrs(include_nan: bool) -> dict[str, Any]:
    details: dict[str, Any] = {
        "microscope": {
            "name": "Ωmega-scope ✓ 顕微鏡",
            "objective": {"magnification": 20, "NA": 0.8, "immersion": "air"},
            "detectors": [{"id": "cam-1", "binning": [2, 2]}, {"id": "cam-2", "binning": None}],
        },
        "stage_position_µm": {"x": 1234.5, "y": -987.25, "z": 0.0},
        "tags": ["dapi", "gfp", "ünïcødé", "🔬"],
        "empty": {},
        "nothing": None,
        "flag": True,
        "big_int": 2**53 + 1,
        "tiny": 1e-300,
    }
    if include_nan:
        details["focus_offset"] = float("nan")
    return {"acquisition_details": details, "analysis": {"pipeline": "cellprofiler", "v": "4.2"}}


def write_zarr_plate(
    path: str | Path, *, zarr_format: int, include_nan: bool | None = None
) -> WrittenPlate:
    """Write a plate with the plain zarr API.

    ``zarr_format=2`` gives NGFF 0.4 (OME keys at the top level of ``.zattrs``,
    ``version`` inside ``plate``/``well``/``multiscales``, arrays with
    ``dimension_separator: "/"``); ``zarr_format=3`` gives NGFF 0.5 (OME keys
    under ``attributes.ome`` with ``"version": "0.5"``, arrays with
    ``dimension_names``, and level 0 of ``C/2/0`` sharded).

    Layout: rows ``A``-``C``, columns ``1``-``4``, sparse wells ``A/1`` (2
    fields), ``A/4`` (1 field) and ``C/2`` (3 fields); acquisitions 0 and 1;
    two levels ``0``/``1`` (Y/X halved). ``A/1/0`` carries extra non-OME
    attributes (nested dicts, unicode, big ints and, if ``include_nan``, a
    float NaN, which zarr writes as the non-standard JSON token ``NaN``).

    Args:
        path: Store directory to create (must not exist).
        zarr_format: 2 or 3.
        include_nan: Add the NaN attribute; defaults to ``zarr_format == 2``.

    Returns:
        The expected content, with exact ``node_attrs`` for every group.
    """
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    version = "0.4" if zarr_format == 2 else "0.5"
    if include_nan is None:
        include_nan = zarr_format == 2
    path = Path(path)
    rows, columns = ["A", "B", "C"], ["1", "2", "3", "4"]
    plate_name = "plain zarr plate – µ-test"
    acquisitions = [
        {
            "id": 0,
            "name": "Meas_01(2024-01-31_10-41-12)",
            "maximumfieldcount": 1,
            "starttime": 1706697672000,
            "endtime": 1706701272000,
        },
        {
            "id": 1,
            "name": "Meas_02 – re-imaging",
            "description": "second pass, different exposure",
            "maximumfieldcount": 2,
            "starttime": 1706704872000,
        },
    ]
    field_count = max(len(fields) for fields in _ZARR_WELLS.values())
    plate: dict[str, Any] = {
        "name": plate_name,
        "rows": [{"name": r} for r in rows],
        "columns": [{"name": c} for c in columns],
        "wells": [
            {
                "path": w,
                "rowIndex": rows.index(w.split("/")[0]),
                "columnIndex": columns.index(w.split("/")[1]),
            }
            for w in _ZARR_WELLS
        ],
        "acquisitions": acquisitions,
        "field_count": field_count,
    }
    if version == "0.4":
        plate["version"] = "0.4"
    axes = [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "c", "type": "channel"},
        *({"name": name, "type": "space", "unit": "micrometer"} for name in ("z", "y", "x")),
    ]
    base_scale = [_PIXEL_SCALE[name] for name in _TCZYX]
    level1_shape = (*_ZARR_SHAPE[:3], _ZARR_SHAPE[3] // 2, _ZARR_SHAPE[4] // 2)
    level1_scale = _scale_of(level1_shape, _ZARR_SHAPE, base_scale)

    writer = _GroupWriter(path, zarr_format, _wrap_ome({"plate": plate}, version))
    positions: dict[str, ExpectedPosition] = {}
    index = 0
    for well_path, fields in _ZARR_WELLS.items():
        well: dict[str, Any] = {"images": [{"path": f, "acquisition": a} for f, a in fields]}
        if version == "0.4":
            well["version"] = "0.4"
        writer.group(well_path, _wrap_ome({"well": well}, version))
        for fov, acq in fields:
            pos_path = f"{well_path}/{fov}"
            multiscale: dict[str, Any] = {
                "name": pos_path,
                "axes": copy.deepcopy(axes),
                "datasets": [
                    {
                        "path": level,
                        "coordinateTransformations": [{"type": "scale", "scale": scale}],
                    }
                    for level, scale in (("0", base_scale), ("1", level1_scale))
                ],
                "type": "stride",
                "metadata": {"method": "numpy slicing", "kwargs": {"step": 2}},
            }
            if version == "0.4":
                multiscale["version"] = "0.4"
            omero = {
                "id": index,
                "name": pos_path,
                "channels": copy.deepcopy(_ZARR_CHANNELS),
                "rdefs": {"defaultT": 0, "defaultZ": 1, "model": "color"},
            }
            if version == "0.4":
                omero["version"] = "0.4"
            attrs = _wrap_ome({"multiscales": [multiscale], "omero": omero}, version)
            custom = _zarr_custom_attrs(include_nan) if pos_path == _ZARR_CUSTOM_POSITION else {}
            attrs.update(copy.deepcopy(custom))
            group = writer.group(pos_path, attrs)

            data = ramp(_ZARR_SHAPE, np.uint16, offset=4096 * index)
            extra: dict[str, Any] = {}
            if zarr_format == 3:
                extra["dimension_names"] = list(_TCZYX)
                if pos_path == _ZARR_SHARDED_POSITION:
                    extra["chunks"] = (1, 1, 1, 8, 8)
                    extra["shards"] = (1, 1, 1, 16, 16)
            writer.array(group, "0", data, **extra)
            extra.pop("shards", None)
            extra.pop("chunks", None)
            writer.array(group, "1", np.ascontiguousarray(data[..., ::2, ::2]), **extra)
            positions[pos_path] = ExpectedPosition(
                channel_names=[ch["label"] for ch in _ZARR_CHANNELS],
                axis_names=list(_TCZYX),
                levels=["0", "1"],
                shapes=[_ZARR_SHAPE, level1_shape],
                dtype=np.dtype(np.uint16),
                data=data,
                scales=[list(base_scale), list(level1_scale)],
                acquisition=acq,
                custom_attrs=custom,
            )
            index += 1

    return WrittenPlate(
        path=path,
        ngff_version=version,
        zarr_format=zarr_format,
        positions=positions,
        writer="zarr",
        plate_name=plate_name,
        rows=rows,
        columns=columns,
        wells=list(_ZARR_WELLS),
        acquisition_ids=[a["id"] for a in acquisitions],
        field_count=field_count,
        node_attrs=writer.attrs,
    )


# --------------------------------------------------------------------------- NGFF examples

_EXAMPLE_BASE_SIZE = {"time": 2, "channel": 2, "space": 8}
_EXAMPLE_COLORS = ["0000FF", "00FF00", "FF0000", "FF00FF", "00FFFF", "FFFF00"]


def _example_image(
    version: str,
    channel_names: Sequence[str] | None,
) -> tuple[dict[str, Any], list[str], list[str], list[tuple[int, ...]], list[list[float]]]:
    """Image attributes from ``multiscales_example.json`` plus matching shapes.

    Level 0 gets ``_EXAMPLE_BASE_SIZE`` per axis type (the channel size is
    ``len(channel_names)`` when given); level ``k`` divides each axis by the
    ratio of its dataset scale to level 0's (ceiling).
    """
    attrs = _example_attrs(version, "multiscales_strict/multiscales_example.json")
    ome = _ome(attrs, version)
    multiscale = ome["multiscales"][0]
    axes = multiscale["axes"]
    axis_names = [ax["name"] for ax in axes]
    levels = [ds["path"] for ds in multiscale["datasets"]]
    scales = [
        next(t["scale"] for t in ds["coordinateTransformations"] if t["type"] == "scale")
        for ds in multiscale["datasets"]
    ]
    base = []
    for ax in axes:
        size = _EXAMPLE_BASE_SIZE.get(ax.get("type", "space"), 8)
        if ax.get("type") == "channel" and channel_names is not None:
            size = len(channel_names)
        base.append(size)
    shapes = [
        tuple(
            max(1, math.ceil(n / (s / s0))) for n, s, s0 in zip(base, scale, scales[0], strict=True)
        )
        for scale in scales
    ]
    if channel_names is not None:
        omero: dict[str, Any] = {
            "channels": [
                {
                    "label": name,
                    "color": _EXAMPLE_COLORS[i % len(_EXAMPLE_COLORS)],
                    "active": True,
                    "window": {"start": 0.0, "end": 255.0, "min": 0.0, "max": 65535.0},
                }
                for i, name in enumerate(channel_names)
            ]
        }
        if version == "0.4":
            omero["version"] = "0.4"
        ome["omero"] = omero
    return attrs, axis_names, levels, shapes, [list(s) for s in scales]


def _write_example_images(
    writer: _GroupWriter,
    version: str,
    wells: Mapping[str, dict[str, Any]],
    channel_names: Sequence[str] | None,
) -> dict[str, ExpectedPosition]:
    """Write ``wells`` (well path -> well attributes) and one image per field."""
    image_attrs, axis_names, levels, shapes, scales = _example_image(version, channel_names)
    positions: dict[str, ExpectedPosition] = {}
    index = 0
    for well_path, well_attrs in wells.items():
        writer.group(well_path, copy.deepcopy(well_attrs))
        for image in _ome(well_attrs, version)["well"]["images"]:
            pos_path = f"{well_path}/{image['path']}"
            group = writer.group(pos_path, copy.deepcopy(image_attrs))
            data = ramp(shapes[0], np.uint16, offset=512 * index)
            index += 1
            extra = {"dimension_names": list(axis_names)} if writer.zarr_format == 3 else {}
            for level, shape in zip(levels, shapes, strict=True):
                step = tuple(max(1, n0 // n) for n0, n in zip(shapes[0], shape, strict=True))
                level_data = data[tuple(slice(None, None, s) for s in step)][
                    tuple(slice(0, n) for n in shape)
                ]
                writer.array(group, level, np.ascontiguousarray(level_data), **extra)
            positions[pos_path] = ExpectedPosition(
                channel_names=list(channel_names) if channel_names is not None else None,
                axis_names=list(axis_names),
                levels=list(levels),
                shapes=list(shapes),
                dtype=np.dtype(np.uint16),
                data=data,
                scales=copy.deepcopy(scales),
                acquisition=image.get("acquisition"),
            )
    return positions


def _plate_summary(plate: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "plate_name": plate.get("name"),
        "rows": [r["name"] for r in plate["rows"]],
        "columns": [c["name"] for c in plate["columns"]],
        "wells": [w["path"] for w in plate["wells"]],
        "acquisition_ids": [a["id"] for a in plate.get("acquisitions", [])],
        "field_count": plate.get("field_count"),
    }


def assemble_ngff_example_plate(
    path: str | Path,
    *,
    version: str,
    plate: str = "6wells",
    well_docs: Mapping[str, str] | None = None,
    channel_names: Sequence[str] | None = None,
) -> WrittenPlate:
    """Assemble a complete plate from the official NGFF example documents.

    The root carries ``plate_strict/plate_<plate>.json`` unchanged; each listed
    well carries a ``well_strict`` document unchanged; each field is an image
    group carrying ``multiscales_strict/multiscales_example.json`` (comments
    stripped) with arrays created at the dataset paths (``0``, ``1``, ``2``),
    ndim matching the axes (TCZYX) and shapes following the dataset scales
    (level 0 ``(2, 2, 8, 8, 8)``, then Z/Y/X halved per level). NGFF 0.4 uses
    zarr format 2 (attributes at the top level), 0.5 zarr format 3
    (``attributes.ome``).

    The example documents are not mutually consistent and are kept as is:
    ``well_2fields.json`` references acquisitions 0 and 3, which neither plate
    document declares, and ``plate_2wells.json`` says ``field_count: 1``.

    Args:
        path: Store directory to create (must not exist).
        version: ``"0.4"`` or ``"0.5"``.
        plate: ``"6wells"`` (wells ``A/1``-``B/3``) or ``"2wells"`` (sparse
            ``C/5``, ``D/7`` on an 8x12 grid).
        well_docs: Well path -> ``well_strict`` file name (``"well_4fields.json"``
            or ``"well_2fields.json"``). By default row ``A`` (and ``C`` for
            2wells) gets 4 fields and every other row 2 fields.
        channel_names: If given, add an ``omero`` block with these labels
            (the example has none) and size the channel axis to match.

    Returns:
        The expected content, with exact ``node_attrs`` for every group.
    """
    zarr_format = _check_version(version)
    if plate not in ("6wells", "2wells"):
        raise ValueError(f"plate must be '6wells' or '2wells', got {plate!r}")
    path = Path(path)
    root_attrs = _example_attrs(version, f"plate_strict/plate_{plate}.json")
    plate_doc = _ome(root_attrs, version)["plate"]
    well_paths = [w["path"] for w in plate_doc["wells"]]
    if well_docs is None:
        well_docs = {
            w: "well_4fields.json" if w.split("/")[0] in ("A", "C") else "well_2fields.json"
            for w in well_paths
        }
    wells = {w: _example_attrs(version, f"well_strict/{well_docs[w]}") for w in well_paths}
    writer = _GroupWriter(path, zarr_format, root_attrs)
    positions = _write_example_images(writer, version, wells, channel_names)
    return WrittenPlate(
        path=path,
        ngff_version=version,
        zarr_format=zarr_format,
        positions=positions,
        writer="ngff-example",
        node_attrs=writer.attrs,
        **_plate_summary(plate_doc),
    )


_BF2RAW_OME_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">\n'
    '  <Plate ID="Plate:0" Name="Plate Name 0"/>\n'
    '  <Image ID="Image:0" Name="A1 field 0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT"'
    ' Type="uint16" SizeX="8" SizeY="8" SizeZ="8" SizeC="2" SizeT="2"><MetadataOnly/></Pixels>'
    "</Image>\n"
    "</OME>\n"
)


def assemble_bf2raw_plate(
    path: str | Path, *, version: str, include_ome_group: bool = True
) -> WrittenPlate:
    """Assemble a bioformats2raw-layout plate from ``bf2raw/plate.json``.

    The root carries the example unchanged (``"bioformats2raw.layout": 3`` next
    to ``plate``: top level for 0.4, inside ``ome`` for 0.5). The plate lists
    one well ``A/1``; its well document is composed here (no official example)
    as one field ``0`` in acquisition 0, matching ``field_count: 1`` and the
    declared acquisition. The field is the ``multiscales_example.json`` image.
    With ``include_ome_group``, an ``OME`` group lists the image in ``series``
    and holds a minimal ``METADATA.ome.xml`` (a non-zarr file in the store).

    Args:
        path: Store directory to create (must not exist).
        version: ``"0.4"`` or ``"0.5"``.
        include_ome_group: Write the ``OME`` group and XML file.

    Returns:
        The expected content, with exact ``node_attrs`` for every group.
    """
    zarr_format = _check_version(version)
    path = Path(path)
    root_attrs = _example_attrs(version, "bf2raw/plate.json")
    plate_doc = _ome(root_attrs, version)["plate"]
    well: dict[str, Any] = {"images": [{"path": "0", "acquisition": 0}]}
    if version == "0.4":
        well["version"] = "0.4"
    wells = {
        w["path"]: _wrap_ome({"well": copy.deepcopy(well)}, version) for w in plate_doc["wells"]
    }
    writer = _GroupWriter(path, zarr_format, root_attrs)
    positions = _write_example_images(writer, version, wells, None)
    if include_ome_group:
        writer.group("OME", _wrap_ome({"series": list(positions)}, version))
        (path / "OME" / "METADATA.ome.xml").write_text(_BF2RAW_OME_XML, encoding="utf-8")
    return WrittenPlate(
        path=path,
        ngff_version=version,
        zarr_format=zarr_format,
        positions=positions,
        writer="bf2raw-example",
        node_attrs=writer.attrs,
        **_plate_summary(plate_doc),
    )
