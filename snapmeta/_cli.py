"""The ``snapmeta`` command line: build, info, ls, verify, demo."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import SnapmetaError


class _Progress:
    """A one-line progress display on stderr, quiet when not a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.perf_counter()
        self.stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage != self.stage and self.stage:
            sys.stderr.write("\n")
        self.stage = stage
        width = 30
        filled = width * done // max(total, 1)
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(
            f"\r{stage:>9} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {elapsed:6.1f}s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.stage:
            sys.stderr.write("\n")


def _build(args: argparse.Namespace) -> int:
    from ._build import build_snapshot

    show = (not args.quiet and sys.stderr.isatty()) or args.progress
    progress = _Progress(show)
    start = time.perf_counter()
    try:
        path = build_snapshot(args.store, progress=progress, workers=args.workers)
    finally:
        progress.close()
    size = path.stat().st_size
    print(f"wrote {path} ({size / 1024:.1f} KiB) in {time.perf_counter() - start:.2f} s")
    return 0


def _info(args: argparse.Namespace) -> int:
    from ._open import open_plate

    plate = open_plate(args.store)
    snap = plate.snapshot_path
    print(f"plate        {plate.name or '(unnamed)'}")
    print(f"store        {plate.store}")
    print(f"ngff         {plate.version} (zarr format {plate.zarr_format})")
    print(
        f"layout       {len(plate.rows)} rows x {len(plate.columns)} columns, "
        f"{len(plate.wells)} wells, {len(plate)} positions"
    )
    print(f"field_count  {plate.field_count}")
    acq = (
        ", ".join(str(a.id) + (f" ({a.name})" if a.name else "") for a in plate.acquisitions)
        or "(none)"
    )
    print(f"acquisitions {acq}")
    for path in plate:
        pos = plate[path]
        print(
            f"first        {path}: channels {', '.join(pos.channel_names)}; "
            f"axes {''.join(pos.axis_names)}; "
            f"shape {pos.shape} {pos.dtype}; levels {len(pos.levels)}; scale {pos.scale}"
        )
        break
    print(f"snapshot     {snap} ({snap.stat().st_size / 1024:.1f} KiB)")
    return 0


def _ls(args: argparse.Namespace) -> int:
    from ._open import open_plate

    plate = open_plate(args.store)
    prefix = args.well.strip("/") + "/" if args.well else ""
    found = False
    for path in plate:
        if path.startswith(prefix):
            print(path)
            found = True
    if args.well and not found:
        print(f"snapmeta: no well {args.well!r} in {args.store}", file=sys.stderr)
        return 1
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ._verify import verify

    report = verify(args.store)
    print(report)
    return 0 if report.ok else 1


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(
        Path(args.dir), rows=args.rows, columns=args.columns, fields=args.fields, ngff=args.ngff
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="snapmeta", description="Metadata snapshots for HCS OME-Zarr plates."
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "build", help="read and validate the plate's metadata and write its snapshot"
    )
    b.add_argument("store")
    b.add_argument("--workers", type=int, default=None, help="threads reading documents")
    b.add_argument(
        "--progress", action="store_true", help="show progress even when stderr is not a terminal"
    )
    b.add_argument("-q", "--quiet", action="store_true")
    b.set_defaults(run=_build)
    i = sub.add_parser("info", help="summary of a plate")
    i.add_argument("store")
    i.set_defaults(run=_info)
    ls = sub.add_parser("ls", help="list position paths")
    ls.add_argument("store")
    ls.add_argument("well", nargs="?", help="only this well, e.g. B/3")
    ls.set_defaults(run=_ls)
    v = sub.add_parser("verify", help="check the snapshot completely against the store")
    v.add_argument("store")
    v.set_defaults(run=_verify)
    d = sub.add_parser("demo", help="create a demo plate, snapshot it and time opens")
    d.add_argument("dir", help="directory to create the demo plate in")
    d.add_argument("--rows", type=int, default=8)
    d.add_argument("--columns", type=int, default=12)
    d.add_argument("--fields", type=int, default=1)
    d.add_argument("--ngff", choices=["0.4", "0.5"], default="0.5")
    d.set_defaults(run=_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except SnapmetaError as exc:
        print(f"snapmeta: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
