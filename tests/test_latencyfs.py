"""Tests of the latency-injecting FUSE filesystem in asv_bench/latencyfs (a test tool).

They need root, /dev/fuse and gcc, and skip with the reason otherwise. The exact request
counts asserted here are what Linux 6.x's FUSE client sends with the kernel caches off
(entry/attr timeout 0) and ``default_permissions``; README.md there explains each.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "asv_bench"))

from latencyfs import OPS, SOURCE, UNDELAYED_OPS, LatencyFS, available

Mount = Callable[..., LatencyFS]


@pytest.fixture(scope="module")
def usable() -> None:
    reason = available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "c.txt").write_bytes(b"hello\n")
    return root


@pytest.fixture
def mount(usable: None, src: Path) -> Iterator[Mount]:
    """``mount(**options)``: a LatencyFS over ``src``, closed (unmounted) after the test."""
    opened: list[LatencyFS] = []

    def make(*, delay_ms: float = 0.0, **options: Any) -> LatencyFS:
        fs = LatencyFS(src, delay_ms=delay_ms, **options)
        opened.append(fs)
        return fs

    try:
        yield make
    finally:
        for fs in opened:
            fs.close()
        for fs in opened:
            assert not _mounted(fs.path), f"{fs.path} still mounted"


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v and k != "max_in_flight"}


# -- exact request counts, caches off ----------------------------------------------------


def test_stat_three_levels_deep(mount: Mount) -> None:
    fs = mount()
    with fs.measure() as ops:
        st = os.stat(fs.path / "a" / "b" / "c.txt")
    assert st.st_size == 6
    # One LOOKUP per component; default_permissions makes the kernel refresh each
    # directory's attributes before walking through it (root, a, b), plus the
    # final stat's own GETATTR.
    assert _nonzero(ops) == {"lookup": 3, "getattr": 4}
    assert fs.round_trips() == 7


def test_stat_without_default_permissions(mount: Mount) -> None:
    fs = mount(default_permissions=False)
    with fs.measure() as ops:
        os.stat(fs.path / "a" / "b" / "c.txt")
    assert _nonzero(ops) == {"lookup": 3, "getattr": 1}


def test_stat_with_dir_fd(mount: Mount) -> None:
    fs = mount()
    dfd = os.open(fs.path / "a" / "b", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with fs.measure() as ops:
            os.stat("c.txt", dir_fd=dfd)
        assert _nonzero(ops) == {"lookup": 1, "getattr": 2}
    finally:
        os.close(dfd)


def test_open_directory(mount: Mount) -> None:
    fs = mount()
    with fs.measure() as ops:
        dfd = os.open(fs.path / "a" / "b", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _nonzero(ops) == {"lookup": 2, "getattr": 3, "opendir": 1}
    finally:
        with fs.measure() as ops:
            os.close(dfd)
        assert _nonzero(ops) == {"releasedir": 1}


def test_open_read_close_small_file(mount: Mount) -> None:
    fs = mount()
    with fs.measure() as ops:
        fd = os.open(fs.path / "a" / "b" / "c.txt", os.O_RDONLY)
        data = os.read(fd, 100)
        os.close(fd)
    assert data == b"hello\n"
    # The read reaches past the cached size, so the kernel refreshes it first
    # (GETATTR #5); RELEASE arrives after close() returns (asynchronously).
    assert _nonzero(ops) == {
        "lookup": 3,
        "getattr": 5,
        "open": 1,
        "read": 1,
        "flush": 1,
        "release": 1,
        "read_bytes": 6,
    }
    with fs.measure() as ops:  # the page cache is kept across opens (FOPEN_KEEP_CACHE)
        fd = os.open(fs.path / "a" / "b" / "c.txt", os.O_RDONLY)
        assert os.read(fd, 100) == b"hello\n"
        os.close(fd)
    assert ops["read"] == 0


def test_python_open_costs_an_undelayed_ioctl(mount: Mount) -> None:
    fs = mount()
    with fs.measure() as ops:
        assert (fs.path / "a" / "b" / "c.txt").read_bytes() == b"hello\n"
    # open() asks isatty() (TCGETS): FUSE forwards it; latencyfs answers ENOTTY
    # at once and round_trips() leaves it out.
    assert ops["ioctl"] == 1
    assert fs.round_trips() == sum(v for k, v in _nonzero(ops).items() if k in OPS) - 1


def test_caches_on_repeat_stat_is_free(mount: Mount) -> None:
    fs = mount(entry_timeout=60.0, attr_timeout=60.0)
    with fs.measure() as first:
        os.stat(fs.path / "a" / "b" / "c.txt")
    with fs.measure() as second:
        os.stat(fs.path / "a" / "b" / "c.txt")
    assert _nonzero(first) == {"lookup": 3}  # the attributes come with each LOOKUP reply
    assert _nonzero(second) == {}
    with fs.measure() as negative:  # ENOENT is cached too (like NFS lookupcache=all)
        for _ in range(3):
            assert not (fs.path / "a" / "missing").exists()
    assert _nonzero(negative) == {"lookup": 1}


# -- data paths ---------------------------------------------------------------------------


def test_mmap_reads_correct_bytes(mount: Mount, src: Path) -> None:
    payload = os.urandom(1 << 20)
    (src / "big.bin").write_bytes(payload)
    fs = mount()
    with fs.measure() as cold:
        fd = os.open(fs.path / "big.bin", os.O_RDONLY)
        try:
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
                assert m[:] == payload
                assert m[12345:12350] == payload[12345:12350]
        finally:
            os.close(fd)
    # Never read through the mount before, so every byte comes from the server, once,
    # in readahead-sized READs (their number varies with timing; their bytes do not).
    assert cold["read_bytes"] == len(payload)
    assert 1 <= cold["read"] <= len(payload) // 4096
    with (
        fs.measure() as warm,
        open(fs.path / "big.bin", "rb") as f,
        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m,
    ):
        assert m[-100:] == payload[-100:]
    assert warm["read"] == 0 and warm["open"] == 1


def test_write_paths(mount: Mount, src: Path) -> None:
    fs = mount()
    m = fs.path
    with fs.measure() as ops:
        os.mkdir(m / "d")
        with open(m / "d" / "f.bin", "wb") as f:
            f.write(b"x" * 300_000)
            f.flush()
            os.fsync(f.fileno())
        os.truncate(m / "d" / "f.bin", 1000)
        os.chmod(m / "d" / "f.bin", 0o600)
        os.utime(m / "d" / "f.bin", (1_000_000, 2_000_000))
        os.rename(m / "d" / "f.bin", m / "d" / "g.bin")
        os.symlink("g.bin", m / "d" / "s")
        os.link(m / "d" / "g.bin", m / "d" / "h.bin")
        fd = os.open(m / "d" / "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"abc")
        os.close(fd)
    assert ops["mkdir"] == 1
    assert ops["create"] == 2
    assert ops["write_bytes"] == 300_003
    assert ops["write"] >= 3  # 300 kB in writes of at most 128 KiB
    assert ops["fsync"] == 1
    assert ops["setattr"] == 3  # truncate, chmod, utime
    assert ops["rename"] == 1
    assert ops["symlink"] == 1
    assert ops["link"] == 1
    assert ops["other"] == 0

    g = src / "d" / "g.bin"
    assert g.read_bytes() == b"x" * 1000
    assert g.stat().st_mode & 0o777 == 0o600
    assert g.stat().st_mtime == 2_000_000
    assert os.readlink(m / "d" / "s") == "g.bin"
    assert (m / "d" / "s").read_bytes() == b"x" * 1000
    assert os.stat(m / "d" / "h.bin").st_ino == g.stat().st_ino
    assert (src / "d" / "new").read_bytes() == b"abc"
    assert sorted(os.listdir(m / "d")) == ["g.bin", "h.bin", "new", "s"]

    # RENAME_NOREPLACE goes out as RENAME2 and is honoured.
    libc = ctypes.CDLL(None, use_errno=True)
    noreplace = 1
    rc = libc.renameat2(
        -100, os.fsencode(m / "d" / "new"), -100, os.fsencode(m / "d" / "g.bin"), noreplace
    )
    assert rc == -1 and ctypes.get_errno() == 17  # EEXIST
    rc = libc.renameat2(
        -100, os.fsencode(m / "d" / "new"), -100, os.fsencode(m / "d" / "n2"), noreplace
    )
    assert rc == 0 and (src / "d" / "n2").read_bytes() == b"abc"
    # (EEXIST came from the kernel: after a LOOKUP it saw the target itself.)
    assert fs.counts()["rename2"] == 1

    # A renamed directory keeps serving what is below it.
    os.rename(m / "d", m / "e")
    assert (m / "e" / "g.bin").read_bytes() == b"x" * 1000
    for name in ("g.bin", "h.bin", "s", "n2"):
        os.unlink(m / "e" / name)
    os.rmdir(m / "e")
    assert not (src / "e").exists()
    assert os.statvfs(m).f_blocks == os.statvfs(src).f_blocks
    fs.wait_idle()
    c = fs.counts()
    assert c["unlink"] == 4 and c["rmdir"] == 1 and c["statfs"] == 1


def test_open_file_survives_unlink_and_name_reuse(mount: Mount, src: Path) -> None:
    fs = mount()
    p = fs.path / "a" / "tmp.txt"
    with open(p, "w+b") as f:
        f.write(b"old")
        f.flush()
        os.unlink(p)
        p.write_bytes(b"new contents")  # may reuse the old inode number on ext4
        assert os.fstat(f.fileno()).st_size == 3
        f.seek(0)
        assert f.read() == b"old"
    assert p.read_bytes() == b"new contents"
    assert os.stat(p).st_size == len(b"new contents")


def test_forget_frees_nodes(mount: Mount) -> None:
    fs = mount()
    d = fs.path / "many"
    d.mkdir()
    base = fs.gauges()["nodes"]
    for i in range(300):
        (d / f"f{i}").write_bytes(b"x")
    fs.wait_idle()
    assert fs.gauges()["nodes"] >= base + 300
    for i in range(300):
        os.unlink(d / f"f{i}")
    fs.wait_idle()
    assert fs.gauges()["nodes"] <= base + 2
    assert fs.gauges()["handles"] == 0


def test_replaced_files_never_show_stale_data(mount: Mount) -> None:
    # Write-to-temp-then-rename and unlink-then-recreate, with same-sized contents: a
    # reused inode number must never bring back an old node and its page cache.
    fs = mount()
    target = fs.path / "a" / "doc.json"
    for i in range(40):
        tmp = fs.path / "a" / f".doc.{i}.tmp"
        tmp.write_bytes(b"version %04d" % i)
        os.replace(tmp, target)
        assert target.read_bytes() == b"version %04d" % i
        if i % 2:
            os.unlink(target)


# -- counters, delay, concurrency ---------------------------------------------------------


def test_reset_and_round_trips(mount: Mount) -> None:
    fs = mount()
    os.stat(fs.path / "a")
    fs.wait_idle()
    assert fs.round_trips() > 0
    fs.reset()
    assert fs.round_trips() == 0
    assert all(v == 0 for v in fs.counts().values())
    os.listdir(fs.path)
    fs.wait_idle()
    c = fs.counts()
    assert c["opendir"] == 1 and c["readdir"] >= 1 and c["releasedir"] == 1
    assert fs.round_trips() == sum(v for k, v in c.items() if k in OPS and k not in UNDELAYED_OPS)


def test_delay_is_applied_and_changeable(mount: Mount) -> None:
    fs = mount(delay_ms=20.0)
    with fs.measure() as ops:
        t = time.perf_counter()
        os.stat(fs.path / "a")
        elapsed = time.perf_counter() - t
    n = sum(v for k, v in ops.items() if k in ("lookup", "getattr"))
    assert n == 3
    # A lower bound (the server wakes early only by its timer lateness, ~50 us).
    assert elapsed >= n * 0.020 * 0.95
    fs.set_delay_ms(0)
    assert fs.gauges()["delay_us"] == 0
    t = time.perf_counter()
    for _ in range(20):
        os.stat(fs.path / "a")
    assert time.perf_counter() - t < 20 * 3 * 0.020  # far below the delayed cost


def test_concurrent_requests_are_served_concurrently(mount: Mount, src: Path) -> None:
    for i in range(8):
        (src / f"t{i}").write_bytes(b"x")
    delay = 0.050
    fs = mount(delay_ms=delay * 1000)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            os.stat(fs.path / f"t{i}")  # GETATTR root, LOOKUP, GETATTR: 3 round trips
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    fs.reset()
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    assert not errors
    assert fs.counts()["lookup"] == 8
    assert fs.counts()["max_in_flight"] >= 4
    serial = 8 * 3 * delay
    assert elapsed < serial * 0.75


# -- lifecycle ----------------------------------------------------------------------------


def test_external_unmount_stops_server(mount: Mount) -> None:
    fs = mount()
    assert _mounted(fs.path)
    subprocess.run(["umount", "-l", str(fs.path)], check=True)
    deadline = time.monotonic() + 5
    while fs.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not fs.running()
    fs.close()
    assert not fs.path.exists()


def test_close_with_open_file_still_unmounts(mount: Mount) -> None:
    fs = mount()
    f = open(fs.path / "a" / "b" / "c.txt", "rb")  # noqa: SIM115
    # close() detaches at once; the server keeps serving the open file until it is
    # closed (here after 0.3 s; else it gives up after 2 s), then exits.
    closer = threading.Timer(0.3, f.close)
    closer.start()
    try:
        fs.close()
        assert not _mounted(fs.path)
        assert not fs.running()
    finally:
        closer.join()
        with contextlib.suppress(OSError):
            f.close()


def test_server_compiles_without_warnings(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    r = subprocess.run(
        [
            "gcc",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pthread",
            "-o",
            str(tmp_path / "lfs"),
            str(SOURCE),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
