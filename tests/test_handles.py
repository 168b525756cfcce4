"""Position and Plate handles: arrays equal zarr's own, pickling is tiny, modes hold."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import zarr

import snapmeta


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_array_equals_zarr_open_array(plate_96, ngff):
    store = plate_96[ngff]
    pos = snapmeta.open_position(store, "C/5/0")
    for level in pos.levels:
        ours = pos[level]
        theirs = zarr.open_array(store / "C/5/0" / level, mode="r")
        assert ours.metadata == theirs.metadata
        assert ours.shape == theirs.shape and ours.chunks == theirs.chunks
        np.testing.assert_array_equal(ours[:], theirs[:])
        info = pos.level(level)
        assert info.shape == theirs.shape and info.chunks == theirs.chunks


def test_pickles_as_a_few_strings(plate_96, plate_7035):
    small = pickle.dumps(snapmeta.open_position(plate_96["0.4"], "A/1/0"))
    large = pickle.dumps(snapmeta.open_position(plate_7035, "A/1/0"))
    assert len(small) < 400 and len(large) < 400
    plate = pickle.loads(pickle.dumps(snapmeta.open_plate(plate_7035)))
    assert len(plate) == 7035
    pos = pickle.loads(large)
    assert pos.path == "A/1/0" and pos.channel_names == ("DAPI", "GFP")


def test_write_modes(plate_96, tmp_path):
    import shutil

    store = tmp_path / "copy.ome.zarr"
    shutil.copytree(plate_96["0.5"], store)
    for mode in ("r+", "a"):
        pos = snapmeta.open_position(store, "A/2/0", mode=mode)
        pos.data[0, 1, 0] = 42
        assert int(zarr.open_array(store / "A/2/0/0", mode="r")[0, 1, 0, 0, 0]) == 42
    assert snapmeta.verify(store).ok


def test_plate_surface(plate_96):
    with snapmeta.open_plate(plate_96["0.4"]) as plate:
        assert len(plate) == 96
        assert plate.rows == tuple("ABCDEFGH")
        assert plate.columns == tuple(str(i) for i in range(1, 13))
        assert len(plate.wells) == 96 and plate.wells[0] == "A/1"
        assert list(plate)[:3] == ["A/1/0", "A/2/0", "A/3/0"]
        assert "H/12/0" in plate and "H/13/0" not in plate and 5 not in plate
        paths = [p for p, _ in plate.positions()]
        assert paths == list(plate)
        pos = plate["/B/3/0/"]
        assert pos.path == "B/3/0" and pos.well == "B/3" and pos.field == "0"
        assert [a.name for a in pos.axes] == list(pos.axis_names) == list("tczyx")
        assert pos.level(1).shape == (1, 2, 4, 32, 32)
        assert pos.level("1").scale == (1.0, 1.0, 2.0, 1.0, 1.0)
        with pytest.raises(KeyError):
            pos["7"]
        assert "snapmeta.Position" in repr(pos) and "96 positions" in repr(plate)


def _files(root):
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode & 0o777)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_writes_leave_what_zarr_leaves(ngff, tmp_path):
    """Chunk writes through snapmeta (made inside directories it opened once) leave
    the same files, bytes and permissions as the same writes through zarr's own
    store: new chunk directories, overwritten chunks, no ``.partial`` left over."""
    from snapmeta.testing import write_plate

    stores = {}
    for who in ("zarr", "snapmeta"):
        store = tmp_path / who / "plate.zarr"
        write_plate(
            store, rows=1, columns=2, fields=1, ngff=ngff, shape=(1, 2, 1, 8, 8), data="none"
        )
        snapmeta.build_snapshot(store)
        stores[who] = store
    rng = np.random.default_rng(7)
    writes = [
        (np.s_[...], rng.integers(0, 60000, (1, 2, 1, 8, 8))),
        (np.s_[0, 1, 0, 2:5], rng.integers(0, 60000, (3, 8))),  # overwrites part of a chunk
    ]
    for path in ("A/1/0", "A/2/0"):
        theirs = zarr.open_array(stores["zarr"] / path / "0", mode="r+")
        ours = snapmeta.open_position(stores["snapmeta"], path, mode="r+")["0"]
        for where, values in writes:
            theirs[where] = values
            ours[where] = values
        np.testing.assert_array_equal(ours[...], theirs[...])
    expected = {k: v for k, v in _files(stores["zarr"]).items() if ".snapmeta" not in k}
    found = {k: v for k, v in _files(stores["snapmeta"]).items() if ".snapmeta" not in k}
    assert found == expected
    assert not [k for k in found if k.endswith(".partial")]
