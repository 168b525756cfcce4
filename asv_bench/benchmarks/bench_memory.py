"""Per-worker memory of N processes that each touch every position.

N worker processes are alive at the same time; each opens the plate and
looks up every position (channel names, scale, shape). ``snapmeta`` keeps
only its plate handle: the snapshot is a shared read-only file mapping.
``zarr-json`` walks plate -> wells -> positions with zarr groups and keeps
each position's parsed attributes, the private equivalent of the snapshot.

All figures come from /proc/<pid>/smaps_rollup, as growth per worker after
imports (interpreter and library pages left out):

* private dirty (``Private_Dirty``): anonymous and written pages, the memory a
  worker really owns; the headline number.
* PSS: every page divided by the number of processes mapping it; the
  worker's fair share of the mapped snapshot falls as N grows.
* USS (``Private_Clean + Private_Dirty``): also counts clean page-cache pages
  of a file mapped by this process alone, so with N=1 it includes the
  snapshot pages the worker touched (reclaimable, shared with any later
  mapper); from N=2 on they are shared and drop out. The measurement runs
once in ``setup_cache`` for every (N, peer) and the track_ methods read it.
"""

import os

from . import peers
from .common import MEMORY_LAYOUT, SMOKE, ensure_plate, ensure_snapshot

WORKERS = [2] if SMOKE else [1, 2, 4]
MEMORY_NGFF = "0.4"


class WorkerMemory:
    params = [WORKERS, peers.MEMORY_PEERS]
    param_names = ["workers", "peer"]
    timeout = 1800

    def setup_cache(self):
        plate = ensure_plate(MEMORY_LAYOUT, MEMORY_NGFF)
        ensure_snapshot(plate)
        return {
            (n, peer): peers.measure_worker_memory_isolated(peer, os.fspath(plate.resolve()), n)
            for peer in peers.MEMORY_PEERS
            for n in WORKERS
        }

    setup_cache.timeout = 3600

    def track_private_dirty_mb(self, results, n, peer):
        return results[(n, peer)]["private_dirty_delta"]

    track_private_dirty_mb.unit = "MB"

    def track_pss_mb(self, results, n, peer):
        return results[(n, peer)]["pss_delta"]

    track_pss_mb.unit = "MB"

    def track_uss_mb(self, results, n, peer):
        return results[(n, peer)]["uss_delta"]

    track_uss_mb.unit = "MB"
