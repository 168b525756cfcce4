"""``snapmeta demo``: make a plate, snapshot it, and time opens against plain zarr."""

from __future__ import annotations

import statistics
import sys
import time
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
    directory: Path,
    *,
    rows: int = 8,
    columns: int = 12,
    fields: int = 1,
    ngff: Literal["0.4", "0.5"] = "0.5",
) -> int:
    import zarr

    from ._build import build_snapshot
    from ._open import open_plate, open_position
    from .testing import write_plate

    store = directory / "demo.ome.zarr"
    if store.exists():
        print(f"snapmeta demo: {store} already exists; choose an empty directory", file=sys.stderr)
        return 1
    n = rows * columns * fields
    print(
        f"writing a {rows}x{columns} plate with {fields} field(s) per well (NGFF {ngff}) to {store}"
    )
    start = time.perf_counter()
    write_plate(
        store, rows=rows, columns=columns, fields=fields, ngff=ngff, levels=2, data="random"
    )
    print(f"  {n} positions written in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    snapshot = build_snapshot(store)
    print(
        f"built {snapshot.name} ({snapshot.stat().st_size / 1024:.0f} KiB) "
        f"in {time.perf_counter() - start:.2f} s"
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

    def zarr_with_metadata(path: str) -> Any:
        # what a worker needs without snapmeta: the array plus its channel names
        group = zarr.open_group(store / path, mode="r")
        attrs: dict[str, Any] = group.attrs.asdict()
        ome = attrs.get("ome", attrs)
        _ = [c["label"] for c in ome["omero"]["channels"]]
        return group["0"]

    snap(paths[0])  # map the snapshot once, as a worker's first open does
    rows_out = [
        ("snapmeta open_position + pos['0']", _median_ms(snap, sample, 5)),
        ("zarr.open_array(plate/pos/'0')", _median_ms(zarr_array, sample, 5)),
        ("zarr.open_group + omero channels + ['0']", _median_ms(zarr_with_metadata, sample, 5)),
    ]
    print(f"\nopen one position and get its array ({len(sample)} positions x 5, median):")
    base = rows_out[0][1]
    for label, ms in rows_out:
        ratio = "" if ms is base else f"  ({ms / base:.1f}x slower than snapmeta)"
        print(f"  {label:<42} {ms:8.3f} ms{ratio}")
    data = snap(paths[0])[:]
    print(f"\nread {paths[0]}/0: {data.shape} {data.dtype}, mean {float(data.mean()):.1f}")
    print(f"\nnext: snapmeta info {store}   |   snapmeta ls {store}   |   snapmeta verify {store}")
    return 0
