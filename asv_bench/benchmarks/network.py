"""Peers on a (modelled) network filesystem: latencyfs mounts, measured by FUSE request.

This module holds no benchmarks. It is shared by ``compare.py`` (the network
and cold-open sections), ``bench_network.py`` (asv round-trip counts) and
``tests/test_network_counts.py``. It imports only the standard library at
module level, so that it also runs in other Python environments: each peer
of the timed sections runs in its own *measurement process*, started with
any interpreter (``/work/venvs/py313/bin/python`` for today's iohub stack),
which imports this module and serves JSON commands on stdin (:func:`serve`).

The parent owns the mounts and reads their request counters around every
command, so a peer's round trips are counted by FUSE opcode without the peer
knowing about latencyfs:

* ``open``: ``open_position(plate, p)["0"]`` and its peers;
* ``task``: the seed workflow's per-position task: open the source position,
  read level 0, open the destination position with mode "a", write it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ASV_DIR = Path(__file__).resolve().parents[1]

#: Peers of the network sections. ``@py313`` runs in the second environment
#: (today's iohub stack); the others in the interpreter running compare.py.
NET_PEERS = [
    "snapmeta",  # open_position(plate, p)["0"], default checks
    "snapmeta-fanout",  # fan = open_plate(plate).fan_out() once; fan.open_position(p)["0"]
    "zarr-array",  # zarr.open_array(plate/p/"0"): the workaround (no NGFF metadata)
    "iohub",  # open_ome_zarr(plate, mode="r")[p].data
    "zarr-array@py313",
    "iohub@py313",
]
#: Peers of the asv round-trip benchmark (in-process, this environment only).
ASV_NET_PEERS = ["snapmeta", "snapmeta-fanout", "zarr-array", "iohub"]
#: FUSE request types shown in the per-type tables, in this order.
OP_TYPES = [
    "lookup",
    "getattr",
    "open",
    "read",
    "write",
    "create",
    "mkdir",
    "flush",
    "release",
    "opendir",
    "readdir",
    "releasedir",
    "rename",
    "setattr",
    "unlink",
    "statfs",
    "access",
]
DEFAULT_PY313 = "/work/venvs/py313/bin/python"


def py313_python() -> str | None:
    """The second environment's interpreter (``$SNAPMETA_BENCH_PY313``), if present."""
    exe = os.environ.get("SNAPMETA_BENCH_PY313", DEFAULT_PY313)
    return exe if exe and os.access(exe, os.X_OK) else None


def python_of(peer: str) -> str | None:
    return py313_python() if peer.endswith("@py313") else sys.executable


def kind_of(peer: str) -> str:
    return peer.split("@", 1)[0]


def latencyfs_module() -> Any:
    """``asv_bench/latencyfs`` (a package next to ``benchmarks``)."""
    if str(ASV_DIR) not in sys.path:
        sys.path.insert(0, str(ASV_DIR))
    import latencyfs

    return latencyfs


def unavailable() -> str | None:
    """Why latencyfs cannot be mounted here (None if it can)."""
    try:
        return latencyfs_module().available()
    except Exception as exc:  # pragma: no cover - import problems
        return f"latencyfs: {exc}"


def release_snapmeta() -> None:
    """Drop what keeps a mount busy in this process: snapmeta's mapped snapshots
    and the O_PATH directory handles of its recent walks (it keeps up to 32
    walks open). A lazily detached latencyfs otherwise serves them for 2 s more
    before it exits."""
    import gc

    with contextlib.suppress(Exception):
        from snapmeta import _freshness
        from snapmeta._open import clear_cache

        clear_cache()
        for walk in list(getattr(_freshness, "_live", ())):
            walk.close()
    gc.collect()


def round_trips(counts: dict[str, float]) -> float:
    """Round trips in a ``LatencyFS.counts()``-like dict (delayed requests only)."""
    lfs = latencyfs_module()
    return sum(
        counts.get(name, 0) for name in lfs.OPS if name not in lfs.UNDELAYED_OPS
    ) + counts.get("other", 0)


