"""Run every asv benchmark once, so that a broken benchmark fails ``pytest``.

``SNAPMETA_BENCH_SMOKE=1`` limits the suite to 96-position plates and small
worker counts (about 25 s here); ``HOME`` points at ``tmp_path`` so that
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
    # the iohub peer may be skipped, and only when iohub is not installed.
    skipped = [line for line in out.splitlines() if " n/a" in line]
    allowed = [] if _iohub_importable() else [s for s in skipped if "iohub" in s]
    assert skipped == allowed, "\n".join(skipped)
    # every benchmark module contributed results
    for name in (
        "bench_open",
        "bench_cold",
        "bench_build",
        "bench_workflow",
        "bench_memory",
        "bench_counts",
    ):
        assert f"{name}." in out, f"{name} did not run:\n{out}"
