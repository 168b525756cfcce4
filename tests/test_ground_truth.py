"""Snapshots of plates written by real writers match the source JSON exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import writers
from conftest import node_attributes, same_json

import snapmeta


def _plates(tmp_path):
    yield "zarr-v2", lambda p: writers.write_zarr_plate(p, zarr_format=2)
    yield "zarr-v3", lambda p: writers.write_zarr_plate(p, zarr_format=3)
    yield "ngff-0.4", lambda p: writers.assemble_ngff_example_plate(p, version="0.4")
    yield "ngff-0.5", lambda p: writers.assemble_ngff_example_plate(p, version="0.5")
    yield "bf2raw-0.4", lambda p: writers.assemble_bf2raw_plate(p, version="0.4")
    yield "bf2raw-0.5", lambda p: writers.assemble_bf2raw_plate(p, version="0.5")
    yield "iohub-0.4", lambda p: writers.write_iohub_plate(p, version="0.4")
    yield "iohub-0.5", lambda p: writers.write_iohub_plate(p, version="0.5")
    yield "ome-zarr-0.4", lambda p: writers.write_omezarr_plate(p, version="0.4")
    yield "ome-zarr-0.5", lambda p: writers.write_omezarr_plate(p, version="0.5")


WRITERS = dict(_plates(None))


@pytest.mark.parametrize("writer", list(WRITERS))
def test_snapshot_matches_source(tmp_path, writer):
    if writer.startswith("iohub"):
        pytest.importorskip("iohub")
    if writer.startswith("ome-zarr"):
        pytest.importorskip("ome_zarr")
    written = WRITERS[writer](tmp_path / "plate.ome.zarr")
    store = written.path
    snapmeta.build_snapshot(store)
    plate = snapmeta.open_plate(store)
    zf = written.zarr_format

    root_attrs = node_attributes(store, "", zf)
    assert same_json(plate.attrs, root_attrs)
    plate_doc = root_attrs["ome"]["plate"] if zf == 3 else root_attrs["plate"]
    assert plate.rows == tuple(r["name"] for r in plate_doc["rows"])
    assert plate.columns == tuple(c["name"] for c in plate_doc["columns"])
    assert plate.wells == tuple(w["path"] for w in plate_doc["wells"])
    assert plate.name == plate_doc.get("name")
    assert plate.field_count == plate_doc.get("field_count")
    assert [a.id for a in plate.acquisitions] == [
        a["id"] for a in plate_doc.get("acquisitions", [])
    ]
    assert plate.zarr_format == zf
    for well_path in plate.wells:
        well = plate.well(well_path)
        assert same_json(well.attrs, node_attributes(store, well_path, zf))
        well_ome = well.attrs["ome"] if zf == 3 else well.attrs
        images = [f"{well_path}/{i['path']}" for i in well_ome["well"]["images"]]
        assert list(well.positions) == images
        assert f"{well.row}/{well.column}" == well_path
    assert sorted(plate) == sorted(written.positions)
    assert len(plate) == len(written.positions)

    for path, expected in written.positions.items():
        assert path in plate
        pos = plate[path]
        assert pos.path == path
        assert pos.well == path.rsplit("/", 1)[0]
        if expected.channel_names is not None:
            assert list(pos.channel_names) == list(expected.channel_names)
        assert list(pos.axis_names) == list(expected.axis_names)
        assert list(pos.levels) == list(expected.levels)
        group_attrs = node_attributes(store, path, zf)
        assert same_json(pos.attrs, group_attrs)
        ome = group_attrs.get("ome", group_attrs) if zf == 3 else group_attrs
        ms = ome["multiscales"][0]
        assert [a["name"] for a in ms["axes"]] == list(pos.axis_names)
        assert [a.get("unit") for a in ms["axes"]] == [a.unit for a in pos.axes]
        for i, dataset in enumerate(ms["datasets"]):
            scale = next(
                t["scale"] for t in dataset["coordinateTransformations"] if t["type"] == "scale"
            )
            glob = next(
                (
                    t["scale"]
                    for t in ms.get("coordinateTransformations", [])
                    if t["type"] == "scale"
                ),
                [1.0] * len(scale),
            )
            assert pos.level(i).scale == pytest.approx(
                tuple(a * b for a, b in zip(scale, glob, strict=True)), rel=0, abs=0
            )
            array = pos[dataset["path"]]
            reference = snapmeta_free_open(store, f"{path}/{dataset['path']}", zf)
            assert array.shape == reference.shape == tuple(expected.shapes[i])
            assert pos.level(i).shape == array.shape
            assert array.dtype == reference.dtype == expected.dtype
            assert array.chunks == reference.chunks
            assert same_json(dict(array.attrs), dict(reference.attrs))
        if expected.scales is not None:
            # the writer's dataset scale, composed with the multiscale-level one
            glob = next(
                (
                    t["scale"]
                    for t in ms.get("coordinateTransformations", [])
                    if t["type"] == "scale"
                ),
                [1.0] * len(expected.scales[0]),
            )
            effective = tuple(a * b for a, b in zip(expected.scales[0], glob, strict=True))
            assert pos.scale == pytest.approx(effective, rel=1e-12)
        if expected.data is not None:
            np.testing.assert_array_equal(pos.data[:], expected.data)
            np.testing.assert_array_equal(
                pos["0" if "0" in pos.levels else pos.levels[0]][:], expected.data
            )

    report = snapmeta.verify(store)
    assert report.ok, str(report)


def snapmeta_free_open(store, path, zarr_format):
    import zarr

    return zarr.open_array(store / path, mode="r", zarr_format=zarr_format)


def test_generated_plate_matches_json(plate_96):
    for ngff, store in plate_96.items():
        zf = 2 if ngff == "0.4" else 3
        plate = snapmeta.open_plate(store)
        assert len(plate) == 96
        for path, pos in plate.positions():
            attrs = node_attributes(store, path, zf)
            ome = attrs["ome"] if zf == 3 else attrs
            assert list(pos.channel_names) == [c["label"] for c in ome["omero"]["channels"]]
            meta_name = "zarr.json" if zf == 3 else ".zarray"
            doc = json.loads((store / path / "0" / meta_name).read_text())
            assert list(pos.shape) == doc["shape"]
            assert same_json(pos.attrs, attrs)
