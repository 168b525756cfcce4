"""Handles cross process boundaries as a few strings, and workers re-map the snapshot.

The reported workflow: every task reads one position of a source plate and
writes it into the same position of a destination plate opened in mode "a".
It runs through joblib's process backend (loky) and through a
``dask.distributed`` ``LocalCluster`` of two worker processes. The tests check
every destination position, that the payloads handed to the engine are small
and carry no plate metadata, and that each worker mapped the snapshots itself.
"""

from __future__ import annotations

import os
import pickle
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import snapmeta
from snapmeta.testing import write_plate

compat = pytest.importorskip("snapmeta.compat", reason="snapmeta.compat needs iohub")

from conftest import snapshot_file  # noqa: E402

ROWS, COLUMNS = 8, 12  # 96 positions
SHAPE = (1, 2, 2, 32, 32)
MAX_PAYLOAD = 1024  # bytes per task
# Bytes that would betray metadata travelling with a task: NGFF keys, channel
# labels, zarr array metadata, snapmeta record fields.
MARKERS = (
    b"multiscales",
    b"coordinateTransformations",
    b"omero",
    b"DAPI",
    b"GFP",
    b"zarr_format",
    b"chunk_grid",
    b"dtype",
    b"axis_names",
    b"channel_names",
    b"level_scale",
)


def _plate(path: Path, version: str, data: str, rows: int = ROWS, columns: int = COLUMNS) -> Path:
    write_plate(path, rows=rows, columns=columns, fields=1, ngff=version, shape=SHAPE, data=data)
    snapmeta.build_snapshot(path)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engines")
    return {v: _plate(root / f"src-{v}.ome.zarr", v, "random") for v in ("0.4", "0.5")}


def _audit(payload: Any, dumps) -> int:
    """Pickle ``payload`` as the engine would; fail if it is large or carries metadata."""
    data = dumps(payload)
    assert len(data) < MAX_PAYLOAD, f"{len(data)} bytes"
    found = [m for m in MARKERS if m in data]
    assert not found, f"task payload carries metadata: {found}"
    return len(data)


# --------------------------------------------------------------------------- the task