# ---------------------------------------------------------------------------
# peers (run inside a measurement process, or in-process for asv and tests)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("snapmeta", "zarr", "iohub", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    with contextlib.suppress(Exception):  # an editable install's metadata can be stale
        import snapmeta

        out["snapmeta"] = snapmeta.__version__
        from . import peers

        if peers.fan_out_shimmed():
            out["fan_out"] = "stand-in: this snapmeta's Plate has no fan_out()"
    return out


class PeerState:
    """Per-process state of a peer: fan-outs made by the parent step."""

    def __init__(self) -> None:
        self.fans: dict[tuple[str, str], Any] = {}

    def fan(self, root: str, mode: str, *, fresh: bool) -> Any:
        from . import peers

        key = (root, mode)
        if fresh or key not in self.fans:
            self.fans[key] = peers.fan_out(root, mode)
        return self.fans[key]


def make_open(kind: str, plate: str, state: PeerState | None = None) -> Callable[[str], Any]:
    """``path -> level-0 array`` for one peer (the ``open`` operation)."""
    warnings.simplefilter("ignore")
    state = state or PeerState()
    if kind == "snapmeta":
        import snapmeta

        def fn(path: str) -> Any:
            return snapmeta.open_position(plate, path)["0"]

    elif kind == "snapmeta-fanout":
        fan = state.fan(plate, "r", fresh=True)

        def fn(path: str) -> Any:
            return fan.open_position(path)["0"]

    elif kind == "zarr-array":
        import zarr

        def fn(path: str) -> Any:
            return zarr.open_array(store=f"{plate}/{path}/0", mode="r")

    elif kind == "iohub":
        from iohub.ngff import open_ome_zarr

        def fn(path: str) -> Any:
            return open_ome_zarr(plate, mode="r")[path].data

    else:
        raise ValueError(f"unknown peer {kind!r}")
    return fn


def make_task(
    kind: str, src: str, dst: str, state: PeerState | None = None
) -> Callable[[str], Any]:
    """``path -> None``: the seed task (read the source position, write it to ``dst``)."""
    warnings.simplefilter("ignore")
    state = state or PeerState()
    if kind == "snapmeta":
        import snapmeta

        def fn(path: str) -> Any:
            data = snapmeta.open_position(src, path)["0"][...]
            snapmeta.open_position(dst, path, mode="a")["0"][...] = data

    elif kind == "snapmeta-fanout":
        fsrc = state.fan(src, "r", fresh=False)
        fdst = state.fan(dst, "a", fresh=True)

        def fn(path: str) -> Any:
            data = fsrc.open_position(path)["0"][...]
            fdst.open_position(path)["0"][...] = data

    elif kind == "zarr-array":
        import zarr

        def fn(path: str) -> Any:
            data = zarr.open_array(store=f"{src}/{path}/0", mode="r")[...]
            zarr.open_array(store=f"{dst}/{path}/0", mode="r+")[...] = data

    elif kind == "iohub":
        from iohub.ngff import open_ome_zarr

        def fn(path: str) -> Any:
            with open_ome_zarr(src, mode="r") as plate:
                data = plate[path].data[...]
            with open_ome_zarr(dst, mode="a") as plate:
                plate[path].data[...] = data

    else:
        raise ValueError(f"unknown peer {kind!r}")
    return fn


def cold_code(kind: str, plate: str, path: str, fan: str | None = None) -> str:
    """A fresh interpreter's code: import, then time one open of ``path`` (level 0).

    Prints ``{"import_s": ..., "open_s": ...}``. ``fan`` is a pickled FanOut
    (base64) made by a parent, for ``snapmeta-fanout``."""
    body = {
        "snapmeta": ("import snapmeta", f"snapmeta.open_position({plate!r}, {path!r})['0']"),
        "snapmeta-fanout": (
            "import base64, pickle\nimport snapmeta\n"
            f"fan = pickle.loads(base64.b64decode({fan!r}))",
            f"fan.open_position({path!r})['0']",
        ),
        "zarr-array": (
            "import zarr",
            f"zarr.open_array(store={plate + '/' + path + '/0'!r}, mode='r')",
        ),
        "iohub": (
            "from iohub.ngff import open_ome_zarr",
            f"open_ome_zarr({plate!r}, mode='r')[{path!r}].data",
        ),
    }[kind]
    return (
        "import time\nt0 = time.perf_counter()\n"
        "import json, warnings\nwarnings.simplefilter('ignore')\n"
        f"{body[0]}\n"
        "t1 = time.perf_counter()\n"
        f"{body[1]}\n"
        "t2 = time.perf_counter()\n"
        "print(json.dumps({'import_s': t1 - t0, 'open_s': t2 - t1}))\n"
    )


