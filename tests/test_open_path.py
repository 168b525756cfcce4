"""The open path reads no metadata document, parses no JSON, imports no pydantic."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

AUDIT = textwrap.dedent(
    """
    import json, sys
    store, paths = sys.argv[1], sys.argv[2:]
    opened = []
    sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
    import json.decoder
    parsed = []
    original = json.decoder.JSONDecoder.decode
    def counting(self, s, *a, **k):
        parsed.append(len(s))
        return original(self, s, *a, **k)
    json.decoder.JSONDecoder.decode = counting
    import snapmeta
    opened.clear()
    parsed.clear()  # imports (donfig reads its version JSON) are not the open path
    shapes = []
    for path in paths:
        pos = snapmeta.open_position(store, path)
        array = pos["0"]
        shapes.append([list(array.shape), pos.channel_names, pos.scale])
    names = (".zattrs", ".zarray", ".zgroup", "zarr.json", ".zmetadata")
    documents = [p for p in opened if p.endswith(names)]
    print(json.dumps({
        "documents": documents,
        "json_parsed": len(parsed),
        "pydantic": "pydantic" in sys.modules,
        "mapped": len(snapmeta._reader._cache),
        "shapes": shapes,
    }))
    """
)


def _audit(store, paths):
    out = subprocess.run(
        [sys.executable, "-c", AUDIT, str(store), *paths],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_open_reads_no_metadata_96(plate_96, ngff):
    store = plate_96[ngff]
    paths = ["A/1/0", "D/7/0", "H/12/0"]
    result = _audit(store, paths)
    assert result["documents"] == []
    assert result["json_parsed"] == 0
    assert result["pydantic"] is False
    assert result["mapped"] == 1  # mapped once, then served from the process cache
    assert [s[0] for s in result["shapes"]] == [[1, 2, 4, 64, 64]] * 3
    assert result["shapes"][0][1] == ["DAPI", "GFP"]


def test_open_reads_no_metadata_7035(plate_7035):
    paths = ["A/1/0", "Q/100/0", "AI/201/0"]
    result = _audit(plate_7035, paths)
    assert result["documents"] == []
    assert result["json_parsed"] == 0
    assert result["pydantic"] is False
    assert [s[0] for s in result["shapes"]] == [[1, 2, 1, 32, 32]] * 3


def test_audit_sees_json_reads(plate_96):
    """The audit itself can fail: plain zarr's open is caught reading documents."""
    store = plate_96["0.5"]
    script = AUDIT.replace(
        'pos = snapmeta.open_position(store, path)\n    array = pos["0"]',
        "import zarr; array = zarr.open_array(f'{store}/{path}/0', mode='r'); "
        "pos = snapmeta.open_position(store, path)",
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(store), "A/1/0"],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["documents"] and result["json_parsed"] > 0
