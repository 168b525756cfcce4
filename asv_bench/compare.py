"""Side-by-side comparison of snapmeta and its peers, in one run.

    python asv_bench/compare.py --out docs/benchmarks            # full (~25 min)
    python asv_bench/compare.py --out /tmp/cmp --smoke           # 96 positions only (~1 min)
    python asv_bench/compare.py --out /tmp/cmp --sections open read

Unlike asv, which runs every case in its own process and rounds, this script
times all peers in the same process, interleaved (the peer order rotates every
round), with per-call ``perf_counter`` timings and the garbage collector on,
as in a real worker. It reuses the asv suite's fixtures (plates cached under
$SNAPMETA_BENCH_DATA, snapshots built fresh for the working tree's snapmeta)
and peer functions (asv_bench/benchmarks/peers.py), so both measure the same
code. It writes into --out:

    results.md                markdown tables: medians, ratios, targets
    results.json              every sample summary and the machine description
    open_vs_positions.png     log-log: time per open vs number of positions
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

from benchmarks import common, peers  # noqa: E402

SECTIONS = ["open", "read", "counts", "cold", "build", "workflow", "memory"]


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
        snap = Path(fx.views[key]) / ".snapmeta.arrow"
        results[key]["snapshot_bytes"] = snap.stat().st_size
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
    wf_peers = [p for p in peers.WORKFLOW_PEERS if p != "iohub" or peers.iohub_available()]
    results: dict[str, Any] = {"layout": layout, "n_jobs": 2, "iohub_stride": stride}
    with joblib.Parallel(n_jobs=2) as parallel:
        for peer in wf_peers:
            peers.warm_workers(peer, parallel, 2)
        for ngff in common.NGFF_VERSIONS:
            key = f"{layout}-{ngff}"
            rates: dict[str, list[float]] = {p: [] for p in wf_peers}
            cpu_ms: dict[str, list[float]] = {p: [] for p in wf_peers}
            ratios: list[float] = []
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
                blocks = args.workflow_blocks
                for b in range(blocks):
                    shift = (r + b) % len(wf_peers)
                    for peer in wf_peers[shift:] + wf_peers[:shift]:
                        paths = all_paths[::stride] if peer == "iohub" else all_paths
                        block = paths[b::blocks]
                        seconds, c = peers.run_workflow(
                            peer, fx.views[key], dsts[peer], block, parallel, cpu=True
                        )
                        wall[peer] += seconds
                        cpu[peer] += c
                        count[peer] += len(block)
                for peer in wf_peers:
                    rates[peer].append(count[peer] / wall[peer])
                    cpu_ms[peer].append(cpu[peer] / count[peer] * 1e3)
                    shutil.rmtree(dsts[peer], ignore_errors=True)
                ratios.append(rates["snapmeta"][-1] / rates["zarr"][-1])
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
    return results


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
        f"- date: {m['date']}; snapmeta commit: {m['snapmeta_commit']}",
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
            "| plate | ngff | snapshot bytes | " + " | ".join(peers.PEERS) + " |",
            "|---|---|---:|" + "---:|" * len(peers.PEERS),
        ]
        for key, r in data["counts"].items():
            layout, ngff = key.rsplit("-", 1)
            cells = [
                f"{r[p]['files']:.0f} / {r[p]['bytes']:,.0f}" if p in r else "n/a"
                for p in peers.PEERS
            ]
            lines.append(
                f"| {layout} | {ngff} | {r['snapshot_bytes']:,} | " + " | ".join(cells) + " |"
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
            "| ngff | snapmeta | zarr | iohub | snapmeta / zarr | paired snapmeta / zarr "
            "| snapmeta / iohub |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for key, r in w.items():
            if not isinstance(r, dict):
                continue
            ngff = key.rsplit("-", 1)[1]
            s = r["snapmeta"]["median"]
            z = r["zarr"]["median"]
            i = r.get("iohub", {}).get("median")
            paired = r.get("paired_ratio_vs_zarr")
            pr = f"{statistics.median(paired):.2f}" if paired else "n/a"
            lines.append(
                f"| {ngff} | {s:.0f} | {z:.0f} | {f'{i:.1f}' if i else 'n/a'} | {s / z:.2f} | "
                f"{pr} | {f'{s / i:.1f}' if i else 'n/a'} |"
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
                f"- {key} paired snapmeta / zarr: "
                + ", ".join(f"{x:.2f}" for x in r["paired_ratio_vs_zarr"])
                for key, r in w.items()
                if isinstance(r, dict) and "paired_ratio_vs_zarr" in r
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
                "| ngff | snapmeta | zarr | iohub | zarr / snapmeta |",
                "|---|---:|---:|---:|---:|",
            ]
            for key, r in w.items():
                if not isinstance(r, dict):
                    continue
                c = {p: r[p]["cpu_ms"]["median"] for p in peers.WORKFLOW_PEERS if p in r}
                io = f"{c['iohub']:.1f}" if "iohub" in c else "n/a"
                lines.append(
                    f"| {key.rsplit('-', 1)[1]} | {c['snapmeta']:.2f} | {c['zarr']:.2f} | {io} | "
                    f"{c['zarr'] / c['snapmeta']:.2f} |"
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
    if not rows:
        return []
    return ["## Targets", "", "| target | status | measured |", "|---|---|---|", *rows, ""]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for results.md/json and the plot"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="96-position plates only, short budgets"
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
        "--update",
        action="store_true",
        help="keep the other sections of an existing --out/results.json and "
        "replace only the ones measured now (noted in the report)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="re-render results.md and the plot from --out/results.json",
    )
    args = parser.parse_args(argv)
    if args.report_only:
        data = json.loads((args.out / "results.json").read_text())
        print(report(data, args.out))
        if "open" in data:
            plot(data, args.out)
        return 0
    if args.smoke:
        os.environ["SNAPMETA_BENCH_SMOKE"] = "1"
        import importlib

        importlib.reload(common)
        args.budget, args.rounds, args.cold_samples = 0.3, 3, 2
        args.build_repeats, args.workflow_repeats = 1, 1
    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"machine": machine(), "command": " ".join(["python", *sys.argv])}
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
        log(f"preparing plates {need_sorted} (views + snapshots in {work})")
        fx = common.prepare_fixture(work / "views", need_sorted)
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
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    data["seconds"] = time.perf_counter() - t_start
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
        kept = [
            r for r in previous.get("reruns", []) if set(r["sections"]) - set(rerun["sections"])
        ]
        data["reruns"] = [*kept, rerun]
    (args.out / "results.json").write_text(json.dumps(data, indent=1))
    text = report(data, args.out)
    if "open" in data:
        plot(data, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
