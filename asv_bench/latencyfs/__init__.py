"""A latency-injecting passthrough FUSE filesystem for tests and benchmarks.

``LatencyFS(source)`` mounts a mirror of ``source`` whose server sleeps ``delay_ms`` before
answering each request, so that a local directory behaves like a network filesystem on which
every metadata operation is a round trip. Every request is counted, by FUSE opcode, in a
shared-memory stats file that this module reads::

    with LatencyFS(plate_dir, delay_ms=1.0) as fs:
        with fs.measure() as ops:
            open_position(fs.path / "plate.zarr", "A/1/0")
        print(ops["lookup"], ops["getattr"], fs.round_trips())

The server (``latencyfs.c``, next to this file) speaks the FUSE kernel protocol on
``/dev/fuse`` and calls mount(2) itself: it needs root, ``/dev/fuse`` and a C compiler, and
no libfuse. It is compiled on first use into ``~/.cache/snapmeta-latencyfs/<sha256>/``.
Use :func:`available` to skip when the machine cannot mount it. See README.md.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import functools
import hashlib
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

__all__ = [
    "OPS",
    "UNDELAYED_OPS",
    "BuildError",
    "LatencyFS",
    "available",
    "build",
    "drop_caches",
]

SOURCE = Path(__file__).with_name("latencyfs.c")
CFLAGS = ("-O2", "-Wall", "-Wextra", "-pthread")

#: FUSE opcodes (linux/fuse.h) by their lowercase names, as keys of :meth:`LatencyFS.counts`.
OPS: dict[str, int] = {
    "lookup": 1,
    "forget": 2,
    "getattr": 3,
    "setattr": 4,
    "readlink": 5,
    "symlink": 6,
    "mknod": 8,
    "mkdir": 9,
    "unlink": 10,
    "rmdir": 11,
    "rename": 12,
    "link": 13,
    "open": 14,
    "read": 15,
    "write": 16,
    "statfs": 17,
    "release": 18,
    "fsync": 20,
    "setxattr": 21,
    "getxattr": 22,
    "listxattr": 23,
    "removexattr": 24,
    "flush": 25,
    "init": 26,
    "opendir": 27,
    "readdir": 28,
    "releasedir": 29,
    "fsyncdir": 30,
    "getlk": 31,
    "setlk": 32,
    "setlkw": 33,
    "access": 34,
    "create": 35,
    "interrupt": 36,
    "bmap": 37,
    "destroy": 38,
    "ioctl": 39,
    "poll": 40,
    "notify_reply": 41,
    "batch_forget": 42,
    "fallocate": 43,
    "readdirplus": 44,
    "rename2": 45,
    "lseek": 46,
    "copy_file_range": 47,
    "setupmapping": 48,
    "removemapping": 49,
    "syncfs": 50,
    "tmpfile": 51,
    "statx": 52,
}
#: Requests the server answers without the delay, and :meth:`LatencyFS.round_trips` leaves
#: out: those without a reply, the mount handshake, and ``ioctl`` (FUSE forwards every ioctl,
#: e.g. the TCGETS of Python's ``open()``; a network filesystem answers ENOTTY locally).
UNDELAYED_OPS = frozenset(
    {"forget", "batch_forget", "interrupt", "notify_reply", "init", "destroy", "ioctl"}
)

# The stats file: struct lfs_stats in latencyfs.c, native-endian uint64 words.
_MAGIC = 0x3153465954414C
_VERSION = 1
_W_MAGIC, _W_VERSION, _W_DELAY, _W_IN_FLIGHT, _W_MAX_IN_FLIGHT = 0, 1, 2, 3, 4
_W_READ_BYTES, _W_WRITE_BYTES, _W_NODES, _W_HANDLES, _W_OTHER, _W_PID, _W_NOPS = range(5, 12)
_W_OPS = 16
_NOPS = 64
_STATS_SIZE = (_W_OPS + _NOPS) * 8

_MNT_DETACH = 2
_live: set[LatencyFS] = set()
_live_lock = threading.Lock()


class BuildError(RuntimeError):
    """The C compiler is missing or failed on latencyfs.c."""


def _cache_root() -> Path:
    env = os.environ.get("SNAPMETA_LATENCYFS_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "snapmeta-latencyfs"


def build() -> Path:
    """Compile latencyfs.c if needed and return the binary's path.

    The binary lives in ``<cache>/<sha256 of source, compiler and flags>/latencyfs`` and is
    written atomically (temp file + ``os.replace``), so concurrent first uses are safe. The
    compiler is ``$CC`` or ``gcc``; the cache is ``$SNAPMETA_LATENCYFS_CACHE`` or
    ``$XDG_CACHE_HOME/snapmeta-latencyfs`` or ``~/.cache/snapmeta-latencyfs``.
    """
    cc = os.environ.get("CC") or "gcc"
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + "\0".join((cc, *CFLAGS)).encode()).hexdigest()
    binary = _cache_root() / key / "latencyfs"
    if os.access(binary, os.X_OK):
        return binary
    if shutil.which(cc) is None:
        raise BuildError(f"no C compiler: {cc!r} is not on PATH (apt-get install gcc)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_name(f".latencyfs.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        r = subprocess.run(
            [cc, *CFLAGS, "-o", str(tmp), str(SOURCE)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            raise BuildError(f"{cc} failed on {SOURCE}:\n{r.stderr.strip()}")
        os.replace(tmp, binary)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return binary


@functools.cache
def available() -> str | None:
    """``None`` if a LatencyFS can be mounted here, else why not (for ``pytest.skip``).

    Checks Linux, root, ``/dev/fuse``, the compiler, and finally mounts an empty directory
    once. The answer is cached for the process.
    """
    if not sys.platform.startswith("linux"):
        return f"latencyfs needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "latencyfs needs root: it calls mount(2) itself (there is no fusermount path)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse: the FUSE kernel module is missing or not passed to the container"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return f"cannot open /dev/fuse: {e}"
    try:
        build()
    except (BuildError, OSError, subprocess.SubprocessError) as e:
        return f"cannot build latencyfs: {e}"
    try:
        with (
            tempfile.TemporaryDirectory(prefix="latencyfs-probe-") as d,
            LatencyFS(Path(d), delay_ms=0) as fs,
        ):
            os.listdir(fs.path)
    except (OSError, RuntimeError) as e:
        return f"cannot mount latencyfs: {e}"
    return None


def _unescape_mountinfo(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and i + 4 <= len(field):
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _is_mounted(path: Path) -> bool:
    """Whether a latencyfs (and not anything else) is mounted at ``path``."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype == "fuse.latencyfs" and _unescape_mountinfo(fields[4]) == target:
                return True
    return False


