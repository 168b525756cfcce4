"""Building: every problem reported with its location; progress; atomic writes."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import snapmeta
from snapmeta import NotAPlateError, PlateValidationError
from snapmeta._format import SNAPSHOT_NAME
from snapmeta.testing import write_plate


def _attrs_doc(store, node):
    v3 = (store / "zarr.json").exists()
    return store / node / ("zarr.json" if v3 else ".zattrs"), v3


def _edit(store, node, edit):
    doc, v3 = _attrs_doc(store, node)
    data = json.loads(doc.read_text())
    edit(data["attributes"]["ome"] if v3 else data)
    doc.write_text(json.dumps(data))


@pytest.fixture(params=["0.4", "0.5"])
def store(request, tmp_path):
    return write_plate(
        tmp_path / "p.ome.zarr", rows=2, columns=2, fields=2, ngff=request.param, data="none"
    )


def test_all_problems_reported_with_locations(store):
    _edit(store, "A/1/0", lambda o: o["multiscales"][0]["axes"][2].update(type=7))
    _edit(
        store,
        "B/2/1",
        lambda o: o["multiscales"][0]["datasets"][0]["coordinateTransformations"][0].update(
            scale=[1.0]
        ),
    )
    shutil.rmtree(store / "A" / "2" / "1")
    with pytest.raises(PlateValidationError) as info:
        snapmeta.build_snapshot(store)
    problems = info.value.problems
    text = str(info.value)
    assert len(problems) == 3
    v3 = (store / "zarr.json").exists()
    doc = "zarr.json" if v3 else ".zattrs"
    assert f"A/1/0/{doc}: multiscales[0].axes[2].type" in text
    assert f"B/2/1/{doc}: multiscales[0].datasets[0].coordinateTransformations[0].scale" in text
    assert "A/2/1" in text and "missing on disk" in text
    assert not (store / SNAPSHOT_NAME).exists()


def test_plate_level_problems(store):
    def break_plate(o):
        o["plate"]["wells"].append({"path": "C/1", "rowIndex": 2, "columnIndex": 0})
        o["plate"]["wells"].append(dict(o["plate"]["wells"][0]))

    _edit(store, "", break_plate)
    with pytest.raises(PlateValidationError) as info:
        snapmeta.build_snapshot(store)
    fields = [p.field for p in info.value.problems]
    assert "plate.wells[4].rowIndex" in fields
    assert "plate.wells[5].path" in fields  # duplicate


def test_not_a_plate(tmp_path):
    with pytest.raises(NotAPlateError, match="does not exist"):
        snapmeta.build_snapshot(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAPlateError, match="not a zarr group"):
        snapmeta.build_snapshot(tmp_path / "empty")
    import zarr

    zarr.open_group(tmp_path / "image.zarr", mode="w").attrs["multiscales"] = []
    with pytest.raises(NotAPlateError, match="no HCS plate metadata") as info:
        snapmeta.build_snapshot(tmp_path / "image.zarr")
    assert info.value.document.endswith(("zarr.json", ".zattrs"))


def test_progress_reports_every_stage(store):
    calls = []
    snapmeta.build_snapshot(
        store, progress=lambda stage, done, total: calls.append((stage, done, total))
    )
    assert ("wells", 4, 4) in calls
    assert ("positions", 8, 8) in calls
    assert calls[-1] == ("write", 1, 1)


def test_build_changes_nothing_but_the_snapshot(store):
    def tree():
        return {
            str(p.relative_to(store)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in store.rglob("*")
            if p.is_file()
        }

    before = tree()
    snapmeta.build_snapshot(store)
    after = tree()
    assert set(after) - set(before) == {SNAPSHOT_NAME}
    assert {k: v for k, v in after.items() if k != SNAPSHOT_NAME} == before
    assert not list(store.glob(f"{SNAPSHOT_NAME}.*"))  # no temp file left


def test_old_temp_files_are_cleaned(store):
    leftover = store / f"{SNAPSHOT_NAME}.123.deadbeef.tmp"
    leftover.write_bytes(b"partial")
    young = store / f"{SNAPSHOT_NAME}.456.cafe.tmp"
    young.write_bytes(b"maybe a concurrent build")
    os.utime(leftover, (1, 1))
    snapmeta.build_snapshot(store)
    assert not leftover.exists()
    assert young.exists()
    assert len(snapmeta.open_plate(store)) == 8


def test_large_attributes_stay_out_of_the_snapshot(store):
    big = {"instrument": "x" * 3_000_000, "values": list(range(1000))}
    _edit(store, "A/1/0", lambda o: o.update(vendor=big))
    path = snapmeta.build_snapshot(store)
    assert path.stat().st_size < 1_000_000
    pos = snapmeta.open_position(store, "A/1/0")
    ome = pos.attrs.get("ome", pos.attrs)
    assert ome["vendor"] == big
    assert pos.channel_names == ("DAPI", "GFP")
