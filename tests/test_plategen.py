"""Generated plates read back by zarr and iohub exactly like plates iohub writes.

``snapmeta.testing.write_plate`` writes the JSON documents by hand for
speed, so these tests hold it to what real readers see: iohub's ``Plate``
model, plain zarr groups and arrays, the ome-zarr-models validators, and a
plate written by iohub 0.3.0a7 itself with the same layout.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from snapmeta.testing import VOXEL_SIZE, write_plate

NGFF_VERSIONS = ("0.4", "0.5")
ZARR_FORMAT = {"0.4": 2, "0.5": 3}

CHANNELS = ["DAPI", "GFP"]
SHAPE = (1, 2, 3, 16, 12)
LEVELS = 2
LEVEL_SHAPES = [SHAPE, (1, 2, 3, 8, 6)]
LEVEL_CHUNKS = [(1, 1, 1, 16, 12), (1, 1, 1, 8, 6)]
PLATE_NAME = "plategen test plate"
# Sparse 2 x 3 plate; the order is one iohub reproduces when it assigns row
# and column indices by creation order.
WELLS = ["A/1", "B/2", "A/3"]
FIELDS = [2, 1]  # cycled: A/1 -> 2, B/2 -> 1, A/3 -> 2
ACQUISITIONS = 2
POSITIONS = ["A/1/0", "A/1/1", "B/2/0", "A/3/0", "A/3/1"]
ACQUISITION_OF_FIELD = {"0": 0, "1": 1}


def _translation(level: int) -> list[float]:
    offset = (2**level - 1) / 2
    return [0.0, 0.0, 0.0, offset * VOXEL_SIZE[3], offset * VOXEL_SIZE[4]]


def _scale(level: int) -> list[float]:
    return [*VOXEL_SIZE[:3], VOXEL_SIZE[3] * 2**level, VOXEL_SIZE[4] * 2**level]


def _doc(store: Path, node: str, zarr_format: int, name: str) -> dict[str, Any]:
    base = store / node if node else store
    path = base / ("zarr.json" if zarr_format == 3 else name)
    return json.loads(path.read_text()) if path.exists() else {}


def _ome(store: Path, node: str, version: str) -> dict[str, Any]:
    """The NGFF metadata of a group, unwrapped from its zarr container."""
    if version == "0.5":
        return _doc(store, node, 3, "")["attributes"]["ome"]
    return _doc(store, node, 2, ".zattrs")


def _array_doc(store: Path, node: str, version: str) -> dict[str, Any]:
    return _doc(store, node, ZARR_FORMAT[version], ".zarray")


def _write_sparse(path: Path, version: str, **overrides: Any) -> Path:
    kwargs: dict[str, Any] = {
        "rows": 2,
        "columns": 3,
        "fields": FIELDS,
        "ngff": version,
        "levels": LEVELS,
        "shape": SHAPE,
        "channel_names": CHANNELS,
        "wells": WELLS,
        "acquisitions": ACQUISITIONS,
        "data": "fill",
        "name": PLATE_NAME,
    }
    kwargs.update(overrides)
    return write_plate(path, **kwargs)


@pytest.fixture(scope="module", params=NGFF_VERSIONS)
def sparse_plate(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    version = request.param
    path = _write_sparse(tmp_path_factory.mktemp(f"gen-{version}") / "plate.ome.zarr", version)
    return version, path


@pytest.fixture(scope="module", params=NGFF_VERSIONS)
def plate_pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The same layout written by write_plate and by iohub."""
    version = request.param
    base = tmp_path_factory.mktemp(f"pair-{version}")
    generated = _write_sparse(base / "generated.ome.zarr", version, data="none")
    reference = base / "iohub.ome.zarr"
    _write_with_iohub(reference, version)
    return version, generated, reference