def copy_position(src: compat.Position, dst: compat.Position) -> dict[str, Any]:
    """Worker: read a source position, write it into the destination position."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = src.data.numpy()
        dst.data[:] = data
        channels = dst.channel_names
    return {
        "path": dst.native.path,
        "types": (type(src).__name__, type(dst).__name__),
        "channels": channels,
        "pid": os.getpid(),
        # snapshots this worker process mapped for itself (they did not travel)
        "mapped": sorted(entry.path for entry in snapmeta._open._entries.values()),
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    }


def _tasks(src_store: Path, dst_store: Path) -> list[tuple[compat.Position, compat.Position]]:
    src = compat.open_ome_zarr(src_store, mode="r")
    dst = compat.open_ome_zarr(dst_store, mode="a")
    return [(pos, dst[path]) for path, pos in src.positions()]


def _check(results: list[dict[str, Any]], src_store: Path, dst_store: Path) -> None:
    assert len(results) == ROWS * COLUMNS
    assert {r["types"] for r in results} == {("Position", "Position")}
    assert all(r["warnings"] == [] for r in results)
    assert all(r["channels"] == ["DAPI", "GFP"] for r in results)
    assert {r["pid"] for r in results}.isdisjoint({os.getpid()})
    snapshots = {str(snapshot_file(src_store)), str(snapshot_file(dst_store))}
    assert all(snapshots <= set(r["mapped"]) for r in results)
    # every destination position holds its source's data (read with plain zarr)
    paths = {r["path"] for r in results}
    assert len(paths) == ROWS * COLUMNS
    for path in paths:
        expected = zarr.open_array(store=str(src_store / path / "0"), mode="r")[:]
        got = zarr.open_array(store=str(dst_store / path / "0"), mode="r")[:]
        assert expected.any()
        np.testing.assert_array_equal(got, expected)
    # data writes left the destination's metadata alone: the snapshot is still fresh
    dst = snapmeta.open_plate(dst_store, on_stale="raise")
    assert len(list(dst.positions())) == ROWS * COLUMNS


# --------------------------------------------------------------------------- pickling


def test_handles_pickle_small_and_independent_of_plate_size(tmp_path):
    small = _plate(tmp_path / "a" / "plate.ome.zarr", "0.4", "none", rows=1, columns=1)
    large = _plate(tmp_path / "b" / "plate.ome.zarr", "0.4", "none")
    sizes = {}
    for store in (small, large):
        plate = compat.open_ome_zarr(store, mode="a")
        native = snapmeta.open_plate(store, mode="a")
        objects = {
            "plate": plate,
            "row": plate["A"],
            "well": plate["A/1"],
            "position": plate["A/1/0"],
            "array": plate["A/1/0"].data,
            "array by path": plate["A/1/0/0"],
            "snapmeta.Plate": native,
            "snapmeta.Position": native["A/1/0"],
        }
        for name, obj in objects.items():
            size = _audit(obj, pickle.dumps)
            sizes.setdefault(name, []).append(size)
            back = pickle.loads(pickle.dumps(obj))
            assert type(back) is type(obj), name
        position = pickle.loads(pickle.dumps(plate["A/1/0"]))
        assert position.channel_names == ["DAPI", "GFP"]
        array = pickle.loads(pickle.dumps(plate["A/1/0"].data))
        array[0, 0, 0, 0, :3] = [1, 2, 3]  # mode "a" travels with the handle
        assert list(plate["A/1/0"].data[0, 0, 0, 0, :3]) == [1, 2, 3]
        assert array.shape == SHAPE
    # same path lengths, so equal sizes mean "independent of the plate's size"
    assert all(a == b for a, b in sizes.values()), sizes


# --------------------------------------------------------------------------- joblib


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_joblib_loky_copy(sources, tmp_path, version):
    joblib = pytest.importorskip("joblib")
    cloudpickle = pytest.importorskip("cloudpickle")

    start = time.perf_counter()
    src_store = sources[version]
    dst_store = _plate(tmp_path / "dst.ome.zarr", version, "none")
    tasks = _tasks(src_store, dst_store)
    for args in tasks:
        _audit(args, cloudpickle.dumps)  # loky pickles tasks with cloudpickle
    with joblib.parallel_config(backend="loky", n_jobs=2):
        results = joblib.Parallel()(joblib.delayed(copy_position)(s, d) for s, d in tasks)
    _check(results, src_store, dst_store)
    assert os.getpid() not in {r["pid"] for r in results}  # the tasks ran in workers
    print(f"joblib/loky {version}: {time.perf_counter() - start:.2f} s")


# --------------------------------------------------------------------------- dask.distributed


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        dashboard_address=":0",
        host="127.0.0.1",
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_dask_distributed_copy(sources, client, tmp_path, version):
    from distributed.protocol import pickle as dask_pickle

    start = time.perf_counter()
    src_store = sources[version]
    dst_store = _plate(tmp_path / "dst.ome.zarr", version, "none")
    tasks = _tasks(src_store, dst_store)
    for args in tasks:
        _audit(args, dask_pickle.dumps)  # how distributed serialises task arguments
    futures = client.map(copy_position, *zip(*tasks, strict=True), pure=False)
    results = client.gather(futures)
    _check(results, src_store, dst_store)
    assert len({r["pid"] for r in results}) == 2  # both workers took part
    print(f"dask.distributed {version}: {time.perf_counter() - start:.2f} s")


def test_dask_array_graph_carries_handles_only(sources, client, tmp_path):
    """``ImageArray.dask_array()`` graphs run on the cluster and ship only handles."""
    import dask.array as da

    src_store = sources["0.5"]
    dst_store = _plate(tmp_path / "dst.ome.zarr", "0.5", "none")
    tasks = _tasks(src_store, dst_store)[:24]
    arrays = [s.data.dask_array() for s, _ in tasks]
    targets = [d.data for _, d in tasks]
    graph = dict(da.core.Array.__dask_graph__(da.stack(arrays)))
    per_task = len(pickle.dumps(graph)) / len(graph)
    assert per_task < MAX_PAYLOAD
    assert not [m for m in MARKERS if m in pickle.dumps(graph)]
    da.store(arrays, targets, lock=False, scheduler=client)
    for src, dst in tasks:
        np.testing.assert_array_equal(
            zarr.open_array(store=str(dst_store / dst.native.path / "0"), mode="r")[:], src.data[:]
        )


def test_audit_catches_metadata(sources):
    """The payload audit can fail: a plain zarr array carries its metadata."""
    plain = zarr.open_array(store=str(sources["0.4"] / "A/1/0/0"), mode="r")
    with pytest.raises(AssertionError):
        _audit(plain, pickle.dumps)
    record = snapmeta.open_position(sources["0.4"], "A/1/0").attrs  # what a handle must not carry
    with pytest.raises(AssertionError, match="metadata"):
        _audit(record, pickle.dumps)
