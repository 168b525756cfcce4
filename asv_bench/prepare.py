"""Generate the cached benchmark plates ahead of a run (optional).

    python asv_bench/prepare.py            # every plate the full suite uses
    SNAPMETA_BENCH_SMOKE=1 python asv_bench/prepare.py

The plates go to $SNAPMETA_BENCH_DATA (default ~/.cache/snapmeta-asv/<version>/).
asv's setup_cache generates missing plates by itself; running this first only
moves the (minutes-long) generation out of the first benchmark run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks import common


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--layouts", nargs="*", default=common.ALL_LAYOUTS, choices=sorted(common.LAYOUTS)
    )
    parser.add_argument("--ngff", nargs="*", default=common.NGFF_VERSIONS)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    for layout in args.layouts:
        for ngff in args.ngff:
            print(common.ensure_plate(layout, ngff), flush=True)
            if layout in common.CONSOLIDATED_LAYOUTS:
                print(common.ensure_consolidated(layout, ngff), flush=True)
            if layout == common.WORKFLOW_LAYOUT:
                print(common.ensure_plate(layout, ngff, empty=True), flush=True)
    print(f"done in {time.perf_counter() - t0:.0f} s under {common.data_root()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
