"""Fan-out: a parent verifies the plate once; workers open positions without checks.

The semantics tested here are the documented ones (docs/network.md): every
position is served as the documents were when the parent verified them; a
rebuilt snapshot is noticed (at most a second late) and then the position is
checked document by document; other changes during a fan-out go unseen.
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import pytest

import snapmeta
from snapmeta import _open
from snapmeta.errors import SnapshotStaleWarning, StaleSnapshotError
from snapmeta.testing import write_plate


@pytest.fixture(params=["0.4", "0.5"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = write_plate(
        tmp_path / "p.zarr", rows=2, columns=2, fields=2, ngff=request.param, levels=2
    )
    snapmeta.build_snapshot(path)
    return path


def _rename_channel(store: Path, node: str, old: str, new: str) -> None:
    v3 = (store / "zarr.json").exists()
    doc = store / node / ("zarr.json" if v3 else ".zattrs")
    data = json.loads(doc.read_text())
    ome = data["attributes"]["ome"] if v3 else data
    for channel in ome["omero"]["channels"]:
        if channel["label"] == old:
            channel["label"] = new
    doc.write_text(json.dumps(data))


def test_workers_get_what_the_parent_verified(store: Path) -> None:
    fan = pickle.loads(pickle.dumps(snapmeta.open_plate(store).fan_out()))
    assert len(pickle.dumps(fan)) < 300
    assert isinstance(fan, snapmeta.FanOut)
    for path in snapmeta.open_plate(store):
        pos = fan.open_position(path)
        assert pos.channel_names == ("DAPI", "GFP")
        assert pos[0].shape == (1, 2, 4, 64, 64)
        assert pos[1].shape == (1, 2, 4, 32, 32)
    writable = fan.open_position("B/2/1", mode="r+")
    writable[0][0, 0, 0, 0, 0] = 9  # pixels may change during a fan-out
    assert snapmeta.open_position(store, "B/2/1")[0][0, 0, 0, 0, 0] == 9


def test_a_stale_plate_cannot_fan_out(store: Path) -> None:
    _rename_channel(store, "A/2/1", "GFP", "RFP")
    with pytest.raises(StaleSnapshotError, match="A/2/1") as info:
        snapmeta.open_plate(store).fan_out()
    assert any("A/2/1" in d for d in info.value.changed)


def test_changes_during_a_fan_out_are_unseen_but_a_rebuild_is_seen(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_open, "IDENTITY_RECHECK_NS", 0)  # no second to wait
    fan = snapmeta.open_plate(store).fan_out()
    _rename_channel(store, "A/1/0", "GFP", "RFP")
    # documented: not checked, the verified value is served
    assert fan.open_position("A/1/0").channel_names == ("DAPI", "GFP")
    time.sleep(0.01)
    snapmeta.build_snapshot(store)
    with pytest.warns(SnapshotStaleWarning, match="changed since the fan-out"):
        assert fan.open_position("A/1/0").channel_names == ("DAPI", "RFP")


def test_missing_positions_are_reported(store: Path) -> None:
    fan = snapmeta.open_plate(store).fan_out()
    with pytest.raises(KeyError, match="Z/9/0"):
        fan.open_position("Z/9/0")
    with pytest.raises(KeyError, match="not a path inside"):
        fan.open_position("../x/0")


def test_a_symlinked_snapshot_is_the_snapshot_it_names(store: Path) -> None:
    """A snapshot reached through a symlink inside the store is the file the
    workers mapped: fan-out opens and ``check="none"`` opens keep using it, with no
    warning of a changed snapshot (warnings are errors in this suite)."""
    chunk = store / ".snapmeta" / "0"
    chunk.rename(store / ".snapmeta" / "kept")
    chunk.symlink_to("kept")
    _open.clear_cache()
    fan = snapmeta.open_plate(store).fan_out()
    for path in snapmeta.open_plate(store):
        assert fan.open_position(path).channel_names == ("DAPI", "GFP")
        assert snapmeta.open_position(store, path, check="none").from_snapshot
    time.sleep(_open.IDENTITY_RECHECK_NS / 1e9)  # the next open stats the snapshot again
    assert fan.open_position("A/1/0")[0].shape == (1, 2, 4, 64, 64)
