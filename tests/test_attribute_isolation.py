"""Attribute writes through one array handle never reach another array's document.

snapmeta caches parsed array metadata per distinct array document, and zarr
updates attributes in place; these tests write through every path and read
every array document back from disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import snapmeta
from snapmeta.compat import open_ome_zarr
from snapmeta.testing import write_plate


def _array_attrs(store: Path, node: str, ngff: str) -> dict[str, Any]:
    if ngff == "0.5":
        return json.loads((store / node / "zarr.json").read_text()).get("attributes", {})
    path = store / node / ".zattrs"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture(params=["0.4", "0.5"])
def plate(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    store = tmp_path / "plate.ome.zarr"
    write_plate(store, rows=1, columns=3, fields=2, ngff=request.param, levels=2, data="none")
    snapmeta.build_snapshot(store)
    return store, request.param


NODES = [f"A/{c}/{f}/{lvl}" for c in (1, 2, 3) for f in (0, 1) for lvl in (0, 1)]


def _check(store: Path, ngff: str, expected: dict[str, dict[str, Any]]) -> None:
    on_disk = {node: _array_attrs(store, node, ngff) for node in NODES}
    assert on_disk == {node: expected.get(node, {}) for node in NODES}


def test_positions_of_one_plate(plate: tuple[Path, str]) -> None:
    store, ngff = plate
    a = snapmeta.open_position(store, "A/1/0", mode="a")[0]
    b = snapmeta.open_position(store, "A/2/0", mode="a")[0]
    a.attrs["only_on_A"] = 1
    b.attrs["only_on_B"] = 2
    _check(store, ngff, {"A/1/0/0": {"only_on_A": 1}, "A/2/0/0": {"only_on_B": 2}})
    assert dict(a.attrs) == {"only_on_A": 1}
    assert dict(b.attrs) == {"only_on_B": 2}


def test_two_handles_of_one_array_and_other_levels(plate: tuple[Path, str]) -> None:
    store, ngff = plate
    pos = snapmeta.open_position(store, "A/3/1", mode="r+")
    first, second, level1 = pos[0], pos["0"], pos[1]
    first.attrs["k"] = "first"
    second.attrs.update({"other": [1, 2]})
    level1.attrs["lvl"] = 1.5
    # the second handle was opened before the first wrote: it writes what it
    # holds plus its own key, as two zarr.open_array handles would
    _check(store, ngff, {"A/3/1/0": {"other": [1, 2]}, "A/3/1/1": {"lvl": 1.5}})
    fresh = snapmeta.open_position(store, "A/2/1", mode="r")[0]
    assert dict(fresh.attrs) == {}


def test_nested_values_are_not_shared(plate: tuple[Path, str]) -> None:
    store, ngff = plate
    a = snapmeta.open_position(store, "A/1/1", mode="a")[1]
    a.attrs["nested"] = {"x": [1]}
    b = snapmeta.open_position(store, "A/1/0", mode="a")[1]
    b.attrs["own"] = True
    _check(store, ngff, {"A/1/1/1": {"nested": {"x": [1]}}, "A/1/0/1": {"own": True}})


def test_compat_arrays(plate: tuple[Path, str]) -> None:
    store, ngff = plate
    with open_ome_zarr(store, layout="hcs", mode="r+") as p:
        p["A/1/0"]["0"].attrs["via"] = "compat-A"
        p["A/2/1"]["1"].attrs["via"] = "compat-B"
        p["A/3/0"].data.attrs["data"] = 0
    _check(
        store,
        ngff,
        {
            "A/1/0/0": {"via": "compat-A"},
            "A/2/1/1": {"via": "compat-B"},
            "A/3/0/0": {"data": 0},
        },
    )
