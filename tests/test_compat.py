"""snapmeta.compat against the installed iohub: the same user script gives the same results.

Each parity test writes a plate (with iohub itself or with snapmeta's generator,
NGFF 0.4 and 0.5), copies it, builds a snapshot of the copy, and runs one
user-level script through ``iohub.ngff.open_ome_zarr`` on the original and
through ``snapmeta.compat.open_ome_zarr`` on the copy: walk, read metadata,
models and pixels, write pixels and attributes, read back, reopen. Results are
compared value by value, types included. The suite runs against every iohub it
is installed with (0.3.0a7 in the default environment, 0.3.11 in the Python
3.13 one); ``filterwarnings = error`` turns any unexpected fallback into a failure.
"""

from __future__ import annotations

import importlib.metadata
import json
import pickle
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from packaging.version import Version

import snapmeta
from snapmeta.testing import write_plate

iohub_ngff = pytest.importorskip("iohub.ngff")

from snapmeta import compat  # noqa: E402  (needs iohub)
from snapmeta.compat import FallbackWarning  # noqa: E402

try:
    import writers
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import writers

IOHUB = Version(importlib.metadata.version("iohub"))
VERSIONS = ("0.4", "0.5")


@pytest.fixture(autouse=True)
def _restore_codec_pipeline():
    """iohub 0.3.11 switches zarr's global codec pipeline to zarrs on its first open:
    put it back, so that no test depends on what an earlier one opened."""
    saved = zarr.config.get("codec_pipeline")
    yield
    zarr.config.set({"codec_pipeline": saved})


# --------------------------------------------------------------------------- plates