def _write_with_iohub(path: Path, version: str) -> None:
    from iohub.ngff import open_ome_zarr
    from iohub.ngff.models import (
        AcquisitionMeta,
        ChannelAxisMeta,
        SpaceAxisMeta,
        TimeAxisMeta,
        TransformationMeta,
    )

    # iohub defaults to upper-case axis names; the NGFF examples and
    # write_plate use lower case, so iohub is told to do the same.
    axes = [
        TimeAxisMeta(name="t", unit="second"),
        ChannelAxisMeta(name="c"),
        *(SpaceAxisMeta(name=n, unit="micrometer") for n in "zyx"),
    ]
    acquisitions = [
        AcquisitionMeta(id=a, name=f"acquisition {a}", maximumfieldcount=1)
        for a in range(ACQUISITIONS)
    ]
    with open_ome_zarr(
        path,
        layout="hcs",
        mode="w-",
        channel_names=CHANNELS,
        axes=axes,
        version=version,
        name=PLATE_NAME,
        acquisitions=acquisitions,
    ) as plate:
        for position in POSITIONS:
            row, column, fov = position.split("/")
            pos = plate.create_position(row, column, fov, acq_index=ACQUISITION_OF_FIELD[fov])
            for level, (shape, chunks) in enumerate(zip(LEVEL_SHAPES, LEVEL_CHUNKS, strict=True)):
                transform = [
                    TransformationMeta(type="scale", scale=_scale(level)),
                    TransformationMeta(type="translation", translation=_translation(level)),
                ]
                pos.create_zeros(
                    str(level), shape=shape, dtype=np.uint16, chunks=chunks, transform=transform
                )


def test_iohub_reads_generated_plate(sparse_plate):
    from iohub.ngff import open_ome_zarr

    version, path = sparse_plate
    with open_ome_zarr(path, mode="r") as plate:
        assert plate.version == version
        assert [r.name for r in plate.metadata.rows] == ["A", "B"]
        assert [c.name for c in plate.metadata.columns] == ["1", "2", "3"]
        assert [(w.path, w.row_index, w.column_index) for w in plate.metadata.wells] == [
            ("A/1", 0, 0),
            ("B/2", 1, 1),
            ("A/3", 0, 2),
        ]
        assert [(a.id, a.maximum_field_count) for a in plate.metadata.acquisitions] == [
            (0, 1),
            (1, 1),
        ]
        assert plate.metadata.field_count == 2
        assert plate.metadata.name == PLATE_NAME
        images = plate["A/1"].metadata.images
        assert [(i.path, i.acquisition) for i in images] == [("0", 0), ("1", 1)]

        # iohub lists positions in store order, not plate order.
        positions = dict(plate.positions())
        assert sorted(positions) == sorted(POSITIONS)
        for index, name in enumerate(POSITIONS):
            pos = positions[name]
            assert pos.channel_names == CHANNELS
            assert pos.axis_names == ["t", "c", "z", "y", "x"]
            assert pos.scale == list(VOXEL_SIZE)
            assert [d.path for d in pos.metadata.multiscales[0].datasets] == ["0", "1"]
            for level, shape in enumerate(LEVEL_SHAPES):
                image = pos[str(level)]
                assert image.shape == shape
                assert image.dtype == np.uint16
                assert image.chunks == LEVEL_CHUNKS[level]
                assert pos.get_effective_scale(str(level)) == _scale(level)
                assert pos.get_effective_translation(str(level)) == _translation(level)
                np.testing.assert_array_equal(image[:], np.full(shape, index, np.uint16))


