"""Deterministic counts per open + lookup + array handle (warm process).

Timings move with the other tenants of a shared VM; these do not, so they
are the numbers to gate on. Files are counted with an audit hook on "open"
events (builtins.open, io.open, os.open), bytes with /proc/self/io ``rchar``
(all read()-like syscalls of all threads). Pages touched through mmap are
neither: snapmeta maps its snapshot once per process (its size is
``track_snapshot_bytes``; per position, ``track_snapshot_bytes_per_position``)
and then reads no file to open a position; its freshness check is one
``stat`` per document, which is not an open either. Round trips to a
(modelled) network filesystem are counted in ``bench_network.py``.
"""

import os

from . import peers
from .common import (
    LAYOUTS,
    NGFF_VERSIONS,
    OPEN_LAYOUTS,
    FixtureCache,
    sample_paths,
    snapshot_file,
)

_COUNTED = 32  # positions per count (the mean is exact for these peers)


class IOPerOpen(FixtureCache):
    params = [OPEN_LAYOUTS, NGFF_VERSIONS, peers.PEERS]
    param_names = ["plate", "ngff", "peer"]
    timeout = 600

    def setup(self, fx, layout, ngff, peer):
        key = f"{layout}-{ngff}"
        fn = peers.opener(peer, fx.views[key], fx.consolidated.get(key))
        paths = sample_paths(layout)
        # zarr-consolidated reads megabytes per call at 7,035: count fewer
        n = 4 if peer in ("zarr-consolidated", "iohub") else _COUNTED
        self.counts = peers.count_io(fn, paths[:n])

    def track_files_opened(self, fx, layout, ngff, peer):
        return self.counts["files"]

    track_files_opened.unit = "files"

    def track_bytes_read(self, fx, layout, ngff, peer):
        return self.counts["bytes"]

    track_bytes_read.unit = "bytes"


class SnapshotSize(FixtureCache):
    params = [OPEN_LAYOUTS, NGFF_VERSIONS]
    param_names = ["plate", "ngff"]

    def track_snapshot_bytes(self, fx, layout, ngff):
        return os.path.getsize(snapshot_file(fx.views[f"{layout}-{ngff}"]))

    track_snapshot_bytes.unit = "bytes"

    def track_snapshot_bytes_per_position(self, fx, layout, ngff):
        # format 1 took ~2 KB per position, format 2 ~100 B (docs/format.md)
        size = os.path.getsize(snapshot_file(fx.views[f"{layout}-{ngff}"]))
        return size / LAYOUTS[layout].n_positions

    track_snapshot_bytes_per_position.unit = "bytes/position"
