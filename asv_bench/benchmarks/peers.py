"""The peers, as small functions shared by the asv benchmarks and compare.py.

Every peer does the same job: given a plate and a position path such as
``"B/3/0"``, return a ``zarr.Array`` of the position's level ``"0"``. This
module holds no benchmarks; heavy libraries are imported inside functions.
"""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable
from typing import Any

#: Peers of the open/read benchmarks. The parameter value is the label shown
#: by asv and in the comparison table.
PEERS = [
    "snapmeta",  # snapmeta.open_position(plate, path)["0"]
    "snapmeta-fanout",  # fan = open_plate(plate).fan_out() once; fan.open_position(path)["0"]
    "snapmeta-plate",  # snapmeta.open_plate(plate)[path]["0"]
    "iohub",  # iohub open_ome_zarr(plate, mode="r")[path].data
    "zarr-group",  # zarr.open_group(plate)[path]["0"], unconsolidated
    "zarr-consolidated",  # the same on a consolidated copy
    "zarr-array",  # zarr.open_array(plate/path/0): knows the path, no metadata
]

#: Peers of the joblib workflow benchmark.
WORKFLOW_PEERS = ["snapmeta", "snapmeta-fanout", "zarr", "iohub"]

#: Peers of the build benchmark.
BUILD_PEERS = ["snapmeta", "zarr-consolidate"]

#: Peers of the worker memory benchmark.
MEMORY_PEERS = ["snapmeta", "zarr-json"]


def iohub_available() -> bool:
    try:
        import iohub.ngff  # noqa: F401
    except Exception:
        return False
    return True


def has_fan_out() -> bool:
    """Whether this snapmeta has the fan-out mode (``Plate.fan_out``, 0.2+)."""
    import snapmeta

    return hasattr(snapmeta.Plate, "fan_out")


def fan_out_shimmed() -> bool:
    """Whether :func:`fan_out` stands in for a missing ``Plate.fan_out``."""
    import snapmeta

    return not has_fan_out() and hasattr(snapmeta, "FanOut")


def fan_out(root: str, mode: str = "r") -> Any:
    """``open_plate(root, mode=mode).fan_out()``: the parent's step of the fan-out peer.

    Stand-in where this snapmeta exports ``FanOut`` but its ``Plate`` lacks
    ``fan_out`` (the method went missing in the working tree of 2026-12-02):
    a ``FanOut`` of the current snapshot file, without the parent's
    verification of every document. The workers' side, ``FanOut.open_position``,
    is snapmeta's own code either way; only the parent's cost is not measured
    then (reports say so).
    """
    import snapmeta

    plate = snapmeta.open_plate(root, mode=mode)
    if has_fan_out():
        return plate.fan_out()
    if not hasattr(snapmeta, "FanOut"):
        raise NotImplementedError("this snapmeta has no fan-out mode")
    if not plate.from_snapshot:
        raise RuntimeError(f"the snapshot of {root} is stale: rebuild it before fanning out")
    st = os.stat(plate.snapshot_path)
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return snapmeta.FanOut(plate.store, plate.snapshot_path, identity, mode, None)


def require(peer: str) -> None:
    """Raise NotImplementedError (asv: skipped) when a peer cannot run here."""
    if peer == "iohub" and not iohub_available():
        raise NotImplementedError("iohub is not importable")
    if peer == "snapmeta-fanout":
        import snapmeta

        if not hasattr(snapmeta, "FanOut"):
            raise NotImplementedError("this snapmeta has no fan-out mode")


def _quiet() -> None:
    # iohub and zarr warn about NGFF/zarr versions; a warning per call would
    # measure the warnings machinery instead of the open path.
    warnings.simplefilter("ignore")


