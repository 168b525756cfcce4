"""Side-by-side comparison of snapmeta and its peers, in one run.

    python asv_bench/compare.py --out docs/benchmarks            # full (~60 min; printed)
    python asv_bench/compare.py --out /tmp/cmp --smoke           # 96 positions, 1 ms (~2 min)
    python asv_bench/compare.py --out /tmp/cmp --sections network network-cold
    python asv_bench/compare.py --out /tmp/cmp --estimate        # print the estimate only

Unlike asv, which runs every case in its own process and rounds, this script
times all peers in one run, interleaved (the peer order rotates every round),
with per-call ``perf_counter`` timings and the garbage collector on, as in a
real worker. It reuses the asv suite's fixtures (plates cached under
$SNAPMETA_BENCH_DATA, snapshots rebuilt whenever snapmeta's sources changed)
and peer functions (asv_bench/benchmarks/peers.py and network.py), so both
measure the same code.

Local-disk sections: open, read, counts, cold, build, workflow, memory.
Network sections (latencyfs: root, /dev/fuse and gcc; skipped otherwise):

* network: open + ["0"] and the seed task through a FUSE mount that delays
  every request (0.2 and 1 ms; kernel caches off and 1 s), every peer in its
  own measurement process, iohub 0.3.11 and zarr 3.4.2 from a second
  environment ($SNAPMETA_BENCH_PY313, default /work/venvs/py313/bin/python);
  ms per call and round trips by FUSE request type.
* network-cold: a new interpreter's first open, snapshot pages dropped.
* network-trace: one traced open per peer (network_trace.txt).

It writes into --out:

    results.md                  markdown tables: medians, ratios, targets
    results.json                every sample summary and the machine description
    open_vs_positions.png       log-log: local time per open vs number of positions
    network_ms_per_call.png     ms per call per peer across network configurations
    network_trace.txt           FUSE requests of one open per peer
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchmarks import common, network, peers  # noqa: E402

SECTIONS = [
    "open",
    "read",
    "counts",
    "cold",
    "build",
    "workflow",
    "memory",
    "format1",
    "network",
    "network-cold",
    "network-trace",
]


def log(message: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# machine and versions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str:
    if module == "snapmeta":  # an editable install's metadata can be stale
        import snapmeta

        return snapmeta.__version__
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "not installed"


def _git() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "snapmeta"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return sha + (" + uncommitted changes in snapmeta/" if dirty else "")
    except Exception:
        return "unknown"


def machine() -> dict[str, Any]:
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_mb": mem,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            m: _version(m) for m in ("snapmeta", "zarr", "pyarrow", "iohub", "numpy", "joblib")
        },
        "snapmeta_commit": _git(),
        "snapmeta_digest": common.code_digest(),
    }


# ---------------------------------------------------------------------------
# timing helpers


def summarize(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "min": ordered[0],
        "n": len(ordered),
    }


def interleaved(
    fns: dict[str, Callable[[str], Any]], paths: list[str], *, rounds: int, budget: float
) -> dict[str, list[float]]:
    """Per-call seconds of every peer; peers take turns, order rotating.

    Each peer gets about ``budget`` seconds in total, split over ``rounds``
    turns, and at least one call per turn.
    """
    cycles = {peer: itertools.cycle(paths) for peer in fns}
    samples: dict[str, list[float]] = {peer: [] for peer in fns}
    order = list(fns)
    turn = budget / rounds
    for r in range(rounds):
        for peer in order[r % len(order) :] + order[: r % len(order)]:
            fn, cycle, out = fns[peer], cycles[peer], samples[peer]
            start = time.perf_counter()
            while True:
                path = next(cycle)
                t0 = time.perf_counter()
                fn(path)
                t1 = time.perf_counter()
                out.append(t1 - t0)
                if t1 - start >= turn:
                    break
    return samples


# ---------------------------------------------------------------------------
# sections


def section_open(
    fx: common.Fixture, layouts: list[str], args: argparse.Namespace, read: bool
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for layout in layouts:
        for ngff in common.NGFF_VERSIONS:
            key = f"{layout}-{ngff}"
            fns = {}
            for peer in peers.PEERS:
                try:
                    fn = peers.opener(peer, fx.views[key], fx.consolidated.get(key))
                except NotImplementedError as exc:
                    results.setdefault(key, {})[peer] = {"skipped": str(exc)}
                    continue
                if read:
                    fns[peer] = (lambda f: lambda p: f(p)[...])(fn)
                else:
                    fns[peer] = fn
            paths = common.sample_paths(layout)
            for fn in fns.values():  # imports, event loop, mappings
                fn(paths[0])
            gc.collect()
            samples = interleaved(
                fns, paths[1:] + paths[:1], rounds=args.rounds, budget=args.budget
            )
            for peer, s in samples.items():
                results.setdefault(key, {})[peer] = summarize(s)
            line = "  ".join(f"{p}={results[key][p]['median'] * 1e3:.3f}ms" for p in fns)
            log(f"{'read' if read else 'open'} {key}: {line}")
    return results


def section_counts(fx: common.Fixture, layouts: list[str]) -> dict[str, Any]:
    # In a subprocess: the audit hook cannot be removed once installed.
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "from benchmarks import common, peers\n"
        "fx = common.Fixture(**json.loads(sys.argv[1]))\n"
        "out = {}\n"
        "for layout in json.loads(sys.argv[2]):\n"
        "    for ngff in common.NGFF_VERSIONS:\n"
        "        key = f'{layout}-{ngff}'\n"
        "        for peer in peers.PEERS:\n"
        "            try:\n"
        "                fn = peers.opener(peer, fx.views[key], fx.consolidated.get(key))\n"
        "            except NotImplementedError:\n"
        "                continue\n"
        "            n = 4 if peer in ('iohub', 'zarr-consolidated') else 32\n"
        "            paths = common.sample_paths(layout)[:n]\n"
        "            out.setdefault(key, {})[peer] = peers.count_io(fn, paths)\n"
        "print(json.dumps(out))\n"
    )
    fixture = json.dumps(fx.__dict__)
    r = subprocess.run(
        [sys.executable, "-c", code, fixture, json.dumps(layouts)],
        capture_output=True,
        text=True,
        check=True,
    )
    results = json.loads(r.stdout)
    for key in results:
        results[key]["snapshot_bytes"] = os.path.getsize(common.snapshot_file(fx.views[key]))
    log(f"counts: {json.dumps(results)[:300]}...")
    return results


def section_cold(
    fx: common.Fixture, layouts: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    def run(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        return time.perf_counter() - t0

    results: dict[str, Any] = {
        "python -c pass": summarize([run("pass") for _ in range(args.cold_samples)])
    }
    for layout in layouts:
        for ngff in common.NGFF_VERSIONS:
            key = f"{layout}-{ngff}"
            paths = common.sample_paths(layout)
            codes = {}
            for peer in peers.PEERS:
                try:
                    codes[peer] = peers.cold_code(
                        peer, fx.views[key], paths[len(paths) // 2], fx.consolidated.get(key)
                    )
                except NotImplementedError as exc:
                    results.setdefault(key, {})[peer] = {"skipped": str(exc)}
            samples: dict[str, list[float]] = {p: [] for p in codes}
            order = list(codes)
            for r in range(args.cold_samples):
                for peer in order[r % len(order) :] + order[: r % len(order)]:
                    samples[peer].append(run(codes[peer]))
            for peer, s in samples.items():
                results.setdefault(key, {})[peer] = summarize(s)
            log(
                "cold "
                + key
                + ": "
                + "  ".join(f"{p}={results[key][p]['median'] * 1e3:.0f}ms" for p in codes)
            )
    return results


def section_build(layouts: list[str], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for layout in layouts:
        for ngff in common.NGFF_VERSIONS:
            key = f"{layout}-{ngff}"
            source = common.ensure_plate(layout, ngff)
            copy = common.copy_metadata(source, work / f"build-{key}")
            samples: dict[str, list[float]] = {p: [] for p in peers.BUILD_PEERS}
            order = list(peers.BUILD_PEERS)
            for r in range(args.build_repeats):
                for peer in order[r % 2 :] + order[: r % 2]:
                    peers.reset_build_copy(str(source), str(copy))
                    t0 = time.perf_counter()
                    peers.run_build(peer, str(copy), ngff)
                    samples[peer].append(time.perf_counter() - t0)
            results[key] = {p: summarize(s) for p, s in samples.items()}
            shutil.rmtree(copy, ignore_errors=True)
            log(
                "build "
                + key
                + ": "
                + "  ".join(f"{p}={results[key][p]['median']:.2f}s" for p in samples)
            )
    return results


def section_workflow(fx: common.Fixture, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import joblib
    import snapmeta

    layout = common.WORKFLOW_LAYOUT
    all_paths = common.position_paths(layout)
    stride = 1 if args.smoke else 20
    wf_peers = []
    for p in peers.WORKFLOW_PEERS:
        try:
            peers.require(p)
            wf_peers.append(p)
        except NotImplementedError as exc:
            log(f"workflow: {p} skipped ({exc})")
    results: dict[str, Any] = {"layout": layout, "n_jobs": 2, "iohub_stride": stride}
    with joblib.Parallel(n_jobs=2) as parallel:
        for peer in wf_peers:
            peers.warm_workers(peer, parallel, 2)
        for ngff in common.NGFF_VERSIONS:
            key = f"{layout}-{ngff}"
            rates: dict[str, list[float]] = {p: [] for p in wf_peers}
            cpu_ms: dict[str, list[float]] = {p: [] for p in wf_peers}
            ratios: list[float] = []
            fan_ratios: list[float] = []
            for r in range(args.workflow_repeats):
                # One destination per peer; the positions are split into blocks
                # and the peers alternate block by block, so a change in the
                # other tenants' load hits every peer alike (paired samples).
                dsts = {}
                for peer in wf_peers:
                    dst = common.copy_metadata(fx.empty[key], work / f"dst-{key}-{peer}-{r}")
                    snapmeta.build_snapshot(dst)
                    dsts[peer] = str(dst)
                wall = dict.fromkeys(wf_peers, 0.0)
                cpu = dict.fromkeys(wf_peers, 0.0)
                count = dict.fromkeys(wf_peers, 0)
                ends = {p: (fx.views[key], dsts[p]) for p in wf_peers}
                if "snapmeta-fanout" in wf_peers:
                    # the parent verifies both plates once per run: part of its time
                    t0 = time.perf_counter()
                    ends["snapmeta-fanout"] = peers.fan_out_pair(*ends["snapmeta-fanout"])
                    wall["snapmeta-fanout"] += time.perf_counter() - t0
                blocks = args.workflow_blocks
                for b in range(blocks):
                    shift = (r + b) % len(wf_peers)
                    for peer in wf_peers[shift:] + wf_peers[:shift]:
                        paths = all_paths[::stride] if peer == "iohub" else all_paths
                        block = paths[b::blocks]
                        seconds, c = peers.run_workflow(
                            peer, *ends[peer], block, parallel, cpu=True
                        )
                        wall[peer] += seconds
                        cpu[peer] += c
                        count[peer] += len(block)
                for peer in wf_peers:
                    rates[peer].append(count[peer] / wall[peer])
                    cpu_ms[peer].append(cpu[peer] / count[peer] * 1e3)
                    shutil.rmtree(dsts[peer], ignore_errors=True)
                ratios.append(rates["snapmeta"][-1] / rates["zarr"][-1])
                if "snapmeta-fanout" in rates:
                    fan_ratios.append(rates["snapmeta-fanout"][-1] / rates["zarr"][-1])
                log(
                    f"workflow {key} repeat {r}: "
                    + "  ".join(
                        f"{p}={rates[p][-1]:.0f}/s ({cpu_ms[p][-1]:.2f} ms CPU)" for p in wf_peers
                    )
                    + f"  snapmeta/zarr={ratios[-1]:.2f}"
                )
            results[key] = {
                p: summarize(s)
                | {
                    "samples": s,
                    "cpu_ms": summarize(cpu_ms[p]),
                    "tasks": len(all_paths[::stride] if p == "iohub" else all_paths),
                }
                for p, s in rates.items()
            }
            results[key]["paired_ratio_vs_zarr"] = ratios
            if fan_ratios:
                results[key]["paired_fanout_ratio_vs_zarr"] = fan_ratios
    return results


def section_format1(layouts: list[str], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Format 1 (the last commit that wrote it) against this snapmeta, same run.

    Each version runs in its own measurement process; they take turns. Format
    1 reads a view of the cached plate (root documents copied, rows
    symlinked, ``.snapmeta.arrow`` built there by format 1's builder), format
    2 the plate itself. Both call ``open_position(plate, p)["0"]``.
    """
    ref = args.format1_ref
    old = work / "format1"
    old.mkdir()
    archive = subprocess.run(
        ["git", "archive", ref, "snapmeta"], cwd=HERE.parent, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    results: dict[str, Any] = {"ref": ref, "commit": _short_sha(ref), "plates": {}}
    procs = {
        "format 1": network.PeerProcess("snapmeta", sys.executable, pythonpath=str(old)),
        "format 2": network.PeerProcess("snapmeta", sys.executable),
    }
    try:
        results["versions"] = {k: p.info["versions"]["snapmeta"] for k, p in procs.items()}
        for layout in layouts:
            for ngff in common.NGFF_VERSIONS:
                key = f"{layout}-{ngff}"
                plate = common.ensure_plate(layout, ngff)
                common.ensure_snapshot(plate)
                view = work / f"f1-{key}"
                view.mkdir()
                for entry in os.scandir(plate):
                    if entry.is_dir() and entry.name != common.SNAPSHOT_ARRAY:
                        os.symlink(entry.path, view / entry.name)
                    elif entry.name in {".zgroup", ".zattrs", "zarr.json"}:
                        shutil.copy2(entry.path, view / entry.name)
                t0 = time.perf_counter()
                subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        "import sys, snapmeta; snapmeta.build_snapshot(sys.argv[1])",
                        str(view),
                    ],
                    cwd=old,
                    env={**os.environ, "PYTHONPATH": str(old)},
                    check=True,
                    capture_output=True,
                )
                build = time.perf_counter() - t0
                stores = {"format 1": str(view), "format 2": str(plate)}
                for name, proc in procs.items():
                    proc.call(cmd="setup", op="open", src=stores[name], dst="")
                paths = common.sample_paths(layout)
                samples: dict[str, list[float]] = {name: [] for name in procs}
                for proc in procs.values():  # mapping, imports, every sample page
                    proc.call(cmd="run", op="open", paths=paths, budget=0.2, min=len(paths))
                order = list(procs)
                for r in range(args.format1_rounds):
                    for name in order[r % 2 :] + order[: r % 2]:
                        samples[name] += procs[name].call(
                            cmd="run",
                            op="open",
                            paths=paths,
                            budget=args.budget / args.format1_rounds * 2,
                            min=1,
                        )["times"]
                res = {name: summarize(s) for name, s in samples.items()}
                res["format1_build_s"] = build
                res["format1_snapshot_bytes"] = os.path.getsize(view / ".snapmeta.arrow")
                res["format2_snapshot_bytes"] = os.path.getsize(common.snapshot_file(plate))
                results["plates"][key] = res
                log(
                    f"format1 {key}: format 1 {res['format 1']['median'] * 1e3:.3f} ms, "
                    f"format 2 {res['format 2']['median'] * 1e3:.3f} ms "
                    f"({res['format 2']['median'] / res['format 1']['median']:.2f}×)"
                )
    finally:
        for p in procs.values():
            p.close()
    return results