def test_zarr_reads_generated_plate(sparse_plate):
    version, path = sparse_plate
    zarr_format = ZARR_FORMAT[version]
    root = zarr.open_group(path, mode="r")
    assert root.metadata.zarr_format == zarr_format
    attrs = root.attrs.asdict()
    plate = attrs["ome"]["plate"] if version == "0.5" else attrs["plate"]
    assert [w["path"] for w in plate["wells"]] == WELLS
    if version == "0.5":
        assert attrs["ome"]["version"] == "0.5"
        assert "version" not in plate
    else:
        assert plate["version"] == "0.4"

    members = dict(root.members(max_depth=None))
    arrays = sorted(name for name, node in members.items() if isinstance(node, zarr.Array))
    assert arrays == sorted(f"{p}/{level}" for p in POSITIONS for level in ("0", "1"))
    groups = {name for name, node in members.items() if isinstance(node, zarr.Group)}
    assert groups == {"A", "B", *WELLS, *POSITIONS}

    for index, position in enumerate(POSITIONS):
        group = root[position]
        multiscales = (group.attrs["ome"] if version == "0.5" else group.attrs)["multiscales"]
        assert [a["name"] for a in multiscales[0]["axes"]] == ["t", "c", "z", "y", "x"]
        for level, shape in enumerate(LEVEL_SHAPES):
            array = group[str(level)]
            assert array.shape == shape
            assert array.chunks == LEVEL_CHUNKS[level]
            assert array.dtype == np.uint16
            assert array.fill_value == 0
            if version == "0.5":
                assert array.metadata.dimension_names == ("t", "c", "z", "y", "x")
            np.testing.assert_array_equal(array[...], np.full(shape, index, np.uint16))


