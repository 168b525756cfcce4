"""snapmeta.compat against iohub: the same user script gives the same results.

Every parity test writes the same plate twice (the writers are deterministic),
builds a snapshot for one copy, and runs one user-level script (open, walk,
read channel names/axes/scale, read and write data, read back) through
``iohub.ngff.open_ome_zarr`` on the plain copy and through
``snapmeta.compat.open_ome_zarr`` on the snapshotted one. Results are compared
value by value, including types (lists stay lists) and iohub's own pydantic
models. ``filterwarnings = error`` makes any fallback in the compat run fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import snapmeta
from snapmeta import compat
from snapmeta.testing import write_plate
from snapmeta.compat import FallbackWarning

try:
    import writers
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import writers

iohub_ngff = pytest.importorskip("iohub.ngff")

VERSIONS = ("0.4", "0.5")


# --------------------------------------------------------------------------- plates


def _generated(path: Path, version: str) -> Path:
    """A sparse plate whose names sort differently as strings and as numbers.

    Columns 1, 2, 10, 12 and up to 11 fields per well exercise iohub's
    lexicographic order; row B exists in the metadata but has no wells.
    """
    return write_plate(
        path,
        rows=3,
        columns=12,
        wells=["A/1", "A/2", "A/10", "A/12", "C/3"],
        fields=[1, 2, 11, 1, 3],
        acquisitions=2,
        ngff=version,
        levels=2,
        shape=(1, 2, 2, 8, 12),
        chunks=(1, 1, 1, 4, 6),
        data="random",
    )


WRITERS = {
    "iohub": lambda path, version: writers.write_iohub_plate(path, version=version).path,
    "plategen": _generated,
}


@pytest.fixture(params=[(w, v) for w in WRITERS for v in VERSIONS], ids=lambda p: f"{p[0]}-{p[1]}")
def plate_pair(request, tmp_path) -> tuple[Path, Path]:
    """(plain copy for iohub, copy with a snapshot for snapmeta.compat)."""
    writer, version = request.param
    plain = Path(WRITERS[writer](tmp_path / "iohub.ome.zarr", version))
    snap = Path(WRITERS[writer](tmp_path / "compat.ome.zarr", version))
    snapmeta.build_snapshot(snap)
    return plain, snap


def _plate(tmp_path: Path, version: str = "0.5", name: str = "plate.ome.zarr") -> Path:
    return writers.write_iohub_plate(tmp_path / name, version=version).path


# --------------------------------------------------------------------------- the user script


def _catch(fn) -> BaseException | None:
    try:
        fn()
    except Exception as exc:
        return exc
    return None


def _as_stored(zattrs, key: str) -> dict[str, Any]:
    """Attributes without the ``version`` iohub injects in memory when parsing.

    iohub's ``Plate``/``Well`` add ``version`` to their in-memory ``plate``/``well``
    attributes when the document has none (NGFF 0.5 puts it in ``ome``); the
    document on disk does not change. snapmeta.compat returns the document.
    """
    attrs = json.loads(json.dumps(dict(zattrs)))
    ome = attrs.get("ome", attrs)
    if key in ome and ome[key].get("version") == ome.get("version"):
        ome[key].pop("version", None)
    return attrs


def user_script(open_ome_zarr, store: Path) -> dict[str, Any]:
    """What an iohub user does with a plate; returns everything it observed."""
    out: dict[str, Any] = {}
    with open_ome_zarr(store, layout="hcs", mode="r+") as plate:
        out["type_ok"] = hasattr(plate, "positions")
        out["rows"] = list(plate)
        out["len"] = len(plate)
        out["contains"] = [key in plate for key in ("A", "B", "Z", "A/1", "A/1/0")]
        out["row_walk"] = [
            (row_name, well_name, field, list(row), list(well))
            for row_name, row in plate.rows()
            for well_name, well in row.wells()
            for field, _ in well.positions()
        ]
        out["wells"] = [(path, list(well), len(well)) for path, well in plate.wells()]
        out["well_meta"] = [well.metadata for _, well in plate.wells()]
        out["well_zattrs"] = [_as_stored(well.zattrs, "well") for _, well in plate.wells()]
        out["channel_names"] = plate.channel_names
        out["axes"] = plate.axes
        meta = plate.metadata
        out["metadata"] = meta
        out["metadata_fields"] = (
            [w.path for w in meta.wells],
            [(w.row_index, w.column_index) for w in meta.wells],
            [r.name for r in meta.rows],
            [c.name for c in meta.columns],
            [(a.id, a.name, a.maximum_field_count) for a in meta.acquisitions or []],
            meta.field_count,
            meta.version,
            meta.name,
        )
        out["zattrs"] = _as_stored(plate.zattrs, "plate")
        out["version"] = plate.version
        positions = {}
        for index, (name, pos) in enumerate(plate.positions()):
            last = pos.channel_names[-1]
            data = pos.data
            positions[name] = {
                "channel_names": pos.channel_names,
                "channel_index": pos.get_channel_index(last),
                "axes": pos.axes,
                "axis_names": pos.axis_names,
                "axis_index": pos.get_axis_index("X"),
                "scale": pos.scale,
                "scale_1": pos.get_effective_scale("1"),
                "scale_all": pos.get_effective_scale("*"),
                "translation_1": pos.get_effective_translation("1"),
                "arrays": list(pos),
                "array_keys": pos.array_keys(),
                "has": ["0" in pos, "1" in pos, "7" in pos],
                "images": [(k, a.shape) for k, a in pos.images()],
                "shape": data.shape,
                "dtype": data.dtype,
                "chunks": data.chunks,
                "dims": (data.frames, data.channels, data.slices, data.height, data.width),
                "level1": (pos["1"].shape, pos["1"].chunks, pos[1].shape),
                "numpy": data.numpy(),
                "slab": pos["0"][0, -1, :, 1:3, 2:5],
                "asarray": np.asarray(pos.data),
                "dask": pos.data.dask_array()[:, -1].sum(axis=0).compute(),
                "dask_chunks": pos.data.dask_array().chunks,
                "metadata": pos.metadata,
                "zattrs": dict(pos.zattrs),
                "version": pos.version,
            }
            # writes: a block, a read-modify-write, a whole-level write
            pos.data[0, 0, 0, :2, :3] = index + 7
            arr = pos["0"]
            arr[:, -1] = np.asarray(arr[:, -1]) // 2 + 3
            pos["1"][:] = np.full(pos["1"].shape, index, dtype=pos["1"].dtype)
        out["positions"] = positions
        first = out["row_walk"][0]
        out["direct"] = [
            plate[f"{first[0]}/{first[1]}/{first[2]}"].channel_names,
            plate[f"{first[0]}/{first[1]}/{first[2]}/0"].shape,
            list(plate[first[0]]),
            list(plate[f"{first[0]}/{first[1]}"]),
            plate[f"/{first[0]}/{first[1]}/"][first[2]].scale,
        ]
        pos = plate[f"{first[0]}/{first[1]}/{first[2]}"]
        out["errors"] = [
            _catch(lambda: plate["Z/9/9"]),
            _catch(lambda: plate["Z"]),
            _catch(lambda: plate["A/99"]),
            _catch(lambda: pos.get_channel_index("no such channel")),
            _catch(lambda: pos["9"]),
            _catch(lambda: pos.get_effective_scale("9")),
        ]
    with open_ome_zarr(store, mode="r") as plate:
        out["after"] = {
            name: [pos[key].numpy() for key in pos.array_keys()] for name, pos in plate.positions()
        }
        first = next(iter(out["after"]))
        out["readonly_error"] = _catch(lambda: plate[first].data.__setitem__((0, 0, 0, 0, 0), 1))
    return out


def assert_same(ours: Any, theirs: Any, where: str = "") -> None:
    """Deep equality with types: lists stay lists, models compare as models."""
    if isinstance(theirs, BaseException):
        assert isinstance(ours, type(theirs)), f"{where}: {ours!r} is not a {type(theirs).__name__}"
        return
    if isinstance(theirs, np.ndarray):
        assert isinstance(ours, np.ndarray), where
        assert ours.dtype == theirs.dtype, where
        np.testing.assert_array_equal(ours, theirs, err_msg=where)
        return
    assert type(ours) is type(theirs), f"{where}: {type(ours).__name__} != {type(theirs).__name__}"
    if isinstance(theirs, dict):
        assert list(ours) == list(theirs), f"{where}: keys {list(ours)} != {list(theirs)}"
        for key in theirs:
            assert_same(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(theirs, list | tuple):
        assert len(ours) == len(theirs), f"{where}: {ours!r} != {theirs!r}"
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert ours == theirs, f"{where}: {ours!r} != {theirs!r}"


# --------------------------------------------------------------------------- parity


def test_parity_with_iohub(plate_pair):
    plain, snap = plate_pair
    theirs = user_script(iohub_ngff.open_ome_zarr, plain)
    plate = compat.open_ome_zarr(snap)
    assert isinstance(plate, compat.Plate)  # served by the snapshot, not a fallback
    ours = user_script(compat.open_ome_zarr, snap)
    assert_same(ours, theirs)
    # the writes landed identically on disk, read with plain zarr
    for name, levels in theirs["after"].items():
        for key, expected in zip(("0", "1"), levels, strict=True):
            got = zarr.open_array(store=str(snap / name / key), mode="r")[:]
            np.testing.assert_array_equal(got, expected)
    # data writes leave the metadata untouched: the snapshot is still fresh
    snapmeta.open_plate(snap, on_stale="raise", check="digest")["A/1/0"]
    assert snapmeta.verify(snap) is not None


@pytest.mark.parametrize("version", VERSIONS)
def test_models_are_iohubs(tmp_path, version):
    store = _plate(tmp_path, version)
    snapmeta.build_snapshot(store)
    plate = compat.open_ome_zarr(store)
    models = iohub_ngff.models
    assert isinstance(plate.metadata, models.PlateMeta)
    pos = plate["A/1/0"]
    assert isinstance(pos.metadata, models.ImagesMeta)
    assert [type(a).__name__ for a in pos.axes] == [
        "TimeAxisMeta",
        "ChannelAxisMeta",
        "SpaceAxisMeta",
        "SpaceAxisMeta",
        "SpaceAxisMeta",
    ]
    assert isinstance(plate["A/1"].metadata, models.WellGroupMeta)
    # the array is a zarr.Array, like iohub's ImageArray
    assert isinstance(pos.data, zarr.Array)


def test_iteration_order_is_iohubs(tmp_path):
    """iohub sorts member names as strings: 1, 10, 12, 2 and 0, 1, 10, 2..."""
    store = _generated(tmp_path / "p.ome.zarr", "0.4")
    snapmeta.build_snapshot(store)
    plate = compat.open_ome_zarr(store)
    assert list(plate["A"]) == ["1", "10", "12", "2"]
    assert list(plate["A/10"]) == ["0", "1", "10", "2", "3", "4", "5", "6", "7", "8", "9"]
    assert list(plate) == ["A", "C"]  # row B has no wells, hence no group


# --------------------------------------------------------------------------- O(1), lazy models

AUDIT = textwrap.dedent(
    """
    import json, sys
    store, paths = sys.argv[1], sys.argv[2:]
    opened = []
    sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
    import snapmeta.compat as compat
    after_import = {m: m in sys.modules for m in ("iohub", "pydantic")}
    opened.clear()
    seen = []
    plate = compat.open_ome_zarr(store, mode="r+")
    for path in paths:
        pos = plate[path]
        data = pos.data
        seen.append([pos.channel_names, pos.axis_names, pos.scale, list(data.shape),
                     pos.get_channel_index(pos.channel_names[-1]), int(data[0, 0, 0, 0, 0])])
        data[0, 0, 0, 0, 0] = 5
    names = (".zattrs", ".zarray", ".zgroup", "zarr.json", ".zmetadata")
    documents = [p for p in opened if p.endswith(names)]
    before = {m: m in sys.modules for m in ("iohub", "pydantic")}
    axes = [type(a).__name__ for a in plate[paths[0]].axes]
    print(json.dumps({
        "documents": documents, "after_import": after_import, "before": before,
        "after": {m: m in sys.modules for m in ("iohub", "pydantic")},
        "seen": seen, "axes": axes,
    }))
    """
)


@pytest.mark.parametrize("version", VERSIONS)
def test_open_reads_no_metadata_and_builds_models_lazily(plate_96, version, tmp_path):
    import shutil

    store = tmp_path / "plate.ome.zarr"
    shutil.copytree(plate_96[version], store)  # copy2 keeps mtimes: the snapshot stays fresh
    paths = ["A/1/0", "D/7/0", "H/12/0"]
    out = subprocess.run(
        [sys.executable, "-c", AUDIT, str(store), *paths],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["documents"] == []
    assert result["after_import"] == {"iohub": False, "pydantic": False}
    assert result["before"] == {"iohub": False, "pydantic": False}
    assert result["after"] == {"iohub": True, "pydantic": True}  # touched .axes
    assert result["axes"][0] == "TimeAxisMeta"
    assert [s[0] for s in result["seen"]] == [["DAPI", "GFP"]] * 3
    assert [s[1] for s in result["seen"]] == [["t", "c", "z", "y", "x"]] * 3
    assert [s[3] for s in result["seen"]] == [[1, 2, 4, 64, 64]] * 3
    assert [s[4] for s in result["seen"]] == [1] * 3
    assert zarr.open_array(store=str(store / "D/7/0/0"), mode="r")[0, 0, 0, 0, 0] == 5


# --------------------------------------------------------------------------- fallback


def _ours(caught: list[warnings.WarningMessage]) -> list[type[Warning]]:
    """Warning categories, without zarr's notice about the snapshot file.

    zarr warns that ``.snapmeta.arrow`` "is not recognized as a component of a
    Zarr hierarchy" when iohub lists a store's members; pyproject ignores it.
    """
    return [w.category for w in caught if not issubclass(w.category, zarr.errors.ZarrUserWarning)]


def test_no_snapshot_falls_back_to_iohub_with_one_warning(tmp_path):
    store = _plate(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plate = compat.open_ome_zarr(store, mode="r")
        paths = [name for name, _ in plate.positions()]
        channels = plate["A/1/0"].channel_names
    fallbacks = [w for w in caught if issubclass(w.category, FallbackWarning)]
    assert _ours(caught) == [FallbackWarning]
    assert "snapmeta build" in str(fallbacks[0].message)
    assert isinstance(plate, iohub_ngff.Plate)
    assert paths == ["A/1/0", "A/1/1", "A/2/0", "B/2/0", "B/2/1"]
    assert channels == ["DAPI", "GFP"]


def test_no_snapshot_without_fallback_raises(tmp_path):
    store = _plate(tmp_path)
    with pytest.raises(snapmeta.SnapshotNotFoundError, match="snapmeta build"):
        compat.open_ome_zarr(store, fallback=False)


def test_stale_root_falls_back_once(tmp_path):
    store = _plate(tmp_path, "0.4")
    snapmeta.build_snapshot(store)
    zarr.open_group(store=str(store), mode="r+").attrs["note"] = "changed"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plate = compat.open_ome_zarr(store)
        assert plate.zattrs["note"] == "changed"
        assert len(list(plate.positions())) == 5
    assert _ours(caught) == [FallbackWarning]
    assert "stale" in str(caught[0].message)


def test_stale_position_after_open_falls_back_once(tmp_path):
    store = _plate(tmp_path, "0.5")
    snapmeta.build_snapshot(store)
    plate = compat.open_ome_zarr(store, mode="r+")
    before = plate["B/2/1"]
    # another process renames a channel (through iohub) after we opened the plate
    with iohub_ngff.open_ome_zarr(store, mode="r+") as other:
        other["A/1/0"].rename_channel("GFP", "mNeon")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        renamed = plate["A/1/0"]
        again = plate["A/1/0"]
        walked = [pos.channel_names for _, pos in plate.positions()]
    assert _ours(caught) == [FallbackWarning]
    assert renamed.channel_names == again.channel_names == ["DAPI", "mNeon"]
    assert walked[0] == ["DAPI", "mNeon"]
    assert before.channel_names == ["DAPI", "GFP"]  # handed out before: still usable
    np.testing.assert_array_equal(before.data[:], plate["B/2/1"].data[:])
    # refresh: rebuild, and the next open is served by the snapshot again
    snapmeta.build_snapshot(store)
    fresh = compat.open_ome_zarr(store)
    assert isinstance(fresh, compat.Plate)
    assert fresh["A/1/0"].channel_names == ["DAPI", "mNeon"]


def test_array_changed_after_snapshot_is_caught_when_opened(tmp_path):
    """An array resized after the snapshot: its new shape, never the stale one."""
    store = _plate(tmp_path, "0.4")
    snapmeta.build_snapshot(store)
    plate = compat.open_ome_zarr(store, mode="r+")
    pos = plate["A/1/0"]  # the group document is unchanged: served by the snapshot
    assert isinstance(pos, compat.Position)
    zarr.open_array(store=str(store / "A/1/0/0"), mode="r+").resize((2, 2, 3, 8, 12))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = pos.data
        again = pos["0"]
        other = plate["B/2/0"].data
    assert _ours(caught) == [FallbackWarning]
    assert data.shape == again.shape == (2, 2, 3, 8, 12)
    assert other.shape == (2, 2, 3, 8, 10)
    data[0, 0, 0, 0, 11] = 9  # writes land in the resized array
    assert zarr.open_array(store=str(store / "A/1/0/0"), mode="r")[0, 0, 0, 0, 11] == 9
    with pytest.raises(snapmeta.StaleSnapshotError):
        _ = compat.open_ome_zarr(store, fallback=False)["A/1/0"].data


def test_stale_without_fallback_raises(tmp_path):
    store = _plate(tmp_path, "0.4")
    snapmeta.build_snapshot(store)
    zarr.open_group(store=str(store), mode="r+").attrs["note"] = "changed"
    with pytest.raises(snapmeta.StaleSnapshotError, match="snapmeta build"):
        compat.open_ome_zarr(store, fallback=False)


NO_IOHUB = textwrap.dedent(
    """
    import json, sys, warnings
    sys.modules["iohub"] = None  # as if iohub were not installed
    import zarr, snapmeta
    from snapmeta import compat
    missing, stale = sys.argv[1], sys.argv[2]
    out = {}
    try:
        compat.open_ome_zarr(missing)
    except snapmeta.SnapshotNotFoundError as exc:
        out["missing"] = str(exc)
    plate = compat.open_ome_zarr(stale)
    meta, pos = plate.metadata, plate["A/1/0"]
    out["plate"] = [type(meta).__name__, [w.path for w in meta.wells], [r.name for r in meta.rows],
                    [c.name for c in meta.columns], [a.id for a in meta.acquisitions],
                    meta.field_count, meta.version]
    out["axes"] = [[type(a).__name__, a.name, a.type, a.unit] for a in pos.axes]
    m = pos.metadata
    out["position"] = [type(m).__name__, [d.path for d in m.multiscales[0].datasets],
                       m.multiscales[0].datasets[1].coordinate_transformations[0].scale,
                       [c.label for c in m.omero.channels]]
    out["well"] = [[i.path, i.acquisition] for i in plate["B/2"].metadata.images]
    # an array changes after the snapshot, found when the position's level is opened
    pos = plate["A/2/0"]
    zarr.open_array(store=stale + "/A/2/0/0", mode="r+").resize((2, 2, 3, 8, 12))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["resized"] = list(pos.data.shape)
    out["resize_warnings"] = [w.category.__name__ for w in caught]
    # a position changes after the snapshot: snapmeta's own JSON fallback serves it
    zarr.open_group(store=stale, path="B/2/1", mode="r+").attrs["note"] = "x"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["stale_attrs"] = plate["B/2/1"].zattrs["note"]
    out["warnings"] = [w.category.__name__ for w in caught]
    out["iohub_loaded"] = sys.modules["iohub"] is not None
    print(json.dumps(out))
    """
)


def test_without_iohub_light_models_and_clear_errors(tmp_path):
    missing = _plate(tmp_path, "0.4", "missing.ome.zarr")
    stale = _plate(tmp_path, "0.4", "stale.ome.zarr")
    snapmeta.build_snapshot(stale)
    expected = iohub_ngff.open_ome_zarr(stale)  # ground truth, before the script changes B/2/1
    emeta, epos = expected.metadata, expected["A/1/0"]
    out = subprocess.run(
        [sys.executable, "-c", NO_IOHUB, str(missing), str(stale)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    assert "snapmeta build" in result["missing"]
    assert result["plate"] == [
        "PlateMeta",
        [w.path for w in emeta.wells],
        [r.name for r in emeta.rows],
        [c.name for c in emeta.columns],
        [a.id for a in emeta.acquisitions],
        emeta.field_count,
        emeta.version,
    ]
    assert result["axes"] == [["Axis", a.name, a.type, getattr(a, "unit", None)] for a in epos.axes]
    m = epos.metadata
    assert result["position"] == [
        "ImagesMeta",
        [d.path for d in m.multiscales[0].datasets],
        m.multiscales[0].datasets[1].coordinate_transformations[0].scale,
        [c.label for c in m.omero.channels],
    ]
    assert result["well"] == [[i.path, i.acquisition] for i in expected["B/2"].metadata.images]
    assert result["resized"] == [2, 2, 3, 8, 12]
    assert result["resize_warnings"] == ["SnapshotStaleWarning"]
    assert result["stale_attrs"] == "x"
    assert result["warnings"] == ["SnapshotStaleWarning"]
    assert result["iohub_loaded"] is False


# --------------------------------------------------------------------------- not covered


def test_rejects_creation_and_non_hcs(tmp_path):
    store = _plate(tmp_path)
    snapmeta.build_snapshot(store)
    for mode in ("w", "w-"):
        with pytest.raises(ValueError, match="iohub"):
            compat.open_ome_zarr(store, layout="hcs", mode=mode)
    for layout in ("fov", "tiled"):
        with pytest.raises(ValueError, match="iohub"):
            compat.open_ome_zarr(store, layout=layout)
    with pytest.raises(ValueError, match="Unknown layout"):
        compat.open_ome_zarr(store, layout="plate")
    with pytest.raises(ValueError, match="Invalid persistence mode"):
        compat.open_ome_zarr(store, mode="rw")
    with pytest.raises(FileNotFoundError, match="iohub"):
        compat.open_ome_zarr(tmp_path / "new.ome.zarr", layout="hcs", mode="a")
    with pytest.raises(FileNotFoundError, match="not found"):
        compat.open_ome_zarr(tmp_path / "new.ome.zarr")
    with pytest.raises(TypeError, match="unexpected"):
        compat.open_ome_zarr(store, chunks=(1, 1))
    # creation-only arguments are accepted and ignored for an existing plate
    plate = compat.open_ome_zarr(
        store, channel_names=["x"], version="0.4", name="n", acquisitions=[]
    )
    assert plate.channel_names == ["DAPI", "GFP"]


def test_fov_store_is_not_a_plate(tmp_path):
    fov = tmp_path / "fov.ome.zarr"
    with iohub_ngff.open_ome_zarr(fov, layout="fov", mode="w-", channel_names=["a"]) as pos:
        pos.create_zeros("0", shape=(1, 1, 1, 4, 4), dtype=np.uint8)
    with pytest.warns(FallbackWarning), pytest.raises(snapmeta.NotAPlateError, match="iohub"):
        compat.open_ome_zarr(fov)


def test_metadata_writers_point_to_iohub(tmp_path):
    store = _plate(tmp_path)
    snapmeta.build_snapshot(store)
    plate = compat.open_ome_zarr(store, mode="r+")
    pos = plate["A/1/0"]
    calls = [
        lambda: plate.create_position("C", "1", "0"),
        lambda: plate.create_well("C", "1"),
        lambda: plate["A/1"].create_position("9"),
        lambda: pos.append_channel("new"),
        lambda: pos.rename_channel("GFP", "x"),
        lambda: pos.create_image("2", np.zeros((1, 2, 1, 2, 2), np.uint16)),
        lambda: pos.initialize_pyramid(levels=3),
        lambda: pos.set_scale("0", "x", 1.0),
        lambda: pos.dump_meta(),
        lambda: pos.__setitem__("2", np.zeros(3)),
    ]
    for call in calls:
        with pytest.raises(
            NotImplementedError, match=r"iohub\.ngff\.open_ome_zarr.*snapmeta build"
        ):
            call()
    assert hasattr(pos, "append_channel")
    assert not hasattr(pos, "no_such_method")


def test_channel_error_is_valueerror_and_keyerror(tmp_path):
    store = _plate(tmp_path)
    snapmeta.build_snapshot(store)
    pos = compat.open_ome_zarr(store)["A/1/0"]
    with pytest.raises(ValueError, match="not in the existing channels"):
        pos.get_channel_index("nope")
    with pytest.raises(KeyError):
        pos.get_channel_index("nope")
    assert pos.get_channel_index("GFP") == 1


def test_zattrs_write_through_and_refresh(tmp_path):
    store = _plate(tmp_path, "0.4")
    snapmeta.build_snapshot(store)
    readonly = compat.open_ome_zarr(store, mode="r")
    with pytest.raises(ValueError, match="read-only"):
        readonly["A/1/0"].zattrs["note"] = "x"
    plate = compat.open_ome_zarr(store, mode="r+")
    pos = plate["A/1/0"]
    pos.zattrs["note"] = "written"
    assert pos.zattrs["note"] == "written"
    assert json.loads((store / "A/1/0/.zattrs").read_text())["note"] == "written"
    # the snapshot no longer matches that position: the next open says so, once
    with pytest.warns(FallbackWarning, match="stale"):
        assert compat.open_ome_zarr(store)["A/1/0"].zattrs["note"] == "written"
    snapmeta.build_snapshot(store)
    assert compat.open_ome_zarr(store)["A/1/0"].zattrs["note"] == "written"