def opener(peer: str, plate: str, consolidated: str | None = None) -> Callable[[str], Any]:
    """A function ``path -> zarr.Array`` (level "0") for one peer and plate."""
    require(peer)
    _quiet()
    if peer == "snapmeta":
        import snapmeta

        def fn(path: str) -> Any:
            return snapmeta.open_position(plate, path, mode="r")["0"]

    elif peer == "snapmeta-fanout":
        import snapmeta

        fan = fan_out(plate)  # the parent's step: verifies the plate once

        def fn(path: str) -> Any:
            return fan.open_position(path)["0"]

    elif peer == "snapmeta-plate":
        import snapmeta

        def fn(path: str) -> Any:
            return snapmeta.open_plate(plate, mode="r")[path]["0"]

    elif peer == "iohub":
        from iohub.ngff import open_ome_zarr

        def fn(path: str) -> Any:
            return open_ome_zarr(plate, mode="r")[path].data

    elif peer == "zarr-group":
        import zarr

        def fn(path: str) -> Any:
            return zarr.open_group(plate, mode="r", use_consolidated=False)[path]["0"]

    elif peer == "zarr-consolidated":
        import zarr

        if consolidated is None:
            raise NotImplementedError("no consolidated copy of this plate (too large)")
        root = consolidated

        def fn(path: str) -> Any:
            return zarr.open_group(root, mode="r", use_consolidated=True)[path]["0"]

    elif peer == "zarr-array":
        import zarr

        def fn(path: str) -> Any:
            return zarr.open_array(store=f"{plate}/{path}/0", mode="r")

    else:
        raise ValueError(f"unknown peer {peer!r}")
    return fn


def cold_code(peer: str, plate: str, path: str, consolidated: str | None = None) -> str:
    """Code for a fresh interpreter: import, open one position, read its data."""
    require(peer)
    if peer == "zarr-consolidated" and consolidated is None:
        raise NotImplementedError("no consolidated copy of this plate (too large)")
    if peer == "snapmeta-fanout":
        import base64
        import pickle

        # the parent verifies once; the fresh worker gets the pickled FanOut
        fan = base64.b64encode(pickle.dumps(fan_out(plate))).decode()
        code = (
            "import base64, pickle\nimport snapmeta\n"
            f"fan = pickle.loads(base64.b64decode({fan!r}))\n"
            f"fan.open_position({path!r})['0'][...]"
        )
        return "import warnings\nwarnings.simplefilter('ignore')\n" + code
    body = {
        "snapmeta": "import snapmeta\nsnapmeta.open_position({plate!r}, {path!r})['0'][...]",
        "snapmeta-plate": "import snapmeta\nsnapmeta.open_plate({plate!r})[{path!r}]['0'][...]",
        "iohub": "from iohub.ngff import open_ome_zarr\n"
        "open_ome_zarr({plate!r}, mode='r')[{path!r}].data[...]",
        "zarr-group": "import zarr\n"
        "zarr.open_group({plate!r}, mode='r', use_consolidated=False)[{path!r}]['0'][...]",
        "zarr-consolidated": "import zarr\n"
        "zarr.open_group({cons!r}, mode='r', use_consolidated=True)[{path!r}]['0'][...]",
        "zarr-array": "import zarr\nzarr.open_array(store={array!r}, mode='r')[...]",
    }[peer]
    code = body.format(plate=plate, path=path, cons=consolidated, array=f"{plate}/{path}/0")
    return "import warnings\nwarnings.simplefilter('ignore')\n" + code


# ---------------------------------------------------------------------------
# build: snapmeta.build_snapshot vs zarr.consolidate_metadata

_ROOT_DOCS = (".zattrs", ".zgroup", "zarr.json")


def reset_build_copy(source: str, copy: str) -> None:
    """Restore a metadata-only copy to the state of ``source``: no snapshot
    (neither the ``.snapmeta`` array nor a format-1 file), no ``.zmetadata``,
    the original root document (consolidation rewrites ``zarr.json`` in zarr v3)."""

    import shutil

    for name in (".zmetadata", ".snapmeta.arrow"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(copy, name))
    shutil.rmtree(os.path.join(copy, ".snapmeta"), ignore_errors=True)
    for name in _ROOT_DOCS:
        if os.path.exists(os.path.join(source, name)):
            shutil.copy2(os.path.join(source, name), os.path.join(copy, name))


def run_build(peer: str, copy: str, ngff: str) -> None:
    if peer == "snapmeta":
        import snapmeta

        snapmeta.build_snapshot(copy)
    elif peer == "zarr-consolidate":
        import zarr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(copy, zarr_format=2 if ngff == "0.4" else 3)
    else:
        raise ValueError(f"unknown peer {peer!r}")


# ---------------------------------------------------------------------------
# the joblib workflow (one task per position)


def fan_out_pair(src: str, dst: str) -> tuple[Any, Any]:
    """The parent's step of the fan-out peer: verify both plates once."""
    return fan_out(src, "r"), fan_out(dst, "a")


