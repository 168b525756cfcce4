"""Staleness checks: is a document still what the snapshot mirrors?

Three levels, chosen per open with ``check=``:

``"stat"`` (default)
    one ``stat`` per document: equal size and mtime mean unchanged. When they
    differ, the content digest decides, so rewriting a document with
    identical bytes does not make the snapshot stale.
``"digest"``
    always compare content digests (reads the document, parses nothing).
``"none"``
    trust the snapshot; for read-only archives where nothing can change.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from ._format import digest

Check = Literal["none", "stat", "digest"]
CHECKS: tuple[Check, ...] = ("none", "stat", "digest")

# Documents whose content was confirmed equal despite a new stat, keyed by the
# new stat: the next check of the same file costs one stat again.
_confirmed: dict[tuple[str, int, int], bytes] = {}


def document_changed(root: Path, fingerprint: Mapping[str, Any], check: Check) -> bool:
    """Whether the document differs from its fingerprint (see module docs)."""
    if check == "none":
        return False
    full = f"{root}/{fingerprint['path']}"  # pathlib costs more than the stat
    try:
        st = os.stat(full)
    except (FileNotFoundError, NotADirectoryError):
        return fingerprint["size"] != -1
    if fingerprint["size"] == -1 or st.st_size != fingerprint["size"]:
        return True
    if check == "stat" and st.st_mtime_ns == fingerprint["mtime_ns"]:
        return False
    key = (full, st.st_size, st.st_mtime_ns)
    if check == "stat" and _confirmed.get(key) == fingerprint["digest"]:
        return False
    try:
        with open(full, "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return True
    same = digest(data) == fingerprint["digest"]
    if same:
        _confirmed[key] = fingerprint["digest"]
    return not same


def changed_documents(
    root: Path, fingerprints: Iterable[Mapping[str, Any]], check: Check
) -> list[str]:
    return [fp["path"] for fp in fingerprints if document_changed(root, fp, check)]


def validate_check(check: str) -> Check:
    if check not in CHECKS:
        raise ValueError(f"check must be one of {', '.join(map(repr, CHECKS))}, not {check!r}")
    return check  # type: ignore[return-value]
