"""Arrays opened in mode "r" refuse writes, even with the zarrs codec pipeline.

iohub 0.3.11 switches zarr's global codec pipeline to zarrs on its first
``open_ome_zarr``; zarrs 0.2.3 then writes chunks itself without asking the
store whether it is read-only (fixed upstream in zarrs-python PR #190, not
released yet). snapmeta builds the arrays itself, and its read-only arrays
refuse chunk writes whatever the pipeline.
"""

from __future__ import annotations

import importlib.util
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

import snapmeta
from snapmeta.testing import write_plate

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("zarrs") is None, reason="zarrs is not installed (Python >= 3.12)"
)


@pytest.fixture
def zarrs_pipeline() -> Iterator[None]:
    with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
        yield


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_read_only_arrays_refuse_writes(ngff: str, tmp_path: Path, zarrs_pipeline: None) -> None:
    store = write_plate(tmp_path / "p.zarr", rows=1, columns=1, ngff=ngff, data="fill", levels=2)
    snapmeta.build_snapshot(store)
    pos = snapmeta.open_position(store, "A/1/0")
    before = pos[0][:]
    attempts = {
        "setitem": lambda a: a.__setitem__((0, 0, 0, 0, 0), 7),
        "oindex": lambda a: a.oindex.__setitem__(([0], [0], [0], [0], [0]), 7),
        "with_config": lambda a: a.with_config({"write_empty_chunks": True}).__setitem__(
            (0, 0, 0, 0, 0), 7
        ),
        "pickled": lambda a: pickle.loads(pickle.dumps(a)).__setitem__((0, 0, 0, 0, 0), 7),
        "level 1": lambda a: pos[1].__setitem__((0, 0, 0, 0, 0), 7),
    }
    for name, attempt in attempts.items():
        with pytest.raises(ValueError, match="read-only"):
            attempt(pos[0])
        assert np.array_equal(snapmeta.open_position(store, "A/1/0")[0][:], before), name
    # mode "r+" still writes, through zarrs
    writable = snapmeta.open_position(store, "A/1/0", mode="r+")[0]
    writable[0, 0, 0, 0, 0] = 7
    assert snapmeta.open_position(store, "A/1/0")[0][0, 0, 0, 0, 0] == 7
