"""Shared fixtures: plates on disk written by real writers and by the generator."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import zarr

sys.path.insert(0, str(Path(__file__).parent))

from snapmeta._open import clear_cache

SLOW = bool(os.environ.get("SNAPMETA_SLOW"))
_FORKSERVER: Any = None


def forkserver_context() -> Any:
    """One forkserver for the suite's worker processes, with snapmeta preloaded.

    Builders, readers and writers in the reliability tests are real processes;
    preloading keeps each start at a fork instead of a fresh interpreter.
    """
    global _FORKSERVER
    if _FORKSERVER is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(
            ["snapmeta", "snapmeta._build", "snapmeta._ngff._validate", "zarr", "pyarrow"]
        )
        _FORKSERVER = ctx
    return _FORKSERVER


# iohub 0.3.11 switches zarr's global codec pipeline to zarrs on its first open
# (session fixtures open iohub plates too) and never switches it back: every test
# starts from zarr's default, so tests stay independent.
_DEFAULT_PIPELINE = zarr.config.get("codec_pipeline.path")


@pytest.fixture(autouse=True)
def _default_codec_pipeline():
    zarr.config.set({"codec_pipeline.path": _DEFAULT_PIPELINE})
    yield
    zarr.config.set({"codec_pipeline.path": _DEFAULT_PIPELINE})


@pytest.fixture(autouse=True)
def _fresh_process_cache():
    # Each test sees the store as a new worker process would.
    clear_cache()
    yield
    clear_cache()


def snapshot_file(store: Path) -> Path:
    """The in-store snapshot file of ``store`` (the chunk of its ``.snapmeta`` array)."""
    from snapmeta._locate import IN_STORE_NAME

    return Path(store) / IN_STORE_NAME


def limit_memory(headroom: int) -> None:
    """Cap this (child) process's address space at its size now plus ``headroom``
    bytes: an unbounded read fails instead of taking the host."""
    try:
        import resource

        with open("/proc/self/status") as fh:
            vm = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, vm + headroom))
    except (OSError, ValueError, StopIteration, ImportError):
        pass


def node_attributes(store: Path, node: str, zarr_format: int) -> dict[str, Any]:
    """A node's attributes read straight from its JSON document (ground truth)."""
    base = store / node if node else store
    if zarr_format == 3:
        return json.loads((base / "zarr.json").read_text()).get("attributes", {})
    path = base / ".zattrs"
    return json.loads(path.read_text()) if path.exists() else {}


def same_json(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to itself, as JSON text does."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.fixture(scope="session")
def plate_96(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8x12x1 generated plates with data, both NGFF versions, snapshots built."""
    from snapmeta import build_snapshot
    from snapmeta.testing import write_plate

    out = {}
    for ngff in ("0.4", "0.5"):
        path = tmp_path_factory.mktemp(f"plate96-{ngff}") / "plate.ome.zarr"
        write_plate(path, rows=8, columns=12, fields=1, ngff=ngff, levels=2, data="fill")
        build_snapshot(path)
        out[ngff] = path
    return out


@pytest.fixture(scope="session")
def small_plate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1x2 single-field wells, NGFF 0.5, no chunks, snapshot built: a base to copy."""
    from snapmeta import build_snapshot
    from snapmeta.testing import write_plate

    store = write_plate(
        tmp_path_factory.mktemp("small") / "plate",
        rows=1,
        columns=2,
        fields=1,
        shape=(1, 2, 1, 8, 8),
        data="none",
    )
    build_snapshot(store)
    return store


@pytest.fixture(scope="session")
def plate_7035(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """35x201 single-field wells (the reported regression's layout), metadata only."""
    from snapmeta import build_snapshot
    from snapmeta.testing import write_plate

    path = tmp_path_factory.mktemp("plate7035") / "plate.ome.zarr"
    write_plate(
        path, rows=35, columns=201, fields=1, ngff="0.4", shape=(1, 2, 1, 32, 32), data="none"
    )
    build_snapshot(path)
    return path
