"""A snapshotted plate lists without a single warning caused by snapmeta.

zarr warns about any entry of a group it does not recognise as a zarr node;
the in-store snapshot is a zarr array for that reason. Each tool lists the
plate with warnings turned into errors, next to a control copy without the
snapshot: both must behave the same.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import snapmeta
from snapmeta.testing import write_plate

LISTERS = {
    "zarr": """
        import zarr
        g = zarr.open_group(store, mode="r")
        names = sorted(k for k, _ in g.members())
        names += sorted(g.group_keys()) + sorted(g.array_keys())
        names += [str(len(list(g.members(max_depth=None))))]
        g.tree()
        result = names
    """,
    "iohub": """
        from iohub.ngff import open_ome_zarr
        with open_ome_zarr(store, layout="hcs", mode="r") as plate:
            result = [name for name, _ in plate.positions()] + [n for n, _ in plate.wells()]
            plate.print_tree()
    """,
    "ome-zarr": """
        from ome_zarr.io import parse_url
        from ome_zarr.reader import Reader
        result = [str(node.zarr) for node in Reader(parse_url(store))()]
    """,
}

SCRIPT = """
import io, json, sys, warnings, contextlib
out = {{}}
for store in sys.argv[1:]:  # one interpreter per tool: importing the tools is slow
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("always")
{body}
    out[store] = {{"warnings": [str(w.message) for w in caught], "result": result}}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def plates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Per NGFF version: (control without a snapshot, the same plate snapshotted)."""
    out = {}
    for ngff in ("0.4", "0.5"):
        base = tmp_path_factory.mktemp(f"warn{ngff}")
        control = write_plate(base / "control.zarr", rows=2, columns=2, fields=2, ngff=ngff)
        plate = shutil.copytree(control, base / "plate.zarr")
        snapmeta.build_snapshot(plate)
        out[ngff] = (control, plate)
    return out


def _run(tool: str, stores: list[Path]) -> dict[str, dict[str, list[str]]]:
    body = textwrap.indent(textwrap.dedent(LISTERS[tool]), "        ")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(body=body), *map(str, stores)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("tool", list(LISTERS))
def test_listing_a_snapshotted_plate_is_silent(
    tool: str, plates: dict[str, tuple[Path, Path]]
) -> None:
    if tool == "iohub" and importlib.util.find_spec("iohub") is None:
        pytest.skip("iohub is not installed")
    if tool == "ome-zarr" and importlib.util.find_spec("ome_zarr") is None:
        pytest.skip("ome-zarr-py is not installed")
    results = _run(tool, [p for pair in plates.values() for p in pair])
    for control, plate in plates.values():
        before, after = results[str(control)], results[str(plate)]
        _compare(tool, before, after)


def _compare(tool: str, before: dict[str, list[str]], after: dict[str, list[str]]) -> None:
    assert not [w for w in after["warnings"] if "snapmeta" in w], after["warnings"]
    assert after["warnings"] == before["warnings"]
    if tool == "zarr":
        # the snapshot is listed as what it is: an array member of the root group
        assert ".snapmeta" in after["result"] and ".snapmeta" not in before["result"]
    else:
        assert after["result"] == [
            r.replace("control.zarr", "plate.zarr") for r in before["result"]
        ]