def _generated(path: Path, version: str) -> Path:
    """A sparse plate whose names sort differently as strings and as numbers.

    Columns 1, 2, 10, 12 and up to 11 fields per well exercise iohub's
    lexicographic order; row B is in the metadata but has no wells (no group).
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


@pytest.fixture(params=[(w, v) for w in WRITERS for v in VERSIONS], ids="-".join)
def plate_pair(request, tmp_path) -> tuple[Path, Path]:
    """(a plate for iohub, an identical copy with a snapshot for snapmeta.compat)."""
    writer, version = request.param
    plain = Path(WRITERS[writer](tmp_path / "iohub.ome.zarr", version))
    snap = tmp_path / "compat.ome.zarr"
    shutil.copytree(plain, snap)
    snapmeta.build_snapshot(snap)
    return plain, snap


def _plate(tmp_path: Path, version: str = "0.5", name: str = "plate.ome.zarr") -> Path:
    return writers.write_iohub_plate(tmp_path / name, version=version).path


def _snapshotted(tmp_path: Path, version: str = "0.5") -> Path:
    store = _plate(tmp_path, version)
    snapmeta.build_snapshot(store)
    return store


# --------------------------------------------------------------------------- the user script


def _catch(fn: Callable[[], Any]) -> BaseException | None:
    try:
        fn()
    except Exception as exc:
        return exc
    return None


def _as_stored(zattrs: Any, key: str) -> dict[str, Any]:
    """Attributes without the ``version`` iohub adds to its in-memory ``plate``/``well``.

    iohub gives a ``plate``/``well`` object without a ``version`` the node's
    version in the attributes it holds (and writes it with the next attribute
    write); compat leaves the attributes as stored. Here: NGFF 0.5 plates written
    by snapmeta's generator, which keep the version in ``ome`` only.
    """
    attrs = json.loads(json.dumps(dict(zattrs)))
    ome = attrs.get("ome", attrs)
    if key in ome and ome[key].get("version") == ome.get("version"):
        ome[key].pop("version", None)
    return attrs


def user_script(open_ome_zarr, store: Path, between: Callable[[], None]) -> dict[str, Any]:
    """What an iohub user does with a plate; returns everything it observed."""
    out: dict[str, Any] = {}
    with open_ome_zarr(store, layout="hcs", mode="r+") as plate:
        out["rows"] = list(plate)
        out["len"] = len(plate)
        out["contains"] = [key in plate for key in ("A", "B", "Z", "A/1", "A/1/0")]
        out["row_walk"] = [
            (row_name, well_name, field, list(row), list(well), len(well))
            for row_name, row in plate.rows()
            for well_name, well in row.wells()
            for field, _ in well.positions()
        ]
        out["wells"] = [(path, list(well), well.version) for path, well in plate.wells()]
        out["well_meta"] = [well.metadata for _, well in plate.wells()]
        out["well_zattrs"] = [_as_stored(well.zattrs, "well") for _, well in plate.wells()]
        out["channel_names"] = plate.channel_names
        out["axes"] = plate.axes
        out["metadata"] = plate.metadata
        out["zattrs"] = _as_stored(plate.zattrs, "plate")
        out["version"] = plate.version
        out["keys"] = (plate.group_keys(), plate.array_keys(), plate.is_root(), plate.is_leaf())
        positions = {}
        for index, (name, pos) in enumerate(plate.positions()):
            data = pos.data
            positions[name] = {
                "channel_names": pos.channel_names,
                "channel_index": pos.get_channel_index(pos.channel_names[-1]),
                "axes": pos.axes,
                "axis_names": pos.axis_names,
                "axis_index": pos.get_axis_index("X"),
                "scale": pos.scale,
                "scale_1": pos.get_effective_scale("1"),
                "scale_all": pos.get_effective_scale("*"),
                "translation_1": pos.get_effective_translation("1"),
                "arrays": (list(pos), len(pos), pos.array_keys(), pos.group_keys(), pos.is_leaf()),
                "has": ["0" in pos, "1" in pos, "7" in pos, 0 in pos],
                "images": [(k, a.shape) for k, a in pos.images()],
                "shape": (data.shape, data.dtype, data.chunks, data.ndim),
                "dims": (data.frames, data.channels, data.slices, data.height, data.width),
                "level1": (pos["1"].shape, pos["1"].chunks, pos[1].shape),
                "numpy": data.numpy(),
                "slab": pos["0"][0, -1, :, 1:3, 2:5],
                "point": pos["0"][0, 0, 0, 0, 0],
                "asarray": np.asarray(pos.data),
                "dask": pos.data.dask_array()[:, -1].sum(axis=0).compute() if index < 2 else None,
                "metadata": pos.metadata,
                "metadata_version": pos.metadata.version,
                "zattrs": dict(pos.zattrs),
                "version": pos.version,
            }
            # pixel writes: a block, a read-modify-write, a whole level, a channel
            pos.data[0, 0, 0, :2, :3] = index + 7
            arr = pos["0"]
            arr[:, -1] = np.asarray(arr[:, -1]) // 2 + 3
            pos["1"][:] = np.full(pos["1"].shape, index, dtype=pos["1"].dtype)
            level1 = pos["1"].shape
            pos.update_channel(pos.channel_names[0], "1", np.full(level1[:1] + level1[2:], 9))
        out["positions"] = positions
        row, col, field = out["row_walk"][0][:3]
        first, well_path = f"{row}/{col}/{field}", f"{row}/{col}"
        out["direct"] = [
            plate[first].channel_names,
            plate[f"{first}/0"].shape,
            list(plate[row]),
            list(plate[well_path]),
            plate[f"/{row}/{col}/"][field].scale,
            plate[row][col][field].axis_names,
        ]
        pos = plate[first]
        out["errors"] = [
            _catch(lambda: plate["Z/9/9"]),
            _catch(lambda: plate["Z"]),
            _catch(lambda: plate["A/99"]),
            _catch(lambda: pos.get_channel_index("no such channel")),
            _catch(lambda: pos["9"]),
            _catch(lambda: pos.get_effective_scale("9")),
        ]
        # metadata writes through the nodes, read back through the same objects
        well, row_node = plate[well_path], plate[row]
        pos.zattrs["qc"] = {"score": 0.5, "ok": True}
        pos.zattrs.update({"note": "n", "tmp": [1, 2]})
        del pos.zattrs["tmp"]
        well.zattrs["checked"] = [1, 2]
        row_node.zattrs.put({"row": row})
        plate.zattrs["run"] = "r1"
        out["written"] = [
            dict(pos.zattrs),
            pos.zattrs.asdict(),
            _as_stored(well.zattrs, "well"),
            dict(row_node.zattrs),
            dict(plate[row].zattrs),
            _as_stored(plate.zattrs, "plate"),
            pos.metadata,
        ]
    between()
    with open_ome_zarr(store, mode="r") as plate:
        out["after"] = {
            name: [pos[key].numpy() for key in pos.array_keys()] for name, pos in plate.positions()
        }
        out["after_attrs"] = [
            dict(plate[first].zattrs),
            _as_stored(plate[well_path].zattrs, "well"),
            dict(plate[row].zattrs),
            _as_stored(plate.zattrs, "plate"),
            plate[first].metadata,
            plate[well_path].metadata,
            plate.metadata,
        ]
        out["readonly_attrs"] = _catch(lambda: plate[first].zattrs.__setitem__("x", 1))
    return out


def assert_same(ours: Any, theirs: Any, where: str = "") -> None:
    """Deep equality with types: lists stay lists, models compare as models."""
    if isinstance(theirs, BaseException):
        assert isinstance(ours, type(theirs)), f"{where}: {ours!r} is not a {type(theirs).__name__}"
        return
    if isinstance(theirs, np.ndarray):
        assert isinstance(ours, np.ndarray), f"{where}: {type(ours).__name__}"
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
    theirs = user_script(iohub_ngff.open_ome_zarr, plain, lambda: None)
    assert isinstance(compat.open_ome_zarr(snap), compat.Plate)  # served by the snapshot
    # between the sessions, compat's copy gets a fresh snapshot: the second
    # session reads the written attributes from the snapshot (any fallback warns: error)
    ours = user_script(compat.open_ome_zarr, snap, lambda: snapmeta.build_snapshot(snap))
    assert_same(ours, theirs)
    # the writes landed identically on disk (read with plain zarr)
    for name, levels in theirs["after"].items():
        for key, expected in zip(("0", "1"), levels, strict=True):
            got = zarr.open_array(store=str(snap / name / key), mode="r")[:]
            np.testing.assert_array_equal(got, expected)
    assert isinstance(compat.open_ome_zarr(snap), compat.Plate)


@pytest.mark.parametrize(("writer", "version"), [(w, v) for w in WRITERS for v in VERSIONS])
def test_models_are_iohubs_and_versions_match(tmp_path, writer, version):
    """The reported drift: ``Position.metadata.version`` is what the installed iohub says."""
    store = Path(WRITERS[writer](tmp_path / "plate.ome.zarr", version))
    snapmeta.build_snapshot(store)
    theirs = iohub_ngff.open_ome_zarr(store)
    plate = compat.open_ome_zarr(store)
    models = iohub_ngff.models
    pos = plate["A/1/0"]
    assert type(plate.metadata) is models.PlateMeta
    assert plate.metadata == theirs.metadata
    assert type(plate["A/1"].metadata) is models.WellGroupMeta
    assert plate["A/1"].metadata == theirs["A/1"].metadata
    assert type(pos.metadata) is models.ImagesMeta
    assert [type(a).__name__ for a in pos.axes] == [
        "TimeAxisMeta",
        "ChannelAxisMeta",
        "SpaceAxisMeta",
        "SpaceAxisMeta",
        "SpaceAxisMeta",
    ]
    assert pos.metadata.version == theirs["A/1/0"].metadata.version
    assert pos.version == theirs["A/1/0"].version == version
    # An NGFF 0.4 image document has no top-level version (iohub >= 0.3.2 writes one):
    # iohub 0.3.0a7 leaves it unset, iohub >= 0.3.2 gives it the node's, "0.4".
    unversioned = "version" not in pos.maybe_wrapped_ome_attrs
    if version == "0.4" and unversioned and Version("0.3.2") > IOHUB:
        assert pos.metadata.version is None
    else:
        assert pos.metadata.version == version
    assert unversioned == (version == "0.4" and (writer == "plategen" or Version("0.3.2") > IOHUB))
    assert list(pos.native.scale) == pos.scale == theirs["A/1/0"].scale  # no model needed
    data = pos.data
    assert isinstance(data, compat.ImageArray)
    assert isinstance(data, snapmeta._arrays.CheckedArray)
    assert data.native is data  # code written for iohub 0.3.11 reaches the zarr array


def test_version_argument_matters_only_where_iohub_uses_it(tmp_path):
    """iohub < 0.3.0 takes the ``version`` argument as an NGFF 0.4 plate's version."""
    store = _snapshotted(tmp_path, "0.4")
    theirs = iohub_ngff.open_ome_zarr(store, version="0.5")
    ours = compat.open_ome_zarr(store, version="0.5")
    assert ours.version == theirs.version == ("0.4" if Version("0.3.0") <= IOHUB else "0.5")
    assert ours["A/1"].metadata == theirs["A/1"].metadata


