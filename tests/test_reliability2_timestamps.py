"""Coarse timestamps: a same-size edit in the build's timestamp tick is never served stale.

On filesystems with 1-second timestamps (ext4 with 128-byte inodes, many NFS
servers, HFS+; FAT and exFAT have 2 seconds), an edit that keeps a
document's size within the tick in which the builder read it also keeps its
mtime: a ``stat`` check cannot see it (git's "racily clean" index entries).
The builder's rule (``snapmeta/_build.py``, docs/format.md section 8): it
notes its start on the plate's clock, waits one timestamp tick before
reading, and stores every document whose mtime is after the start with a
smudged mtime, so its digest always decides.

* On a real coarse filesystem (an ext4 image with 128-byte inodes, mounted
  from a loop device; skipped where mounting is not permitted): write a
  plate, build, edit a channel label ``DAPI`` -> ``GFP1`` right away (same
  size); and edit a document twice while the build runs, before and after
  the builder read it, within one second. The default ``check="stat"``
  warns ``SnapshotStaleWarning`` and serves the new label, or raises with
  ``on_stale="raise"``.
* The same logic on the normal filesystem, with ``os.utime`` setting whole
  seconds as a coarse filesystem would (runs everywhere): documents modified
  after the build's start are smudged, older ones are not, and racy edits
  of the root, well, position and array documents are all caught.
* The documented remaining hole: an edit that restores the old mtime on
  purpose (``touch -r``) passes ``check="stat"``; only ``check="digest"``
  and ``snapmeta.verify`` catch it.

Format-1 snapmeta (``ae0e590``) took a same-second edit for unchanged and
served the old label without a warning: every test here but the hole fails
on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_reliability2_confinement import load_snapshot, node_index

import snapmeta
from snapmeta import _format as fmt
from snapmeta._open import clear_cache
from snapmeta.testing import write_plate

SLOW = bool(os.environ.get("SNAPMETA_SLOW"))
SECOND = 1_000_000_000


# ---------------------------------------------------------------------------
# helpers


def group_doc(store: Path, node: str) -> Path:
    base = store / node if node else store
    return base / ("zarr.json" if (store / "zarr.json").exists() else ".zattrs")


def replace_same_size(path: Path, old: bytes, new: bytes) -> os.stat_result:
    """Rewrite ``path`` in place with ``old`` replaced by ``new`` (same length)."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert data.count(old) == 1, f"{old!r} occurs {data.count(old)} times in {path}"
    with open(path, "r+b") as fh:
        fh.write(data.replace(old, new))
    return path.stat()


def fingerprints(store: Path, node: str) -> tuple[fmt.Fingerprint | None, ...]:
    """The fingerprints the snapshot holds for ``node`` (mtime -1: smudged)."""
    model = load_snapshot(store)
    index = node_index(model, node)
    return fmt.decode_documents(
        model["nodes"][index][3],
        model["plate"]["mtime_base"],
        len(model["contents"]),
        "nodes",
        index,
    )


def plate_entry(store: Path) -> dict[str, Any]:
    return load_snapshot(store)["plate"]


def served_label(store: Path, path: str, **options: Any) -> str:
    clear_cache()
    return snapmeta.open_position(store, path, **options).channel_names[0]


def assert_served_fresh(store: Path, path: str, label: str) -> None:
    """The default check warns and serves ``label``; ``on_stale="raise"`` raises."""
    with pytest.warns(snapmeta.SnapshotStaleWarning):
        assert served_label(store, path) == label
    clear_cache()
    with pytest.warns(snapmeta.SnapshotStaleWarning):
        assert snapmeta.open_plate(store)[path].channel_names[0] == label
    with pytest.raises(snapmeta.StaleSnapshotError):
        served_label(store, path, on_stale="raise")
    with pytest.warns(snapmeta.SnapshotStaleWarning):
        assert served_label(store, path, check="digest") == label
    report = snapmeta.verify(store)
    assert not report.ok and any(path in p for p in report.problems), report.problems


