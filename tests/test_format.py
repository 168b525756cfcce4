"""Format 2: golden files keep reading, the spec's test vectors hold, values round-trip.

The golden plates under tests/data/golden/v2 and their expected answers were
written once by tests/data/golden/make_v2.py (expected values computed from
the plates' JSON documents, without snapmeta) and are committed: every
release must keep reading them. Format-1 snapshots must give a clear error
that says to rebuild.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import zarr
from conftest import snapshot_file
from hypothesis import given, settings
from hypothesis import strategies as st

import snapmeta
from snapmeta import _format
from snapmeta.errors import SnapshotCorruptError, UnsupportedFormatVersionError

GOLDEN = Path(__file__).parent / "data" / "golden"
SPEC = Path(__file__).resolve().parents[1] / "docs" / "format.md"


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.fixture(params=["0.4", "0.5"])
def golden(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    src = GOLDEN / "v2" / f"plate-{request.param}.ome.zarr"
    dst = tmp_path / src.name
    shutil.copytree(src, dst)  # a copy has new mtimes: the digests must still accept it
    expected = json.loads((GOLDEN / "v2" / f"expected-{request.param}.json").read_text())
    return dst, expected


def test_golden_v2_reads(golden: tuple[Path, dict[str, Any]]) -> None:
    store, expected = golden
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # identical content is not stale
        plate = snapmeta.open_plate(store)
        exp = expected["plate"]
        assert plate.name == exp["name"]
        assert plate.version == exp["version"]
        assert list(plate.rows) == exp["rows"]
        assert list(plate.columns) == exp["columns"]
        assert list(plate.wells) == exp["wells"]
        assert plate.field_count == exp["field_count"]
        assert [a.id for a in plate.acquisitions] == exp["acquisitions"]
        assert _same(plate.attrs, exp["attrs"])
        for well, wexp in expected["wells"].items():
            assert _same(plate.well(well).attrs, wexp["attrs"])
            assert list(plate.well(well).positions) == wexp["positions"]
        assert list(plate) == list(expected["positions"])
        for path, pexp in expected["positions"].items():
            pos = plate[path]
            assert list(pos.channel_names) == pexp["channel_names"]
            assert list(pos.axis_names) == pexp["axis_names"]
            assert [[a.name, a.type, a.unit] for a in pos.axes] == pexp["axes"]
            assert pos.acquisition == pexp["acquisition"]
            assert _same(pos.attrs, pexp["attrs"])
            assert list(pos.levels) == [lv["path"] for lv in pexp["levels"]]
            for lv in pexp["levels"]:
                info = pos.level(lv["path"])
                assert list(info.shape) == lv["shape"]
                assert list(info.chunks) == lv["chunks"]
                assert info.dtype == lv["dtype"]
                assert list(info.scale) == lv["scale"]
                assert (None if info.translation is None else list(info.translation)) == lv[
                    "translation"
                ]
                array = pos[lv["path"]]
                assert list(array.shape) == lv["shape"]
                assert _same(dict(array.attrs), lv["array_attrs"])
            assert list(pos.scale) == pexp["levels"][0]["scale"]
    assert snapmeta.verify(store).ok


def test_golden_values_that_json_text_would_lose(golden: tuple[Path, dict[str, Any]]) -> None:
    store, _ = golden
    pos = snapmeta.open_position(store, "A/1/1")
    custom = pos.attrs["custom"]
    assert math.isnan(custom["nan"])  # a float, not the text "NaN"
    assert custom["big"] == 123456789012345678901234567890  # beyond 64 bits
    assert [type(v) for v in custom["list"]] == [int, float, bool, type(None)]
    assert pos[0].attrs["big"] == 2**70
    assert math.isnan(snapmeta.open_position(store, "A/2/0")[0].fill_value)


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_format_1_says_rebuild(ngff: str, tmp_path: Path) -> None:
    store = shutil.copytree(GOLDEN / "v1" / f"plate-{ngff}.ome.zarr", tmp_path / "p.zarr")
    with pytest.raises(UnsupportedFormatVersionError, match=r"format 1.*snapmeta build") as info:
        snapmeta.open_plate(store)
    assert info.value.found_version == "1"
    with pytest.raises(UnsupportedFormatVersionError, match=r"older snapmeta.*Rebuild"):
        snapmeta.open_plate(store, snapshot=store / ".snapmeta.arrow")
    snapmeta.build_snapshot(store)
    assert not (store / ".snapmeta.arrow").exists()  # the builder removes format 1's file
    assert snapmeta.open_position(store, "A/1/0").channel_names == ("DAPI", "GFP")


# ---------------------------------------------------------------------------
# the spec


def test_spec_test_vectors_hold() -> None:
    """The table in docs/format.md section 10, checked against the code."""
    text = SPEC.read_text()
    assert f"{_format.crc32(b'123456789'):#010X}".replace("0X", "0x") in text
    assert f"{_format.key_hash('A/1/0'):#010X}".replace("0X", "0x") in text
    payload = bytes.fromhex(re.search(r"payload `([0-9a-f]+)` \| crc `0xF965FCAE`", text)[1])
    assert _format.unpack(payload) == [
        0,
        [],
        0,
        [[244, 1000363, 0], [2395, 620609865, 1], [762, 125005, 2]],
    ]
    entry = _format.seal("A/1/0", payload)
    assert f"{int.from_bytes(entry[:4], 'little'):#010X}".replace("0X", "0x") in text
    assert entry[:4].hex() in text
    shared = _format.pack([0, [], [], [[1, 0, None, None]], None, None])
    assert shared.hex() in text
    shared_crc = _format.crc32("images/0", b"\0", shared)
    assert f"{shared_crc:#010X}".replace("0X", "0x") in text
    assert f"{_format.paths_checksum(['A/1', 'A/1/0']):#010X}".replace("0X", "0x") in text
    assert _format.content_digest(b"{}").hex() in text
    assert [_format.lookup_capacity(n) for n in (2, 12, 14070)] == [8, 32, 32768]


def test_schema_is_the_documented_one() -> None:
    text = SPEC.read_text()
    for field in _format.SCHEMA:
        assert f"`{field.name}`" in text
        assert not field.nullable
        if pa.types.is_list(field.type):
            assert field.type.value_field.name == "item"
            assert not field.type.value_field.nullable
    assert _format.SCHEMA.metadata == {b"snapmeta.format": b"2"}


def test_in_store_snapshot_is_a_zarr_array(plate_96: dict[str, Path]) -> None:
    for store in plate_96.values():
        array = zarr.open_group(store, mode="r")[".snapmeta"]
        assert isinstance(array, zarr.Array)
        assert bytes(array[:]) == snapshot_file(store).read_bytes()
        assert array.attrs["snapmeta"]["format"] == 2
        assert snapshot_file(store).stat().st_mode & 0o777 == 0o444


def test_leading_schema_must_match_the_footer(plate_96: dict[str, Path], tmp_path: Path) -> None:
    """A reader uses the footer's schema; a file whose leading copy differs is rejected."""
    store = shutil.copytree(plate_96["0.4"], tmp_path / "p.zarr")
    path = snapshot_file(store)
    good = path.read_bytes()
    batch = ipc.open_file(pa.py_buffer(good)).get_batch(0)
    other = pa.BufferOutputStream()  # the same file with "3" for "2" in the schema metadata
    lying = batch.replace_schema_metadata({b"snapmeta.format": b"3"})
    with ipc.new_file(other, lying.schema) as writer:
        writer.write_batch(lying)
    bad = other.getvalue().to_pybytes()
    head = 8 + _message_length(good, 8)
    assert head == 8 + _message_length(bad, 8)  # same length: the footer's offsets still hold
    path.unlink()
    path.write_bytes(bad[:head] + good[head:])
    with pytest.raises(SnapshotCorruptError, match="leading schema"):
        snapmeta.open_plate(store)


