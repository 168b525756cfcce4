"""Open + lookup + array handle of one position, and the same plus a read.

Peers are a parameter of the same benchmark, so asv shows them side by side
from one run. Each call takes the next position of a fixed cycle of up to 256
positions spread over the plate: no peer can serve a repeated position from a
per-position cache, while per-process state (imports, snapmeta's mapped
snapshot, zarr's event loop) is warm, as in a long-running worker.
"""

import itertools

from . import peers
from .common import NGFF_VERSIONS, OPEN_LAYOUTS, FixtureCache, sample_paths


class _OpenBase(FixtureCache):
    params = [OPEN_LAYOUTS, NGFF_VERSIONS, peers.PEERS]
    param_names = ["plate", "ngff", "peer"]
    # Slow peers (iohub, consolidated zarr at 7,035) take 0.03-1 s per call:
    # bound the time per benchmark instead of asv's default 20 s per round.
    repeat = (3, 20, 5.0)
    rounds = 2
    timeout = 600

    def setup(self, fx, layout, ngff, peer):
        key = f"{layout}-{ngff}"
        self.open = peers.opener(peer, fx.views[key], fx.consolidated.get(key))
        self.paths = itertools.cycle(sample_paths(layout))
        self.open(next(self.paths))  # imports, zarr event loop, snapshot mapping


class OpenPosition(_OpenBase):
    def time_open_lookup_array(self, fx, layout, ngff, peer):
        self.open(next(self.paths))


class ReadPosition(_OpenBase):
    def time_open_lookup_read(self, fx, layout, ngff, peer):
        self.open(next(self.paths))[...]
