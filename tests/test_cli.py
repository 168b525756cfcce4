"""The command line, run in-process (one subprocess smoke test at the end).

Every user error gives one ``snapmeta: error: ...`` line on stderr and exit
code 2 (usage) or 1 (failure), never a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import snapmeta
from snapmeta._cli import main
from snapmeta.testing import write_plate


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("snapmeta: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return write_plate(tmp_path / "p.ome.zarr", rows=2, columns=2, fields=2, data="none")


def test_build_info_ls_verify(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "build", str(store))
    assert code == 0, err
    assert "wrote" in out and ".snapmeta/0" in out
    code, out, _ = run(capsys, "info", str(store))
    assert code == 0
    assert "2 rows x 2 columns, 4 wells, 8 positions" in out
    assert "channels DAPI, GFP" in out
    code, out, _ = run(capsys, "ls", str(store))
    assert out.split() == [f"{w}/{f}" for w in ("A/1", "A/2", "B/1", "B/2") for f in "01"]
    code, out, _ = run(capsys, "ls", str(store), "B/2")
    assert out.split() == ["B/2/0", "B/2/1"]
    code, out, _ = run(capsys, "verify", str(store), "-q")
    assert code == 0
    assert "intact and up to date" in out


def test_verify_failure_exit_code(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snapmeta.build_snapshot(store)
    doc = store / "A" / "1" / "0" / "zarr.json"
    doc.write_text(doc.read_text().replace('"GFP"', '"RFP"'))
    code, out, _ = run(capsys, "verify", str(store), "-q")
    assert code == 1
    assert "stale" in out and "A/1/0" in out


def test_quiet_build_prints_nothing(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "build", str(store), "-q")
    assert (code, out, err) == (0, "", "")


def test_progress_lines_when_redirected(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "build", str(store), "--no-progress")
    assert code == 0
    assert "snapmeta: wells: 4/4" in err
    assert "\r" not in err
    code, _, err = run(capsys, "build", str(store), "--progress")
    assert "\r" in err and "|" in err  # a bar, forced on a non-terminal


def test_build_to_another_directory(store: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "snapshots"
    code, out, err = run(capsys, "build", str(store), "--output", str(out_dir))
    assert code == 0, err
    assert not (store / ".snapmeta").exists()
    (snapshot,) = out_dir.iterdir()
    code, out, _ = run(capsys, "info", str(store), "--snapshot", str(snapshot))
    assert code == 0 and "8 positions" in out


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["demo", "{tmp}/d", "--rows", "0"], 2, "--rows must be at least 1"),
        (["build", "{store}", "--workers", "0"], 2, "--workers must be at least 1"),
        (["frobnicate"], 2, "invalid choice"),
        (["build"], 2, "required"),
        (["info", "{file}"], 1, "not a directory"),
        (["info", "{store}"], 1, "snapmeta build"),
        (["ls", "{tmp}/missing"], 1, "does not exist"),
        (["build", "{tmp}/missing"], 1, "does not exist"),
        (["build", "s3://bucket/plate.zarr"], 1, "not supported yet"),
        (["info", "https://example.org/plate.zarr"], 1, "not supported yet"),
        (["verify", "{tmp}"], 1, "no snapshot"),
        (["ls", "{built}", "Z/9"], 1, "no well 'Z/9'"),
    ],
)
def test_user_errors_are_one_line(
    argv: list[str], code: int, needle: str, store: Path, tmp_path: Path, capsys
) -> None:
    built = write_plate(tmp_path / "built.zarr", rows=1, columns=1, data="none")
    snapmeta.build_snapshot(built)
    (tmp_path / "file.txt").write_text("not a plate")
    args = [
        a.format(tmp=tmp_path, store=store, file=tmp_path / "file.txt", built=built) for a in argv
    ]
    got, out, err = run(capsys, *args)
    assert got == code, err
    if argv[0] == "verify":  # verify reports problems on stdout
        assert needle in out
        return
    assert needle in one_error_line(err)


def test_read_only_plate(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() == 0:
        # root ignores permissions; a read-only bind mount is the faithful test
        pytest.skip("runs as root: covered by test_read_only_plates.py")
    store.chmod(0o555)
    try:
        code, _, err = run(capsys, "build", str(store))
    finally:
        store.chmod(0o755)
    assert code == 1
    assert "--output" in one_error_line(err)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.strip() == f"snapmeta {snapmeta.__version__}"


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("build", "info", "ls", "verify", "demo"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0
        for line in out.splitlines():
            if line.strip().startswith("-") and not line.strip().startswith("-h"):
                # every option has a help text on its line or the next
                assert len(line.split()) > 1 or out.count(line) == 1


def test_subprocess_smoke_and_broken_pipe(store: Path) -> None:
    """The installed entry point, and `snapmeta ls PLATE | head` (the reader leaves)."""
    exe = shutil.which("snapmeta") or sys.executable
    prefix = [exe] if exe.endswith("snapmeta") else [exe, "-m", "snapmeta"]
    big = write_plate(store.parent / "big.zarr", rows=16, columns=24, fields=4, data="none")
    snapmeta.build_snapshot(big)
    pipe = subprocess.run(
        f"{' '.join(prefix)} ls {big} | head -n 2", shell=True, capture_output=True, text=True
    )
    assert pipe.stdout.split() == ["A/1/0", "A/1/1"]
    assert pipe.stderr == ""
    bad = subprocess.run([*prefix, "info", str(store)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.startswith("snapmeta: error:") and "Traceback" not in bad.stderr