def fan_out_pickle(plate: str, python: str | None = None) -> str:
    """A FanOut of ``plate`` made in a short-lived process, pickled (base64).

    Not in this process: a mapping of the snapshot here would keep its pages
    in the page cache, and the cold opens must find them dropped."""
    code = (
        "import base64, pickle, sys, warnings\nwarnings.simplefilter('ignore')\n"
        f"sys.path.insert(0, {str(ASV_DIR)!r})\n"
        "from benchmarks import peers\n"
        "fan = peers.fan_out(sys.argv[1])\n"
        "print(base64.b64encode(pickle.dumps(fan)).decode())\n"
    )
    r = subprocess.run(
        [python or sys.executable, "-c", code, plate],
        capture_output=True,
        text=True,
        cwd="/",
        check=False,
    )
    if r.returncode != 0:
        raise RuntimeError(f"fan_out() of {plate} failed:\n{r.stderr.strip()[-2000:]}")
    return r.stdout.strip().splitlines()[-1]


def serve(peer: str) -> None:
    """The measurement process: one JSON command per stdin line, one JSON reply each.

    Commands: ``hello`` (import the peer, report versions), ``setup`` (``op``
    "open" with ``src``, or "task" with ``src`` and ``dst``: make the call;
    for the fan-out peer this is the parent's verification, timed), ``run``
    (``op``, ``paths``, ``budget`` seconds, ``min`` calls: time each call until
    both are reached or the paths run out), ``exit``.
    """
    warnings.simplefilter("ignore")
    kind = kind_of(peer)
    proto = sys.stdout
    sys.stdout = sys.stderr  # nothing a library prints may break the protocol
    state = PeerState()
    fns: dict[str, Callable[[str], Any]] = {}

    def reply(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        try:
            if cmd == "hello":
                if kind.startswith("snapmeta"):
                    import snapmeta  # noqa: F401
                if kind == "iohub":
                    import iohub.ngff  # noqa: F401
                import numpy  # noqa: F401
                import zarr  # noqa: F401

                reply({"versions": versions(), "pid": os.getpid()})
            elif cmd == "setup":
                t0 = time.perf_counter()
                if msg["op"] == "open":
                    fns["open"] = make_open(kind, msg["src"], state)
                else:
                    fns["task"] = make_task(kind, msg["src"], msg["dst"], state)
                reply({"seconds": time.perf_counter() - t0})
            elif cmd == "run":
                fn = fns[msg["op"]]
                times: list[float] = []
                budget, least = msg["budget"], msg["min"]
                start = time.perf_counter()
                for path in msg["paths"]:
                    t0 = time.perf_counter()
                    fn(path)
                    t1 = time.perf_counter()
                    times.append(t1 - t0)
                    if len(times) >= least and t1 - start >= budget:
                        break
                reply({"times": times})
            elif cmd == "exit":
                reply({})
                break
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except Exception:
            reply({"error": traceback.format_exc()})


class PeerProcess:
    """The parent's handle on one measurement process."""

    def __init__(self, peer: str, python: str, *, pythonpath: str | None = None) -> None:
        self.peer = peer
        code = (
            f"import sys; sys.path.insert(0, {str(ASV_DIR)!r})\n"
            "from benchmarks import network\n"
            f"network.serve({peer!r})\n"
        )
        # PYTHONPATH is kept: compare.py points it at its frozen copy of snapmeta
        env = {k: v for k, v in os.environ.items() if k != "PYTHONHOME"}
        if pythonpath is not None:  # e.g. another snapmeta (compare.py's format1 section)
            env["PYTHONPATH"] = pythonpath
        self.proc = subprocess.Popen(
            [python, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd="/",  # never a directory inside a mount
            env=env,
        )
        self.info = self.call(cmd="hello")

    def call(self, **msg: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"measurement process of {self.peer} died")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"{self.peer}: {out['error']}")
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call(cmd="exit")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------
# the parent: plates, mounts, interleaved turns


@dataclass
class NetOptions:
    layouts: list[str]
    ngffs: list[str]
    delays_ms: list[float]
    caches: list[str]  # "off" (timeouts 0) and/or "on" (1 s)
    peers: list[str]
    rounds: int = 4
    open_budget: float = 1.0  # seconds per peer, config (split over the rounds)
    task_budget: float = 1.5
    open_min: int = 12  # calls per peer and config, at least
    task_min: int = 8
    open_max: int = 400
    task_max: int = 40  # positions written per peer and config, at most
    cache_timeout: float = 1.0
    warm_budget: float = 0.5  # seconds per peer and config of opens at delay 0 first
    cold_layouts: list[str] = field(default_factory=list)
    cold_ngffs: list[str] = field(default_factory=list)
    cold_peers: list[str] = field(default_factory=list)
    cold_samples: int = 3
    cold_delay_ms: float = 1.0


#: Rough ms per call at 1 ms per round trip, caches off, here: (open, task) for
#: 96 and for 7,035 positions; for :func:`estimate_seconds` only.
_MS_PER_CALL = {
    "snapmeta": ((9, 190), (9, 190)),
    "snapmeta-fanout": ((0.05, 180), (0.05, 180)),
    "zarr-array": ((28, 250), (28, 250)),
    "iohub": ((150, 520), (400, 1100)),
}


def estimate_seconds(opt: NetOptions) -> float:
    """Rough wall time of :func:`run_network` + :func:`run_cold` here."""
    from . import common

    total = 10.0 if opt.layouts else 0.0  # measurement processes, mounts
    for layout in opt.layouts:
        n = common.LAYOUTS[layout].n_positions
        big = n > 1000
        for _ in opt.ngffs:
            for cache in opt.caches:
                for delay in opt.delays_ms:
                    scale = (0.3 + 0.7 * delay) * (0.4 if cache == "on" else 1.0)
                    for peer in opt.peers:
                        ms_open, ms_task = _MS_PER_CALL[kind_of(peer)][big]
                        total += max(opt.open_budget, opt.open_min * ms_open * scale / 1e3)
                        total += max(opt.task_budget, opt.task_min * ms_task * scale / 1e3)
                        total += opt.warm_budget + 2 * ms_task / 1e3 * 0.3  # warm-up
                        total += 2 * opt.rounds * 0.05  # settling around every turn
                    if "snapmeta-fanout" in opt.peers:  # fan_out() of source and destination
                        total += 2 * (0.3 + delay) * n * 5 / 16 / 1e3
    for layout in opt.cold_layouts:
        n = common.LAYOUTS[layout].n_positions
        per = sum(
            {"iohub": 2.5 + n / 20000}.get(kind_of(p), 1.2) for p in opt.cold_peers
        )  # a fresh interpreter each
        fan = 15e-6 * 5 * n if "snapmeta-fanout" in opt.cold_peers else 0
        total += len(opt.cold_ngffs) * (opt.cold_samples * per + fan)
    return total


def _counts_delta(fs: Any) -> dict[str, int]:
    fs.wait_idle()
    return fs.counts()


class _Acc:
    """Samples and request counts of one (config, op, peer)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.ops: dict[str, int] = {}
        self.max_in_flight = 0

    def add(self, times: list[float], counts: dict[str, int]) -> None:
        self.times += times
        for k, v in counts.items():
            if k == "max_in_flight":
                self.max_in_flight = max(self.max_in_flight, v)
            elif v:
                self.ops[k] = self.ops.get(k, 0) + v

    def summary(self) -> dict[str, Any]:
        n = len(self.times)
        if not n:
            return {"skipped": "no samples"}
        ordered = sorted(self.times)
        per = {k: v / n for k, v in self.ops.items()}
        return {
            "median": statistics.median(ordered),
            "p90": ordered[min(n - 1, int(0.9 * n))],
            "min": ordered[0],
            "n": n,
            "rt": round_trips(per),
            "ops": per,
            "max_in_flight": self.max_in_flight,
        }


class _DstPool:
    """Fresh destination positions: link copies of the empty template with its
    snapshot, handed out in blocks so that every timed task writes a position
    nobody wrote before (as the seed workflow does)."""

    def __init__(self, template: Path, workdir: Path, order: list[str], tag: str) -> None:
        self.template, self.workdir, self.order, self.tag = template, workdir, order, tag
        self.copies: list[Path] = []
        self.cursor = len(order)

    def block(self, size: int) -> tuple[Path, list[str]]:
        from . import common

        if size > len(self.order):
            size = len(self.order)
        if self.cursor + size > len(self.order):
            copy = self.workdir / f"dst-{self.tag}-{len(self.copies)}"
            common.link_copy(self.template, copy)
            self.copies.append(copy)
            self.cursor = 0
        paths = self.order[self.cursor : self.cursor + size]
        self.cursor += size
        return self.copies[-1], paths


def _chunk_files(plate: Path, path: str) -> list[Path]:
    docs = {".zarray", ".zattrs", ".zgroup", "zarr.json"}
    out = []
    for dirpath, _, files in os.walk(plate / path / "0"):
        out += [Path(dirpath) / f for f in files if f not in docs]
    return out


def prepare_plates(opt: NetOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """Cached plates with current snapshots (built before any mount)."""
    from . import common

    plates: dict[str, Path] = {}
    templates: dict[str, Path] = {}
    for layout in sorted(
        set(opt.layouts) | set(opt.cold_layouts), key=lambda x: common.LAYOUTS[x].n_positions
    ):
        for ngff in sorted(set(opt.ngffs) | set(opt.cold_ngffs)):
            if layout not in opt.layouts and ngff not in opt.cold_ngffs:
                continue
            key = f"{layout}-{ngff}"
            plates[key] = common.ensure_plate(layout, ngff).resolve()
            common.ensure_snapshot(plates[key])
            if layout in opt.layouts:
                templates[key] = common.ensure_plate(layout, ngff, empty=True).resolve()
                common.ensure_snapshot(templates[key])
    return {"plates": plates, "templates": templates}


def run_network(opt: NetOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """The interleaved network section: every config, both operations, every peer."""
    from . import common

    lfs = latencyfs_module()
    root = common.data_root().resolve()
    t0 = time.perf_counter()
    fixtures = prepare_plates(opt, log)
    log(f"network: plates and snapshots ready in {time.perf_counter() - t0:.0f} s")
    work = common.tmpdir("network-")
    # Every destination block is made before mounting: the source tree must
    # change only through the mount while it is mounted.
    blocks: dict[tuple[str, str, float, str], tuple[Path, list[str]]] = {}
    for layout in opt.layouts:
        for ngff in opt.ngffs:
            key = f"{layout}-{ngff}"
            order = common.sample_paths(layout, common.LAYOUTS[layout].n_positions)
            pool = _DstPool(fixtures["templates"][key], work, order, key)
            for cache in opt.caches:
                for delay in opt.delays_ms:
                    for peer in opt.peers:
                        blocks[(key, cache, delay, peer)] = pool.block(opt.task_max + 2)
    log(f"network: {len(blocks)} destination blocks in {work}")
    results: dict[str, Any] = {
        "options": asdict(opt),
        "configs": {},
        "peers": {},
    }
    mounts: dict[str, Any] = {}
    procs: dict[str, PeerProcess] = {}
    try:
        for cache in opt.caches:
            timeout = 0.0 if cache == "off" else opt.cache_timeout
            mounts[cache] = lfs.LatencyFS(
                root,
                delay_ms=0,
                entry_timeout=timeout,
                attr_timeout=timeout,
                default_permissions=False,
            )
        for peer in opt.peers:
            python = python_of(peer)
            if python is None:
                results["peers"][peer] = {"skipped": "no py313 environment"}
                continue
            try:
                procs[peer] = PeerProcess(peer, python)
                results["peers"][peer] = procs[peer].info["versions"]
            except Exception as exc:
                results["peers"][peer] = {"skipped": str(exc)[-500:]}
        live = [p for p in opt.peers if p in procs]
        log(f"network: {len(mounts)} mounts, {len(live)} measurement processes ready")
        config_index = 0
        for layout in opt.layouts:
            for ngff in opt.ngffs:
                key = f"{layout}-{ngff}"
                for cache in opt.caches:
                    fs = mounts[cache]
                    mnt = fs.path
                    src = mnt / fixtures["plates"][key].relative_to(root)
                    # as many positions as possible, so that with caches on a
                    # position is rarely revisited within the 1 s timeouts
                    cycle = common.sample_paths(layout, 1024)
                    for delay in opt.delays_ms:
                        name = f"{key}/{cache}/{delay:g}ms"
                        t_config = time.perf_counter()
                        res = _run_config(
                            opt,
                            fs,
                            procs,
                            live,
                            key,
                            cache,
                            delay,
                            src,
                            mnt,
                            root,
                            blocks,
                            cycle,
                            config_index,
                            log,
                        )
                        res["seconds"] = time.perf_counter() - t_config
                        results["configs"][name] = res
                        config_index += 1
                        log(f"network {name} open: {_line(res['open'], live)}")
                        line = _line(res["task"], live)
                        log(f"network {name} task: {line} ({res['seconds']:.0f} s)")
    finally:
        for p in procs.values():
            p.close()
        for fs in mounts.values():
            fs.close()
        shutil.rmtree(work, ignore_errors=True)
    return results


def _line(res: dict[str, Any], peers: list[str]) -> str:
    return "  ".join(
        f"{p}={res[p]['median'] * 1e3:.2f}ms/{res[p]['rt']:.1f}rt"
        for p in peers
        if "median" in res.get(p, {})
    )


def _run_config(
    opt: NetOptions,
    fs: Any,
    procs: dict[str, PeerProcess],
    live: list[str],
    key: str,
    cache: str,
    delay: float,
    src: Path,
    mnt: Path,
    root: Path,
    blocks: dict[tuple[str, str, float, str], tuple[Path, list[str]]],
    cycle: list[str],
    config_index: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    out: dict[str, Any] = {"setup": {}, "open": {}, "task": {}}
    ok = {"open": list(live), "task": list(live)}
    dst_of: dict[str, tuple[Path, list[str]]] = {}
    # 1. setup at the config's delay (the fan-out peer's parent step is timed and counted)
    fs.set_delay_ms(delay)
    for peer in live:
        dst_dir, paths = blocks[(key, cache, delay, peer)]
        dst = mnt / dst_dir.relative_to(root)
        dst_of[peer] = (dst, paths)
        for op in ("open", "task"):
            fs.wait_idle()
            fs.reset()
            try:
                r = procs[peer].call(cmd="setup", op=op, src=str(src), dst=str(dst))
            except RuntimeError as exc:
                ok[op].remove(peer)
                out[op][peer] = {"skipped": str(exc)[-800:]}
                where = f"{key}/{cache}/{delay:g}ms"
                log(f"network {where}: {peer} {op} setup failed: {str(exc)[-300:]}")
                continue
            counts = _counts_delta(fs)
            if kind_of(peer) == "snapmeta-fanout":
                out["setup"].setdefault(peer, {})[op] = {
                    "seconds": r["seconds"],
                    "rt": round_trips(counts),
                    "ops": {k: v for k, v in counts.items() if v and k != "max_in_flight"},
                    "max_in_flight": counts["max_in_flight"],
                }
    # 2. warm-up without delay: imports done already; mappings, event loops,
    # snapshot pages; the source chunks of the task are read once (page cache)
    fs.set_delay_ms(0)
    for peer in ok["open"]:
        with contextlib.suppress(RuntimeError):  # the snapshot's pages, zarr's caches
            procs[peer].call(cmd="run", op="open", paths=cycle, budget=opt.warm_budget, min=2)
    for peer in ok["task"]:
        for f in {f for p in dst_of[peer][1] for f in _chunk_files(src, p)}:
            with open(f, "rb") as fh:
                fh.read()
        with contextlib.suppress(RuntimeError):
            procs[peer].call(cmd="run", op="task", paths=dst_of[peer][1][:2], budget=0, min=2)
    fs.set_delay_ms(delay)
    # 3. interleaved turns, peer order rotating every round
    for op in ("open", "task"):
        peers = ok[op]
        if not peers:
            continue
        accs = {p: _Acc() for p in peers}
        # each peer starts elsewhere in the cycle: no peer finds the entries of
        # the positions the previous peer just opened in the kernel's caches
        cursors = {p: i * len(cycle) // len(peers) for i, p in enumerate(peers)}
        if op == "task":
            cursors = dict.fromkeys(peers, 0)
        budget = (opt.open_budget if op == "open" else opt.task_budget) / opt.rounds
        least = math.ceil((opt.open_min if op == "open" else opt.task_min) / opt.rounds)
        most = math.ceil((opt.open_max if op == "open" else opt.task_max) / opt.rounds)
        for r in range(opt.rounds):
            shift = (r + config_index) % len(peers)
            for peer in peers[shift:] + peers[:shift]:
                if op == "open":
                    start = cursors[peer]
                    paths = [cycle[(start + i) % len(cycle)] for i in range(most)]
                else:
                    todo = dst_of[peer][1][2:]
                    paths = todo[cursors[peer] : cursors[peer] + most]
                if not paths:
                    continue
                fs.wait_idle()
                fs.reset()
                try:
                    times = procs[peer].call(
                        cmd="run", op=op, paths=paths, budget=budget, min=least
                    )["times"]
                except RuntimeError as exc:
                    out[op][peer] = {"skipped": str(exc)[-800:]}
                    break
                accs[peer].add(times, _counts_delta(fs))
                cursors[peer] += len(times)
        for peer in peers:
            if peer not in out[op]:
                out[op][peer] = accs[peer].summary()
    return out


def drop_cold(fs: Any, plate: Path, path: str, lfs: Any) -> None:
    """Drop the page cache of every file a first open of ``path`` may read:
    the snapshot, and the root, well, position and level-0 documents."""
    docs = (".zattrs", ".zgroup", ".zarray", "zarr.json")
    well = path.rsplit("/", 1)[0]
    files = [plate / ".snapmeta" / "0"]
    for d in ("", well, path, f"{path}/0"):
        files += [plate / d / name for name in docs]
    for f in files:
        with contextlib.suppress(FileNotFoundError):
            lfs.drop_caches(f)


def run_cold(opt: NetOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """A fresh interpreter opens one position through the mount, page cache dropped."""
    from . import common

    lfs = latencyfs_module()
    root = common.data_root().resolve()
    fixtures = prepare_plates(opt, log)
    results: dict[str, Any] = {"options": asdict(opt), "configs": {}, "peers": {}}
    peers = [p for p in opt.cold_peers if python_of(p) is not None]
    for p in opt.cold_peers:
        if p not in peers:
            results["peers"][p] = {"skipped": "no py313 environment"}
    with lfs.LatencyFS(root, delay_ms=0, default_permissions=False) as fs:
        for layout in opt.cold_layouts:
            for ngff in opt.cold_ngffs:
                key = f"{layout}-{ngff}"
                plate = fs.path / fixtures["plates"][key].relative_to(root)
                fan = None
                res: dict[str, Any] = {}
                here = list(peers)
                if "snapmeta-fanout" in here:
                    t0 = time.perf_counter()
                    try:
                        fan = fan_out_pickle(str(plate))  # at delay 0: it checks every document
                        log(f"cold {key}: fan_out() at delay 0: {time.perf_counter() - t0:.1f} s")
                    except RuntimeError as exc:
                        res["snapmeta-fanout"] = {"skipped": str(exc)[-800:]}
                        here.remove("snapmeta-fanout")
                sample = common.sample_paths(layout)
                paths = [
                    sample[(len(sample) // 2 + 7 * i) % len(sample)]
                    for i in range(opt.cold_samples)
                ]
                samples: dict[str, list[dict[str, Any]]] = {p: [] for p in here}
                for i, path in enumerate(paths):
                    order = here[i % len(here) :] + here[: i % len(here)]
                    for peer in order:
                        fs.set_delay_ms(0)
                        drop_cold(fs, plate, path, lfs)
                        fs.set_delay_ms(opt.cold_delay_ms)
                        code = cold_code(kind_of(peer), str(plate), path, fan)
                        fs.wait_idle()
                        fs.reset()
                        t0 = time.perf_counter()
                        r = subprocess.run(
                            [python_of(peer), "-c", code],
                            capture_output=True,
                            text=True,
                            cwd="/",
                            check=False,
                        )
                        wall = time.perf_counter() - t0
                        counts = _counts_delta(fs)
                        if r.returncode != 0:
                            res[peer] = {"skipped": r.stderr.strip()[-800:]}
                            log(f"cold {key} {peer} failed: {r.stderr.strip()[-300:]}")
                            continue
                        inner = json.loads(r.stdout.strip().splitlines()[-1])
                        samples[peer].append(
                            {
                                "wall_s": wall,
                                **inner,
                                "rt": round_trips(counts),
                                "ops": {
                                    k: v for k, v in counts.items() if v and k != "max_in_flight"
                                },
                            }
                        )
                for peer, s in samples.items():
                    if not s or peer in res:
                        continue
                    med = {
                        k: statistics.median(x[k] for x in s)
                        for k in ("wall_s", "import_s", "open_s", "rt")
                    }
                    ops: dict[str, float] = {}
                    for x in s:
                        for k, v in x["ops"].items():
                            ops[k] = ops.get(k, 0) + v / len(s)
                    res[peer] = {
                        **med,
                        "ops": ops,
                        "read_calls": [x["ops"].get("read", 0) for x in s],
                        "read_bytes": [x["ops"].get("read_bytes", 0) for x in s],
                        "samples": s,
                    }
                results["configs"][key] = res
                log(
                    f"cold {key}: "
                    + "  ".join(
                        f"{p}={r['open_s'] * 1e3:.1f}ms/{r['rt']:.0f}rt/"
                        f"{r['ops'].get('read', 0):.0f}reads"
                        for p, r in res.items()
                        if "open_s" in r
                    )
                )
    for peer in peers:
        results["peers"][peer] = _env_versions(python_of(peer))
    return results


def _env_versions(python: str | None) -> dict[str, str]:
    code = (
        f"import sys, json; sys.path.insert(0, {str(ASV_DIR)!r})\n"
        "from benchmarks import network\nprint(json.dumps(network.versions()))\n"
    )
    r = subprocess.run(
        [python or sys.executable, "-c", code], capture_output=True, text=True, cwd="/"
    )
    return json.loads(r.stdout) if r.returncode == 0 else {}


def trace_opens(plate_key: str, peers: list[str], log: Callable[[str], None]) -> dict[str, str]:
    """One warm open+["0"] per in-process peer through a traced mount (delay 0,
    caches off): the request log, for reading where round trips go."""
    from . import common

    lfs = latencyfs_module()
    root = common.data_root().resolve()
    layout, ngff = plate_key.rsplit("-", 1)
    plate = common.ensure_plate(layout, ngff).resolve()
    common.ensure_snapshot(plate)
    sample = common.sample_paths(layout)
    out: dict[str, str] = {}
    with lfs.LatencyFS(root, delay_ms=0, default_permissions=False, trace=True) as fs:
        mplate = str(fs.path / plate.relative_to(root))
        for peer in peers:
            try:
                fn = make_open(kind_of(peer), mplate)
            except Exception as exc:
                out[peer] = f"(not traced: {exc!r})"
                continue
            fn(sample[0])
            fn(sample[1])
            fs.wait_idle()
            start = len(fs.server_log())
            with fs.measure() as ops:
                fn(sample[2])
            lines = [ln.split("latencyfs: ", 1)[-1] for ln in fs.server_log()[start:].splitlines()]
            out[peer] = "\n".join(lines)
            log(f"trace {plate_key} {peer}: {round_trips(ops)} round trips")
            del fn
            release_snapmeta()
    return out


def encode_fan(fan: Any) -> str:
    return base64.b64encode(pickle.dumps(fan)).decode()