def workflow_task(peer: str, src: Any, dst: Any, path: str) -> int:
    """Open the source read-only and the destination with mode "a", read one
    position and write it to the destination. Runs in a joblib worker.

    For ``snapmeta-fanout``, ``src`` and ``dst`` are the ``FanOut`` objects of
    :func:`fan_out_pair` (they pickle as a few strings)."""
    if peer == "snapmeta":
        import snapmeta

        data = snapmeta.open_position(src, path, mode="r")["0"][...]
        snapmeta.open_position(dst, path, mode="a")["0"][...] = data
    elif peer == "snapmeta-fanout":
        data = src.open_position(path)["0"][...]
        dst.open_position(path)["0"][...] = data
    elif peer == "zarr":
        import zarr

        data = zarr.open_array(store=f"{src}/{path}/0", mode="r")[...]
        zarr.open_array(store=f"{dst}/{path}/0", mode="r+")[...] = data
    elif peer == "iohub":
        _quiet()
        from iohub.ngff import open_ome_zarr

        with open_ome_zarr(src, mode="r") as plate:
            data = plate[path].data[...]
        with open_ome_zarr(dst, mode="a") as plate:
            plate[path].data[...] = data
    else:
        raise ValueError(f"unknown peer {peer!r}")
    return int(data.size)


def workflow_warmup(peer: str) -> int:
    """Import the peer's libraries in a worker before the clock starts."""
    _quiet()
    if peer == "iohub":
        import iohub.ngff  # noqa: F401
    import snapmeta  # noqa: F401
    import zarr  # noqa: F401

    return os.getpid()


def _children_cpu() -> float:
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            t = child.cpu_times()
            total += t.user + t.system
    return total


def run_workflow(
    peer: str, src: str, dst: str, paths: list[str], parallel: Any, *, cpu: bool = False
) -> Any:
    """Seconds for ``parallel`` (a ``joblib.Parallel``) to copy ``paths``.

    With ``cpu=True``, returns ``(wall seconds, CPU seconds of the worker
    processes)``: the CPU time moves less with other tenants' load than the
    wall time does (it still includes the hypervisor's steal on a VM).
    """
    from joblib import delayed

    c0 = _children_cpu() if cpu else 0.0
    t0 = time.perf_counter()
    if peer == "snapmeta-fanout" and isinstance(src, str):
        src, dst = fan_out_pair(src, dst)  # the parent's verification is part of the cost
    parallel(delayed(workflow_task)(peer, src, dst, p) for p in paths)
    seconds = time.perf_counter() - t0
    if cpu:
        return seconds, _children_cpu() - c0
    return seconds


def warm_workers(peer: str, parallel: Any, n_jobs: int) -> None:
    from joblib import delayed

    # Slow enough tasks that every worker gets some; they import the peer.
    parallel(delayed(workflow_warmup)(peer) for _ in range(4 * n_jobs))


# ---------------------------------------------------------------------------
# deterministic counts: files opened and bytes read per call


_AUDIT = {"on": False, "opens": 0}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _AUDIT["on"] and event == "open":
        # builtins.open / io.open / os.open; paths of /proc are our own probe
        path = args[0]
        if not (isinstance(path, str) and path.startswith("/proc/")):
            _AUDIT["opens"] += 1


def _install_audit() -> None:
    if not _AUDIT.get("installed"):
        sys.addaudithook(_audit)  # cannot be removed; counting is switched instead
        _AUDIT["installed"] = True


def _rchar() -> int:
    # Bytes this process read through read()-like syscalls, all threads (zarr
    # reads in its event-loop thread). Pages touched through mmap are not
    # reads: snapmeta's snapshot accesses do not show here (see docs).
    with open("/proc/self/io", "rb") as fh:
        for line in fh:
            if line.startswith(b"rchar:"):
                return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def count_io(fn: Callable[[str], Any], paths: list[str]) -> dict[str, float]:
    """Mean files opened and bytes read per ``fn(path)``, warm process.

    One call before counting imports everything and maps what is mapped once
    per process; the probe's own reads of /proc/self/io are subtracted.
    """
    _install_audit()
    fn(paths[0])
    probe0 = _rchar()
    probe = _rchar() - probe0  # bytes one probe adds
    _AUDIT["opens"] = 0
    _AUDIT["on"] = True
    before = _rchar()
    for p in paths:
        fn(p)
    after = _rchar()
    _AUDIT["on"] = False
    n = len(paths)
    return {"files": _AUDIT["opens"] / n, "bytes": max(0, after - before - probe) / n}


