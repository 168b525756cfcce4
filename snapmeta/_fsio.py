"""Bounded, confined file access for paths that come from untrusted input.

Every document and snapshot is opened non-blocking and checked to be a
regular file before a byte is read, and every read is capped: a FIFO, a
device or ``/dev/zero`` behind a symlink gives an error instead of a hang or
an exhausted memory. Paths taken from a snapshot or a metadata document are
checked to stay inside the store, symlinks included.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import sys
from pathlib import Path

# Bigger than any metadata document we have seen (a 100,000-well root is
# about 13 MB), far smaller than what would hurt a worker.
MAX_DOCUMENT = 256 << 20
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)


# openat2(2) with RESOLVE_BENEATH resolves a path below a directory in one
# kernel walk, refusing (EXDEV) any ".." or symlink that would leave it: the
# confinement check costs no round trip beyond the open itself. Linux >= 5.6;
# the number is the same on every architecture with the generic syscall table.
_GENERIC_SYSCALL_MACHINES = {"x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x"}
_OPENAT2_NR = (
    437 if sys.platform == "linux" and platform.machine() in _GENERIC_SYSCALL_MACHINES else None
)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_syscall: object = None  # libc's syscall(), found on first use; False: unusable


def _openat2(dir_fd: int, path: str, flags: int) -> int:
    global _syscall
    if _syscall is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).syscall
            fn.restype = ctypes.c_long
            _syscall = fn
        except (OSError, AttributeError):
            _syscall = False
    if not _syscall or _OPENAT2_NR is None:
        raise OSError(errno.ENOSYS, "openat2 is not available")
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    fd = _syscall(  # type: ignore[operator]
        ctypes.c_long(_OPENAT2_NR),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EPERM):  # old kernel, or a seccomp filter
            _syscall = False
            code = errno.ENOSYS  # one answer for "unavailable", this call and the next
        raise OSError(code, os.strerror(code), path)
    return int(fd)


def open_beneath(root: str, relpath: str, flags: int) -> int:
    """A descriptor of ``root/relpath`` resolved without leaving ``root``.

    Raises OSError: ENOENT/ENOTDIR as ``os.open`` would (every component before
    the missing one was resolved inside ``root``); EXDEV when a ``..`` or a
    symlink leads out, and also for any absolute symlink, even one that points
    back inside; ENOSYS where the kernel cannot do this (the caller checks the
    path itself then); EAGAIN when a concurrent rename raced the walk.
    """
    if _syscall is False or _OPENAT2_NR is None:
        raise OSError(errno.ENOSYS, "openat2 is not available")
    root_fd = os.open(root, DIR_FLAGS)
    try:
        return _openat2(root_fd, relpath, flags)
    finally:
        os.close(root_fd)


class UnsafePathError(ValueError):
    """A path from untrusted input would leave the store."""


class UnreadableFileError(OSError):
    """A file exists but is not a readable regular file of sane size."""


def check_relative(path: str) -> str:
    """``path`` if it is a plain relative path: no absolute, empty, ``.`` or ``..`` parts."""
    if not path or path.startswith("/") or "\\" in path or "\0" in path:
        raise UnsafePathError(f"{path!r} is not a relative path inside the store")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePathError(f"{path!r} is not a relative path inside the store")
    return path


def open_regular(
    path: str | Path, *, dir_fd: int | None = None, nofollow: bool = False
) -> tuple[int, os.stat_result]:
    """A descriptor of a regular file, opened without blocking on FIFOs or devices.

    Raises FileNotFoundError (and NotADirectoryError) for a missing file and
    :class:`UnreadableFileError` for anything that is not a regular file
    (``errno`` ELOOP for a symlink with ``nofollow``).
    """
    try:
        fd = os.open(path, READ_FLAGS | (os.O_NOFOLLOW if nofollow else 0), dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise
        raise UnreadableFileError(exc.errno, f"cannot open ({exc.strerror})", str(path)) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFileError(errno.EINVAL, "not a regular file", str(path))
        return fd, st
    except BaseException:
        os.close(fd)
        raise


def read_regular(
    path: str | Path,
    *,
    limit: int = MAX_DOCUMENT,
    dir_fd: int | None = None,
    nofollow: bool = False,
) -> tuple[bytes, os.stat_result]:
    """The bytes and the stat (of the open descriptor) of a regular file, capped at ``limit``."""
    fd, st = open_regular(path, dir_fd=dir_fd, nofollow=nofollow)
    try:
        if st.st_size > limit:
            raise UnreadableFileError(
                errno.EFBIG, f"{st.st_size} bytes is more than the {limit} allowed", str(path)
            )
        chunks = []
        remaining = limit + 1  # one byte more tells a file that grew past the limit
        while remaining > 0:
            try:
                chunk = os.read(fd, min(remaining, 1 << 20))
            except OSError as exc:
                raise UnreadableFileError(
                    exc.errno, f"cannot read ({exc.strerror})", str(path)
                ) from exc
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise UnreadableFileError(
                errno.EFBIG, f"more than the {limit} bytes allowed", str(path)
            )
        return data, st
    finally:
        os.close(fd)


def resolves_inside(root: str, relpath: str, real_root: str | None = None) -> bool:
    """Whether ``root/relpath`` resolves, through any symlinks, to a place inside ``root``.

    Symlinks are resolved by reading them, never by touching their targets:
    nothing outside the store is looked at. A missing path counts as inside
    when its existing part is inside (the caller then finds it missing).
    """
    if real_root is None:
        real_root = os.path.realpath(root)
    bases = {real_root, os.path.abspath(root)}
    current = real_root
    pending = [p for p in relpath.split("/") if p not in ("", ".")]
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if current == real_root:
                return False
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)  # inside: current is
        try:
            st = os.lstat(candidate)
        except OSError:
            return True
        if not stat.S_ISLNK(st.st_mode):
            current = candidate
            continue
        hops += 1
        if hops > 40:  # a loop
            return False
        try:
            target = os.readlink(candidate)
        except OSError:
            return False
        if target.startswith("/"):
            target = os.path.normpath(target)
            base = next((b for b in bases if target == b or target.startswith(b + "/")), None)
            if base is None:
                return False
            current = real_root
            rest = target[len(base) :]
        else:
            rest = target
        pending = [p for p in rest.split("/") if p not in ("", ".")] + pending
    return True