def test_iteration_order_is_iohubs(tmp_path):
    """iohub sorts member names as strings: 1, 10, 12, 2 and 0, 1, 10, 2..."""
    store = _generated(tmp_path / "p.ome.zarr", "0.4")
    snapmeta.build_snapshot(store)
    plate = compat.open_ome_zarr(store)
    assert list(plate["A"]) == ["1", "10", "12", "2"]
    assert list(plate["A/10"]) == ["0", "1", "10", "2", "3", "4", "5", "6", "7", "8", "9"]
    assert list(plate) == ["A", "C"]  # row B has no wells, hence no group
    assert [p for p, _ in plate.positions()] == [
        p for p, _ in iohub_ngff.open_ome_zarr(store).positions()
    ]


def test_metadata_iohubs_models_reject_is_a_snapmeta_error(tmp_path):
    """snapmeta accepts any unit; iohub's models do not. Compat still serves the
    position, and says so (located) when a model is needed."""
    store = write_plate(tmp_path / "p.ome.zarr", rows=1, columns=1, ngff="0.4", data="none")
    document = store / "A/1/0/.zattrs"
    attrs = json.loads(document.read_text())
    attrs["multiscales"][0]["axes"][-1]["unit"] = "pixel"
    document.write_text(json.dumps(attrs))
    snapmeta.build_snapshot(store)
    pos = compat.open_ome_zarr(store)["A/1/0"]
    assert pos.channel_names == ["DAPI", "GFP"]  # no model needed
    assert pos.data.shape == (1, 2, 4, 64, 64)
    for access in (lambda: pos.metadata, lambda: pos.scale, lambda: pos.axes):
        with pytest.raises(snapmeta.PlateValidationError, match="iohub's models reject") as info:
            access()
        assert isinstance(info.value, ValueError)
        assert {p.document for p in info.value.problems} == {"A/1/0/.zattrs"}
        assert any("axes" in p.field for p in info.value.problems)
    # iohub rejects the same metadata: it logs, and cannot give this position's channels
    with pytest.raises(AttributeError, match="Channel names not available"):
        iohub_ngff.open_ome_zarr(store)["A/1/0"]


