"""A fresh worker process: interpreter start + import + open + read one position.

This is what every SLURM array task or newly spawned joblib/dask worker
pays. ``timeraw_`` runs the returned code in a brand-new interpreter per
sample; it cannot see setup state, so paths are formatted into the code.
"""

from . import peers
from .common import COLD_LAYOUTS, SLOW_NGFF_VERSIONS, FixtureCache, sample_paths


class ColdWorker(FixtureCache):
    params = [COLD_LAYOUTS, SLOW_NGFF_VERSIONS, peers.PEERS]
    param_names = ["plate", "ngff", "peer"]
    repeat = (1, 5, 10.0)
    rounds = 1
    timeout = 600

    def setup(self, fx, layout, ngff, peer):
        key = f"{layout}-{ngff}"
        # the middle of the sample: never the first well
        path = sample_paths(layout)[len(sample_paths(layout)) // 2]
        self.code = peers.cold_code(peer, fx.views[key], path, fx.consolidated.get(key))

    def timeraw_import_open_read(self, fx, layout, ngff, peer):
        return self.code
