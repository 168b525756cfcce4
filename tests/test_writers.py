"""Prove the ground-truth plate writers in ``tests/writers.py`` describe what they write.

Each plate is read back with plain zarr (``zarr.open_group``) and with ``json``
on the raw metadata files, and compared with the returned ``WrittenPlate``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

try:
    import writers as w
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import writers as w

# Keys the NGFF 0.4 spec puts at the top level of .zattrs (zarr format 2).
OME_V04_KEYS = {"plate", "well", "multiscales", "omero", "labels", "image-label"}
OME_V04_KEYS |= {"bioformats2raw.layout", "series"}
OME_V04_KEYS |= {"version"}  # iohub 0.3.11 writes the NGFF version at the top of 0.4 groups


# --------------------------------------------------------------------------- helpers


def json_equal(a: Any, b: Any) -> bool:
    """Deep JSON equality where NaN equals NaN and bools never equal numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def raw_meta(root: Path, key: str, zarr_format: int, array: bool = False) -> dict[str, Any]:
    """Node metadata document read with ``json`` (``.zarray``/``.zgroup`` or ``zarr.json``)."""
    node = root / key if key else root
    if zarr_format == 3:
        return json.loads((node / "zarr.json").read_text(encoding="utf-8"))
    return json.loads((node / (".zarray" if array else ".zgroup")).read_text(encoding="utf-8"))


def raw_attrs(root: Path, key: str, zarr_format: int) -> dict[str, Any]:
    """Group attributes read with ``json`` (``.zattrs`` or ``zarr.json["attributes"]``)."""
    node = root / key if key else root
    if zarr_format == 3:
        doc = json.loads((node / "zarr.json").read_text(encoding="utf-8"))
        assert doc["node_type"] == "group"
        return doc["attributes"]
    zattrs = node / ".zattrs"
    return json.loads(zattrs.read_text(encoding="utf-8")) if zattrs.exists() else {}


def ome_of(attrs: Mapping[str, Any], plate: w.WrittenPlate) -> Mapping[str, Any]:
    """OME metadata of a group: top level (0.4) or under ``ome`` with its version (0.5)."""
    if plate.zarr_format == 2:
        return attrs
    assert attrs["ome"]["version"] == plate.ngff_version
    return attrs["ome"]


def custom_of(attrs: Mapping[str, Any], plate: w.WrittenPlate) -> dict[str, Any]:
    """Non-OME attributes of a group."""
    if plate.zarr_format == 2:
        return {k: v for k, v in attrs.items() if k not in OME_V04_KEYS}
    return {k: v for k, v in attrs.items() if k != "ome"}


def group_attrs(plate: w.WrittenPlate, root: zarr.Group, key: str) -> dict[str, Any]:
    """Attributes via zarr, checked against the raw JSON file."""
    group = root[key] if key else root
    assert isinstance(group, zarr.Group)
    attrs = group.attrs.asdict()
    assert json_equal(attrs, raw_attrs(plate.path, key, plate.zarr_format))
    return attrs


def scale_vectors(multiscale: Mapping[str, Any]) -> list[list[float]]:
    return [
        next(t["scale"] for t in ds["coordinateTransformations"] if t["type"] == "scale")
        for ds in multiscale["datasets"]
    ]


