"""Building: every problem reported with its location; progress; atomic writes."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import snapmeta
from snapmeta import NotAPlateError, PlateValidationError
from snapmeta._locate import IN_STORE_ARRAY, IN_STORE_NAME
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
    assert not (store / IN_STORE_ARRAY).exists()


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
    assert calls[0] == ("wells", 0, 4)
    assert ("wells", 4, 4) in calls
    assert calls[-2:] == [("write", 0, 1), ("write", 1, 1)]


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
    v3 = (store / "zarr.json").exists()
    array_docs = {"zarr.json"} if v3 else {".zarray", ".zattrs"}
    added = {f"{IN_STORE_ARRAY}/{name}" for name in array_docs} | {IN_STORE_NAME}
    assert set(after) - set(before) == added
    assert {k: v for k, v in after.items() if k not in added} == before
    assert not [p for p in (store / IN_STORE_ARRAY).iterdir() if p.suffix == ".tmp"]


def test_old_temp_files_are_cleaned(store):
    (store / IN_STORE_ARRAY).mkdir()
    leftover = store / f"{IN_STORE_NAME}.123.deadbeef.tmp"
    leftover.write_bytes(b"partial")
    young = store / f"{IN_STORE_NAME}.456.cafe.tmp"
    young.write_bytes(b"maybe a concurrent build")
    os.utime(leftover, (1, 1))
    snapmeta.build_snapshot(store)
    assert not leftover.exists()
    assert young.exists()
    assert len(snapmeta.open_plate(store)) == 8


def test_shared_attributes_are_stored_once(store):
    """A large attribute value that every position shares costs its size once."""
    big = {"instrument": "x" * 1_000_000, "values": list(range(1000))}
    for well in ("A/1", "A/2", "B/1", "B/2"):
        for field in ("0", "1"):
            _edit(store, f"{well}/{field}", lambda o: o.update(vendor=big))
    path = snapmeta.build_snapshot(store)
    assert 1_000_000 < path.stat().st_size < 1_200_000  # 8 positions, stored once
    pos = snapmeta.open_position(store, "B/2/1")
    ome = pos.attrs.get("ome", pos.attrs)
    assert ome["vendor"] == big
    assert pos.channel_names == ("DAPI", "GFP")