@pytest.mark.parametrize("version", NGFF_VERSIONS)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("compressor", ["default", "none"])
def test_array_metadata_round_trips_through_zarr(tmp_path, version, dtype, compressor):
    path = write_plate(
        tmp_path / "p.zarr",
        rows=1,
        columns=1,
        ngff=version,
        shape=(1, 1, 2, 8, 8),
        dtype=dtype,
        compressor=compressor,
        data="random",
        seed=7,
    )
    written = _array_doc(path, "A/1/0/0", version)
    array = zarr.open_array(path / "A/1/0/0", mode="r")
    # zarr re-serialises the array metadata exactly as written (tuples aside,
    # and the v2 "attributes" that live in a separate .zattrs).
    parsed = json.loads(json.dumps(array.metadata.to_dict()))
    if version == "0.4":
        parsed.pop("attributes")
    assert parsed == written
    if version == "0.4":
        expected = (
            {"id": "blosc", "cname": "zstd", "clevel": 5, "shuffle": 1, "blocksize": 0}
            if compressor == "default"
            else None
        )
        assert written["compressor"] == expected
        assert written["dtype"] == np.dtype(dtype).str
    else:
        names = [c["name"] for c in written["codecs"]]
        assert names == (["bytes", "zstd"] if compressor == "default" else ["bytes"])
        if compressor == "default":
            assert written["codecs"][1]["configuration"] == {"level": 0, "checksum": False}
        assert written["data_type"] == dtype
    rng = np.random.default_rng(7)
    if dtype == "float32":
        expected_data = rng.random((1, 1, 2, 8, 8)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        expected_data = rng.integers(
            info.min, info.max, size=(1, 1, 2, 8, 8), dtype=dtype, endpoint=True
        )
    np.testing.assert_array_equal(array[...], expected_data)


@pytest.mark.parametrize("version", NGFF_VERSIONS)
def test_random_levels_are_strided_level_zero(tmp_path, version):
    path = write_plate(
        tmp_path / "p.zarr",
        rows=1,
        columns=2,
        ngff=version,
        levels=3,
        shape=(1, 1, 1, 9, 8),
        data="random",
        seed=3,
    )
    root = zarr.open_group(path, mode="r")
    for index, well in enumerate(["A/1", "A/2"]):
        info = np.iinfo(np.uint16)
        base = np.random.default_rng(3 + index).integers(
            info.min, info.max, size=(1, 1, 1, 9, 8), dtype=np.uint16, endpoint=True
        )
        shapes = [(9, 8), (4, 4), (2, 2)]
        for level, (ny, nx) in enumerate(shapes):
            step = 2**level
            array = root[f"{well}/0/{level}"]
            assert array.shape == (1, 1, 1, ny, nx)
            np.testing.assert_array_equal(array[...], base[..., ::step, ::step][..., :ny, :nx])


@pytest.mark.parametrize("version", NGFF_VERSIONS)
def test_data_none_writes_metadata_only(tmp_path, version):
    path = write_plate(tmp_path / "p.zarr", rows=1, columns=2, ngff=version, data="none")
    documents = {".zgroup", ".zattrs", ".zarray", "zarr.json"}
    assert all(f.name in documents for f in path.rglob("*") if f.is_file())
    array = zarr.open_array(path / "A/2/0/0", mode="r")
    np.testing.assert_array_equal(array[...], np.zeros((1, 2, 4, 64, 64), np.uint16))


def test_ome_zarr_models_validate_generated_plate(sparse_plate):
    from ome_zarr_models import open_ome_zarr
    from ome_zarr_models.v04 import HCS as HCS04
    from ome_zarr_models.v05 import HCS as HCS05

    version, path = sparse_plate
    with warnings.catch_warnings():
        # ome-zarr-models warns when a 0.5 plate omits "version" inside
        # "plate"; the 0.5 specification moved it to the "ome" namespace.
        warnings.filterwarnings("ignore", message="'version' field not specified")
        model = open_ome_zarr(path, version=version)
    assert isinstance(model, HCS05 if version == "0.5" else HCS04)


def _inactive(omero: dict[str, Any]) -> dict[str, Any]:
    """omero without the channels' ``active`` flags (iohub 0.3.11 sets only the first)."""
    return {
        **omero,
        "channels": [{k: v for k, v in c.items() if k != "active"} for c in omero["channels"]],
    }


def test_matches_iohub_layout_and_metadata(plate_pair):
    """Same nodes, keys and meaningful values as iohub's own plate.

    Intentional differences from iohub 0.3.0a7, excluded below:

    - NGFF 0.5: iohub repeats ``"version"`` inside ``plate``, ``well``,
      ``multiscales`` and ``omero``; the 0.5 specification (and write_plate)
      keeps it only in the ``ome`` namespace.
    - ``field_count``: written by write_plate with its specification meaning
      (most fields in one well); iohub writes it only on request and then as
      the total number of positions.
    - ``multiscales[0]["name"]``: iohub uses the first array's name ("0"),
      write_plate the field name; both are free-form labels.
    - Compression: iohub uses Blosc/zstd level 1 with bit shuffle; write_plate
      uses Blosc/zstd level 5 with byte shuffle (v2) or the zstd codec (v3).
    - iohub 0.3.11 writes ``"version"`` at the top of NGFF 0.4 image groups and
      marks only the first channel ``active``.
    - iohub writes empty ``.zattrs`` files for row groups and arrays (v2);
      zarr treats a missing ``.zattrs`` as ``{}``.
    """
    version, generated, reference = plate_pair
    zarr_format = ZARR_FORMAT[version]

    def nodes(path: Path) -> dict[str, str]:
        members = zarr.open_group(path, mode="r").members(max_depth=None)
        return {name: type(node).__name__ for name, node in members}

    assert nodes(generated) == nodes(reference)

    def without_version(doc: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in doc.items() if not (version == "0.5" and k == "version")}

    ours, theirs = _ome(generated, "", version), _ome(reference, "", version)
    assert ours.keys() == theirs.keys()
    plate = dict(ours["plate"])
    assert plate.pop("field_count") == 2
    assert plate == without_version(theirs["plate"])

    for well in WELLS:
        ours, theirs = _ome(generated, well, version), _ome(reference, well, version)
        assert ours.keys() == theirs.keys()
        assert ours["well"] == without_version(theirs["well"])

    for position in POSITIONS:
        ours, theirs = _ome(generated, position, version), _ome(reference, position, version)
        # iohub 0.3.11 also writes the NGFF version at the top of 0.4 image groups
        assert ours.keys() == theirs.keys() - ({"version"} if version == "0.4" else set())
        ours_ms, theirs_ms = ours["multiscales"][0], without_version(theirs["multiscales"][0])
        assert ours_ms.keys() == theirs_ms.keys()
        assert ours_ms["name"] == position.rsplit("/", 1)[1]
        assert theirs_ms["name"] == "0"
        for key in ("axes", "datasets"):
            assert ours_ms[key] == theirs_ms[key]
        assert _inactive(ours["omero"]) == _inactive(without_version(theirs["omero"]))

        for level in ("0", "1"):
            ours = _array_doc(generated, f"{position}/{level}", version)
            theirs = _array_doc(reference, f"{position}/{level}", version)
            assert ours.keys() == theirs.keys()
            compression = "compressor" if zarr_format == 2 else "codecs"
            assert ours[compression] != theirs[compression]
            ours.pop(compression)
            theirs.pop(compression)
            assert ours == theirs


def test_progress_reports_monotonic_counts(tmp_path):
    calls: list[tuple[int, int]] = []
    write_plate(
        tmp_path / "p.zarr",
        rows=8,
        columns=16,
        fields=[1, 2],
        shape=(1, 1, 1, 2, 2),
        data="none",
        progress=lambda done, total: calls.append((done, total)),
    )
    total = 8 * 8 * 1 + 8 * 8 * 2  # more positions than progress calls
    assert calls[-1] == (total, total)
    assert all(t == total for _, t in calls)
    assert [d for d, _ in calls] == sorted({d for d, _ in calls})
    assert len(calls) <= 101


def test_row_names_continue_past_z(tmp_path):
    path = write_plate(
        tmp_path / "p.zarr", rows=28, columns=1, shape=(1, 1, 1, 1, 1), data="none", ngff="0.4"
    )
    plate = _ome(path, "", "0.4")["plate"]
    names = [r["name"] for r in plate["rows"]]
    assert names[0] == "A"
    assert names[25:] == ["Z", "AA", "AB"]
    assert (path / "AB" / "1" / "0" / "0" / ".zarray").exists()


def test_default_channel_names_follow_shape(tmp_path):
    path = write_plate(tmp_path / "p.zarr", rows=1, columns=1, shape=(1, 3, 1, 4, 4), data="none")
    channels = _ome(path, "A/1/0", "0.5")["omero"]["channels"]
    assert [c["label"] for c in channels] == ["DAPI", "GFP", "Cy5"]


def test_empty_existing_directory_is_accepted(tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    assert write_plate(target, rows=1, columns=1, data="none") == target
    assert (target / "zarr.json").exists()


def test_existing_content_raises_file_exists(tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        write_plate(occupied, rows=1, columns=1)
    a_file = tmp_path / "file.zarr"
    a_file.write_text("x")
    with pytest.raises(FileExistsError):
        write_plate(a_file, rows=1, columns=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channel_names": ["DAPI"]}, "channel names"),
        ({"shape": (1, 2, 64, 64)}, "5"),
        ({"shape": (1, 2, 0, 64, 64)}, "positive"),
        ({"wells": ["I/1"]}, "well"),
        ({"wells": ["A/13"]}, "well"),
        ({"wells": ["A1"]}, "well"),
        ({"wells": ["A/1/0"]}, "well"),
        ({"wells": ["A/1", "A/1"]}, "unique"),
        ({"wells": []}, "empty"),
        ({"acquisitions": 2}, "acquisitions"),
        ({"levels": 0}, "levels"),
        ({"fields": 0}, "field"),
        ({"rows": ["A", "A"]}, "unique"),
        ({"columns": ["1-2"]}, "alphanumeric"),
        ({"ngff": "0.6"}, "ngff"),
        ({"data": "zeros"}, "data"),
        ({"dtype": "bool"}, "dtype"),
        ({"chunks": (1, 1, 64, 64)}, "chunks"),
    ],
)
def test_invalid_arguments_raise_value_error(tmp_path, kwargs, match):
    target = tmp_path / "p.zarr"
    with pytest.raises(ValueError, match=match):
        write_plate(target, **kwargs)
    # Validation happens before anything is created.
    assert not target.exists()
