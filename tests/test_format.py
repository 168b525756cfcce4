"""Format v1: the committed golden snapshots keep reading; the header is checked."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

import snapmeta
from snapmeta import _format
from snapmeta.errors import SnapshotCorruptError, SnapshotFormatError, UnsupportedFormatVersionError

GOLDEN = Path(__file__).parent / "data" / "golden" / "v1"


@pytest.fixture(params=["0.4", "0.5"])
def golden(request, tmp_path):
    ngff = request.param
    src = GOLDEN / f"plate-{ngff}.ome.zarr"
    dst = tmp_path / src.name
    shutil.copytree(src, dst)  # copies get new mtimes: the digest check must still accept them
    expected = json.loads((GOLDEN / f"expected-{ngff}.json").read_text())
    return dst, expected


def test_golden_snapshot_reads(golden):
    store, expected = golden
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # identical content is not stale
        plate = snapmeta.open_plate(store)
        assert plate.name == expected["name"]
        assert plate.version == expected["version"]
        assert list(plate.rows) == expected["rows"]
        assert list(plate.columns) == expected["columns"]
        assert list(plate.wells) == expected["wells"]
        assert plate.field_count == expected["field_count"]
        assert [a.id for a in plate.acquisitions] == expected["acquisitions"]
        assert plate.attrs == expected["root_attrs"]
        assert list(plate) == list(expected["positions"])
        for well in plate.wells:
            assert plate.well(well).attrs == expected["well_attrs"][well]
            assert list(plate.well(well).positions) == expected["well_positions"][well]
        for path, exp in expected["positions"].items():
            pos = plate[path]
            assert list(pos.channel_names) == exp["channel_names"]
            assert list(pos.axis_names) == exp["axis_names"]
            assert list(pos.scale) == exp["scale"]
            assert list(pos.levels) == exp["levels"]
            assert [list(pos.level(lv).shape) for lv in pos.levels] == exp["shapes"]
            assert pos.dtype == exp["dtype"]
            assert list(pos.chunks) == exp["chunks"]
            assert pos.acquisition == exp["acquisition"]
            assert pos.attrs == exp["attrs"]
            assert pos.data.shape == tuple(exp["shapes"][0])
    assert snapmeta.verify(store).ok


def test_golden_schema_is_format_v1():
    with pa.memory_map(str(GOLDEN / "plate-0.5.ome.zarr" / _format.SNAPSHOT_NAME)) as source:
        schema = ipc.open_file(source).schema
    assert schema.remove_metadata().equals(_format.SCHEMA)
    assert schema.metadata[b"snapmeta.format_version"] == b"1"
    assert schema.metadata[b"snapmeta.magic"] == _format.MAGIC.encode()


def _replace_bytes(path: Path, data: bytes) -> None:
    # A new inode, as snapmeta's own writer does: truncating a file in place
    # under a live mapping would fault any reader of it (SIGBUS).
    tmp = path.with_suffix(".test-tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _rewrite_meta(path: Path, *, keep_checksum: bool = False, **changes: str) -> None:
    reader = ipc.open_file(pa.BufferReader(path.read_bytes()))
    batch = reader.get_batch(0)
    meta = {k.decode(): v.decode() for k, v in reader.schema.metadata.items()}
    meta.update({_format.META_PREFIX + k: v for k, v in changes.items()})
    if not keep_checksum:
        meta[_format.META_PREFIX + "header_checksum"] = str(_format.header_checksum(meta))
    batch = batch.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    _replace_bytes(path, sink.getvalue().to_pybytes())


def test_future_version_is_refused(golden):
    store, _ = golden
    _rewrite_meta(store / _format.SNAPSHOT_NAME, format_version="2")
    with pytest.raises(UnsupportedFormatVersionError) as info:
        snapmeta.open_plate(store)
    assert info.value.found_version == "2"
    assert info.value.supported == (1,)
    assert isinstance(info.value, ValueError)


def test_wrong_magic_is_refused(golden):
    store, _ = golden
    _rewrite_meta(store / _format.SNAPSHOT_NAME, magic="something-else")
    with pytest.raises(SnapshotFormatError, match="not a snapmeta snapshot"):
        snapmeta.open_plate(store)


def test_header_tampering_is_detected(golden):
    store, _ = golden
    _rewrite_meta(store / _format.SNAPSHOT_NAME, keep_checksum=True, field_count="99")
    with pytest.raises(SnapshotCorruptError, match="header checksum"):
        snapmeta.open_plate(store)


def test_truncated_and_empty_files(golden):
    store, _ = golden
    path = store / _format.SNAPSHOT_NAME
    data = path.read_bytes()
    for cut in (0, 8, len(data) // 2, len(data) - 4):
        _replace_bytes(path, data[:cut])
        snapmeta._open.clear_cache()
        with pytest.raises(SnapshotFormatError):
            snapmeta.open_position(store, "A/1/0")


def test_flipped_record_byte_is_caught(golden):
    store, _ = golden
    path = store / _format.SNAPSHOT_NAME
    snap = _format.open_file(path)
    row = snap.find("A/1/0")
    record = bytes(snap._positions.get(row, path, "positions"))
    del snap
    data = bytearray(path.read_bytes())
    at = data.find(record)
    assert at > 0
    data[at + len(record) // 2] ^= 0x20
    _replace_bytes(path, bytes(data))
    with pytest.raises(SnapshotCorruptError, match="checksum") as info:
        snapmeta.open_position(store, "A/1/0")
    assert info.value.section == "positions"
    assert snapmeta.open_position(store, "A/2/0").path == "A/2/0"  # other rows still serve


def test_lookup_finds_every_key(golden):
    store, expected = golden
    snap = _format.open_file(store / _format.SNAPSHOT_NAME)
    for path in expected["positions"]:
        target = snap.find(path)
        assert target is not None and target >= 0
        assert snap.position(target)["path"] == path
    for well in expected["wells"]:
        target = snap.find(well)
        assert target is not None and target <= -2
        assert snap.well(-2 - target)["path"] == well
    assert snap.find("Z/99/0") is None
    snap.verify_lookup()


def test_key_hash_is_specified():
    # docs/format.md gives this value so other implementations can check theirs
    assert _format.key_hash("B/3/0") == int.from_bytes(
        __import__("hashlib").blake2b(b"B/3/0", digest_size=8).digest(), "little"
    )
    assert _format.key_hash("A/1/0") == 0x6F5B2DF39EEB50CC