def _umount_detach(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(os.path.realpath(path)), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err != errno.EINVAL:  # EINVAL: not a mount point (any more)
            raise OSError(err, f"umount2({path}): {os.strerror(err)}")


class LatencyFS:
    """A mounted latencyfs: a mirror of ``source`` at :attr:`path` with injected latency.

    Mounts on construction; :meth:`close` (or leaving the ``with`` block) unmounts, stops
    the server and removes the temporary mount point. An ``atexit`` handler closes any
    instance left open.

    ``delay_ms`` is slept by the server before answering each request a caller waits on
    (all but :data:`UNDELAYED_OPS`: FORGETs, INTERRUPT, INIT, IOCTL). The timeouts are
    how long the kernel may trust a name (``entry_timeout``) or attributes
    (``attr_timeout``); 0 turns those caches off, like NFS ``actimeo=0``. ``threads`` is
    the number of server threads, i.e. how many delayed requests can overlap.
    ``default_permissions=False`` drops the mount option of that name; with it (default),
    the kernel checks permissions itself and, with ``attr_timeout=0``, issues a GETATTR for
    every directory it walks through (see README.md).
    """

    path: Path

    def __init__(
        self,
        source: Path | str,
        mountpoint: Path | str | None = None,
        *,
        delay_ms: float = 1.0,
        entry_timeout: float = 0.0,
        attr_timeout: float = 0.0,
        threads: int = 16,
        default_permissions: bool = True,
        trace: bool = False,
        mount_timeout: float = 10.0,
    ) -> None:
        self.source = Path(source).resolve()
        if not self.source.is_dir():
            raise NotADirectoryError(f"latencyfs source is not a directory: {self.source}")
        self._closed = False
        self._mm: mmap.mmap | None = None
        self._words: memoryview | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._baseline = [0] * (_W_OPS + _NOPS)
        self._work = Path(tempfile.mkdtemp(prefix="latencyfs-"))
        self._own_mountpoint = mountpoint is None
        self.path = self._work / "mnt" if mountpoint is None else Path(mountpoint).resolve()
        if self._own_mountpoint:
            self.path.mkdir()
        self._stats_path = self._work / "stats"
        self._log_path = self._work / "server.log"
        with _live_lock:
            _live.add(self)
        try:
            self._start(
                delay_us=round(delay_ms * 1000),
                entry_timeout=entry_timeout,
                attr_timeout=attr_timeout,
                threads=threads,
                default_permissions=default_permissions,
                trace=trace,
                timeout=mount_timeout,
            )
        except BaseException:
            self.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------

    def _start(
        self,
        *,
        delay_us: int,
        entry_timeout: float,
        attr_timeout: float,
        threads: int,
        default_permissions: bool,
        trace: bool,
        timeout: float,
    ) -> None:
        if delay_us < 0:
            raise ValueError("delay_ms must be >= 0")
        binary = build()
        args = [
            str(binary),
            str(self.source),
            str(self.path),
            "--delay-us",
            str(delay_us),
            "--entry-timeout",
            repr(float(entry_timeout)),
            "--attr-timeout",
            repr(float(attr_timeout)),
            "--threads",
            str(threads),
            "--stats",
            str(self._stats_path),
            "--exit-with-parent",
        ]
        if not default_permissions:
            args.append("--no-default-permissions")
        if trace:
            args.append("--trace")
        parent_dev = os.stat(self.path.parent).st_dev
        with open(self._log_path, "wb") as log:
            # Own session: a terminal's Ctrl-C reaches us, and we unmount in order.
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"latencyfs exited with {self._proc.returncode} before mounting "
                    f"{self.path}: {self.server_log().strip() or '(no output)'}"
                )
            try:
                # The first stat also waits for the INIT handshake to finish.
                if os.stat(self.path).st_dev != parent_dev:
                    break
            except OSError as e:
                raise RuntimeError(f"mount of {self.path} is broken: {e}") from e
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"latencyfs did not mount {self.path} within {timeout} s: "
                    f"{self.server_log().strip() or '(no output)'}"
                )
            time.sleep(0.002)
        fd = os.open(self._stats_path, os.O_RDWR)
        try:
            self._mm = mmap.mmap(fd, _STATS_SIZE)
        finally:
            os.close(fd)
        self._words = memoryview(self._mm).cast("Q")
        if self._words[_W_MAGIC] != _MAGIC or self._words[_W_VERSION] != _VERSION:
            raise RuntimeError(f"{self._stats_path}: not a latencyfs v{_VERSION} stats file")
        # The kernel asks for xattrs until told ENOSYS once (e.g. security.capability
        # before every write); ask now so that measured blocks never see that.
        with contextlib.suppress(OSError):
            os.getxattr(self.path, "user.latencyfs")
        with contextlib.suppress(OSError):
            os.listxattr(self.path)
        self.wait_idle()
        self.reset()

    def close(self) -> None:
        """Unmount (lazily if busy), stop the server, remove the temporary mount point.

        A file still open inside the mount gets ~2 s to finish, then ENOTCONN. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        try:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # the server does umount2(MNT_DETACH)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            # Safety net: the server died without unmounting (e.g. SIGKILL).
            if _is_mounted(self.path) and self._proc is not None:
                _umount_detach(self.path)
        finally:
            if self._words is not None:
                self._words.release()
                self._words = None
            if self._mm is not None:
                self._mm.close()
                self._mm = None
            for f in (self._stats_path, self._log_path):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
            if self._own_mountpoint:
                with contextlib.suppress(OSError):  # never rmtree: it could still be a mount
                    self.path.rmdir()
            with contextlib.suppress(OSError):
                self._work.rmdir()
            with _live_lock:
                _live.discard(self)

    def __enter__(self) -> LatencyFS:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The server's process id (``None`` once closed)."""
        return None if self._proc is None or self._closed else self._proc.pid

    def running(self) -> bool:
        """Whether the server process is still alive (it exits when unmounted)."""
        return self._proc is not None and self._proc.poll() is None

    def server_log(self) -> str:
        """The server's stderr so far (errors; each request too with ``trace=True``)."""
        try:
            return self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- counters ----------------------------------------------------------------------

    def _snapshot(self) -> list[int]:
        if self._words is None:
            raise RuntimeError("LatencyFS is closed")
        return self._words.tolist()

    def counts(self) -> dict[str, int]:
        """Requests since :meth:`reset`, by lowercase opcode name, plus ``read_bytes``,
        ``write_bytes``, ``other`` (opcodes >= 64) and ``max_in_flight`` (the most requests
        being served at once since the last reset).

        Requests are counted when the server receives them. The kernel sends RELEASE (and
        FORGET) asynchronously after ``close()`` returns, so call :meth:`wait_idle` first,
        or use :meth:`measure`, for exact counts.
        """
        now = self._snapshot()
        base = self._baseline
        out = {name: now[_W_OPS + op] - base[_W_OPS + op] for name, op in OPS.items()}
        for name, word in (
            ("read_bytes", _W_READ_BYTES),
            ("write_bytes", _W_WRITE_BYTES),
            ("other", _W_OTHER),
        ):
            out[name] = now[word] - base[word]
        out["max_in_flight"] = now[_W_MAX_IN_FLIGHT]
        return out

    def gauges(self) -> dict[str, int]:
        """Current values: ``in_flight`` requests, live ``nodes`` (inodes the kernel holds),
        open ``handles`` (files + directories) and the ``delay_us`` in force."""
        now = self._snapshot()
        return {
            "in_flight": now[_W_IN_FLIGHT],
            "nodes": now[_W_NODES],
            "handles": now[_W_HANDLES],
            "delay_us": now[_W_DELAY],
        }

    def round_trips(self) -> int:
        """Delayed requests since :meth:`reset`: the round trips (all but UNDELAYED_OPS)."""
        counts = self.counts()
        return sum(counts[name] for name in OPS if name not in UNDELAYED_OPS) + counts["other"]

    def reset(self) -> None:
        """Start counting from zero (also resets ``max_in_flight``)."""
        if self._words is None:
            raise RuntimeError("LatencyFS is closed")
        self._baseline = self._snapshot()
        # The only counter written from here: an aligned native 8-byte store, and the
        # server's compare-and-swap on it tolerates a concurrent reset.
        self._words[_W_MAX_IN_FLIGHT] = self._words[_W_IN_FLIGHT]

    def wait_idle(self, settle: float = 0.02, timeout: float = 5.0) -> None:
        """Wait until no request is in flight and no new one arrived for ``settle`` s.

        Covers the kernel's asynchronous RELEASE/FORGET after a close. Raises
        ``TimeoutError`` if the filesystem is still busy after ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        last = self._snapshot()
        stable_since = time.monotonic()
        while True:
            time.sleep(0.002)
            now = self._snapshot()
            t = time.monotonic()
            busy = now[_W_IN_FLIGHT] != 0 or now[_W_OPS:] != last[_W_OPS:]
            if busy:
                stable_since = t
                last = now
            elif t - stable_since >= settle:
                return
            if t > deadline:
                raise TimeoutError(f"latencyfs at {self.path} still busy after {timeout} s")

    @contextlib.contextmanager
    def measure(self, settle: float = 0.02) -> Iterator[dict[str, int]]:
        """Count the requests made inside the block: waits idle, resets, runs the block,
        waits idle again and fills the yielded dict with :meth:`counts`."""
        result: dict[str, int] = {}
        self.wait_idle(settle)
        self.reset()
        yield result
        self.wait_idle(settle)
        result.update(self.counts())

    def set_delay_us(self, us: int) -> None:
        """Change the delay for requests received from now on."""
        if us < 0:
            raise ValueError("delay must be >= 0")
        if self._words is None:
            raise RuntimeError("LatencyFS is closed")
        self._words[_W_DELAY] = int(us)

    def set_delay_ms(self, ms: float) -> None:
        """Change the delay for requests received from now on."""
        self.set_delay_us(round(ms * 1000))


def drop_caches(path: Path | str | None = None) -> None:
    """Make the next reads cold.

    With ``path``: ``posix_fadvise(POSIX_FADV_DONTNEED)`` on that file, or on every regular
    file below that directory, which drops their clean page-cache pages (for a path inside
    a LatencyFS this itself costs requests: measure after, not around, it). Without:
    ``sync`` then ``echo 1 > /proc/sys/vm/drop_caches`` (root), which drops every clean
    page-cache page on the machine, both the mount's and the underlying disk's, and no
    dentries or inodes (so it sends no FORGETs).
    """
    if path is None:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return
    root = Path(path)
    files = [root] if not root.is_dir() else [p for p in root.rglob("*") if p.is_file()]
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


@atexit.register
def _close_all() -> None:
    with _live_lock:
        live = list(_live)
    for fs in live:
        with contextlib.suppress(Exception):
            fs.close()
