"""Run every asv benchmark once, so that a broken benchmark fails ``pytest``.

``SNAPMETA_BENCH_SMOKE=1`` limits the suite to 96-position plates and small
worker counts (about 30 s here); ``HOME`` points at ``tmp_path`` so that
``asv machine`` and the plate cache stay off the host. Timings are printed
but never asserted: only exit codes and skipped (``n/a``) cases are.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ASV_DIR = Path(__file__).resolve().parents[1] / "asv_bench"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("asv") is None, reason="asv is not installed (pip install asv)"
)


def _asv(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asv", *args],
        cwd=ASV_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _iohub_importable() -> bool:
    r = subprocess.run([sys.executable, "-c", "import iohub.ngff"], capture_output=True)
    return r.returncode == 0


def _latencyfs_unavailable() -> str | None:
    """Why bench_network's FUSE mount cannot work here (None if it can)."""
    sys.path.insert(0, str(ASV_DIR))
    try:
        import latencyfs
    finally:
        sys.path.remove(str(ASV_DIR))
    return latencyfs.available()


def test_asv_suite_runs_once(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HOME": str(tmp_path),  # ~/.asv-machine.json and ~/.cache/snapmeta-asv
        "SNAPMETA_BENCH_SMOKE": "1",
    }
    env.pop("SNAPMETA_BENCH_DATA", None)  # smoke plates go under tmp_path too
    r = _asv("machine", "--yes", "--machine", "smoke", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _asv(
        "run",
        "--python=same",
        "--quick",
        "--dry-run",
        "--show-stderr",
        "--machine",
        "smoke",
        "--launch-method",
        "forkserver",
        "--durations=5",
        env=env,
    )
    out = r.stdout + r.stderr
    print(out)
    # 2 = a benchmark (or a setup_cache) failed, 1 = the suite failed to import
    assert r.returncode == 0, out
    assert "failed" not in out, out
    # NotImplementedError in setup is a silent skip (n/a, exit code 0). Only
    # the iohub peer may be skipped, and only when iohub is not installed, and
    # the network round trips, only where latencyfs cannot mount (no root,
    # /dev/fuse or gcc): then the reason is printed here.
    skipped = [line for line in out.splitlines() if " n/a" in line]
    no_fuse = _latencyfs_unavailable()
    if no_fuse is not None:
        print(f"bench_network is skipped here: {no_fuse}")
    allowed = [
        s
        for s in skipped
        if ("iohub" in s and not _iohub_importable())
        or (no_fuse is not None and _in_benchmark(out, s, "bench_network"))
    ]
    assert skipped == allowed, "\n".join(skipped)
    if no_fuse is None:
        # the round-trip counts are numbers (asv prints the parameter table)
        block = _benchmark_block(out, "bench_network.NetworkRoundTrips.track_round_trips")
        assert block and " n/a" not in block and "failed" not in block, block
    # every benchmark module contributed results
    for name in (
        "bench_open",
        "bench_cold",
        "bench_build",
        "bench_workflow",
        "bench_memory",
        "bench_counts",
        "bench_network",
    ):
        ran = any(_names(_benchmark_name(line), name) for line in out.splitlines())
        assert ran, f"{name} did not run:\n{out}"


def _benchmark_name(line: str) -> str | None:
    """The benchmark a line of asv's output names, as printed: asv shortens a name
    that does not fit its column to ``...`` and the name's tail."""
    if "··· " not in line:
        return None
    words = line.split("··· ", 1)[1].split()
    return words[0] if words else None


def _names(printed: str | None, name: str) -> bool:
    """Whether ``printed`` (maybe shortened) is benchmark ``name``, or one of module ``name``."""
    if printed is None:
        return False
    if printed.startswith("..."):
        tail = printed[3:]
        module, _, rest = name.partition(".")
        return name.endswith(tail) or (not rest and module.endswith(tail.split(".")[0]))
    return printed == name or printed.startswith(f"{name}.")


def _benchmark_block(out: str, name: str) -> str:
    """The lines asv printed for one benchmark (its name line and its table)."""
    lines = out.splitlines()
    start = next((i for i, line in enumerate(lines) if _names(_benchmark_name(line), name)), None)
    if start is None:
        return ""
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if "··· " in line or (line.startswith("[") and "%]" in line):
            break
        block.append(line)
    return "\n".join(block)


def _in_benchmark(out: str, line: str, module: str) -> bool:
    """Whether an n/a ``line`` belongs to a benchmark of ``module``."""
    lines = out.splitlines()
    i = lines.index(line)
    for previous in reversed(lines[:i]):
        if "··· " in previous or "%]" in previous:
            return _names(_benchmark_name(previous), module)
    return False
