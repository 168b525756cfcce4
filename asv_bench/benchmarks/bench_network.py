"""Round trips per open + level-0 array on a modelled network filesystem.

The plate is read through a latencyfs mount (``asv_bench/latencyfs``: a
passthrough FUSE filesystem that counts every request by opcode) with the
kernel's attribute and entry caches off, as on NFS with ``actimeo=0``, and
without ``default_permissions``. The delay is 0: round trips are counted,
not timed, so the numbers are deterministic and cheap (milliseconds per
case). Times at 0.2 and 1 ms per round trip are in ``compare.py``'s network
section.

latencyfs needs Linux, root, ``/dev/fuse`` and gcc. Where it cannot mount,
``setup`` raises ``NotImplementedError`` and asv shows ``n/a``; the smoke
test allows that only when ``latencyfs.available()`` gives a reason.
"""

import itertools

from . import network
from .common import NGFF_VERSIONS, SMOKE, FixtureCache, data_root, sample_paths

NETWORK_LAYOUTS = ["w96"] if SMOKE else ["w96", "w7035"]
_COUNTED = 4  # opens per count (after two warm-up opens)


class NetworkRoundTrips(FixtureCache):
    params = [NETWORK_LAYOUTS, NGFF_VERSIONS, network.ASV_NET_PEERS]
    param_names = ["plate", "ngff", "peer"]
    timeout = 600

    def setup(self, fx, layout, ngff, peer):
        reason = network.unavailable()
        if reason is not None:
            raise NotImplementedError(reason)
        from . import peers

        peers.require(peer)
        from pathlib import Path

        lfs = network.latencyfs_module()
        root = data_root().resolve()
        plate = Path(fx.views[f"{layout}-{ngff}"]).resolve()
        self.fs = lfs.LatencyFS(root, delay_ms=0, default_permissions=False)
        try:
            fn = network.make_open(peer, str(self.fs.path / plate.relative_to(root)))
            paths = itertools.cycle(sample_paths(layout))
            fn(next(paths))  # mapping, imports, event loop
            fn(next(paths))
            with self.fs.measure() as ops:
                for _ in range(_COUNTED):
                    fn(next(paths))
            self.ops = {k: v / _COUNTED for k, v in ops.items() if k != "max_in_flight"}
        except BaseException:
            network.release_snapmeta()
            self.fs.close()
            raise
        network.release_snapmeta()

    def teardown(self, fx, layout, ngff, peer):
        self.fs.close()

    def track_round_trips(self, fx, layout, ngff, peer):
        return network.round_trips(self.ops)

    track_round_trips.unit = "round trips"
