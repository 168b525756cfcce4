"""Plates you cannot write: snapshots elsewhere, same calls, same guarantees.

A read-only bind mount (root) and ``chmod -R a-w`` as an unprivileged user
stand for shared acquisition plates and archives; a small tmpfs stands for a
full disk. Skipped, with the reason, where mounts or user switching are not
available.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import snapmeta
from snapmeta.errors import SnapshotNotFoundError, SnapshotStaleWarning, SnapshotWriteError
from snapmeta.testing import write_plate


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(plate as seen read-only, the writable original behind it)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) for a read-only bind mount")
    original = write_plate(tmp_path / "rw" / "plate.zarr", rows=2, columns=2, fields=2, data="fill")
    view = tmp_path / "ro"
    view.mkdir()
    try:
        _mount("--bind", str(original.parent), str(view))
        _mount("-o", "remount,ro,bind", str(view))
    except subprocess.CalledProcessError as exc:
        subprocess.run(["umount", str(view)], capture_output=True)
        pytest.skip(f"read-only bind mount refused: {exc.stderr.decode().strip()}")
    try:
        yield view / "plate.zarr", original
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False, capture_output=True)


def test_build_refuses_before_reading_and_says_where_else(read_only, tmp_path: Path) -> None:
    plate, _ = read_only
    with pytest.raises(SnapshotWriteError) as info:
        snapmeta.build_snapshot(plate)
    message = str(info.value)
    assert "Read-only file system" in message
    assert "--output" in message and "SNAPMETA_SNAPSHOT_DIR" in message
    assert info.value.snapshot.startswith(str(plate))


def test_snapshot_elsewhere_same_calls(read_only, tmp_path: Path, monkeypatch) -> None:
    plate, original = read_only
    snapshots = tmp_path / "snapshots"
    path = snapmeta.build_snapshot(plate, output=snapshots)
    assert path.parent == snapshots and path.name.endswith(".snapmeta.arrow")
    assert not (plate / ".snapmeta").exists()
    # explicit argument
    pos = snapmeta.open_position(plate, "A/2/1", snapshot=snapshots)
    assert pos.channel_names == ("DAPI", "GFP")
    assert pos.data[0, 0, 0, 0, 0] == pos.data[0, 0, 0, 0, 0]
    # the environment variable: openers search it without arguments
    monkeypatch.setenv("SNAPMETA_SNAPSHOT_DIR", str(snapshots))
    plate_handle = snapmeta.open_plate(plate)
    assert plate_handle.snapshot_path == str(path)
    assert len(plate_handle) == 8
    clone = pickle.loads(pickle.dumps(plate_handle["B/1/0"]))
    assert clone.shape == (1, 2, 4, 64, 64)
    assert snapmeta.verify(plate).ok
    # freshness works the same: edit through the writable original
    doc = original / "B" / "1" / "0" / "zarr.json"
    doc.write_text(doc.read_text().replace('"GFP"', '"Cy5"'))
    with pytest.warns(SnapshotStaleWarning):
        assert snapmeta.open_position(plate, "B/1/0").channel_names == ("DAPI", "Cy5")
    assert not snapmeta.verify(plate).ok


def test_external_snapshot_never_serves_another_plate(tmp_path: Path, monkeypatch) -> None:
    one = write_plate(tmp_path / "a" / "plate.zarr", rows=1, columns=2, data="none")
    two = write_plate(tmp_path / "b" / "plate.zarr", rows=1, columns=1, data="none")
    snapshots = tmp_path / "snapshots"
    built = snapmeta.build_snapshot(one, output=snapshots)
    monkeypatch.setenv("SNAPMETA_SNAPSHOT_DIR", str(snapshots))
    with pytest.raises(SnapshotNotFoundError):
        snapmeta.open_plate(two)  # another name in the directory: nothing found
    # even when pointed at it explicitly, a snapshot built for another location is refused
    with pytest.raises(SnapshotNotFoundError):
        snapmeta.open_plate(two, snapshot=built)
    assert not snapmeta.verify(two, snapshot=built).ok


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temp directory an unprivileged user can reach (pytest's own is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="snapmeta-ro-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def run_as_nobody(script: str, home: Path) -> subprocess.CompletedProcess[str]:
    """``python -c script`` as uid/gid 65534; skips where that cannot run."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv(1) to run as an unprivileged user")
    command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c"]
    if subprocess.run([*command, ""], capture_output=True).returncode != 0:
        pytest.skip("this Python cannot run as an unprivileged user (installed under /root)")
    return subprocess.run(
        [*command, script], capture_output=True, text=True, env={**os.environ, "HOME": str(home)}
    )


def test_unprivileged_user_gets_a_clear_error(shared_tmp: Path) -> None:
    tmp_path = shared_tmp
    plate = write_plate(tmp_path / "plate.zarr", rows=1, columns=2, data="none")
    for path in [tmp_path, *tmp_path.rglob("*")]:
        os.chown(path, 65534, 65534)
    subprocess.run(["chmod", "-R", "a-w", str(plate)], check=True)
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, 65534, 65534)
    script = textwrap.dedent(
        f"""
        import snapmeta
        from snapmeta.errors import SnapshotWriteError
        try:
            snapmeta.build_snapshot({str(plate)!r})
        except SnapshotWriteError as exc:
            print("refused:", exc.reason)
        snapmeta.build_snapshot({str(plate)!r}, output={str(out)!r})
        print(snapmeta.open_position({str(plate)!r}, "A/2/0", snapshot={str(out)!r}).channel_names)
        """
    )
    run = run_as_nobody(script, tmp_path)
    subprocess.run(["chmod", "-R", "u+w", str(plate)], check=True)
    assert run.returncode == 0, run.stderr
    assert "refused: Permission denied" in run.stdout
    assert "('DAPI', 'GFP')" in run.stdout


def test_an_unreadable_snapshot_is_a_snapmeta_error(shared_tmp: Path) -> None:
    """A snapshot directory the user may not enter gives SnapshotFormatError naming
    the snapshot, not a bare PermissionError."""
    plate = write_plate(shared_tmp / "plate.zarr", rows=1, columns=2, data="none")
    snapmeta.build_snapshot(plate)
    (plate / ".snapmeta").chmod(0o700)  # root's; the plate itself stays readable
    script = textwrap.dedent(
        f"""
        import snapmeta
        try:
            snapmeta.open_position({str(plate)!r}, "A/1/0")
        except snapmeta.SnapshotFormatError as exc:
            print("refused:", exc.snapshot, exc.reason)
        """
    )
    run = run_as_nobody(script, shared_tmp)
    assert run.returncode == 0, run.stderr
    assert f"refused: {plate}/.snapmeta/0 cannot be opened (Permission denied)" in run.stdout


def test_full_disk(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    plate = write_plate(tmp_path / "plate.zarr", rows=4, columns=6, data="none")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=8k", "tmpfs", str(tiny))
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"tmpfs mount refused: {exc.stderr.decode().strip()}")
    try:
        (tiny / "filler").write_bytes(b"\0" * 4096)
        with pytest.raises(SnapshotWriteError, match="No space left") as info:
            snapmeta.build_snapshot(plate, output=tiny)
        assert "free some space" in str(info.value)
        assert [p.name for p in tiny.iterdir()] == ["filler"]  # no temp file left behind
    finally:
        subprocess.run(["umount", "-l", str(tiny)], check=False, capture_output=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        snapmeta.build_snapshot(plate)  # the plate itself was never touched
