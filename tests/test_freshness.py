"""Freshness: a changed store never gets a silent stale answer."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest

import snapmeta
from snapmeta import SnapshotStaleWarning, StaleSnapshotError
from snapmeta.testing import write_plate


@pytest.fixture(params=["0.4", "0.5"])
def store(request, tmp_path):
    path = write_plate(
        tmp_path / "p.ome.zarr",
        rows=2,
        columns=3,
        fields=2,
        ngff=request.param,
        levels=2,
        data="fill",
    )
    snapmeta.build_snapshot(path)
    return path


def _zf(store):
    return 3 if (store / "zarr.json").exists() else 2


def _edit_attrs(store, node, edit):
    """Rewrite a group's attributes the way a pipeline would (new content, new mtime)."""
    zf = _zf(store)
    doc = store / node / ("zarr.json" if zf == 3 else ".zattrs")
    data = json.loads(doc.read_text())
    attrs = data["attributes"] if zf == 3 else data
    edit(attrs["ome"] if zf == 3 else attrs)
    doc.write_text(json.dumps(data))
    st = doc.stat()
    os.utime(doc, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _rename_channel(ome):
    ome["omero"]["channels"][0]["label"] = "Hoechst"


def test_fresh_snapshot_serves_without_warning(store):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pos = snapmeta.open_position(store, "A/1/0")
        assert pos.channel_names == ("DAPI", "GFP")


def test_channel_rename_falls_back_with_warning(store):
    _edit_attrs(store, "A/1/0", _rename_channel)
    with pytest.warns(SnapshotStaleWarning, match="snapmeta build"):
        pos = snapmeta.open_position(store, "A/1/0")
    assert pos.channel_names == ("Hoechst", "GFP")
    # a position whose documents did not change is still served from the snapshot
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert snapmeta.open_position(store, "A/2/0").channel_names == ("DAPI", "GFP")


def test_channel_rename_raises_when_asked(store):
    _edit_attrs(store, "A/1/0", _rename_channel)
    with pytest.raises(StaleSnapshotError) as info:
        snapmeta.open_position(store, "A/1/0", on_stale="raise")
    assert any(p.startswith("A/1/0/") for p in info.value.changed)


def test_check_none_trusts_snapshot(store):
    _edit_attrs(store, "A/1/0", _rename_channel)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert snapmeta.open_position(store, "A/1/0", check="none").channel_names == ("DAPI", "GFP")


def test_add_well_is_seen(store):
    # a pipeline adds column 4 and well B/4 (a copy of B/3) to the plate
    shutil.copytree(store / "B" / "3", store / "B" / "4")

    def add(ome):
        ome["plate"]["columns"].append({"name": "4"})
        ome["plate"]["wells"].append({"path": "B/4", "rowIndex": 1, "columnIndex": 3})

    _edit_attrs(store, "", add)
    with pytest.warns(SnapshotStaleWarning):
        plate = snapmeta.open_plate(store)
    assert "B/4" in plate.wells
    assert "B/4/0" in plate
    assert len(plate) == 14
    np.testing.assert_array_equal(plate["B/4/0"].data[:], plate["B/3/0"].data[:])


def test_well_edit_is_seen(store):
    _edit_attrs(store, "A/2", lambda ome: ome["well"]["images"].pop())
    plate = snapmeta.open_plate(store)
    with pytest.warns(SnapshotStaleWarning):
        well = plate.well("A/2")
    assert well.positions == ("A/2/0",)


def test_add_field_to_well_is_seen(store):
    shutil.copytree(store / "A" / "1" / "1", store / "A" / "1" / "2")
    _edit_attrs(store, "A/1", lambda ome: ome["well"]["images"].append({"path": "2"}))
    with pytest.warns(SnapshotStaleWarning):
        pos = snapmeta.open_position(store, "A/1/2")
    assert pos.path == "A/1/2"
    with pytest.warns(SnapshotStaleWarning):
        assert len(snapmeta.open_plate(store)) == 13


def test_resize_array_is_seen(store):
    import zarr

    array = zarr.open_array(store / "A/1/0/0", mode="r+")
    array.resize((1, 2, 4, 64, 80))
    pos = snapmeta.open_position(store, "A/1/0")
    with pytest.warns(SnapshotStaleWarning):
        data = pos["0"]
    assert data.shape == (1, 2, 4, 64, 80)
    assert pos.shape == (1, 2, 4, 64, 80)


def test_data_write_does_not_make_stale(store):
    pos = snapmeta.open_position(store, "A/1/0", mode="r+")
    pos.data[0, 0, 0] = 7
    snapmeta._open.clear_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = snapmeta.open_position(store, "A/1/0")
        assert int(again.data[0, 0, 0, 0, 0]) == 7
    assert snapmeta.verify(store).ok


def test_identical_rewrite_is_not_stale(store):
    zf = _zf(store)
    doc = store / ("zarr.json" if zf == 3 else ".zattrs")
    content = doc.read_bytes()
    doc.write_bytes(content)
    st = doc.stat()
    os.utime(doc, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(snapmeta.open_plate(store)) == 12


def test_delete_position(store):
    shutil.rmtree(store / "A" / "1" / "1")
    _edit_attrs(store, "A/1", lambda ome: ome["well"]["images"].pop())
    with pytest.warns(SnapshotStaleWarning), pytest.raises(snapmeta.PositionNotFoundError):
        snapmeta.open_position(store, "A/1/1")


def test_replace_snapshot_while_mapped(store):
    plate = snapmeta.open_plate(store)
    old = plate["A/1/0"]
    _edit_attrs(store, "A/1/0", _rename_channel)
    snapmeta.build_snapshot(store)
    # the old handle keeps its mapping and its metadata
    assert old.channel_names == ("DAPI", "GFP")
    assert old.data.shape == (1, 2, 4, 64, 64)
    # a new open sees the new snapshot without warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert snapmeta.open_position(store, "A/1/0").channel_names == ("Hoechst", "GFP")


def test_verify_reports_every_change(store):
    _edit_attrs(store, "A/1/0", _rename_channel)
    report = snapmeta.verify(store)
    assert not report.ok
    assert any("A/1/0" in p for p in report.problems)
