"""The ``snapmeta`` command line: build, info, ls, verify, demo.

Exit codes: 0 success, 1 failure (a plate that cannot be snapshotted, a
snapshot that fails verification, an unreadable file), 2 usage error (bad
arguments). Errors are one line on stderr, ``snapmeta: error: ...``; the
commands never show a traceback for a problem with their input.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from ._version import __version__
from .errors import SnapmetaError

log = logging.getLogger("snapmeta")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Arguments that parse but make no sense (exit code 2)."""


class Progress:
    """Progress of a long job on stderr: a bar on a terminal, a line every few
    seconds otherwise, nothing when quiet."""

    def __init__(self, stream: TextIO, *, quiet: bool, bar: bool | None = None) -> None:
        self.stream = stream
        self.quiet = quiet
        self.bar = stream.isatty() if bar is None else bar
        self.start = time.monotonic()
        self.last = 0.0
        self.stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        elapsed = now - self.start
        if self.bar:
            if stage != self.stage and self.stage:
                self.stream.write("\n")
            width = 30
            filled = width * done // max(total, 1)
            self.stream.write(
                f"\r{stage:>8} |{'█' * filled}{' ' * (width - filled)}| "
                f"{done}/{total} {elapsed:5.1f}s"
            )
            self.stream.flush()
        elif stage != self.stage or done == total or now - self.last >= 5.0:
            if done or total <= 1 or stage != self.stage:
                self.stream.write(f"snapmeta: {stage}: {done}/{total} ({elapsed:.1f} s)\n")
                self.stream.flush()
            self.last = now
        self.stage = stage

    def close(self) -> None:
        if self.bar and self.stage and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()


def _build(args: argparse.Namespace) -> int:
    from ._build import build_snapshot

    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    progress = Progress(
        sys.stderr, quiet=args.quiet, bar=None if args.progress is None else args.progress
    )
    start = time.monotonic()
    try:
        path = build_snapshot(
            args.store, output=args.output, progress=progress, workers=args.workers
        )
    finally:
        progress.close()
    if not args.quiet:
        size = path.stat().st_size
        print(f"wrote {path} ({size / 1024:.1f} KiB) in {time.monotonic() - start:.2f} s")
    return EXIT_OK


def _open(args: argparse.Namespace) -> Any:
    from ._open import open_plate

    return open_plate(args.store, snapshot=args.snapshot)


def _info(args: argparse.Namespace) -> int:
    plate = _open(args)
    print(f"plate        {plate.name or '(unnamed)'}")
    print(f"store        {plate.store}")
    print(f"ngff         {plate.version} (zarr format {plate.zarr_format})")
    print(
        f"layout       {len(plate.rows)} rows x {len(plate.columns)} columns, "
        f"{len(plate.wells)} wells, {len(plate)} positions"
    )
    print(f"field_count  {plate.field_count}")
    acq = ", ".join(str(a.id) + (f" ({a.name})" if a.name else "") for a in plate.acquisitions)
    print(f"acquisitions {acq or '(none)'}")
    for path in plate:
        pos = plate[path]
        print(
            f"first        {path}: channels {', '.join(pos.channel_names)}; "
            f"axes {''.join(pos.axis_names)}; shape {pos.shape} {pos.dtype}; "
            f"levels {len(pos.levels)}; scale {pos.scale}"
        )
        break
    size = os.stat(plate.snapshot_path).st_size
    print(f"snapshot     {plate.snapshot_path} ({size / 1024:.1f} KiB)")
    return EXIT_OK


def _ls(args: argparse.Namespace) -> int:
    plate = _open(args)
    if args.well:
        for path in plate.well(args.well).positions:
            print(path)
        return EXIT_OK
    for path in plate:
        print(path)
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from ._verify import verify

    progress = Progress(sys.stderr, quiet=args.quiet)
    try:
        report = verify(
            args.store, snapshot=args.snapshot, reread=not args.no_reread, progress=progress
        )
    finally:
        progress.close()
    print(report)
    return EXIT_OK if report.ok else EXIT_FAILURE


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    for name in ("rows", "columns", "fields"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1")
    return run_demo(
        args.dir, rows=args.rows, columns=args.columns, fields=args.fields, ngff=args.ngff
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise SystemExit(_fail(f"{message}", EXIT_USAGE))


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="snapmeta",
        description="Memory-mapped metadata snapshots for HCS OME-Zarr plates.",
        epilog="Exit codes: 0 success, 1 failure, 2 usage error.",
    )
    p.add_argument("--version", action="version", version=f"snapmeta {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log what snapmeta does (stderr)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser(
        "build", help="read and validate the plate's metadata and write its snapshot"
    )
    b.add_argument("store", help="the plate: a directory, or a file:// URL")
    b.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="write the snapshot to PATH (a file, or a directory of snapshots) instead of "
        "into the plate; for plates you cannot write. Default: $SNAPMETA_SNAPSHOT_DIR if set, "
        "else the plate",
    )
    b.add_argument("--workers", type=int, metavar="N", help="threads reading documents")
    bar = b.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="show a progress bar even when stderr is not a terminal",
    )
    bar.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="periodic progress lines instead of a bar",
    )
    b.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    b.set_defaults(run=_build)

    def with_snapshot(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("store", help="the plate")
        sp.add_argument(
            "--snapshot",
            metavar="PATH",
            help="the snapshot, if it is neither in the plate nor in $SNAPMETA_SNAPSHOT_DIR",
        )

    i = sub.add_parser("info", help="summary of a plate, from its snapshot")
    with_snapshot(i)
    i.set_defaults(run=_info)
    ls = sub.add_parser("ls", help="list position paths, in plate order")
    with_snapshot(ls)
    ls.add_argument("well", nargs="?", help="list this well's positions only, e.g. B/3")
    ls.set_defaults(run=_ls)
    v = sub.add_parser("verify", help="check the snapshot completely against the plate")
    with_snapshot(v)
    v.add_argument(
        "--no-reread",
        action="store_true",
        help="check checksums and document digests only, without re-reading the plate",
    )
    v.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    v.set_defaults(run=_verify)
    d = sub.add_parser("demo", help="write a demo plate, snapshot it and time opens against peers")
    d.add_argument("dir", help="directory to create the demo plate in")
    d.add_argument("--rows", type=int, default=8, help="rows of the plate (default 8)")
    d.add_argument("--columns", type=int, default=12, help="columns of the plate (default 12)")
    d.add_argument("--fields", type=int, default=1, help="fields of view per well (default 1)")
    d.add_argument(
        "--ngff", choices=["0.4", "0.5"], default="0.5", help="NGFF version (default 0.5)"
    )
    d.set_defaults(run=_demo)
    return p


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"snapmeta: error: {message}\n")
    sys.stderr.flush()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    if args.verbose and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="snapmeta: %(message)s")
    try:
        return int(args.run(args))
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except SnapmetaError as exc:
        return _fail(str(exc).replace("\n", "\n  ") if "\n" in str(exc) else str(exc), EXIT_FAILURE)
    except BrokenPipeError:
        # `snapmeta ls PLATE | head`: the reader left; say nothing more
        _silence_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            _silence_stdout()
            return EXIT_OK
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}", EXIT_FAILURE)


def _silence_stdout() -> None:
    # Python would report the broken pipe again when flushing at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def entry_point() -> NoReturn:
    sys.exit(main())
