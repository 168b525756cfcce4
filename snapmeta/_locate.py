"""Which plate a store argument names, and where its snapshot lives.

A plate is a local directory, given as a path, a ``file://`` URL, a
``zarr.storage.LocalStore`` or a local ``zarr.Group``. Remote URLs are
refused with a clear error rather than taken for relative paths.

The snapshot lives in the plate when the plate is writable: as the single
chunk of a one-dimensional ``uint8`` zarr array ``.snapmeta``, so the chunk
file ``.snapmeta/0`` *is* the Arrow file, byte for byte, and is mapped
directly. zarr lists every other kind of entry in a group with a warning
(``... is not recognized as a component of a Zarr hierarchy``), in every
zarr 3 release; an array is a component, so zarr, iohub and ome-zarr-py list
the plate silently. For plates you cannot write, it can live in a snapshot directory
(``snapshot_dir=`` or the ``SNAPMETA_SNAPSHOT_DIR`` environment variable),
under a name derived from the plate's absolute path; the plate's location is
also recorded inside the snapshot and checked on open, so an external
snapshot is never applied to another plate.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from .errors import NotAPlateError

__all__ = [
    "ENV_SNAPSHOT_DIR",
    "IN_STORE_ARRAY",
    "IN_STORE_NAME",
    "LEGACY_NAME",
    "external_name",
    "plate_root",
    "snapshot_candidates",
]

IN_STORE_ARRAY = ".snapmeta"
IN_STORE_NAME = f"{IN_STORE_ARRAY}/0"  # the array's only chunk
LEGACY_NAME = ".snapmeta.arrow"  # where snapmeta 0.1 wrote format 1
ENV_SNAPSHOT_DIR = "SNAPMETA_SNAPSHOT_DIR"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

StoreLike = Any  # str | os.PathLike[str] | zarr.storage.LocalStore | zarr.Group


def plate_root(store: StoreLike) -> str:
    """The absolute path of the plate named by ``store``."""
    if isinstance(store, str | os.PathLike):
        text = os.fspath(store)
        if isinstance(text, bytes):
            raise TypeError("store paths must be str, not bytes")
        if _URL.match(text):
            url = urlparse(text)
            if url.scheme != "file" or url.netloc not in ("", "localhost"):
                raise NotAPlateError(
                    f"{text}: remote plates ({url.scheme}://) are not supported yet; "
                    "snapmeta opens plates on local or network-mounted filesystems",
                    store=text,
                    document=None,
                )
            text = unquote(url.path)
        return os.path.abspath(text)
    root = _zarr_root(store)
    if root is None:
        raise TypeError(
            "store must be a path (str or os.PathLike), a zarr.storage.LocalStore or a local "
            f"zarr.Group, not {type(store).__name__}"
        )
    return root


def _zarr_root(store: Any) -> str | None:
    module = type(store).__module__ or ""
    if not module.startswith("zarr"):
        return None
    import zarr
    from zarr.storage import LocalStore

    path = ""
    if isinstance(store, zarr.Group):
        path = store.store_path.path
        store = store.store_path.store
    if isinstance(store, LocalStore):
        return os.path.abspath(os.path.join(str(store.root), path))
    raise NotAPlateError(
        f"{type(store).__name__} is not a local store; snapmeta opens plates on local or "
        "network-mounted filesystems (remote stores are not supported yet)",
        store=repr(store),
        document=None,
    )


def external_name(root: str) -> str:
    """File name of the external snapshot of the plate at ``root``."""
    tag = hashlib.sha256(root.encode()).hexdigest()[:16]
    base = os.path.basename(root.rstrip("/")) or "plate"
    return f"{base}.{tag}.snapmeta.arrow"


def snapshot_dir_from_env() -> str | None:
    value = os.environ.get(ENV_SNAPSHOT_DIR)
    return os.path.abspath(value) if value else None


def snapshot_candidates(root: str, snapshot: str | os.PathLike[str] | None = None) -> list[str]:
    """Where to look for the snapshot of ``root``, in order.

    An explicit ``snapshot`` comes first and alone: a file if it exists as
    one or ends in ``.arrow``, else a directory of snapshots. Otherwise the
    snapshot directory of the environment, then the plate itself.
    """
    if snapshot is not None:
        path = os.path.abspath(os.fspath(snapshot))
        # a directory of snapshots unless it names a file (existing, or *.arrow)
        if os.path.isdir(path) or not (path.endswith(".arrow") or os.path.isfile(path)):
            return [os.path.join(path, external_name(root))]
        return [path]
    found = []
    env = snapshot_dir_from_env()
    if env is not None:
        found.append(os.path.join(env, external_name(root)))
    found.append(os.path.join(root, IN_STORE_NAME))
    return found


def build_target(root: str, snapshot: str | os.PathLike[str] | None = None) -> Path:
    """Where ``build`` writes: the explicit place, else the environment's directory,
    else the plate."""
    return Path(snapshot_candidates(root, snapshot)[0])


def check_in_store(root: str, snapshot_path: str) -> os.stat_result | None:
    """The stat of an in-store snapshot, refusing one reached through a symlink that
    leads out of the store; None if it is missing (or the snapshot is external).

    The array directory is opened without following a symlink, and the file is
    stat-ed relative to it: a path walk each, as a plain ``stat`` of the file costs.
    """
    from ._fsio import DIR_FLAGS, resolves_inside

    if is_external(root, snapshot_path):
        return None

    def through_symlink() -> os.stat_result | None:
        if not resolves_inside(root, IN_STORE_NAME):
            reason = "leads out of the store (a symlink); snapmeta does not follow it"
            raise _unusable(root, snapshot_path, reason)
        return _stat_or_none(root, snapshot_path)

    directory = os.path.join(root, IN_STORE_ARRAY)
    try:
        fd = os.open(directory, DIR_FLAGS | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return through_symlink() if os.path.islink(directory) else None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise _unusable(root, snapshot_path, f"cannot be opened ({exc.strerror})") from None
        return through_symlink()
    try:
        st = os.stat("0", dir_fd=fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise _unusable(root, snapshot_path, f"cannot be opened ({exc.strerror})") from None
    finally:
        os.close(fd)
    return through_symlink() if stat.S_ISLNK(st.st_mode) else st


def _stat_or_none(root: str, path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # a dangling symlink: no snapshot
        return None
    except OSError as exc:
        raise _unusable(root, path, f"cannot be opened ({exc.strerror})") from None


def _unusable(root: str, snapshot_path: str, reason: str) -> Exception:
    from .errors import SnapshotFormatError

    return SnapshotFormatError(
        f"{snapshot_path} {reason}. Rebuild the snapshot with `snapmeta build {root}`",
        snapshot=snapshot_path,
        reason=reason,
    )


def is_external(root: str, snapshot_path: str) -> bool:
    return snapshot_path != os.path.join(root, IN_STORE_NAME)
