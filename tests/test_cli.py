"""The command line, run as users run it: a subprocess of `python -m snapmeta`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from snapmeta.testing import write_plate


def run(*args, check=True):
    out = subprocess.run(
        [sys.executable, "-m", "snapmeta", *map(str, args)], capture_output=True, text=True
    )
    if check:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture
def store(tmp_path):
    return write_plate(
        tmp_path / "p.ome.zarr", rows=2, columns=3, fields=2, ngff="0.5", data="none"
    )


def test_build_info_ls_verify(store):
    out = run("build", store, "--progress")
    assert "wrote" in out.stdout and ".snapmeta.arrow" in out.stdout
    assert "positions" in out.stderr and "12/12" in out.stderr  # progress shown
    info = run("info", store).stdout
    assert "2 rows x 3 columns, 6 wells, 12 positions" in info
    assert "DAPI, GFP" in info
    assert "0.5 (zarr format 3)" in info
    assert run("ls", store).stdout.split() == [
        f"{w}/{f}" for w in ("A/1", "A/2", "A/3", "B/1", "B/2", "B/3") for f in "01"
    ]
    assert run("ls", store, "B/2").stdout.split() == ["B/2/0", "B/2/1"]
    assert run("ls", store, "C/9", check=False).returncode == 1
    verify = run("verify", store).stdout
    assert "intact and up to date" in verify


def test_errors_exit_2_with_message(store):
    out = run("info", store, check=False)
    assert out.returncode == 2
    assert "snapmeta build" in out.stderr
    assert "Traceback" not in out.stderr
    (store / "A" / "1" / "0" / "zarr.json").write_text("{not json")
    out = run("build", store, check=False)
    assert out.returncode == 2
    assert "A/1/0/zarr.json" in out.stderr and "invalid JSON" in out.stderr


def test_verify_fails_on_change(store):
    run("build", store)
    doc = store / "A" / "1" / "zarr.json"
    doc.write_text(doc.read_text().replace('"0"', '"0"', 1) + " ")
    out = run("verify", store, check=False)
    assert out.returncode == 1
    assert "A/1/zarr.json" in out.stdout


def test_demo(tmp_path):
    out = run("demo", tmp_path, "--rows", "2", "--columns", "3")
    assert "snapmeta open_position" in out.stdout
    assert "zarr.open_array" in out.stdout
    assert (tmp_path / "demo.ome.zarr" / ".snapmeta.arrow").is_file()
    again = run("demo", tmp_path, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_console_script_entry_point():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "snapmeta"]
    assert ep.value == "snapmeta._cli:main"
