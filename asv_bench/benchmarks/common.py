"""Plate fixtures shared by the asv benchmarks and ``asv_bench/compare.py``.

This module holds no benchmarks. It only imports the standard library at
module level: every benchmark process imports it, and zarr, snapmeta and
iohub are imported lazily where they are needed.

Two kinds of fixtures, with two lifetimes:

* **Plates** (NGFF metadata plus chunk data) do not depend on snapmeta's
  code. They are written once per machine by :func:`ensure_plate` into
  ``$SNAPMETA_BENCH_DATA`` (default ``~/.cache/snapmeta-asv``) under
  ``<GENERATOR_VERSION>/<layout>-<ngff>/`` and reused by every run and every
  commit. A plate is generated in a temporary sibling directory and renamed
  into place, under an ``flock``, so concurrent runs never see a half-written
  plate and never write the same plate twice.
* **Snapshots** depend on snapmeta's code. :func:`ensure_snapshot` builds
  one *into the cached plate* (``PLATE/.snapmeta/0``, where users have it)
  and records, next to the plate, a digest of the snapmeta sources that
  built it; a later run rebuilds it whenever that digest differs (another
  commit, an edited working tree), under the plate's lock. Every peer reads
  the same plate, with its ``.snapmeta`` array, as a user's plate would be.
  (Format 1 benchmarks built into a *view* of the plate with symlinked rows;
  format 2 refuses documents reached through symlinks that leave the store,
  and a full hard-linked copy of a 100,000-position plate takes minutes.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: Bump when the layouts, shapes or data below change: plates are cached
#: under this name, so a new value regenerates them.
GENERATOR_VERSION = "v2"

#: ``SNAPMETA_BENCH_SMOKE=1`` keeps only the 96-position plates and small
#: repeat counts, so the whole suite runs in seconds (CI smoke test). Params
#: are read at import, and asv passes the environment to its subprocesses.
SMOKE = os.environ.get("SNAPMETA_BENCH_SMOKE") == "1"

NGFF_VERSIONS = ["0.4", "0.5"]

#: Level-0 TCZYX shape of every position: two 64x64 uint16 planes, one chunk
#: per plane. Small on purpose: the benchmarks measure metadata, not I/O.
SHAPE = (1, 2, 1, 64, 64)

#: Positions whose level-0 data is written in plates generated with
#: ``data="none"`` (evenly spread over the plate); the open and read
#: benchmarks cycle through these, so no position repeats within 256 calls.
SAMPLE_SIZE = 256


def _fields_7035() -> list[int]:
    # 384 wells with 18 or 19 fields, 7,035 positions in total; the 19-field
    # wells are spread evenly (every third well, plus a few) rather than
    # clustered at the start.
    counts = [18] * 384
    extra = 7035 - 18 * 384  # 123 wells get a 19th field
    for i in range(extra):
        counts[(i * 384) // extra] = 19
    return counts


@dataclass(frozen=True)
class Layout:
    """How one benchmark plate is generated (arguments of ``write_plate``)."""

    name: str
    rows: int
    columns: int
    fields: int | tuple[int, ...]
    data: str  # "fill": every position has data; "none": only the sample
    n_positions: int = field(init=False)

    def __post_init__(self) -> None:
        counts = [self.fields] if isinstance(self.fields, int) else list(self.fields)
        n_wells = self.rows * self.columns
        total = sum(counts[i % len(counts)] for i in range(n_wells))
        object.__setattr__(self, "n_positions", total)


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in [
        Layout("w96", 8, 12, 1, "fill"),
        Layout("f1536", 16, 24, 4, "fill"),
        # The layout of the reported regression: 7,035 wells of one field.
        Layout("w7035", 35, 201, 1, "fill"),
        # Same number of positions, but in 384 wells of 18-19 fields.
        Layout("f7035", 16, 24, tuple(_fields_7035()), "none"),
        Layout("f100000", 40, 50, 50, "none"),
    ]
}
assert LAYOUTS["w7035"].n_positions == LAYOUTS["f7035"].n_positions == 7035
assert LAYOUTS["f100000"].n_positions == 100_000

#: Plates of the open/read/count benchmarks, smallest first.
OPEN_LAYOUTS = ["w96"] if SMOKE else ["w96", "f1536", "w7035", "f7035", "f100000"]
#: Plates of the fresh-process benchmark (each sample costs an interpreter).
COLD_LAYOUTS = ["w96"] if SMOKE else ["w96", "w7035", "f100000"]
#: Plates of the build benchmark. 100,000 is left out: consolidating it takes
#: minutes per sample (compare.py can measure it once with --build-100k).
BUILD_LAYOUTS = ["w96"] if SMOKE else ["w96", "f1536", "w7035", "f7035"]
#: Plate of the joblib workflow benchmark.
WORKFLOW_LAYOUT = "w96" if SMOKE else "w7035"
#: Plate of the memory benchmark.
MEMORY_LAYOUT = "w96" if SMOKE else "f100000"
#: NGFF versions of the fresh-process and workflow benchmarks: in smoke mode
#: only 0.5, since each case there costs new processes (seconds).
SLOW_NGFF_VERSIONS = ["0.5"] if SMOKE else NGFF_VERSIONS
#: Every plate the shared setup_cache needs.
ALL_LAYOUTS = sorted(
    {*OPEN_LAYOUTS, *COLD_LAYOUTS, *BUILD_LAYOUTS, WORKFLOW_LAYOUT, MEMORY_LAYOUT},
    key=lambda name: LAYOUTS[name].n_positions,
)


# ---------------------------------------------------------------------------
# position paths


def position_paths(layout: str) -> list[str]:
    """All position paths of a layout, in plate order (wells row-major)."""
    from snapmeta.testing import row_name  # the generator's own labels

    spec = LAYOUTS[layout]
    counts = [spec.fields] if isinstance(spec.fields, int) else list(spec.fields)
    paths = []
    i = 0
    for r in range(spec.rows):
        for c in range(spec.columns):
            n = counts[i % len(counts)]
            i += 1
            paths.extend(f"{row_name(r)}/{c + 1}/{f}" for f in range(n))
    return paths


def sample_paths(layout: str, k: int = SAMPLE_SIZE) -> list[str]:
    """``k`` positions spread evenly over the plate, in a shuffled but fixed
    order so consecutive calls hit different wells and rows."""
    paths = position_paths(layout)
    chosen = paths if len(paths) <= k else [paths[(i * len(paths)) // k] for i in range(k)]
    # Deterministic interleave instead of random: a stride coprime with n
    # visits every chosen position once, jumping across rows and wells.
    n = len(chosen)
    stride = next(
        (s for s in (37, 41, 43, 47, 53, 59, 61, 67, 71, 73) if math.gcd(s, n) == 1 and s % n > 1),
        1,
    )
    return [chosen[(i * stride) % n] for i in range(n)]


# ---------------------------------------------------------------------------
# the plate cache


def data_root() -> Path:
    """``$SNAPMETA_BENCH_DATA`` or ``~/.cache/snapmeta-asv``, plus the generator version."""
    base = os.environ.get("SNAPMETA_BENCH_DATA")
    root = Path(base) if base else Path.home() / ".cache" / "snapmeta-asv"
    return root / GENERATOR_VERSION


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _publish(build, final: Path) -> Path:
    """Run ``build(tmp_dir)`` unless ``final`` exists, then rename tmp -> final.

    The lock makes concurrent callers wait for one writer; the rename makes a
    crash mid-write leave only a ``.tmp-*`` directory, never a partial plate.
    """
    if final.is_dir():
        return final
    with _locked(final.with_name(final.name + ".lock")):
        if final.is_dir():
            return final
        tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            build(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if final.is_dir():  # somebody else won a race outside the lock
                return final
            raise
    return final


def _log(message: str) -> None:
    print(f"[snapmeta-bench] {message}", file=sys.stderr, flush=True)


def _write_sample_data(plate: Path, layout: str, zarr_format: int) -> None:
    import numpy as np
    import zarr

    for i, path in enumerate(sample_paths(layout)):
        arr = zarr.open_array(
            store=os.fspath(plate / path / "0"), mode="r+", zarr_format=zarr_format
        )
        arr[...] = np.full(SHAPE, i + 1, dtype=arr.dtype)


def ensure_plate(layout: str, ngff: str, *, empty: bool = False) -> Path:
    """Path of the cached plate, generating it first if needed.

    ``empty=True`` gives the same plate without any chunk data: the template
    of the workflow's destination plate.
    """
    spec = LAYOUTS[layout]
    name = f"{layout}-{ngff}" + ("-empty" if empty else "")
    final = data_root() / name

    def build(tmp: Path) -> None:
        from snapmeta.testing import write_plate

        t0 = time.perf_counter()
        data = "none" if empty else spec.data
        fields = spec.fields if isinstance(spec.fields, int) else list(spec.fields)
        write_plate(
            tmp,
            rows=spec.rows,
            columns=spec.columns,
            fields=fields,
            ngff=ngff,
            shape=SHAPE,
            data=data,
            name=f"snapmeta benchmark {layout}",
        )
        if not empty and data == "none":
            _write_sample_data(tmp, layout, 2 if ngff == "0.4" else 3)
        info = {
            "layout": asdict(spec),
            "ngff": ngff,
            "empty": empty,
            "shape": SHAPE,
            "generator": GENERATOR_VERSION,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        (tmp.parent / f"{name}.json").write_text(json.dumps(info, indent=1))
        _log(f"generated {name} ({spec.n_positions} positions) in {info['seconds']} s")

    if not final.is_dir():
        _log(f"generating {name} under {final.parent} ...")
    return _publish(build, final)


def ensure_consolidated(layout: str, ngff: str) -> Path:
    """A copy of the plate with zarr consolidated metadata (for that peer)."""
    source = ensure_plate(layout, ngff)
    final = data_root() / f"{layout}-{ngff}-consolidated"

    def build(tmp: Path) -> None:
        import warnings

        import zarr

        t0 = time.perf_counter()
        shutil.copytree(source, tmp, symlinks=True, ignore=shutil.ignore_patterns(SNAPSHOT_ARRAY))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(os.fspath(tmp), zarr_format=2 if ngff == "0.4" else 3)
        _log(f"consolidated {layout}-{ngff} in {time.perf_counter() - t0:.1f} s")

    return _publish(build, final)


def copy_metadata(source: Path, dest: Path) -> Path:
    """Copy a plate's metadata documents only (no chunks and no snapshot).
    Used for writable copies: build targets and workflow outputs."""
    names = {".zgroup", ".zattrs", ".zarray", "zarr.json"}
    source = Path(source)
    for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
        rel = os.path.relpath(dirpath, source)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d != SNAPSHOT_ARRAY]
        out = dest if rel == "." else dest / rel
        metas = [f for f in filenames if f in names]
        if rel != "." and not metas:
            # chunk directories ("0/0/0/...") carry no metadata; skip them
            dirnames[:] = []
            continue
        out.mkdir(parents=True, exist_ok=True)
        for f in metas:
            shutil.copy2(os.path.join(dirpath, f), out / f)
    return dest


def link_copy(source: Path, dest: Path) -> Path:
    """A copy of ``source`` whose files are hard links (``cp -al``): cheap for
    plates whose documents nobody rewrites in place (chunk writes create new
    files; snapmeta replaces its snapshot by a rename)."""
    dest = Path(dest)
    if shutil.which("cp"):
        subprocess.run(["cp", "-al", os.fspath(source), os.fspath(dest)], check=True)
    else:  # pragma: no cover - no coreutils
        shutil.copytree(source, dest, copy_function=os.link)
    return dest


# ---------------------------------------------------------------------------
# snapshots (per version of the snapmeta sources)

#: The in-store snapshot: the only chunk of this zarr array in the plate root.
SNAPSHOT_ARRAY = ".snapmeta"
SNAPSHOT_FILE = f"{SNAPSHOT_ARRAY}/0"


def snapshot_file(plate: str | os.PathLike[str]) -> str:
    """Path of the in-store snapshot file of ``plate`` (format 2)."""
    return os.path.join(os.fspath(plate), SNAPSHOT_FILE)


def code_digest() -> str:
    """Digest of the imported snapmeta's sources (every ``*.py`` of the package)."""
    import hashlib

    import snapmeta

    package = Path(snapmeta.__file__).resolve().parent
    h = hashlib.sha256(snapmeta.__version__.encode())
    for f in sorted(package.rglob("*.py")):
        h.update(f.relative_to(package).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def ensure_snapshot(plate: Path, *, force: bool = False) -> float | None:
    """Build the in-store snapshot of ``plate`` unless this snapmeta built it.

    Returns the build's seconds, or None when the snapshot was current. The
    digest of the sources that built it is kept in ``<plate>.snapshot-code``
    next to the plate, never inside it.
    """
    import snapmeta

    plate = Path(plate)
    marker = plate.with_name(plate.name + ".snapshot-code")
    digest = code_digest()
    with _locked(plate.with_name(plate.name + ".lock")):
        current = marker.read_text().strip() if marker.exists() else None
        if not force and current == digest and os.path.exists(snapshot_file(plate)):
            return None
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
        t0 = time.perf_counter()
        snapmeta.build_snapshot(plate)
        seconds = time.perf_counter() - t0
        marker.write_text(digest + "\n")
    _log(f"built the snapshot of {plate.name} in {seconds:.1f} s")
    return seconds


@dataclass
class Fixture:
    """Plates with current snapshots, as returned by ``setup_cache``."""

    views: dict[str, str]  # "layout-ngff" -> cached plate with a current snapshot
    consolidated: dict[str, str]  # "layout-ngff" -> consolidated copy (shared cache)
    empty: dict[str, str]  # "layout-ngff" -> empty template with a snapshot (shared cache)
    build_seconds: dict[str, float]  # snapshots built by this run (not the current ones)

    def view(self, layout: str, ngff: str) -> str:
        return self.views[f"{layout}-{ngff}"]


def prepare_fixture(
    workdir: Path | None = None,
    layouts: list[str] | None = None,
    *,
    consolidated: list[str] | None = None,
    force: bool = False,
) -> Fixture:
    """Ensure the cached plates and their snapshots (``workdir`` is unused,
    kept for callers of the format-1 signature)."""
    layouts = layouts or ALL_LAYOUTS
    if consolidated is None:
        consolidated = [name for name in layouts if name in CONSOLIDATED_LAYOUTS]
    fixture = Fixture({}, {}, {}, {})
    for layout in layouts:
        for ngff in NGFF_VERSIONS:
            key = f"{layout}-{ngff}"
            plate = ensure_plate(layout, ngff)
            seconds = ensure_snapshot(plate, force=force)
            if seconds is not None:
                fixture.build_seconds[key] = seconds
            fixture.views[key] = os.fspath(plate.resolve())
            if layout in consolidated:
                fixture.consolidated[key] = os.fspath(ensure_consolidated(layout, ngff))
            if layout == WORKFLOW_LAYOUT:
                empty = ensure_plate(layout, ngff, empty=True)
                ensure_snapshot(empty, force=force)
                fixture.empty[key] = os.fspath(empty)
    return fixture


#: Consolidated copies exist for these plates only. At 100,000 positions
#: zarr's consolidated metadata is hundreds of MB of JSON that every open
#: parses (ANCHORS.md: 4.6 s per open at 30,000 already), so that peer is
#: skipped there.
CONSOLIDATED_LAYOUTS = {"w96", "f1536", "w7035", "f7035"}


class FixtureCache:
    """Base class: every benchmark class shares ONE setup_cache run.

    asv keys ``setup_cache`` by its source location, so inheriting it from
    here ensures the plates and snapshots once per (environment, commit).
    """

    def setup_cache(self) -> Fixture:
        return prepare_fixture()

    # First runs on a machine also generate the plates (minutes at full size).
    setup_cache.timeout = 3600


def tmpdir(prefix: str) -> Path:
    """A scratch directory on the same file system as the plate cache."""
    base = data_root() / "scratch"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _preload() -> None:
    """Import the peers once at module import, in smoke mode only.

    With ``--launch-method forkserver`` every benchmark process is forked from
    a server that imported the suite, so this saves one import of zarr, iohub
    and snapmeta per benchmark case. Tracked runs skip it: there, a benchmark
    process holds only what its own peer imports.
    """
    import importlib

    for name in ("zarr", "snapmeta", "iohub.ngff", "joblib", "psutil"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


if SMOKE:
    _preload()