# ---------------------------------------------------------------------------
# a real coarse-timestamp filesystem


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def coarse_fs() -> Iterator[Path]:
    """An ext4 filesystem with 128-byte inodes (1-second timestamps), loop-mounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop filesystem needs root")
    if shutil.which("mkfs.ext4") is None or shutil.which("mount") is None:
        pytest.skip("mkfs.ext4 or mount is not installed")
    work = Path(tempfile.mkdtemp(prefix="snapmeta-coarse-"))
    image, mountpoint = work / "ext4.img", work / "mnt"
    mountpoint.mkdir()
    mounted = False
    try:
        with open(image, "wb") as fh:
            fh.truncate(64 << 20)
        made = _run("mkfs.ext4", "-q", "-F", "-I", "128", "-O", "^has_journal", str(image))
        if made.returncode != 0:
            pytest.skip(f"mkfs.ext4 -I 128 failed: {made.stderr.strip()}")
        mount = _run("mount", "-o", "loop", str(image), str(mountpoint))
        if mount.returncode != 0:
            pytest.skip(f"mount -o loop is not permitted here: {mount.stderr.strip()}")
        mounted = True
        probe = mountpoint / "probe"
        probe.write_bytes(b"x")
        if probe.stat().st_mtime_ns % SECOND:
            pytest.skip("this kernel keeps sub-second timestamps on 128-byte inodes")
        yield mountpoint
    finally:
        if mounted:
            for _ in range(20):
                if _run("umount", str(mountpoint)).returncode == 0:
                    break
                time.sleep(0.25)
            else:
                _run("umount", "-l", str(mountpoint))
        shutil.rmtree(work, ignore_errors=True)


def _at_second_start() -> None:
    """Wait for the start of a second, so a short scenario fits in one."""
    fraction = time.time() % 1
    if fraction > 0.05:
        time.sleep(1.02 - fraction)


@pytest.mark.parametrize(
    "ngff",
    [
        "0.5",
        pytest.param(
            "0.4",
            marks=pytest.mark.skipif(not SLOW, reason="NGFF 0.4 twin: set SNAPMETA_SLOW=1"),
        ),
    ],
)
def test_coarse_filesystem_same_size_edits(coarse_fs: Path, ngff: str) -> None:
    """On 1-second timestamps: an edit right after the build (``A/1/0``) and two edits
    during it, before and after the builder read the document (``A/2/0``), keep size
    and often mtime; the default check still never serves the old label."""
    store = coarse_fs / f"plate-{ngff}"
    during = group_doc(store, "A/2/0") if ngff == "0.4" else store / "A/2/0/zarr.json"
    racy_mtimes: list[int] = []

    def progress(stage: str, done: int, total: int) -> None:
        if (stage, done) == ("wells", 0):  # the clock is started, no well read yet
            racy_mtimes.append(replace_same_size(during, b'"DAPI"', b'"CY5A"').st_mtime_ns)
        elif (stage, done) == ("write", 0):  # every document has been read
            racy_mtimes.append(replace_same_size(during, b'"CY5A"', b'"GFP1"').st_mtime_ns)

    for _ in range(4):
        shutil.rmtree(store, ignore_errors=True)
        clear_cache()
        racy_mtimes.clear()
        _at_second_start()
        write_plate(store, rows=1, columns=2, fields=1, ngff=ngff, shape=(1, 2, 1, 8, 8))  # type: ignore[arg-type]
        snapmeta.build_snapshot(store, progress=progress)
        after = group_doc(store, "A/1/0")
        before = after.stat()
        edited = replace_same_size(after, b'"DAPI"', b'"GFP1"')
        assert edited.st_size == before.st_size
        if racy_mtimes[0] == racy_mtimes[1]:
            break  # the edits during the build fell in one second: the racy case
    entry = plate_entry(store)
    assert entry["granularity_ns"] in (SECOND, 2 * SECOND), entry["granularity_ns"]
    # the builder waited a tick: what it read unsmudged was last modified by the start
    fps = [fp for fp in fingerprints(store, "A/1/0") if fp is not None]
    assert all(fp.mtime_ns <= entry["build_start_ns"] for fp in fps if fp.mtime_ns != -1)
    # the document edited after the start is smudged: its digest decides
    assert fingerprints(store, "A/2/0")[1].mtime_ns == fmt.SMUDGED  # type: ignore[union-attr]
    for path in ("A/1/0", "A/2/0"):
        assert_served_fresh(store, path, "GFP1")
    if racy_mtimes[0] != racy_mtimes[1]:  # pragma: no cover - four second boundaries in a row
        pytest.skip("the two edits during the build never fell within one second")


# ---------------------------------------------------------------------------
# the same rule on the normal filesystem, whole seconds set with os.utime


def _tag_every_document(store: Path, zarr_format: int) -> dict[str, Path]:
    """Put ``"tag": "old1"`` into the root, well, position and level documents."""
    docs = {
        "root": group_doc(store, ""),
        "well": group_doc(store, "A/1"),
        "position": group_doc(store, "A/1/0"),
        "array": store / "A/1/0/0" / ("zarr.json" if zarr_format == 3 else ".zattrs"),
    }
    for kind, path in docs.items():
        doc = json.loads(path.read_bytes()) if path.exists() else {}
        attributes = doc.setdefault("attributes", {}) if zarr_format == 3 else doc
        if kind != "root":
            attributes["tag"] = "old1"
        elif zarr_format == 2:
            attributes["plate"]["name"] = "plate-old1"
        else:
            attributes["ome"]["plate"]["name"] = "plate-old1"
        path.write_text(json.dumps(doc, indent=2))
    return docs


def _served_tags(store: Path, zarr_format: int) -> dict[str, Any]:
    """What snapmeta serves for each tagged document, with the warnings it gave."""
    clear_cache()
    plate = snapmeta.open_plate(store)
    pos = plate["A/1/0"]
    return {
        "root": plate.name,
        "well": plate.well("A/1").attrs["tag"],
        "position": pos.attrs["tag"],
        "array": pos[0].attrs["tag"],
    }


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_racy_documents_are_smudged_and_caught(tmp_path: Path, ngff: str) -> None:
    """A coarse filesystem simulated with ``os.utime``: each of the root, well, position
    and level documents carries a whole-second mtime after the build's start when the
    builder reads it, and is edited again (same size) after the read with that same
    mtime. They are stored smudged, every other document is not, and every read
    serves the last edit."""
    store = write_plate(
        tmp_path / "plate",
        rows=1,
        columns=2,
        fields=1,
        ngff=ngff,
        shape=(1, 2, 1, 8, 8),  # type: ignore[arg-type]
    )
    zarr_format = 3 if ngff == "0.5" else 2
    docs = _tag_every_document(store, zarr_format)
    # a whole second after the build's start, as a coarse clock stamps an edit made
    # then (the root document is read before anything else: its edit comes first)
    stamp = (time.time_ns() // SECOND + 2) * SECOND
    for path in docs.values():
        replace_same_size(path, b"old1", b"mid1")
        os.utime(path, ns=(stamp, stamp))

    def progress(stage: str, done: int, total: int) -> None:
        if (stage, done) == ("write", 0):  # the builder has read every document
            for path in docs.values():
                replace_same_size(path, b"mid1", b"new1")
                os.utime(path, ns=(stamp, stamp))

    snapmeta.build_snapshot(store, progress=progress)
    entry = plate_entry(store)
    assert stamp > entry["build_start_ns"]
    assert entry["root"][1] == fmt.SMUDGED
    well, group, *levels = fingerprints(store, "A/1/0")
    assert well is not None and well.mtime_ns == fmt.SMUDGED
    assert group is not None and group.mtime_ns == fmt.SMUDGED
    assert levels[-1] is not None and levels[-1].mtime_ns == fmt.SMUDGED
    # documents older than the start keep their mtime: the stat fast path stays
    untouched = fingerprints(store, "A/2/0")
    assert all(fp is None or fp.mtime_ns != fmt.SMUDGED for fp in untouched[1:])
    # same size, same (whole-second) mtime as what the builder read, new content
    for path in docs.values():
        assert path.stat().st_mtime_ns == stamp
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        served = _served_tags(store, zarr_format)
    assert served == {"root": "plate-new1", "well": "new1", "position": "new1", "array": "new1"}
    assert any(issubclass(w.category, snapmeta.SnapshotStaleWarning) for w in caught)
    clear_cache()
    with pytest.raises(snapmeta.StaleSnapshotError):
        snapmeta.open_position(store, "A/1/0", on_stale="raise")


def test_edit_after_the_read_in_the_same_second(tmp_path: Path) -> None:
    """The issue's reproduction, simulated: the position document was written in the
    second of the build, the builder read it, and a same-size edit followed in that
    second (``DAPI`` -> ``GFP1``, mtime unchanged). Format 1 served ``DAPI``."""
    store = write_plate(tmp_path / "plate", rows=1, columns=1, fields=1, shape=(1, 2, 1, 8, 8))
    doc = group_doc(store, "A/1/0")
    stamp: list[int] = []

    def progress(stage: str, done: int, total: int) -> None:
        if (stage, done) == ("wells", 0):  # the clock is started, no well read yet
            # written in the build's second, as a coarse clock stamps it
            stamp.append((time.time_ns() // SECOND + 1) * SECOND)
            os.utime(doc, ns=(stamp[0], stamp[0]))
        elif (stage, done) == ("write", 0):  # every document has been read
            replace_same_size(doc, b'"DAPI"', b'"GFP1"')
            os.utime(doc, ns=(stamp[0], stamp[0]))

    snapmeta.build_snapshot(store, progress=progress)
    assert_served_fresh(store, "A/1/0", "GFP1")


def test_edit_in_a_thread_while_the_build_runs(tmp_path: Path) -> None:
    """Another process edits documents while the build runs (a thread, editing every
    position document again and again with whole-second mtimes): whatever the build
    stored, the default check never serves a label the document no longer has."""
    import threading

    store = write_plate(tmp_path / "plate", rows=2, columns=6, fields=2, shape=(1, 2, 1, 8, 8))
    docs = sorted(store.glob("*/*/*/zarr.json"))
    labels = [b'"DAPI"', b'"CY5A"', b'"GFP1"']
    stop = threading.Event()
    edits = [0]

    def editor() -> None:
        # a whole second after the build's start (which follows within milliseconds)
        second = (time.time_ns() // SECOND + 2) * SECOND
        while not stop.is_set():
            for doc in docs:
                data = doc.read_bytes()
                current = next(label for label in labels if label in data)
                following = labels[(labels.index(current) + 1) % len(labels)]
                replace_same_size(doc, current, following)
                os.utime(doc, ns=(second, second))
                edits[0] += 1

    thread = threading.Thread(target=editor)
    thread.start()
    try:
        time.sleep(0.01)
        snapmeta.build_snapshot(store)
    finally:
        stop.set()
        thread.join()
    assert edits[0] > len(docs)
    clear_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", snapmeta.SnapshotStaleWarning)
        plate = snapmeta.open_plate(store)
        for path in plate:
            doc = json.loads(group_doc(store, path).read_bytes())
            truth = doc["attributes"]["ome"]["omero"]["channels"][0]["label"]
            assert plate[path].channel_names[0] == truth, path
            assert served_label(store, path) == truth, path


# ---------------------------------------------------------------------------
# the documented hole


def test_restored_mtime_is_caught_only_by_digest_and_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/reliability.md: an edit that keeps the size and restores the mtime on
    purpose (``touch -r``, ``rsync --times``) is invisible to ``check="stat"``;
    ``check="digest"`` and ``verify`` (and ``snapmeta verify``, exit code 1) catch it."""
    from snapmeta._cli import main

    store = write_plate(tmp_path / "plate", rows=1, columns=1, fields=1, shape=(1, 2, 1, 8, 8))
    snapmeta.build_snapshot(store)
    doc = group_doc(store, "A/1/0")
    before = doc.stat()
    replace_same_size(doc, b'"DAPI"', b'"GFP1"')
    os.utime(doc, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (doc.stat().st_size, doc.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: the documented hole
        assert served_label(store, "A/1/0") == "DAPI"
    with pytest.warns(snapmeta.SnapshotStaleWarning):
        assert served_label(store, "A/1/0", check="digest") == "GFP1"
    report = snapmeta.verify(store)
    assert not report.ok
    assert any("A/1/0" in p for p in report.problems), report.problems
    capsys.readouterr()
    assert main(["verify", str(store), "-q"]) == 1
    assert "A/1/0" in capsys.readouterr().out


def test_fine_timestamps_keep_the_stat_fast_path(tmp_path: Path) -> None:
    """On a fine-grained filesystem nothing written before the build is smudged (the
    build waits one 10 ms tick), so an untouched plate costs one stat per document."""
    store = write_plate(tmp_path / "plate", rows=2, columns=3, fields=2, shape=(1, 2, 1, 8, 8))
    snapmeta.build_snapshot(store)
    entry = plate_entry(store)
    assert entry["root"][1] != fmt.SMUDGED
    assert entry["granularity_ns"] < SECOND
    model = load_snapshot(store)
    for index, path in enumerate(model["paths"]):
        docs = fmt.decode_documents(
            model["nodes"][index][3], entry["mtime_base"], len(model["contents"]), "nodes", index
        )
        assert all(fp is None or fp.mtime_ns != fmt.SMUDGED for fp in docs), path
    clear_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert snapmeta.open_position(store, "B/3/1").channel_names == ("DAPI", "GFP")