def _short_sha(ref: str) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", ref],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except Exception:
        return ref


def section_memory(fx: common.Fixture, args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.bench_memory import MEMORY_NGFF, WORKERS

    key = f"{common.MEMORY_LAYOUT}-{MEMORY_NGFF}"
    results: dict[str, Any] = {"plate": key}
    for peer in peers.MEMORY_PEERS:
        for n in WORKERS:
            out = peers.measure_worker_memory_isolated(peer, fx.views[key], n)
            results[f"{peer}/{n}"] = out
            log(
                f"memory {peer} N={n}: private dirty +{out['private_dirty_delta']:.1f} MB, "
                f"PSS +{out['pss_delta']:.1f} MB, USS +{out['uss_delta']:.1f} MB, "
                f"{out['seconds']:.0f} s"
            )
    return results


# ---------------------------------------------------------------------------
# report


def _ms(x: float) -> str:
    x *= 1e3
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def _ratio(snap: float, peer: float) -> str:
    return f"{snap / peer:.3g} ({peer / snap:.3g}×)"


def _cell(res: dict[str, Any], peer: str, fmt: Callable[[float], str] = _ms) -> str:
    r = res.get(peer)
    if r is None or "median" not in r:
        return "n/a"
    return fmt(r["median"])


def report(data: dict[str, Any], out: Path) -> str:
    m = data["machine"]
    lines = [
        "# snapmeta vs peers: one run, interleaved",
        "",
        f"- date: {m['date']}; snapmeta commit: {m['snapmeta_commit']}"
        + (f" (sources digest {m['snapmeta_digest']})" if m.get("snapmeta_digest") else ""),
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"{m['memory_mb']} MB RAM; load average {m['load_average_start']} at start, "
        f"{m.get('load_average_end')} at end (shared VM: other tenants)",
        f"- python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- command: `{data['command']}` ({data['seconds'] / 60:.1f} min)",
    ]
    for rerun in data.get("reruns", []):
        rm = rerun["machine"]
        lines.append(
            f"- re-measured {', '.join(rerun['sections'])} on {rm['date']} (snapmeta commit "
            f"{rm['snapmeta_commit']}) with `{rerun['command']}` "
            f"({rerun['seconds'] / 60:.1f} min; load average {rm['load_average_start']} at start, "
            f"{rm.get('load_average_end')} at end)"
        )
    lines.append("")
    if "network" in data:
        lines += network_report(data)
    if "network-cold" in data:
        lines += cold_report(data)
    if "network-trace" in data:
        lines += [
            "## Request traces",
            "",
            'One warm open + ["0"] per peer through a traced mount (delay 0, caches off), '
            f"{data['network-trace']['plate']}: [network_trace.txt](network_trace.txt).",
            "",
        ]
    positions = {name: common.LAYOUTS[name].n_positions for name in common.LAYOUTS}
    describe = {
        "w96": "96 wells x 1",
        "f1536": "384 wells x 4",
        "w7035": "7,035 wells x 1",
        "f7035": "384 wells x 18-19",
        "f100000": "2,000 wells x 50",
    }
    for section, title in (
        ("open", "Open + lookup + array handle"),
        ("read", "Open + lookup + read the position (2 chunks of 64x64 uint16)"),
    ):
        if section not in data:
            continue
        res = data[section]
        lines += [f"## {title}: median ms per call (warm process)", ""]
        lines += [
            "| plate | positions | ngff | " + " | ".join(peers.PEERS) + " |",
            "|---|---:|---|" + "---:|" * len(peers.PEERS),
        ]
        for key, r in res.items():
            layout, ngff = key.rsplit("-", 1)
            lines.append(
                f"| {layout} ({describe[layout]}) | {positions[layout]:,} | {ngff} | "
                + " | ".join(_cell(r, p) for p in peers.PEERS)
                + " |"
            )
        lines += [
            "",
            f"Ratio snapmeta / peer (speedup of snapmeta.open_position in parentheses), {section}:",
            "",
        ]
        others = [p for p in peers.PEERS if p != "snapmeta"]
        lines += [
            "| plate | ngff | " + " | ".join(others) + " |",
            "|---|---|" + "---:|" * len(others),
        ]
        for key, r in res.items():
            layout, ngff = key.rsplit("-", 1)
            snap = r["snapmeta"]["median"]
            cells = [
                _ratio(snap, r[p]["median"]) if "median" in r.get(p, {}) else "n/a" for p in others
            ]
            lines.append(f"| {layout} | {ngff} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"p90 ms ({section}):",
            "",
            "| plate | ngff | " + " | ".join(peers.PEERS) + " |",
            "|---|---|" + "---:|" * len(peers.PEERS),
        ]
        for key, r in res.items():
            layout, ngff = key.rsplit("-", 1)
            lines.append(
                f"| {layout} | {ngff} | "
                + " | ".join(
                    _ms(r[p]["p90"]) if "p90" in r.get(p, {}) else "n/a" for p in peers.PEERS
                )
                + " |"
            )
        lines.append("")
    if "counts" in data:
        lines += [
            "## Files opened / bytes read per open + lookup + array (warm, deterministic)",
            "",
            "| plate | ngff | snapshot bytes | bytes / position | "
            + " | ".join(peers.PEERS)
            + " |",
            "|---|---|---:|---:|" + "---:|" * len(peers.PEERS),
        ]
        for key, r in data["counts"].items():
            layout, ngff = key.rsplit("-", 1)
            cells = [
                f"{r[p]['files']:.0f} / {r[p]['bytes']:,.0f}" if p in r else "n/a"
                for p in peers.PEERS
            ]
            per = r["snapshot_bytes"] / positions[layout]
            lines.append(
                f"| {layout} | {ngff} | {r['snapshot_bytes']:,} | {per:.0f} | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")
    if "cold" in data:
        res = data["cold"]
        base = res["python -c pass"]["median"]
        lines += [
            "## Fresh process: interpreter + import + open + read one position, median ms",
            "",
            f"`python -c pass` alone: {_ms(base)} ms.",
            "",
            "| plate | ngff | " + " | ".join(peers.PEERS) + " |",
            "|---|---|" + "---:|" * len(peers.PEERS),
        ]
        for key, r in res.items():
            if key == "python -c pass":
                continue
            layout, ngff = key.rsplit("-", 1)
            lines.append(
                f"| {layout} | {ngff} | "
                + " | ".join(_cell(r, p, lambda x: f"{x * 1e3:.0f}") for p in peers.PEERS)
                + " |"
            )
        lines.append("")
    if "build" in data:
        lines += [
            "## Build: snapmeta.build_snapshot vs zarr.consolidate_metadata, median s (warm cache)",
            "",
            "| plate | ngff | snapmeta | zarr-consolidate | snapmeta / zarr |",
            "|---|---|---:|---:|---:|",
        ]
        for key, r in data["build"].items():
            layout, ngff = key.rsplit("-", 1)
            s, z = r["snapmeta"]["median"], r["zarr-consolidate"]["median"]
            lines.append(f"| {layout} | {ngff} | {s:.2f} | {z:.2f} | {s / z:.2f} |")
        if "fixture_build_seconds" in data:
            big = {
                k: v for k, v in data["fixture_build_seconds"].items() if k.startswith("f100000")
            }
            if big:
                lines += [
                    "",
                    "Snapshot build of the 100,000-position plates (one sample, while "
                    "preparing the fixtures): "
                    + ", ".join(f"{k}: {v:.1f} s" for k, v in big.items()),
                ]
        lines.append("")
    if "workflow" in data:
        w = data["workflow"]
        lines += [
            f"## Workflow: joblib n_jobs={w['n_jobs']} over {w['layout']}, positions/s (median)",
            "",
            "| ngff | snapmeta | snapmeta fan-out | zarr | iohub | paired snapmeta / zarr "
            "| paired fan-out / zarr | snapmeta / iohub |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, r in w.items():
            if not isinstance(r, dict):
                continue
            ngff = key.rsplit("-", 1)[1]
            s = r["snapmeta"]["median"]
            f = r.get("snapmeta-fanout", {}).get("median")
            z = r["zarr"]["median"]
            i = r.get("iohub", {}).get("median")
            paired = r.get("paired_ratio_vs_zarr")
            pr = f"{statistics.median(paired):.2f}" if paired else "n/a"
            fpaired = r.get("paired_fanout_ratio_vs_zarr")
            fpr = f"{statistics.median(fpaired):.2f}" if fpaired else "n/a"
            lines.append(
                f"| {ngff} | {s:.0f} | {f'{f:.0f}' if f else 'n/a'} | {z:.0f} | "
                f"{f'{i:.1f}' if i else 'n/a'} | {pr} | {fpr} | {f'{s / i:.1f}' if i else 'n/a'} |"
            )
        lines += [
            "",
            "*Paired*: the peers alternate in blocks of positions within one repeat, and the "
            "ratio is taken per repeat before the median (robust to slow load changes).",
            "",
            "Every sample (positions/s), in the order taken:",
            "",
            *(
                f"- {key} {p}: " + ", ".join(f"{x:.0f}" for x in r[p].get("samples", []))
                for key, r in w.items()
                if isinstance(r, dict)
                for p in peers.WORKFLOW_PEERS
                if p in r
            ),
            *(
                f"- {key} paired {label} / zarr: " + ", ".join(f"{x:.2f}" for x in r[field])
                for key, r in w.items()
                if isinstance(r, dict)
                for field, label in (
                    ("paired_ratio_vs_zarr", "snapmeta"),
                    ("paired_fanout_ratio_vs_zarr", "fan-out"),
                )
                if field in r
            ),
        ]
        if all(
            "cpu_ms" in r[p]
            for r in w.values()
            if isinstance(r, dict)
            for p in peers.WORKFLOW_PEERS
            if p in r
        ):
            lines += [
                "",
                "CPU time of the two worker processes per position (median ms; moves less with "
                "other tenants' load than wall time, steal included):",
                "",
                "| ngff | snapmeta | snapmeta fan-out | zarr | iohub | zarr / snapmeta |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for key, r in w.items():
                if not isinstance(r, dict):
                    continue
                c = {p: r[p]["cpu_ms"]["median"] for p in peers.WORKFLOW_PEERS if p in r}
                io = f"{c['iohub']:.1f}" if "iohub" in c else "n/a"
                fo = f"{c['snapmeta-fanout']:.2f}" if "snapmeta-fanout" in c else "n/a"
                lines.append(
                    f"| {key.rsplit('-', 1)[1]} | {c['snapmeta']:.2f} | {fo} | {c['zarr']:.2f} | "
                    f"{io} | {c['zarr'] / c['snapmeta']:.2f} |"
                )
        lines += [
            "",
            (
                f"iohub copied every {w['iohub_stride']}th position; the others all of them."
                if w["iohub_stride"] > 1
                else "Every peer copied every position."
            ),
            "",
        ]
    if "format1" in data:
        f1 = data["format1"]
        lines += [
            f'## Local open + ["0"]: format 1 ({f1["commit"]}) and format 2, same run, median ms',
            "",
            "Each version in its own measurement process, taking turns; format 1 reads a view "
            "of the plate with its `.snapmeta.arrow`, format 2 the plate with `.snapmeta/0`.",
            "",
            "| plate | ngff | format 1 | p90 | format 2 | p90 | format 2 / format 1 "
            "| format 1 bytes / position | format 2 bytes / position |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, r in f1["plates"].items():
            layout, ngff = key.rsplit("-", 1)
            a, b = r["format 1"], r["format 2"]
            n = common.LAYOUTS[layout].n_positions
            lines.append(
                f"| {layout} | {ngff} | {_ms(a['median'])} | {_ms(a['p90'])} | "
                f"{_ms(b['median'])} | {_ms(b['p90'])} | {b['median'] / a['median']:.2f} | "
                f"{r['format1_snapshot_bytes'] / n:,.0f} | {r['format2_snapshot_bytes'] / n:,.0f} |"
            )
        lines.append("")
    if "memory" in data:
        mem = data["memory"]
        lines += [
            "## Memory per worker, N workers alive at once, each touching every position "
            f"of {mem['plate']}",
            "",
            "| peer | N | private dirty growth MB | PSS growth MB | USS growth MB "
            "| private dirty total MB | seconds |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for k, r in mem.items():
            if k == "plate":
                continue
            peer, n = k.split("/")
            lines.append(
                f"| {peer} | {n} | {r['private_dirty_delta']:.1f} | {r['pss_delta']:.1f} | "
                f"{r['uss_delta']:.1f} | {r['private_dirty']:.1f} | {r['seconds']:.0f} |"
            )
        lines += [
            "",
            "Growth is measured after imports. Private dirty = anonymous and written pages "
            "(what a worker owns). USS also counts clean page-cache pages of a file that only "
            "one process maps, so with N=1 it includes the snapshot pages the worker touched.",
            "",
        ]
    lines += targets(data)
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    return text


def targets(data: dict[str, Any]) -> list[str]:
    rows = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        rows.append(
            f"| {name} | {'met' if ok else 'MISSED' if ok is not None else 'not measured'} "
            f"| {detail} |"
        )

    o = data.get("open", {})
    for ngff in common.NGFF_VERSIONS:
        r = o.get(f"w7035-{ngff}")
        if r:
            s = r["snapmeta"]["median"]
            for peer, goal in (("iohub", 100), ("zarr-array", 5)):
                if "median" in r.get(peer, {}):
                    x = r[peer]["median"] / s
                    add(
                        f"open 7,035 wells ({ngff}): ≥{goal}× faster than {peer}",
                        x >= goal,
                        f"{x:.1f}×",
                    )
        small, big = o.get(f"w96-{ngff}"), o.get(f"f100000-{ngff}")
        if small and big:
            x = big["snapmeta"]["median"] / small["snapmeta"]["median"]
            add(f"open cost at 100,000 ≤ 1.5× cost at 96 ({ngff})", x <= 1.5, f"{x:.2f}×")
    w = data.get("workflow", {})
    for key, r in w.items():
        if not isinstance(r, dict):
            continue
        s = r["snapmeta"]["median"]
        x = s / r["zarr"]["median"]
        detail = f"{x:.2f}× (ratio of medians)"
        if r.get("paired_ratio_vs_zarr"):
            x = statistics.median(r["paired_ratio_vs_zarr"])
            detail = f"{x:.2f}× (median of paired ratios), {detail}"
        add(f"workflow {key}: ≥1.2× zarr workaround", x >= 1.2, detail)
        if "iohub" in r:
            add(
                f"workflow {key}: ≥10× iohub",
                s / r["iohub"]["median"] >= 10,
                f"{s / r['iohub']['median']:.1f}×",
            )
    for key, r in data.get("build", {}).items():
        x = r["snapmeta"]["median"] / r["zarr-consolidate"]["median"]
        add(
            f"build {key}: no slower than zarr.consolidate_metadata", x <= 1.0, f"{x:.2f}× the time"
        )
    mem = data.get("memory")
    if mem:
        from benchmarks.bench_memory import WORKERS

        d = [mem[f"snapmeta/{n}"]["private_dirty_delta"] for n in WORKERS]
        # flat: the largest N adds at most 10 % + 1 MB over N=1
        ok = d[-1] <= d[0] * 1.1 + 1.0
        add(
            "private memory per worker flat as N grows (snapmeta)",
            ok,
            "private dirty growth "
            + ", ".join(f"N={n}: {v:.1f} MB" for n, v in zip(WORKERS, d, strict=True)),
        )
    network_targets(data, add)
    if not rows:
        return []
    return ["## Targets", "", "| target | status | measured |", "|---|---|---|", *rows, ""]


# ---------------------------------------------------------------------------
# network report

#: Format 1's local-disk open (open_position(...).data, median ms) in its last
#: full run (docs/benchmarks.md at 331c02a); format 2 should stay within 10 %.
FORMAT1_OPEN_MS = {
    "w96-0.4": 0.069,
    "w96-0.5": 0.063,
    "f1536-0.4": 0.071,
    "f1536-0.5": 0.063,
    "w7035-0.4": 0.070,
    "w7035-0.5": 0.061,
    "f7035-0.4": 0.068,
    "f7035-0.5": 0.062,
    "f100000-0.4": 0.069,
    "f100000-0.5": 0.062,
}


def peer_label(peer: str, env: dict[str, Any]) -> str:
    """A peer's name with the versions that ran it."""
    kind = network.kind_of(peer)
    v = env.get(peer, {}) if isinstance(env.get(peer), dict) else {}
    zarr_v = v.get("zarr", "?")
    py = v.get("python", "?")
    other = peer.endswith("@py313")
    suffix = f", Python {py}" if other else ""
    if kind == "snapmeta":
        return f"snapmeta {v.get('snapmeta', '')} (default checks)".replace("  ", " ")
    if kind == "snapmeta-fanout":
        if v.get("fan_out"):
            return "snapmeta fan-out (FanOut made by the harness: this Plate has no fan_out())"
        return "snapmeta fan-out"
    if kind == "zarr-array":
        return f"zarr.open_array (zarr {zarr_v}{suffix})"
    if kind == "iohub":
        return f"iohub {v.get('iohub', '?')} (zarr {zarr_v}{suffix})"
    return peer


def _short(peer: str, env: dict[str, Any]) -> str:
    v = env.get(peer, {}) if isinstance(env.get(peer), dict) else {}
    return {
        "snapmeta": "snapmeta",
        "snapmeta-fanout": "fan-out",
        "zarr-array": f"zarr {v.get('zarr', '')}",
        "iohub": f"iohub {v.get('iohub', '')}",
        "zarr-array@py313": f"zarr {v.get('zarr', '')}",
        "iohub@py313": f"iohub {v.get('iohub', '')}",
    }.get(peer, peer)


def _config_parts(name: str) -> tuple[str, str, str, str]:
    key, cache, delay = name.split("/")
    layout, ngff = key.rsplit("-", 1)
    return layout, ngff, cache, delay


def _net_cell(r: dict[str, Any] | None) -> str:
    if not r or "median" not in r:
        return "n/a"
    return f"{_ms(r['median'])} ({_ms(r['p90'])}) · {r['rt']:.0f}"


def network_report(data: dict[str, Any]) -> list[str]:
    net = data["network"]
    env = net["peers"]
    cfgs = net["configs"]
    order = [p for p in net["options"]["peers"] if p in env and "skipped" not in env[p]]
    lines = [
        "## Network filesystem (latencyfs): ms per call and round trips",
        "",
        "A passthrough FUSE mount whose server sleeps a fixed delay before answering each "
        "request (asv_bench/latencyfs), without `default_permissions`; caches *off*: entry "
        "and attribute timeouts 0 (NFS `actimeo=0`), *on*: 1 s. Each peer runs in its own "
        "measurement process (the py3.13 ones in the second environment), warm: imports "
        "done, snapshot mapped, the source chunks in the page cache. The parent counts "
        "every FUSE request of each turn; peers take turns, order rotating every round.",
        "",
        "Peers:",
        "",
        *(f"- `{p}`: {peer_label(p, env)}" for p in order),
        *(
            f"- `{p}`: not measured ({env[p]['skipped'][:200]})"
            for p in net["options"]["peers"]
            if p in env and "skipped" in env[p]
        ),
        "",
    ]
    for op, title in (
        ("open", 'Open + level-0 array: `open_position(store, p)["0"]` and peers'),
        (
            "task",
            "Seed task: open the source position, read level 0, open the destination "
            'position with mode "a", write (a position never written before)',
        ),
    ):
        lines += [
            f"### {title}",
            "",
            "Cells: median ms (p90) · round trips per call.",
            "",
            "| plate | ngff | delay | caches | " + " | ".join(_short(p, env) for p in order) + " |",
            "|---|---|---|---|" + "---:|" * len(order),
        ]
        for name, cfg in cfgs.items():
            layout, ngff, cache, delay = _config_parts(name)
            lines.append(
                f"| {layout} | {ngff} | {delay} | {cache} | "
                + " | ".join(_net_cell(cfg[op].get(p)) for p in order)
                + " |"
            )
        lines.append("")
    lines += [
        "### Round trips per call by request type",
        "",
        "(IOCTL is not a round trip: Python's `open()` asks `isatty`, which a network "
        "client answers locally; latencyfs answers it at once.)",
        "",
    ]
    for name, cfg in cfgs.items():
        layout, ngff, cache, delay = _config_parts(name)
        if delay != "1ms":
            continue
        for op in ("open", "task"):
            types = [
                t
                for t in network.OP_TYPES
                if any(cfg[op].get(p, {}).get("ops", {}).get(t) for p in order)
            ]
            lines += [
                f"**{op}, {layout} {ngff}, {delay}, caches {cache}**",
                "",
                "| peer | " + " | ".join(types) + " | total | max in flight |",
                "|---|" + "---:|" * (len(types) + 2),
            ]
            for p in order:
                r = cfg[op].get(p, {})
                if "ops" not in r:
                    continue
                cells = [f"{r['ops'].get(t, 0):.3g}" for t in types]
                lines.append(
                    f"| {_short(p, env)} | "
                    + " | ".join(cells)
                    + f" | {r['rt']:.3g} | {r['max_in_flight']} |"
                )
            lines.append("")
    shim = env.get("snapmeta-fanout", {}).get("fan_out")
    if shim:
        lines += [
            f"**Fan-out caveat**: {shim}. The harness built each `FanOut` itself from the "
            "snapshot file's identity, without the parent's verification; the workers' "
            "`FanOut.open_position` is snapmeta's own code. The parent's cost is not "
            "measured in this run.",
            "",
        ]
    if not shim and any(cfg.get("setup") for cfg in cfgs.values()):
        lines += [
            "### Fan-out: the parent's verification (`open_plate(store).fan_out()`)",
            "",
            "Once per plate before fanning out: every document any position depends on, "
            'checked concurrently. Source read-only; destination with mode "a".',
            "",
            "| plate | ngff | delay | caches | source s | source round trips | destination s "
            "| destination round trips | max in flight |",
            "|---|---|---|---|---:|---:|---:|---:|---:|",
        ]
        for name, cfg in cfgs.items():
            layout, ngff, cache, delay = _config_parts(name)
            st = cfg.get("setup", {}).get("snapmeta-fanout")
            if not st:
                continue
            o, t = st.get("open", {}), st.get("task", {})
            lines.append(
                f"| {layout} | {ngff} | {delay} | {cache} | {o.get('seconds', 0):.2f} | "
                f"{o.get('rt', 0):,.0f} | {t.get('seconds', 0):.2f} | {t.get('rt', 0):,.0f} | "
                f"{max(o.get('max_in_flight', 0), t.get('max_in_flight', 0))} |"
            )
        lines.append("")
    return lines


def cold_report(data: dict[str, Any]) -> list[str]:
    cold = data["network-cold"]
    env = cold["peers"]
    opt = cold["options"]
    order = [p for p in opt["cold_peers"] if p in env and "skipped" not in env[p]]
    lines = [
        "## Network filesystem: first open in a new process, snapshot pages dropped",
        "",
        f"A fresh interpreter imports the peer (local disk), then opens one position and its "
        f"level-0 array through the mount (delay {opt['cold_delay_ms']:g} ms, caches off). "
        "Before each sample the page cache of the snapshot and of the documents of that "
        "position is dropped (`latencyfs.drop_caches(file)`). The fan-out worker gets a "
        "FanOut pickled by a parent process. `open ms`: the open inside the process; "
        "`process ms`: the interpreter's whole life. Medians over "
        f"{opt['cold_samples']} samples (different positions); READ calls: each sample. "
        "The snapmeta processes read no other file through the mount, so their READs are "
        "the snapshot's.",
        "",
        "| plate | positions | ngff | peer | open ms | process ms | round trips | READ calls "
        "| READ bytes | by type |",
        "|---|---:|---|---|---:|---:|---:|---|---:|---|",
    ]
    for key, res in cold["configs"].items():
        layout, ngff = key.rsplit("-", 1)
        for p in order:
            r = res.get(p)
            if not r or "open_s" not in r:
                continue
            by_type = ", ".join(
                f"{t} {r['ops'][t]:.3g}" for t in network.OP_TYPES if r["ops"].get(t)
            )
            lines.append(
                f"| {layout} | {common.LAYOUTS[layout].n_positions:,} | {ngff} | "
                f"{_short(p, env)} | {r['open_s'] * 1e3:.1f} | {r['wall_s'] * 1e3:.0f} | "
                f"{r['rt']:.0f} | {', '.join(str(int(x)) for x in r['read_calls'])} | "
                f"{statistics.median(r['read_bytes']):,.0f} | {by_type} |"
            )
    lines.append("")
    return lines


def network_targets(data: dict[str, Any], add: Callable[[str, bool | None, str], None]) -> None:
    net = data.get("network", {}).get("configs", {})
    for ngff in common.NGFF_VERSIONS:
        cfg = net.get(f"w7035-{ngff}/off/1ms")
        if not cfg:
            continue
        o, t = cfg["open"], cfg["task"]
        z = o.get("zarr-array", {}).get("median")
        s = o.get("snapmeta", {})
        if z and "median" in s:
            x = z / s["median"]
            add(
                f'network, 1 ms, caches off, 7,035 wells ({ngff}): open+["0"] ≥ 3× faster '
                "than zarr.open_array",
                x >= 3,
                f"{x:.2f}× ({_ms(s['median'])} vs {_ms(z)} ms)",
            )
            add(
                f"… and ≤ 12 round trips ({ngff})",
                s["rt"] <= 12,
                f"{s['rt']:.0f} round trips (zarr.open_array: {o['zarr-array']['rt']:.0f})",
            )
        f = o.get("snapmeta-fanout", {})
        if z and "median" in f:
            x = z / f["median"]
            add(
                f"network ({ngff}): fan-out open ≥ 8× faster than zarr.open_array",
                x >= 8,
                f"{x:.1f}× ({_ms(f['median'])} vs {_ms(z)} ms; {f['rt']:.2f} round trips)",
            )
        zt, st = t.get("zarr-array", {}).get("median"), t.get("snapmeta", {}).get("median")
        if zt and st:
            x = zt / st
            ft = t.get("snapmeta-fanout", {}).get("median")
            add(
                f"network ({ngff}): seed task ≥ 1.3× faster than the zarr workaround "
                "(default checks)",
                x >= 1.3,
                f"{x:.2f}× ({_ms(st)} vs {_ms(zt)} ms)"
                + (f"; fan-out {zt / ft:.2f}×" if ft else ""),
            )
    cold = data.get("network-cold", {}).get("configs", {})
    for ngff in common.NGFF_VERSIONS:
        r = cold.get(f"f100000-{ngff}", {}).get("snapmeta")
        if r and "read_calls" in r:
            worst = max(r["read_calls"])
            add(
                f"cold first open at 100,000 positions ({ngff}): ≤ 10 READs of the snapshot",
                worst <= 10,
                f"{', '.join(str(int(x)) for x in r['read_calls'])} READs, "
                f"{statistics.median(r['read_bytes']) / 1024:,.0f} KiB",
            )
    f1 = data.get("format1", {}).get("plates", {})
    for key, r in f1.items():
        if "format 1" in r:
            x = r["format 2"]["median"] / r["format 1"]["median"]
            add(
                f"local open {key}: within 10 % of format 1, same run",
                x <= 1.10,
                f"{r['format 2']['median'] * 1e3:.3f} vs {r['format 1']['median'] * 1e3:.3f} ms "
                f"({x:.2f}×)",
            )
    for key, ref in FORMAT1_OPEN_MS.items():
        r = data.get("open", {}).get(key, {}).get("snapmeta")
        if r and "median" in r and not f1:
            x = r["median"] * 1e3 / ref
            add(
                f"local open {key}: within 10 % of format 1 ({ref:.3f} ms)",
                x <= 1.10,
                f"{r['median'] * 1e3:.3f} ms ({x:.2f}×)",
            )


def network_plot(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    net = data["network"]
    env = net["peers"]
    cfgs = net["configs"]
    order = [p for p in net["options"]["peers"] if p in env and "skipped" not in env[p]]
    names = list(cfgs)
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.05 * len(names) + 3), 9), sharex=True)
    width = 0.8 / max(1, len(order))
    for ax, op, title in zip(
        axes,
        ("open", "task"),
        ('open + ["0"]', 'seed task (open src, read, open dst "a", write)'),
        strict=True,
    ):
        for i, peer in enumerate(order):
            xs, ys, lo, hi = [], [], [], []
            for j, name in enumerate(names):
                r = cfgs[name][op].get(peer, {})
                if "median" in r:
                    xs.append(j + (i - (len(order) - 1) / 2) * width)
                    ys.append(r["median"] * 1e3)
                    hi.append((r["p90"] - r["median"]) * 1e3)
                    lo.append(0)
            ax.bar(
                xs,
                ys,
                width,
                label=peer_label(peer, env),
                color=f"C{i}",
                yerr=[lo, hi],
                error_kw={"elinewidth": 0.6, "capsize": 0},
            )
        ax.set_yscale("log")
        ax.set_ylabel("ms per call (median; bar to p90)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    labels = []
    for name in names:
        layout, ngff, cache, delay = _config_parts(name)
        labels.append(f"{layout}\n{ngff}\n{delay}\ncaches {cache}")
    axes[1].set_xticks(range(len(names)), labels, fontsize=7)
    axes[0].legend(fontsize=7, ncol=2)
    m = data["machine"]
    fig.suptitle(
        "network filesystem model (latencyfs, no default_permissions): ms per call\n"
        f"{m['cpu']}, {m['cores']} cores, {m['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out / "network_ms_per_call.png", dpi=100)
    plt.close(fig)


def plot(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = data["open"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.9), sharey=True)
    line_layouts = [
        x for x in ("w96", "f1536", "w7035", "f100000") if any(k.startswith(x + "-") for k in res)
    ]
    for ax, ngff in zip(axes, common.NGFF_VERSIONS, strict=True):
        for i, peer in enumerate(peers.PEERS):
            color = f"C{i}"
            xs, ys = [], []
            for layout in line_layouts:
                r = res.get(f"{layout}-{ngff}", {}).get(peer, {})
                if "median" in r:
                    xs.append(common.LAYOUTS[layout].n_positions)
                    ys.append(r["median"] * 1e3)
            style = {"snapmeta-plate": {"ls": "--", "marker": "x", "ms": 8}}.get(
                peer, {"ls": "-", "marker": "o"}
            )
            ax.plot(xs, ys, color=color, label=peer, **style)
            r = res.get(f"f7035-{ngff}", {}).get(peer, {})
            if "median" in r:
                ax.plot([7035], [r["median"] * 1e3], "s", mfc="none", color=color)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"NGFF {ngff} (zarr v{2 if ngff == '0.4' else 3})")
        ax.set_xlabel("positions in the plate")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms per open + lookup + array (median)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels))
    m = data["machine"]
    fig.suptitle(
        "open one position vs plate size; "
        "hollow squares: 7,035 positions as 384 wells x 18-19 fields\n"
        f"{m['cpu']}, {m['cores']} cores, {m['date']}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out / "open_vs_positions.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------


def freeze_snapmeta() -> Path:
    """Import snapmeta, here and in every child process, from a copy of the
    working tree taken now: a long run then measures one version of the code
    even while snapmeta/ is being edited."""
    source = HERE.parent / "snapmeta"
    frozen = Path(tempfile.mkdtemp(prefix="snapmeta-frozen-"))
    shutil.copytree(source, frozen / "snapmeta", ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(frozen))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(frozen), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    for name in [m for m in sys.modules if m == "snapmeta" or m.startswith("snapmeta.")]:
        del sys.modules[name]
    import atexit

    atexit.register(shutil.rmtree, frozen, True)
    log(f"snapmeta frozen at {frozen} (digest {common.code_digest()})")
    return frozen


def net_options(args: argparse.Namespace) -> network.NetOptions:
    both = list(common.NGFF_VERSIONS)
    if args.smoke:
        opt = network.NetOptions(
            layouts=["w96"],
            ngffs=both,
            delays_ms=[1.0],
            caches=["off"],
            peers=list(network.NET_PEERS),
            rounds=2,
            open_budget=0.2,
            task_budget=0.4,
            open_min=4,
            task_min=2,
            task_max=10,
            warm_budget=0.2,
            cold_layouts=["w96"],
            cold_ngffs=["0.5"],
            cold_peers=list(network.NET_PEERS),
            cold_samples=1,
        )
    else:
        opt = network.NetOptions(
            layouts=["w96", "w7035"],
            ngffs=both,
            delays_ms=[0.2, 1.0],
            caches=["off", "on"],
            peers=list(network.NET_PEERS),
            cold_layouts=["w7035", "f100000"],
            cold_ngffs=both,
            cold_peers=list(network.NET_PEERS),
        )
    if args.net_layouts:
        opt.layouts = args.net_layouts
    if args.net_delays:
        opt.delays_ms = args.net_delays
    if args.net_caches:
        opt.caches = args.net_caches
    if args.net_peers:
        opt.peers = args.net_peers
        opt.cold_peers = args.net_peers
    if args.cold_layouts:
        opt.cold_layouts = args.cold_layouts
    if args.net_budget is not None:
        scale = args.net_budget / opt.open_budget
        opt.open_budget *= scale
        opt.task_budget *= scale
    return opt


#: Rough seconds per local section here (full, smoke), for the estimate.
_LOCAL_ESTIMATE = {
    "open": (300, 8),
    "read": (300, 8),
    "counts": (60, 5),
    "cold": (420, 15),
    "build": (200, 3),
    "workflow": (420, 25),
    "memory": (420, 10),
    "format1": (330, 10),
}


def estimate(args: argparse.Namespace, opt: network.NetOptions) -> float:
    total = sum(_LOCAL_ESTIMATE[s][bool(args.smoke)] for s in args.sections if s in _LOCAL_ESTIMATE)
    net = network.estimate_seconds(
        network.NetOptions(
            **{
                **opt.__dict__,
                "layouts": opt.layouts if "network" in args.sections else [],
                "cold_layouts": opt.cold_layouts if "network-cold" in args.sections else [],
            }
        )
    )
    return total + net + (10 if "network-trace" in args.sections else 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for results.md/json and the plots"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="96-position plates only, short budgets; network at 1 ms only (~2 min)",
    )
    parser.add_argument("--sections", nargs="*", default=SECTIONS, choices=SECTIONS)
    parser.add_argument("--layouts", nargs="*", help="plates of the open/read/counts sections")
    parser.add_argument(
        "--budget", type=float, default=1.5, help="seconds per peer per case (open/read)"
    )
    parser.add_argument(
        "--rounds", type=int, default=6, help="interleaved turns per case (open/read)"
    )
    parser.add_argument("--cold-samples", type=int, default=5)
    parser.add_argument("--build-repeats", type=int, default=3)
    parser.add_argument(
        "--build-100k",
        action="store_true",
        help="also build/consolidate the 100,000-position plates (minutes)",
    )
    parser.add_argument("--workflow-repeats", type=int, default=3)
    parser.add_argument(
        "--workflow-blocks", type=int, default=8, help="interleaved blocks per workflow repeat"
    )
    parser.add_argument(
        "--format1-ref",
        default="331c02a",
        help="commit whose snapmeta writes format 1 (format1 section; default: the one "
        "the format-1 report measured; ae0e590 is the last format-1 commit, ~40%% slower)",
    )
    parser.add_argument("--format1-rounds", type=int, default=10)
    net = parser.add_argument_group("network sections (latencyfs: root, /dev/fuse, gcc)")
    net.add_argument("--net-layouts", nargs="*", choices=sorted(common.LAYOUTS))
    net.add_argument("--net-delays", nargs="*", type=float, help="ms per round trip")
    net.add_argument("--net-caches", nargs="*", choices=["off", "on"])
    net.add_argument("--net-peers", nargs="*", choices=network.NET_PEERS)
    net.add_argument("--net-budget", type=float, help="seconds per peer per open case")
    net.add_argument(
        "--cold-layouts", nargs="*", choices=sorted(common.LAYOUTS), help="network-cold plates"
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the other sections of an existing --out/results.json and "
        "replace only the ones measured now (noted in the report)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="re-render results.md and the plots from --out/results.json",
    )
    parser.add_argument(
        "--estimate", action="store_true", help="print the estimated run time and exit"
    )
    parser.add_argument(
        "--no-freeze",
        action="store_true",
        help="import snapmeta from the working tree in every process (default: a copy "
        "taken at the start, so that edits during the run do not mix two versions)",
    )
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    if not args.no_freeze and not args.report_only and not args.estimate:
        frozen = freeze_snapmeta()
        # Child interpreters started with `-c` put their working directory first
        # on sys.path: never the repository, whose snapmeta/ is the live one.
        os.chdir(frozen)
    if args.report_only:
        data = json.loads((args.out / "results.json").read_text())
        print(report(data, args.out))
        plots(data, args.out)
        return 0
    if args.smoke:
        os.environ["SNAPMETA_BENCH_SMOKE"] = "1"
        import importlib

        importlib.reload(common)
        args.budget, args.rounds, args.cold_samples = 0.3, 3, 2
        args.build_repeats, args.workflow_repeats = 1, 1
    opt = net_options(args)
    seconds = estimate(args, opt)
    log(f"estimated run time: {seconds / 60:.0f} min ({', '.join(args.sections)})")
    if args.estimate:
        return 0
    if {"network", "network-cold", "network-trace"} & set(args.sections):
        reason = network.unavailable()
        if reason is not None:
            log(f"network sections skipped: {reason}")
            args.sections = [s for s in args.sections if not s.startswith("network")]
    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"machine": machine(), "command": " ".join(["python", *sys.argv])}
    data["machine"]["estimated_seconds"] = seconds
    log(f"machine: {data['machine']}")
    previous: dict[str, Any] = {}
    if args.update and (args.out / "results.json").exists():
        previous = json.loads((args.out / "results.json").read_text())

    open_layouts = args.layouts or common.OPEN_LAYOUTS
    need = set()
    if {"open", "read", "counts"} & set(args.sections):
        need |= set(open_layouts)
    if "cold" in args.sections:
        need |= set(common.COLD_LAYOUTS)
    if "workflow" in args.sections:
        need.add(common.WORKFLOW_LAYOUT)
    if "memory" in args.sections:
        need.add(common.MEMORY_LAYOUT)
    need_sorted = sorted(need, key=lambda n: common.LAYOUTS[n].n_positions)
    work = Path(tempfile.mkdtemp(prefix="snapmeta-compare-", dir=common.data_root().parent))
    try:
        # The network sections first: their measurement processes must find the
        # page cache as the mounts left it, not as the local sections did.
        if "network" in args.sections:
            data["network"] = network.run_network(opt, log)
        if "network-cold" in args.sections:
            data["network-cold"] = network.run_cold(opt, log)
        if "network-trace" in args.sections:
            key = "w7035-0.4" if not args.smoke else "w96-0.4"
            traces = network.trace_opens(key, ["snapmeta", "snapmeta-fanout", "zarr-array"], log)
            data["network-trace"] = {"plate": key, "traces": traces}
            (args.out / "network_trace.txt").write_text(
                "".join(
                    f"== {p}: open + ['0'] of one position, warm process ==\n{t}\n\n"
                    for p, t in traces.items()
                )
            )
        if need_sorted:
            log(f"preparing plates {need_sorted} (snapshots built if the code changed)")
            fx = common.prepare_fixture(None, need_sorted)
            data["fixture_build_seconds"] = fx.build_seconds
        if "open" in args.sections:
            data["open"] = section_open(fx, open_layouts, args, read=False)
        if "read" in args.sections:
            data["read"] = section_open(fx, open_layouts, args, read=True)
        if "counts" in args.sections:
            data["counts"] = section_counts(fx, open_layouts)
        if "cold" in args.sections:
            data["cold"] = section_cold(fx, common.COLD_LAYOUTS, args)
        if "build" in args.sections:
            layouts = common.BUILD_LAYOUTS + (["f100000"] if args.build_100k else [])
            data["build"] = section_build(layouts, args, work)
        if "workflow" in args.sections:
            data["workflow"] = section_workflow(fx, args, work)
        if "memory" in args.sections:
            data["memory"] = section_memory(fx, args)
        if "format1" in args.sections:
            layouts = ["w96"] if args.smoke else ["w96", "w7035", "f100000"]
            data["format1"] = section_format1(layouts, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    data["seconds"] = time.perf_counter() - t_start
    log(f"done in {data['seconds'] / 60:.1f} min (estimated {seconds / 60:.0f} min)")
    if previous:
        # the new sections replace the old ones; the header keeps the first run
        rerun = {
            "sections": [x for x in SECTIONS if x in data],
            "machine": data["machine"],
            "command": data["command"],
            "seconds": data["seconds"],
        }
        data = {**previous, **{k: v for k, v in data.items() if k in SECTIONS}}
        # earlier re-measurements of the same sections are superseded
        kept = []
        for r in previous.get("reruns", []):
            left = [x for x in r["sections"] if x not in rerun["sections"]]
            if left:
                kept.append({**r, "sections": left})
        data["reruns"] = [*kept, rerun]
    (args.out / "results.json").write_text(json.dumps(data, indent=1))
    text = report(data, args.out)
    plots(data, args.out)
    print(text)
    return 0


def plots(data: dict[str, Any], out: Path) -> None:
    if "open" in data:
        plot(data, out)
    if data.get("network", {}).get("configs"):
        network_plot(data, out)


if __name__ == "__main__":
    raise SystemExit(main())
