"""``snapmeta demo``: write a plate, snapshot it, and time opens against its peers.

The peers are plain zarr (``zarr.open_array`` on the array path, the
workaround users fall back to) and, when it is installed, iohub's
``open_ome_zarr``, the reason snapmeta exists.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal


def _median_ms(fn: Callable[[str], Any], paths: list[str], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        for path in paths:
            start = time.perf_counter()
            fn(path)
            samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def run_demo(
    directory: str | Path,
    *,
    rows: int = 8,
    columns: int = 12,
    fields: int = 1,
    ngff: Literal["0.4", "0.5"] = "0.5",
) -> int:
    import zarr

    from ._build import build_snapshot
    from ._open import open_plate, open_position
    from .errors import SnapshotWriteError
    from .testing import write_plate

    store = Path(directory) / "demo.ome.zarr"
    if store.exists():
        raise SnapshotWriteError(
            f"{store} already exists; choose an empty directory",
            store=str(store),
            snapshot="",
            reason="exists",
        )
    n = rows * columns * fields
    print(f"writing a {rows}x{columns} plate, {fields} field(s) per well (NGFF {ngff}): {store}")
    start = time.perf_counter()
    write_plate(
        store, rows=rows, columns=columns, fields=fields, ngff=ngff, levels=2, data="random"
    )
    print(f"  {n} positions written in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    snapshot = build_snapshot(store)
    print(
        f"built the snapshot {snapshot.relative_to(store.parent)} "
        f"({snapshot.stat().st_size / 1024:.0f} KiB) in {time.perf_counter() - start:.2f} s"
    )

    paths = list(open_plate(store))
    sample = paths[:: max(1, len(paths) // 48)]
    pos = open_position(store, paths[0])
    print(
        f"\n{pos.path}: channels {', '.join(pos.channel_names)}, axes {''.join(pos.axis_names)}, "
        f"shape {pos.shape}, scale {pos.scale}"
    )

    def snap(path: str) -> Any:
        return open_position(store, path)["0"]

    def zarr_array(path: str) -> Any:
        return zarr.open_array(store / path / "0", mode="r")

    snap(paths[0])  # map the snapshot once, as a worker's first open does
    rows_out = [
        ("snapmeta open_position(...)['0']", _median_ms(snap, sample, 5)),
        ("zarr.open_array(plate/pos/'0')", _median_ms(zarr_array, sample, 5)),
    ]
    if importlib.util.find_spec("iohub") is not None:
        from iohub.ngff import open_ome_zarr

        def iohub_open(path: str) -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with open_ome_zarr(store, layout="hcs", mode="r") as plate:
                    return plate[path].data

        iohub_open(paths[0])  # import and warm-up
        rows_out.append(
            ("iohub open_ome_zarr + plate[pos].data", _median_ms(iohub_open, sample[:12], 1))
        )
    else:
        print('\n(iohub is not installed: `pip install "snapmeta[iohub]"` adds it to the timings)')
    print(f"\nopen one position and get its array ({len(sample)} positions, median):")
    base = rows_out[0][1]
    for label, ms in rows_out:
        ratio = "" if ms is base else f"  ({ms / base:.0f}x snapmeta's time)"
        print(f"  {label:<40} {ms:8.3f} ms{ratio}")
    data = snap(paths[0])[:]
    print(f"\nread {paths[0]}/0: {data.shape} {data.dtype}, mean {float(data.mean()):.1f}")
    print("\nnext:")
    for command in ("info", "ls", "verify"):
        print(f"  snapmeta {command} {store}")
    return 0
