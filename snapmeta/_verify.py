"""Full verification: every checksum, every entry, every document, re-read."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _format
from ._freshness import changed_documents
from .errors import SnapmetaError

__all__ = ["VerifyReport", "verify"]


@dataclass(slots=True)
class VerifyReport:
    """What :func:`verify` checked and what it found."""

    store: Path
    positions: int = 0
    wells: int = 0
    documents: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = (
            f"{self.store}: checked {self.positions} positions, {self.wells} wells, "
            f"{self.documents} documents"
        )
        if self.ok:
            return head + ": snapshot is intact and up to date"
        return (
            head
            + f": {len(self.problems)} problem(s)\n"
            + "\n".join(f"  {p}" for p in self.problems)
        )


def _comparable(record: Mapping[str, Any], blob: Any) -> dict[str, Any]:
    out = dict(record)
    out["attributes"] = blob(out["attributes"])
    if "array_metadata" in out:
        out["array_metadata"] = [blob(b) for b in out["array_metadata"]]
    out["documents"] = [(d["path"], d["size"], d["digest"]) for d in out["documents"]]
    return out


def verify(
    store: str | os.PathLike[str], *, reread: bool = True, progress: Any = None
) -> VerifyReport:
    """Check a snapshot completely (O(plate)); never modifies the store.

    Verifies every checksum and lookup slot, that the typed columns equal the
    checksummed records, every mirrored document's content digest and, with
    ``reread=True``, that a fresh read of the plate's metadata gives the same
    entries (this finds wells, positions or levels added since the build).
    """
    from ._build import collect_content

    root = Path(store)
    report = VerifyReport(root)
    try:
        snap = _format.open_file(_format.snapshot_path(root))
        snap.plate_lists()
        snap.verify_lookup()
        records = list(snap.iter_positions())
        wells = list(snap.iter_wells())
        for i in range(snap.blob_count):
            snap.blob(i)
        snap.position_paths()
        typed_sections = [
            ("positions", snap.typed_positions(), records),
            ("wells", snap.typed_wells(), wells),
        ]
    except SnapmetaError as exc:
        report.problems.append(str(exc))
        return report
    report.positions, report.wells = len(records), len(wells)
    for kind, typed, checked in typed_sections:
        for i, (row, record) in enumerate(zip(typed, checked, strict=True)):
            row = {k: v for k, v in row.items() if k not in ("record", "checksum")}
            if row != record:
                report.problems.append(
                    f"{kind}[{i}]: typed columns differ from the checksummed record"
                )
    for target in [r["path"] for r in records] + [w["path"] for w in wells]:
        if snap.find(target) is None:
            report.problems.append(f"lookup: {target!r} cannot be found")
    fingerprints = [d for r in records + wells for d in r["documents"]]
    fingerprints.append(snap.root_fingerprint)
    report.documents = len(fingerprints)
    for path in changed_documents(root, fingerprints, "digest"):
        report.problems.append(f"stale: {path} changed since the snapshot was built")
    if not reread:
        return report
    try:
        fresh = collect_content(
            root,
            progress=progress,
            inline_limit=int(snap.get_meta("inline_limit") or _format.DEFAULT_INLINE_LIMIT),
            workers=None,
        )
    except SnapmetaError as exc:
        report.problems.append(f"re-reading the plate failed: {exc}")
        return report
    old = {
        r["path"]: _comparable(r, lambda b: None if b is None or b < 0 else snap.blob(b))
        for r in records
    }
    new = {r["path"]: _comparable(r, lambda b: b) for r in fresh.positions}
    for path in sorted(set(new) - set(old)):
        report.problems.append(
            f"stale: position {path} exists in the plate but not in the snapshot"
        )
    for path in sorted(set(old) - set(new)):
        report.problems.append(
            f"stale: position {path} is in the snapshot but no longer in the plate"
        )
    for path in sorted(set(old) & set(new)):
        if old[path] != new[path]:
            fields = sorted(k for k in old[path] if old[path][k] != new[path].get(k))
            report.problems.append(f"stale: position {path} differs in {', '.join(fields)}")
    if [w["path"] for w in wells] != [w["path"] for w in fresh.wells]:
        report.problems.append("stale: the plate's well list changed")
    return report
