"""Is a document still what the snapshot mirrors? Fingerprint checks and their policy.

A document is unchanged when its size and mtime equal the fingerprint's, or,
failing that, when its content digest does (so identical rewrites and plate
copies are not stale). The builder stores "racily clean" documents with a
smudged mtime that never matches, so their digest always decides.

``Policy`` is the one place that says how much to check (``check``) and what
to do about a change (``on_stale``).

Where round trips are slow (network filesystems), documents are checked
relative to directory handles, each directory of the path is looked up once,
and independent checks run concurrently; on local disks plain ``stat`` calls
on full paths are cheaper than any of that.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import stat
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from . import _format as fmt
from ._fsio import DIR_FLAGS, read_regular, resolves_inside
from .errors import SnapshotStaleWarning, StaleSnapshotError

Check = Literal["none", "stat", "digest"]
OnStale = Literal["fallback", "raise"]
CHECKS: tuple[Check, ...] = ("none", "stat", "digest")
ON_STALE: tuple[OnStale, ...] = ("fallback", "raise")

# A digest confirmation is reused for a (path, size, mtime) only once the
# clock is this far past the mtime: an edit after that gets a new mtime even
# on a filesystem with 2-second timestamps and a skewed server clock.
_SETTLED_NS = 5_000_000_000


@dataclass(frozen=True, slots=True)
class Policy:
    """How much to check and what to do when a document changed."""

    check: Check = "stat"
    on_stale: OnStale = "fallback"

    def __post_init__(self) -> None:
        if self.check not in CHECKS:
            raise ValueError(
                f"check must be one of {', '.join(map(repr, CHECKS))}, not {self.check!r}"
            )
        if self.on_stale not in ON_STALE:
            raise ValueError(
                f"on_stale must be one of {', '.join(map(repr, ON_STALE))}, not {self.on_stale!r}"
            )

    def stale(self, store: str, changed: Sequence[str], what: str, *, stacklevel: int = 4) -> None:
        """Raise or warn that ``changed`` documents differ from the snapshot."""
        shown = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
        rebuild = f"Rebuild it with `snapmeta build {store}`"
        if self.on_stale == "raise":
            raise StaleSnapshotError(
                f"snapshot of {store} is stale ({shown} changed). {rebuild}",
                store=store,
                changed=tuple(changed),
            )
        message = f"snapshot of {store} is stale ({shown} changed); {what}. {rebuild}"
        warnings.warn(message, SnapshotStaleWarning, stacklevel=stacklevel)


@dataclass(frozen=True, slots=True)
class Probe:
    """What a stat found: None fields mean missing; ``special`` a non-regular file."""

    size: int
    mtime_ns: int
    dev: int
    ino: int
    special: bool


MISSING = Probe(-1, 0, 0, 0, False)

# (dev, ino, size, mtime_ns) -> digest confirmed equal to the content then
_confirmed: dict[tuple[int, int, int, int], bytes] = {}
_confirmed_lock = threading.Lock()


def _probe_result(st: os.stat_result) -> Probe:
    return Probe(st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, not stat.S_ISREG(st.st_mode))


def stat_local(root: str, relpath: str) -> Probe:
    """``lstat`` of a document under ``root``; a symlink is followed only inside the store."""
    full = f"{root}/{relpath}"  # pathlib costs more than the stat
    try:
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            if not resolves_inside(root, relpath):
                return Probe(-2, 0, 0, 0, True)
            st = os.stat(full)
    except (FileNotFoundError, NotADirectoryError):
        return MISSING
    except OSError:  # a symlink loop, EACCES: not the document we knew
        return Probe(-2, 0, 0, 0, True)
    return _probe_result(st)


def unchanged(
    root: str,
    relpath: str,
    fp: fmt.Fingerprint | None,
    found: Probe,
    check: Check,
    digest_of: Callable[[int], bytes],
) -> bool:
    """Whether a document whose stat gave ``found`` still matches ``fp``."""
    if fp is None:
        return found is MISSING or (found.size == -1 and not found.special)
    if found.special or found.size != fp.size:
        return False
    if check == "stat" and found.mtime_ns == fp.mtime_ns:
        return True
    expected = digest_of(fp.content)
    key = (found.dev, found.ino, found.size, found.mtime_ns)
    if check == "stat" and _confirmed.get(key) == expected:
        return True
    try:
        data, st = read_regular(f"{root}/{relpath}", limit=fp.size)
    except (OSError, ValueError):
        return False
    if fmt.content_digest(data) != expected:
        return False
    if (st.st_size, st.st_mtime_ns) == (found.size, found.mtime_ns) and (
        time.time_ns() - st.st_mtime_ns > _SETTLED_NS
    ):
        with _confirmed_lock:
            _confirmed[key] = expected
    return True


class LocalWalk:
    """The directories found inside the store during one check on a local disk.

    A position's level check right after its open reuses them, as a
    :class:`Walk` reuses its handles on a network filesystem.
    """

    __slots__ = ("checked", "started")

    def __init__(self) -> None:
        self.checked: set[str] = set()
        self.started = time.monotonic_ns()

    def fresh(self) -> bool:
        return time.monotonic_ns() - self.started < WALK_REUSE_NS

    def stat(self, relpath: str) -> None:
        """Nothing to start ahead on a local disk."""

    def close(self) -> None:
        """Nothing to release."""


def _outside_dirs(root: str, relpaths: Sequence[str], checked: set[str]) -> set[str]:
    """Directories of ``relpaths`` that are symlinks leading out of the store.

    Each directory is ``lstat``-ed (parents first) before anything below it is
    touched; ``checked`` carries the directories already known to be inside.
    """
    outside: set[str] = set()
    for rel in relpaths:
        parts = rel.split("/")[:-1]
        current = ""
        for part in parts:
            current = f"{current}/{part}" if current else part
            if current in checked:
                continue
            if outside and any(current == o or current.startswith(o + "/") for o in outside):
                break
            try:
                st = os.lstat(f"{root}/{current}")
            except OSError:
                break  # missing: the stat below finds the document missing
            if stat.S_ISLNK(st.st_mode) and not resolves_inside(root, current):
                outside.add(current)
                break
            checked.add(current)
    return outside


def changed_documents(
    root: str,
    relpaths: Sequence[str],
    fps: Sequence[fmt.Fingerprint | None],
    check: Check,
    digest_of: Callable[[int], bytes],
    checked_dirs: set[str] | None = None,
    walk: Walk | LocalWalk | None = None,
) -> list[str]:
    """The documents among ``relpaths`` that no longer match their fingerprints.

    No path under a directory that leads out of the store is touched: such a
    document counts as changed. With a :class:`Walk` (slow filesystems), the
    stats are issued concurrently relative to directory handles.
    """
    if check == "none" or not relpaths:
        return []
    if isinstance(walk, LocalWalk):
        checked_dirs = walk.checked
    elif walk is not None:
        try:
            probes = walk.probe(relpaths)
        except WalkClosed:  # evicted by other threads' walks: walk again
            probes = Walk(root).probe(relpaths)
        return [
            rel
            for rel, fp, found in zip(relpaths, fps, probes, strict=True)
            if not unchanged(root, rel, fp, found, check, digest_of)
        ]
    checked = set() if checked_dirs is None else checked_dirs
    outside = _outside_dirs(root, relpaths, checked)
    changed = []
    for rel, fp in zip(relpaths, fps, strict=True):
        if outside and any(rel.startswith(o + "/") for o in outside):
            changed.append(rel)
            continue
        if fp is not None and check == "stat":
            # the common case, without building a Probe
            try:
                st = os.lstat(f"{root}/{rel}")
            except (FileNotFoundError, NotADirectoryError):
                changed.append(rel)
                continue
            except OSError:
                changed.append(rel)
                continue
            if st.st_size == fp.size and st.st_mtime_ns == fp.mtime_ns and stat.S_ISREG(st.st_mode):
                continue
            found = stat_local(root, rel) if stat.S_ISLNK(st.st_mode) else _probe_result(st)
        else:
            found = stat_local(root, rel)
        if not unchanged(root, rel, fp, found, check, digest_of):
            changed.append(rel)
    return changed


# ---------------------------------------------------------------------------
# network filesystems: one walk, directory handles, concurrent checks

_DIR_FLAGS = DIR_FLAGS | os.O_NOFOLLOW

# statfs magic numbers of filesystems where every stat is a round trip
_NETWORK_TYPES = {
    "nfs",
    "nfs4",
    "fuse",
    "cifs",
    "smb3",
    "smbfs",
    "gpfs",
    "lustre",
    "ceph",
    "beegfs",
    "9p",
    "afs",
    "glusterfs",
    "panfs",
    "wekafs",
}

# A walk's handles are reused by the next check for this long: a level used
# right after its position was opened costs no new lookups, and a plate
# replaced later is never checked through old handles.
WALK_REUSE_NS = 1_000_000_000
_MAX_LIVE_WALKS = 32
_live: collections.deque[Walk] = collections.deque()
_live_lock = threading.Lock()

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_kinds: dict[int, bool] = {}


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(16, thread_name_prefix="snapmeta-stat")
    return _pool


def _mount_types() -> dict[int, str]:
    """st_dev -> filesystem type, from /proc/self/mountinfo (no round trip)."""
    types: dict[int, str] = {}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if " - " not in line or len(fields) < 3:
                    continue
                major, _, minor = fields[2].partition(":")
                fstype = line.split(" - ", 1)[1].split()[0]
                types[os.makedev(int(major), int(minor))] = fstype
    except (OSError, ValueError):
        pass
    return types


def is_slow(dev: int) -> bool:
    """Whether stats on device ``dev`` are round trips to a server.

    ``SNAPMETA_CONCURRENT_CHECKS=1`` or ``0`` overrides the detection.
    """
    forced = os.environ.get("SNAPMETA_CONCURRENT_CHECKS")
    if forced in ("0", "1"):
        return forced == "1"
    found = _kinds.get(dev)
    if found is None:
        fstype = _mount_types().get(dev, "")
        base = fstype.split(".", 1)[0]
        found = _kinds[dev] = base in _NETWORK_TYPES or fstype.startswith("fuse")
    return found


class WalkClosed(Exception):
    """The walk was closed to bound open descriptors."""


class Walk:
    """Directory handles for checking documents on a slow (network) filesystem.

    Each directory is looked up once, from its parent's handle, without
    following symlinks (a symlinked directory is followed only if it stays
    in the store), and every lookup or stat is issued as soon as what it
    depends on is known: a stat of ``A/1/0/.zattrs`` waits for ``A/1/0``,
    not for unrelated stats. Handles are closed by :meth:`close`; a walk is
    reused only for a short time (see :data:`WALK_REUSE_NS`), so a plate
    replaced later is never checked through old handles.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.started = time.monotonic_ns()
        self.closed = False
        self._pool = _executor()
        self._lock = threading.Lock()
        self._dirs: dict[str, Future[int]] = {}
        self._stats: dict[str, Future[Probe]] = {}
        with _live_lock:
            _live.append(self)
            while len(_live) > _MAX_LIVE_WALKS:
                _live.popleft().close()  # bounded descriptors, however many handles live

    def fresh(self) -> bool:
        return not self.closed and time.monotonic_ns() - self.started < WALK_REUSE_NS

    def directory(self, rel: str) -> Future[int]:
        """A future of the handle of directory ``rel`` ("" is the store root).

        Missing ancestors are opened by one task, in order: a chain of
        lookups costs one thread hop, not one per directory.
        """
        with self._lock:
            found = self._dirs.get(rel)
            if found is not None:
                return found
            if self.closed:
                raise WalkClosed
            chain = [rel]
            parent: Future[int] | None = None
            while chain[-1]:
                up = chain[-1].rpartition("/")[0]
                parent = self._dirs.get(up)
                if parent is not None:
                    break
                chain.append(up)
            chain.reverse()  # shallowest first
            futures = [Future() for _ in chain]  # type: list[Future[int]]
            for name, fut in zip(chain, futures, strict=True):
                self._dirs[name] = fut
        if parent is None:
            self._pool.submit(self._open_chain, None, chain, futures)
        else:
            parent.add_done_callback(
                lambda done: self._pool.submit(self._open_chain, done, chain, futures)
            )
        return futures[-1]

    def _open_chain(
        self, parent: Future[int] | None, chain: list[str], futures: list[Future[int]]
    ) -> None:
        fd: int | None = None
        error: BaseException | None = None
        if parent is not None:
            error = parent.exception()
            fd = None if error is not None else parent.result()
        for rel, fut in zip(chain, futures, strict=True):
            if error is None:
                try:
                    if not rel:
                        fd = os.open(self.root, _DIR_FLAGS & ~os.O_NOFOLLOW)
                    else:
                        assert fd is not None
                        fd = _open_dir(fd, rel.rpartition("/")[2], self.root, rel)
                except BaseException as exc:
                    error = exc
            if error is not None:
                fut.set_exception(error)
            else:
                assert fd is not None
                fut.set_result(fd)

    @staticmethod
    def _run(fut: Future[Any], fn: Callable[..., Any], *args: Any) -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:
            fut.set_exception(exc)

    def stat(self, relpath: str) -> Future[Probe]:
        """A future of the stat of ``relpath``; issued once per walk."""
        with self._lock:
            found = self._stats.get(relpath)
            if found is not None:
                return found
            fut: Future[Probe] = Future()
            self._stats[relpath] = fut
        parent_rel, _, name = relpath.rpartition("/")

        def after_dir(done: Future[int]) -> None:
            exc = done.exception()
            if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                fut.set_result(MISSING)
            elif exc is not None:
                fut.set_result(Probe(-2, 0, 0, 0, True))
            else:
                self._pool.submit(self._run, fut, self._stat_at, done.result(), name, relpath)

        self.directory(parent_rel).add_done_callback(after_dir)
        return fut

    def _stat_at(self, fd: int, name: str, relpath: str) -> Probe:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return MISSING
        except OSError:
            return Probe(-2, 0, 0, 0, True)
        if stat.S_ISLNK(st.st_mode):
            return stat_local(self.root, relpath)
        return _probe_result(st)

    def probe(self, relpaths: Sequence[str]) -> list[Probe]:
        futures = [self.stat(rel) for rel in relpaths]
        return [f.result() for f in futures]

    def close(self) -> None:
        with self._lock:
            self.closed = True
            dirs, self._dirs = self._dirs, {}
        for fut in dirs.values():
            try:
                fd = fut.result()
            except BaseException:
                continue
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def store_is_slow(root: str) -> bool:
    """Whether ``root`` is on a filesystem where every stat is a round trip."""
    try:
        return is_slow(os.stat(root).st_dev)
    except OSError:
        return False


def _open_dir(parent: int, name: str, root: str, relpath: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        # a symlinked directory: followed when it stays inside the store
        if not resolves_inside(root, relpath):
            raise
        return os.open(name, _DIR_FLAGS & ~os.O_NOFOLLOW, dir_fd=parent)