def _message_length(data: bytes, offset: int) -> int:
    """Bytes of the IPC message at ``offset``: continuation, length prefix, metadata, body."""
    length = int.from_bytes(data[offset + 4 : offset + 8], "little")
    return 8 + length


# ---------------------------------------------------------------------------
# lossless attributes: any JSON value survives template + patch + MessagePack

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=30,
)


def _identical(a: Any, b: Any) -> bool:
    """Equal with types and member order, NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_identical(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


@settings(max_examples=200, deadline=None)
@given(first=json_values, second=json_values)
def test_template_and_patch_are_lossless(first: Any, second: Any) -> None:
    shape, defaults = _format.split_leaves(first)
    template = _format.decode_template(_format.unpack(_format.pack([shape, defaults])), 0)
    assert _identical(_format.join_leaves(template.shape, template.defaults), first)
    other_shape, leaves = _format.split_leaves(second)
    if _format.pack(other_shape) == _format.pack(shape):
        patch = _format.make_patch(defaults, leaves)
        decoded = _format.decode_patch(
            _format.unpack(_format.pack(_format.encode_patch(patch))), len(defaults), "t", 0
        )
        restored = list(template.defaults)
        for i, v in decoded.items():
            restored[i] = v
        assert _identical(_format.join_leaves(template.shape, restored), second)
