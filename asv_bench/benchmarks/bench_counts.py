"""Deterministic counts per open + lookup + array handle (warm process).

Timings move with the other tenants of a shared VM; these do not, so they
are the numbers to gate on. Files are counted with an audit hook on "open"
events (builtins.open, io.open, os.open), bytes with /proc/self/io ``rchar``
(all read()-like syscalls of all threads). Pages touched through mmap are
neither: snapmeta maps its snapshot once per process (its size is
``track_snapshot_bytes``) and then reads no file to open a position; its
freshness check is one ``stat`` per document, which is not an open either.
"""

import os

from . import peers
from .common import NGFF_VERSIONS, OPEN_LAYOUTS, FixtureCache, sample_paths

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
        return os.path.getsize(os.path.join(fx.views[f"{layout}-{ngff}"], ".snapmeta.arrow"))

    track_snapshot_bytes.unit = "bytes"