def check_plate(plate: w.WrittenPlate) -> zarr.Group:
    """Read ``plate`` back with zarr and json and compare with the description."""
    assert plate.ngff_version in w.NGFF_VERSIONS
    assert plate.zarr_format == {"0.4": 2, "0.5": 3}[plate.ngff_version]
    assert raw_meta(plate.path, "", plate.zarr_format)["zarr_format"] == plate.zarr_format
    root = zarr.open_group(str(plate.path), mode="r")
    assert root.metadata.zarr_format == plate.zarr_format

    # plate
    plate_meta = ome_of(group_attrs(plate, root, ""), plate)["plate"]
    if plate.zarr_format == 2:
        assert plate_meta["version"] == "0.4"
    assert plate_meta.get("name") == plate.plate_name
    assert [r["name"] for r in plate_meta["rows"]] == plate.rows
    assert [c["name"] for c in plate_meta["columns"]] == plate.columns
    assert [x["path"] for x in plate_meta["wells"]] == plate.wells
    for well in plate_meta["wells"]:
        row, col = well["path"].split("/")
        assert plate.rows[well["rowIndex"]] == row
        assert plate.columns[well["columnIndex"]] == col
    assert [a["id"] for a in plate_meta.get("acquisitions", [])] == plate.acquisition_ids
    assert plate_meta.get("field_count") == plate.field_count

    # wells -> positions, in plate order
    found: list[str] = []
    acquisitions: dict[str, int | None] = {}
    for well_path in plate.wells:
        well_meta = ome_of(group_attrs(plate, root, well_path), plate)["well"]
        if plate.zarr_format == 2:
            assert well_meta["version"] == "0.4"
        for image in well_meta["images"]:
            found.append(f"{well_path}/{image['path']}")
            acquisitions[found[-1]] = image.get("acquisition")
    assert found == list(plate.positions)
    assert plate.well_fields == {
        well: [p.rpartition("/")[2] for p in found if p.rpartition("/")[0] == well]
        for well in plate.wells
    }

    # positions
    for pos_path, expected in plate.positions.items():
        attrs = group_attrs(plate, root, pos_path)
        ome = ome_of(attrs, plate)
        multiscale = ome["multiscales"][0]
        if plate.zarr_format == 2:
            assert multiscale["version"] == "0.4"
        assert [ax["name"] for ax in multiscale["axes"]] == expected.axis_names
        assert [ds["path"] for ds in multiscale["datasets"]] == expected.levels
        if expected.scales is not None:
            for got, want in zip(scale_vectors(multiscale), expected.scales, strict=True):
                assert got == pytest.approx(want)
        if expected.channel_names is None:
            assert "omero" not in ome
        else:
            assert [ch["label"] for ch in ome["omero"]["channels"]] == expected.channel_names
        assert acquisitions[pos_path] == expected.acquisition
        assert json_equal(custom_of(attrs, plate), expected.custom_attrs)

        assert len(expected.shapes) == len(expected.levels)
        for level, shape in zip(expected.levels, expected.shapes, strict=True):
            array = root[f"{pos_path}/{level}"]
            assert isinstance(array, zarr.Array)
            assert array.shape == shape
            assert len(shape) == len(expected.axis_names)
            assert array.dtype == expected.dtype
            meta = raw_meta(plate.path, f"{pos_path}/{level}", plate.zarr_format, array=True)
            assert tuple(meta["shape"]) == shape
            if plate.zarr_format == 2:
                assert meta["dimension_separator"] == "/"
            elif meta.get("dimension_names") is not None:
                assert meta["dimension_names"] == expected.axis_names
        if expected.data is not None:
            assert expected.data.shape == expected.shapes[0]
            assert expected.data.dtype == expected.dtype
            np.testing.assert_array_equal(
                root[f"{pos_path}/{expected.levels[0]}"][...], expected.data
            )

    # exact attributes of every group, and no group we did not describe
    if plate.node_attrs is not None:
        for key, want in plate.node_attrs.items():
            assert json_equal(group_attrs(plate, root, key), want), key
        groups = {
            name for name, node in root.members(max_depth=None) if isinstance(node, zarr.Group)
        }
        assert groups | {""} == set(plate.node_attrs)
    return root


# --------------------------------------------------------------------------- example documents


def test_ngff_data_copied_with_readme() -> None:
    readme = (w.NGFF_DATA_DIR / "README.md").read_text(encoding="utf-8")
    assert "W3C" in readme
    assert "Provenance of this copy" in readme
    for version in w.NGFF_VERSIONS:
        assert (
            w.NGFF_DATA_DIR / version / "examples" / "plate_strict" / "plate_6wells.json"
        ).is_file()
        assert (w.NGFF_DATA_DIR / version / "schemas" / "plate.schema").is_file()


def test_every_example_and_schema_parses() -> None:
    files = sorted(w.NGFF_DATA_DIR.rglob("*.json")) + sorted(w.NGFF_DATA_DIR.rglob("*.schema"))
    assert len(files) > 30
    commented = 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        if "//" in text.replace("://", ""):
            commented += 1
        assert isinstance(json.loads(w.strip_json_comments(text)), dict), path
    assert commented >= 2  # multiscales examples of 0.4 and 0.5 carry // comments


def test_strip_json_comments_keeps_strings() -> None:
    text = '{"url": "https://x/y", // trailing\n "s": "a // b /* c */", /* block */ "n": 1}'
    assert json.loads(w.strip_json_comments(text)) == {
        "url": "https://x/y",
        "s": "a // b /* c */",
        "n": 1,
    }
    assert json.loads(w.strip_json_comments('{"q": "say \\"//\\""}')) == {"q": 'say "//"'}


