"""Build time: snapmeta.build_snapshot vs zarr.consolidate_metadata.

Both walk every metadata document of the plate once and write one summary, so
they do the same job for their readers. Each runs on a metadata-only copy of
the plate that ``setup`` restores to its pristine state before every sample
(no snapshot, no ``.zmetadata``, the original root document). The page cache
is warm for both.
"""

from pathlib import Path

from . import peers
from .common import BUILD_LAYOUTS, NGFF_VERSIONS, copy_metadata, ensure_plate


class BuildVsConsolidate:
    params = [BUILD_LAYOUTS, NGFF_VERSIONS, peers.BUILD_PEERS]
    param_names = ["plate", "ngff", "peer"]
    number = 1  # every call writes files
    repeat = (1, 3, 30.0)
    rounds = 1
    timeout = 900

    def setup_cache(self):
        copies = {}
        for layout in BUILD_LAYOUTS:
            for ngff in NGFF_VERSIONS:
                source = ensure_plate(layout, ngff)
                copy = copy_metadata(source, Path.cwd() / f"{layout}-{ngff}")
                copies[f"{layout}-{ngff}"] = (str(source), str(copy.resolve()))
        return copies

    setup_cache.timeout = 3600

    def setup(self, copies, layout, ngff, peer):
        source, self.copy = copies[f"{layout}-{ngff}"]
        peers.reset_build_copy(source, self.copy)

    def time_build(self, copies, layout, ngff, peer):
        peers.run_build(peer, self.copy, ngff)
