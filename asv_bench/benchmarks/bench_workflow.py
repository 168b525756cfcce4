"""End-to-end workflow: joblib over every position of a plate, two workers.

Each task opens the source plate read-only and the destination plate with
mode "a", reads one position and writes it to the destination (a fresh copy
of an empty plate with a snapshot, made in ``setup``). Reported as positions
per second of wall time, workers already started and warm (imports done).

iohub takes ~0.1 s per task on the 7,035-well plate, so it copies every 20th
position (352 tasks) in full runs; its per-task cost does not depend on which
positions are chosen, only on the plate, so positions/s stays comparable.
"""

import shutil
import sys
from pathlib import Path

from . import peers
from .common import (
    SLOW_NGFF_VERSIONS,
    SMOKE,
    WORKFLOW_LAYOUT,
    FixtureCache,
    copy_metadata,
    position_paths,
    tmpdir,
)

N_JOBS = 2
IOHUB_STRIDE = 1 if SMOKE else 20


class Workflow(FixtureCache):
    params = [SLOW_NGFF_VERSIONS, peers.WORKFLOW_PEERS]
    param_names = ["ngff", "peer"]
    repeat = 1
    number = 1
    rounds = 2
    timeout = 1800

    def setup(self, fx, ngff, peer):
        import joblib
        import snapmeta

        peers.require(peer)
        # loky workers get this process's sys.path and must be able to import
        # benchmarks.peers, where the task function lives; asv itself imports
        # the suite through a meta-path hook that workers do not inherit.
        here = str(Path(__file__).resolve().parents[1])
        if here not in sys.path:
            sys.path.append(here)
        key = f"{WORKFLOW_LAYOUT}-{ngff}"
        self.src = fx.views[key]
        self.tmp = tmpdir("workflow-")
        self.dst = str(copy_metadata(fx.empty[key], self.tmp / "dst"))
        snapmeta.build_snapshot(self.dst)
        paths = position_paths(WORKFLOW_LAYOUT)
        self.paths = paths[::IOHUB_STRIDE] if peer == "iohub" else paths
        if SMOKE:
            self.paths = self.paths[:8]
        self.parallel = joblib.Parallel(n_jobs=N_JOBS)
        peers.warm_workers(peer, self.parallel, N_JOBS)

    def teardown(self, fx, ngff, peer):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def track_positions_per_second(self, fx, ngff, peer):
        seconds = peers.run_workflow(peer, self.src, self.dst, self.paths, self.parallel)
        return len(self.paths) / seconds

    track_positions_per_second.unit = "positions/s"