# ---------------------------------------------------------------------------
# worker memory: N processes touch every position of one plate

_MEMORY_CHILD = textwrap.dedent(
    """
    import gc, sys, warnings
    warnings.simplefilter("ignore")
    peer, root = sys.argv[1], sys.argv[2]
    import snapmeta, zarr
    keep = {}

    def touch_snapmeta():
        plate = snapmeta.open_plate(root)
        n = 0
        for path in plate:
            pos = plate[path]
            pos.channel_names, pos.scale, pos.shape
            n += 1
        keep["plate"] = plate  # the handle stays open; the snapshot is shared
        return n

    def touch_zarr_json():
        # The JSON path: walk plate -> wells -> positions with zarr groups and
        # keep each position's parsed attributes, the in-process equivalent of
        # the snapshot (what a plate object holds for random access later).
        group = zarr.open_group(root, mode="r", use_consolidated=False)
        attrs = group.attrs.asdict()
        plate = attrs.get("ome", attrs)["plate"]
        n = 0
        for well in plate["wells"]:
            wattrs = zarr.open_group(f"{root}/{well['path']}", mode="r").attrs.asdict()
            for image in wattrs.get("ome", wattrs)["well"]["images"]:
                path = f"{well['path']}/{image['path']}"
                keep[path] = zarr.open_group(f"{root}/{path}", mode="r").attrs.asdict()
                n += 1
        return n

    touch = {"snapmeta": touch_snapmeta, "zarr-json": touch_zarr_json}[peer]
    gc.collect()
    print("ready", flush=True)
    sys.stdin.readline()
    n = touch()
    gc.collect()
    print("done", n, flush=True)
    sys.stdin.readline()
    """
)


def _memory(pid: int) -> dict[str, float]:
    """RSS, PSS, USS and private dirty bytes from /proc/<pid>/smaps_rollup.

    USS (Private_Clean + Private_Dirty) counts clean page-cache pages of a
    file that only this process maps, e.g. the snapshot when one worker maps
    it: those are reclaimable and shared with any later mapper, not memory
    the worker owns. Private_Dirty (anonymous and written pages) is.
    """
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return {
        "rss": fields["Rss"],
        "pss": fields["Pss"],
        "uss": fields["Private_Clean"] + fields["Private_Dirty"],
        "private_dirty": fields["Private_Dirty"],
    }


def measure_worker_memory(peer: str, plate: str, n_workers: int) -> dict[str, float]:
    """Per-worker memory (MB, mean over workers) of ``n_workers`` processes
    that are alive at the same time, each having touched every position.

    Call it from a process that has not mapped the plate's snapshot itself:
    a mapping in the caller would share the pages and lower the workers' USS
    and PSS.

    ``*_delta`` is after minus before the touch (imports excluded); the
    absolute values include the interpreter and imports.
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MEMORY_CHILD, peer, plate],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(n_workers)
    ]
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"memory worker failed to start: {line!r}")
        before = [_memory(p.pid) for p in procs]
        t0 = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        counts = []
        for p in procs:
            line = p.stdout.readline().split()
            if not line or line[0] != "done":
                raise RuntimeError(f"memory worker failed: {line!r}")
            counts.append(int(line[1]))
        seconds = time.perf_counter() - t0
        after = [_memory(p.pid) for p in procs]
    finally:
        for p in procs:
            try:
                p.stdin.write("exit\n")
                p.stdin.flush()
            except OSError:
                pass
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
    mb = 1 / 2**20
    out: dict[str, float] = {"positions": float(counts[0]), "seconds": seconds}
    for key in ("private_dirty", "uss", "pss", "rss"):
        out[key] = sum(a[key] for a in after) / n_workers * mb
        out[f"{key}_delta"] = (
            sum(a[key] - b[key] for a, b in zip(after, before, strict=True)) / n_workers * mb
        )
    gc.collect()
    return out


def measure_worker_memory_isolated(peer: str, plate: str, n_workers: int) -> dict[str, float]:
    """:func:`measure_worker_memory`, run from a fresh interpreter that has
    mapped nothing, so the caller's own mappings cannot share the pages."""
    import json

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {here!r})\n"
        "from benchmarks import peers\n"
        "out = peers.measure_worker_memory(sys.argv[1], sys.argv[2], int(sys.argv[3]))\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, peer, plate, str(n_workers)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])