# --------------------------------------------------------------------------- writers


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_iohub_plate(tmp_path: Path, version: str) -> None:
    pytest.importorskip("iohub.ngff")
    plate = w.write_iohub_plate(tmp_path / "iohub.zarr", version=version)
    assert plate.writer == "iohub"
    assert (plate.ngff_version, plate.zarr_format) == (version, 2 if version == "0.4" else 3)
    assert {len(f) for f in plate.well_fields.values()} == {1, 2}
    assert all(len(p.levels) == 2 for p in plate.positions.values())
    root = check_plate(plate)

    # iohub specifics the snapshot has to cope with (see writers.write_iohub_plate)
    ome = ome_of(root.attrs.asdict(), plate)
    assert ome["plate"]["version"] == version  # also inside `plate` on 0.5
    assert ome["plate"]["field_count"] == len(plate.positions)  # total FOVs, not max per well
    assert root["A"].attrs.asdict() == {}
    pos = ome_of(root["A/1/0"].attrs.asdict(), plate)
    assert pos["multiscales"][0]["name"] == "0"
    assert pos["omero"]["name"] == "0"
    assert pos["omero"]["version"] == version
    # iohub 0.3.0a7 marks every channel active, 0.3.11 the first only
    assert [ch["active"] for ch in pos["omero"]["channels"]] in ([True, True], [True, False])
    assert not np.any(root["A/1/0/1"][...])  # pyramid level created, never filled
    if version == "0.5":
        assert ome_of(root["A/1"].attrs.asdict(), plate)["well"]["version"] == "0.5"
        assert pos["multiscales"][0]["version"] == "0.5"
        assert root["A/1/0/0"].metadata.dimension_names == ("T", "C", "Z", "Y", "X")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_omezarr_plate(tmp_path: Path, version: str) -> None:
    pytest.importorskip("ome_zarr.writer")
    plate = w.write_omezarr_plate(tmp_path / "omezarr.zarr", version=version)
    assert plate.writer == "ome-zarr"
    assert plate.zarr_format == (2 if version == "0.4" else 3)
    root = check_plate(plate)

    ome = ome_of(root.attrs.asdict(), plate)
    assert ome["plate"]["version"] == version  # also inside `plate` on 0.5
    image = ome_of(root["A/1/0"].attrs.asdict(), plate)["multiscales"][0]
    pyramid = ome_of(root["A/1/1"].attrs.asdict(), plate)["multiscales"][0]
    for multiscale in (image, pyramid):
        kinds = [
            [t["type"] for t in ds["coordinateTransformations"]] for ds in multiscale["datasets"]
        ]
        assert kinds == [["scale", "translation"]] * 2
        # ome-zarr-py 0.21's write_image drops axis units even when given
        assert [ax.get("unit") for ax in multiscale["axes"]] in (
            ["second", None, "micrometer", "micrometer", "micrometer"],
            [None] * 5,
        )
    # level-1 half-pixel offset: physical units from write_image, pixels from write_multiscale
    assert image["datasets"][1]["coordinateTransformations"][1]["translation"][3:] == pytest.approx(
        [0.1625, 0.1625]
    )
    assert pyramid["datasets"][1]["coordinateTransformations"][1]["translation"][3:] == [0.5, 0.5]
    np.testing.assert_array_equal(
        root["A/1/1/s1"][...], plate.positions["A/1/1"].data[..., ::2, ::2]
    )


