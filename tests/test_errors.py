"""The error hierarchy: one root, the builtins users catch, clean pickling."""

from __future__ import annotations

import pickle

import pytest

import snapmeta
from snapmeta import errors

CASES = [
    (errors.NotAPlateError, ValueError, {"store": "/p", "document": "/p/.zattrs"}),
    (
        errors.PlateValidationError,
        ValueError,
        {
            "store": "/p",
            "problems": (errors.Problem("A/1/0/.zattrs", "multiscales[0].axes", "bad"),),
        },
    ),
    (
        errors.SnapshotNotFoundError,
        FileNotFoundError,
        {"store": "/p", "snapshot": "/p/.snapmeta/0"},
    ),
    (errors.SnapshotFormatError, ValueError, {"snapshot": "/p/.snapmeta/0", "reason": "magic"}),
    (
        errors.SnapshotCorruptError,
        ValueError,
        {"snapshot": "/p/.snapmeta/0", "reason": "crc", "section": "positions", "index": 3},
    ),
    (
        errors.UnsupportedFormatVersionError,
        ValueError,
        {"snapshot": "/s", "reason": "version", "found_version": "9", "supported": (1,)},
    ),
    (errors.StaleSnapshotError, ValueError, {"store": "/p", "changed": ("A/1/0/.zattrs",)}),
    (
        errors.UnsafeStoreError,
        OSError,
        {"store": "/p", "path": "A/1/0/0/c/0/0", "reason": "not a regular file"},
    ),
    (
        errors.SnapshotWriteError,
        OSError,
        {"store": "/p", "snapshot": "/p/.snapmeta/0", "reason": "Read-only file system"},
    ),
    (
        errors.PositionNotFoundError,
        KeyError,
        {"store": "/p", "key": "Z/1/0", "suggestions": ("A/1/0",)},
    ),
    (
        errors.ChannelNotFoundError,
        KeyError,
        {"key": "RFP", "channels": ("DAPI",), "position": "A/1/0"},
    ),
]


@pytest.mark.parametrize(("cls", "builtin", "fields"), CASES, ids=[c[0].__name__ for c in CASES])
def test_hierarchy_and_pickling(cls, builtin, fields):
    err = cls("message text", **fields)
    assert isinstance(err, errors.SnapmetaError)
    assert isinstance(err, builtin)
    assert str(err) == "message text"
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is cls
    assert str(clone) == "message text"
    for name, value in fields.items():
        assert getattr(clone, name) == value


@pytest.mark.parametrize(("cls", "builtin", "fields"), CASES, ids=[c[0].__name__ for c in CASES])
def test_fields_are_declared(cls, builtin, fields):
    assert set(cls.fields) == set(fields)
    name = next(iter(fields))
    with pytest.raises(TypeError, match=rf"missing field.*{name}"):
        cls("m", **{k: v for k, v in fields.items() if k != name})
    with pytest.raises(TypeError, match=r"unknown field.*colour"):
        cls("m", colour="red", **fields)


def test_every_public_error_is_covered():
    covered = {c[0] for c in CASES}
    public = {
        getattr(errors, n)
        for n in errors.__all__
        if isinstance(getattr(errors, n), type)
        and issubclass(getattr(errors, n), errors.SnapmetaError)
    }
    assert public - {errors.SnapmetaError} == covered


def test_missing_snapshot(tmp_path):
    from snapmeta.testing import write_plate

    store = write_plate(tmp_path / "p.zarr", rows=1, columns=1, data="none")
    with pytest.raises(FileNotFoundError, match="snapmeta build") as info:
        snapmeta.open_plate(store)
    assert isinstance(info.value, errors.SnapshotNotFoundError)
    assert info.value.store == str(store)


def test_missing_position_suggests(plate_96):
    plate = snapmeta.open_plate(plate_96["0.5"])
    with pytest.raises(KeyError) as info:
        plate["A/13/0"]
    assert isinstance(info.value, errors.PositionNotFoundError)
    assert "A/1/0" in info.value.suggestions or "A/12/0" in info.value.suggestions
    assert "A/13/0" in str(info.value)
    assert "A/13/0" not in plate


def test_missing_channel(plate_96):
    pos = snapmeta.open_position(plate_96["0.4"], "B/2/0")
    assert pos.get_channel_index("GFP") == 1
    with pytest.raises(KeyError, match="DAPI, GFP"):
        pos.get_channel_index("RFP")


def test_bad_arguments(plate_96):
    store = plate_96["0.4"]
    with pytest.raises(ValueError, match="mode"):
        snapmeta.open_plate(store, mode="w")
    with pytest.raises(ValueError, match="check"):
        snapmeta.open_plate(store, check="sometimes")
    with pytest.raises(ValueError, match="on_stale"):
        snapmeta.open_plate(store, on_stale="ignore")
    with pytest.raises(TypeError, match="path"):
        snapmeta.open_plate(42)


def test_read_only_mode_refuses_writes(plate_96):
    pos = snapmeta.open_position(plate_96["0.5"], "A/1/0")
    with pytest.raises(ValueError, match=r"read-only|read only"):
        pos.data[0, 0, 0, 0, 0] = 1