# --------------------------------------------------------------------------- requires iohub

NO_IOHUB = """
import sys
sys.modules["iohub"] = None  # as if iohub were not installed
import snapmeta  # snapmeta itself does not need it
try:
    import snapmeta.compat
except ImportError as exc:
    print(exc)
else:
    print("imported")
"""


def test_import_without_iohub_says_how_to_install():
    out = subprocess.run(
        [sys.executable, "-c", NO_IOHUB], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().endswith('pip install "snapmeta[iohub]"'), out.stdout


# --------------------------------------------------------------------------- the one fallback


def _fallbacks(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, FallbackWarning)]


def test_no_snapshot_falls_back_to_iohub_with_one_warning(tmp_path):
    store = _plate(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plate = compat.open_ome_zarr(store, mode="r")
        paths = [name for name, _ in plate.positions()]
        channels = plate["A/1/0"].channel_names
    assert len(caught) == 1
    assert "snapmeta build" in _fallbacks(caught)[0]
    assert type(plate) is iohub_ngff.Plate
    assert paths == ["A/1/0", "A/1/1", "A/2/0", "B/2/0", "B/2/1"]
    assert channels == ["DAPI", "GFP"]
    with pytest.raises(snapmeta.SnapshotNotFoundError, match="snapmeta build"):
        compat.open_ome_zarr(store, fallback=False)


def test_stale_at_open_falls_back_once(tmp_path):
    store = _snapshotted(tmp_path, "0.4")
    zarr.open_group(store=str(store), mode="r+").attrs["note"] = "changed"
    with pytest.raises(snapmeta.StaleSnapshotError, match="snapmeta build"):
        compat.open_ome_zarr(store, fallback=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plate = compat.open_ome_zarr(store)
        assert plate.zattrs["note"] == "changed"
        assert len(list(plate.positions())) == 5
    assert len(caught) == 1
    assert "stale" in _fallbacks(caught)[0]
    assert type(plate) is iohub_ngff.Plate


def test_stale_after_open_switches_the_plate_to_iohub(tmp_path):
    store = _snapshotted(tmp_path, "0.5")
    plate = compat.open_ome_zarr(store, mode="r+")
    before = plate["B/2/1"]
    # another process renames a channel (through iohub) after we opened the plate
    with iohub_ngff.open_ome_zarr(store, mode="r+") as other:
        other["A/1/0"].rename_channel("GFP", "mNeon")
    with pytest.raises(snapmeta.StaleSnapshotError):
        compat.open_ome_zarr(store, fallback=False)["A/1/0"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        renamed = plate["A/1/0"]
        again = plate["A/1/0"]
        walked = [pos.channel_names for _, pos in plate.positions()]
    assert len(_fallbacks(caught)) == len(caught) == 1
    assert type(renamed) is iohub_ngff.Position
    assert renamed.channel_names == again.channel_names == walked[0] == ["DAPI", "mNeon"]
    # handed out before the switch: still served, and still usable
    assert type(before) is compat.Position
    assert before.channel_names == ["DAPI", "GFP"]
    np.testing.assert_array_equal(before.data[:], plate["B/2/1"].data[:])
    # refresh: rebuild, and the next open is served by the snapshot again
    snapmeta.build_snapshot(store)
    fresh = compat.open_ome_zarr(store)
    assert type(fresh) is compat.Plate
    assert fresh["A/1/0"].channel_names == ["DAPI", "mNeon"]


def test_array_changed_after_open_is_caught_when_its_level_is_opened(tmp_path):
    store = _snapshotted(tmp_path, "0.4")
    plate = compat.open_ome_zarr(store, mode="r+")
    pos = plate["A/1/0"]
    zarr.open_array(store=str(store / "A/1/0/0"), mode="r+").resize((2, 2, 3, 8, 12))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = pos.data
        other = plate["B/2/0"].data
    assert len(_fallbacks(caught)) == len(caught) == 1
    assert data.shape == (2, 2, 3, 8, 12)  # never the stale shape
    assert other.shape == (2, 2, 3, 8, 10)
    data[0, 0, 0, 0, 11] = 9
    assert zarr.open_array(store=str(store / "A/1/0/0"), mode="r")[0, 0, 0, 0, 11] == 9
    with pytest.raises(snapmeta.StaleSnapshotError):
        _ = compat.open_ome_zarr(store, fallback=False)["A/1/0"].data


# --------------------------------------------------------------------------- metadata writes


@pytest.mark.parametrize("version", VERSIONS)
def test_attribute_writes_are_read_back_then_make_the_snapshot_stale(tmp_path, version):
    store = _snapshotted(tmp_path, version)
    document = store / "A/1/0" / (".zattrs" if version == "0.4" else "zarr.json")
    plate = compat.open_ome_zarr(store, mode="r+")
    pos = plate["A/1/0"]
    assert "qc" not in pos.zattrs
    pos.zattrs["qc"] = 1
    pos.zattrs.update(note="n", tmp=2)
    del pos.zattrs["tmp"]
    assert (pos.zattrs["qc"], pos.zattrs["note"], "tmp" in pos.zattrs) == (1, "n", False)
    assert pos.metadata == iohub_ngff.open_ome_zarr(store)["A/1/0"].metadata
    written = json.loads(document.read_text())
    assert {k: written.get("attributes", written)[k] for k in ("qc", "note")} == {
        "qc": 1,
        "note": "n",
    }
    assert type(plate["A/2/0"]) is compat.Position  # other nodes: still the snapshot
    # the written node no longer matches the snapshot: served through iohub, once
    with pytest.warns(FallbackWarning, match="stale"):
        again = plate["A/1/0"]
    assert type(again) is iohub_ngff.Position
    assert again.zattrs["qc"] == 1
    snapmeta.build_snapshot(store)
    assert compat.open_ome_zarr(store)["A/1/0"].zattrs["note"] == "n"


def test_attribute_writes_fail_in_mode_r_as_in_iohub(tmp_path):
    store = _snapshotted(tmp_path)
    theirs = _catch(lambda: iohub_ngff.open_ome_zarr(store)["A/1/0"].zattrs.update(x=1))
    ours = _catch(lambda: compat.open_ome_zarr(store)["A/1/0"].zattrs.update(x=1))
    assert theirs is not None
    assert type(ours) is type(theirs)
    assert "x" not in compat.open_ome_zarr(store, fallback=False)["A/1/0"].zattrs


def test_structure_methods_point_to_iohub_and_the_rebuild(tmp_path):
    store = _snapshotted(tmp_path)
    plate = compat.open_ome_zarr(store, mode="r+")
    pos = plate["A/1/0"]
    calls = [
        lambda: plate.create_position("C", "1", "0"),
        lambda: plate.create_well("C", "1"),
        lambda: plate.dump_meta(),
        lambda: plate["A/1"].create_position("9"),
        lambda: pos.append_channel("new"),
        lambda: pos.rename_channel("GFP", "x"),
        lambda: pos.create_image("2", np.zeros((1, 2, 1, 2, 2), np.uint16)),
        lambda: pos.initialize_pyramid(levels=3),
        lambda: pos.set_transform("0", []),
        lambda: pos.set_scale("0", "x", 1.0),
        lambda: pos.dump_meta(),
        lambda: pos.__setitem__("2", np.zeros(3)),
        lambda: pos.__delitem__("1"),
    ]
    for call in calls:
        with pytest.raises(
            NotImplementedError, match=r"iohub\.ngff\.open_ome_zarr.*snapmeta build"
        ):
            call()
    assert not hasattr(pos, "no_such_method")
    assert "1" in pos  # nothing was deleted
    # nothing was written: the snapshot still serves every node
    assert type(compat.open_ome_zarr(store, fallback=False)["A/1/0"]) is compat.Position


# --------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("pipeline", ["default", "zarrs"])
def test_mode_r_arrays_refuse_writes_whatever_the_codec_pipeline(tmp_path, pipeline):
    if pipeline == "zarrs":
        pytest.importorskip("zarrs")
        zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
    store = _snapshotted(tmp_path, "0.5")
    data = compat.open_ome_zarr(store, mode="r")["A/1/0"].data
    before = data[0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="read-only"):
        data[0, 0, 0, 0, 0] = before + 1
    assert zarr.open_array(store=str(store / "A/1/0/0"), mode="r")[0, 0, 0, 0, 0] == before
    compat.open_ome_zarr(store, mode="r+")["A/1/0"].data[0, 0, 0, 0, 0] = before + 1
    assert zarr.open_array(store=str(store / "A/1/0/0"), mode="r")[0, 0, 0, 0, 0] == before + 1


def test_nodes_and_arrays_pickle_as_handles(tmp_path):
    store = _snapshotted(tmp_path, "0.4")
    plate = compat.open_ome_zarr(store, mode="r+")
    for obj in (plate, plate["A"], plate["A/1"], plate["A/1/0"], plate["A/1/0/1"]):
        payload = pickle.dumps(obj)
        assert len(payload) < 400
        assert b"DAPI" not in payload and b"multiscales" not in payload
        assert type(pickle.loads(payload)) is type(obj)
    array = pickle.loads(pickle.dumps(plate["A/1/0"].data))
    array[0, 0, 0, 0, :3] = [1, 2, 3]  # the mode travels with the handle
    assert list(plate["A/1/0"].data[0, 0, 0, 0, :3]) == [1, 2, 3]


# --------------------------------------------------------------------------- not covered


def test_rejects_creation_and_other_layouts(tmp_path):
    store = _snapshotted(tmp_path)
    for mode in ("w", "w-", "rw"):
        with pytest.raises(ValueError, match="iohub"):
            compat.open_ome_zarr(store, layout="hcs", mode=mode)
    for layout in ("fov", "tiled", "plate"):
        with pytest.raises(ValueError, match="iohub"):
            compat.open_ome_zarr(store, layout=layout)
    for mode in ("a", "r"):
        with pytest.raises(FileNotFoundError, match="not found"):
            compat.open_ome_zarr(tmp_path / "new.ome.zarr", layout="hcs", mode=mode)
    assert not (tmp_path / "new.ome.zarr").exists()
    with pytest.raises(TypeError, match="chunks"):
        compat.open_ome_zarr(store, chunks=(1, 1))
    # creation-only arguments are accepted and ignored for an existing plate, as in iohub
    plate = compat.open_ome_zarr(store, channel_names=["x"], name="n", acquisitions=[])
    assert plate.channel_names == ["DAPI", "GFP"]


def test_fov_store_is_not_a_plate(tmp_path):
    fov = tmp_path / "fov.ome.zarr"
    with iohub_ngff.open_ome_zarr(fov, layout="fov", mode="w-", channel_names=["a"]) as pos:
        pos.create_zeros("0", shape=(1, 1, 1, 4, 4), dtype=np.uint8)
    with pytest.warns(FallbackWarning), pytest.raises(ValueError, match="layout"):
        compat.open_ome_zarr(fov)