def test_omezarr_default_is_ngff_05_on_zarr_v3(tmp_path: Path) -> None:
    pytest.importorskip("ome_zarr.writer")
    from ome_zarr.writer import write_plate_metadata

    group = zarr.open_group(str(tmp_path / "default.zarr"), mode="w-")
    write_plate_metadata(group, ["A"], ["1"], ["A/1"])
    doc = raw_meta(tmp_path / "default.zarr", "", 3)
    assert doc["zarr_format"] == 3
    assert doc["attributes"]["ome"]["version"] == "0.5"


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_plate(tmp_path: Path, zarr_format: int) -> None:
    plate = w.write_zarr_plate(tmp_path / "plain.zarr", zarr_format=zarr_format)
    assert plate.writer == "zarr"
    assert plate.ngff_version == ("0.4" if zarr_format == 2 else "0.5")
    assert plate.rows == ["A", "B", "C"]
    assert not any(well.startswith("B/") for well in plate.wells)  # sparse
    assert sorted({len(f) for f in plate.well_fields.values()}) == [1, 2, 3]
    assert plate.acquisition_ids == [0, 1]
    root = check_plate(plate)

    custom = plate.positions["A/1/0"].custom_attrs
    assert custom["acquisition_details"]["microscope"]["name"].startswith("Ωmega")
    has_nan = "focus_offset" in custom["acquisition_details"]
    assert has_nan == (zarr_format == 2)
    if has_nan:
        assert math.isnan(root["A/1/0"].attrs["acquisition_details"]["focus_offset"])
        assert "NaN" in (plate.path / "A/1/0/.zattrs").read_text(encoding="utf-8")
    assert all(not p.custom_attrs for k, p in plate.positions.items() if k != "A/1/0")
    if zarr_format == 3:
        assert "version" not in root.attrs["ome"]["plate"]
        assert root["C/2/0/0"].shards == (1, 1, 1, 16, 16)
        assert root["C/2/0/0"].chunks == (1, 1, 1, 8, 8)
    else:
        assert not (plate.path / "zarr.json").exists()


def test_zarr_plate_nan_on_v3_is_opt_in(tmp_path: Path) -> None:
    plate = w.write_zarr_plate(tmp_path / "nan3.zarr", zarr_format=3, include_nan=True)
    check_plate(plate)
    assert "NaN" in (plate.path / "A/1/0/zarr.json").read_text(encoding="utf-8")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("layout", ["6wells", "2wells"])
def test_ngff_example_plate(tmp_path: Path, version: str, layout: str) -> None:
    plate = w.assemble_ngff_example_plate(tmp_path / "example.zarr", version=version, plate=layout)
    assert plate.writer == "ngff-example"
    root = check_plate(plate)

    # the documents are embedded unchanged
    def doc(name: str) -> dict[str, Any]:
        loaded = w.load_ngff_example(version, name)
        return loaded if version == "0.4" else loaded["attributes"]

    assert json_equal(root.attrs.asdict(), doc(f"plate_strict/plate_{layout}.json"))
    fields = {2: doc("well_strict/well_2fields.json"), 4: doc("well_strict/well_4fields.json")}
    for well, names in plate.well_fields.items():
        assert json_equal(root[well].attrs.asdict(), fields[len(names)])
    image = doc("multiscales_strict/multiscales_example.json")
    for pos_path, expected in plate.positions.items():
        assert json_equal(root[pos_path].attrs.asdict(), image)
        assert expected.channel_names is None
        assert expected.shapes == [(2, 2, 8, 8, 8), (2, 2, 4, 4, 4), (2, 2, 2, 2, 2)]
    assert sorted({len(f) for f in plate.well_fields.values()}) == [2, 4]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ngff_example_plate_with_channels(tmp_path: Path, version: str) -> None:
    plate = w.assemble_ngff_example_plate(
        tmp_path / "channels.zarr",
        version=version,
        plate="2wells",
        well_docs={"C/5": "well_2fields.json", "D/7": "well_2fields.json"},
        channel_names=["DAPI", "GFP", "RFP"],
    )
    check_plate(plate)
    assert list(plate.positions) == ["C/5/0", "C/5/1", "D/7/0", "D/7/1"]
    assert {p.shapes[0] for p in plate.positions.values()} == {(2, 3, 8, 8, 8)}


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_bf2raw_plate(tmp_path: Path, version: str) -> None:
    plate = w.assemble_bf2raw_plate(tmp_path / "bf2raw.zarr", version=version)
    assert plate.writer == "bf2raw-example"
    root = check_plate(plate)
    ome = ome_of(root.attrs.asdict(), plate)
    assert ome["bioformats2raw.layout"] == 3
    assert "plate" in ome
    assert list(plate.positions) == ["A/1/0"]
    assert ome_of(root["OME"].attrs.asdict(), plate)["series"] == ["A/1/0"]
    assert (plate.path / "OME" / "METADATA.ome.xml").is_file()


def test_writers_refuse_existing_store(tmp_path: Path) -> None:
    target = tmp_path / "exists.zarr"
    w.assemble_bf2raw_plate(target, version="0.4")
    with pytest.raises(zarr.errors.ContainsGroupError):
        w.assemble_bf2raw_plate(target, version="0.4")
    with pytest.raises(ValueError, match="version"):
        w.assemble_ngff_example_plate(tmp_path / "bad.zarr", version="0.3")
