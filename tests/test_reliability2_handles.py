"""Long-lived handles: a plate that changes under a handle gives a SnapmetaError or a
consistent fresh answer, never a raw zarr error and never a self-contradiction.

* A ``Position`` (and its arrays) kept while the plate is deleted and written
  again with other shapes: format 1 raised zarr's ``ValueError: cannot
  reshape array of size 8192 into shape (1,1,1,64,64)`` on the next read.
  Now every read, every first use of a level and every write through the old
  handle raises :class:`~snapmeta.StaleSnapshotError` saying the plate
  changed (or, for a level first used after the change with the default
  ``on_stale="fallback"``, warns and answers from the new plate if it has
  that level; one it lacks raises ``StaleSnapshotError``); a write through a
  ``mode="r+"`` array never lands in the new plate.
* A ``Plate`` kept while a position is added (well document updated,
  position written) never reports ``len(plate) == 4`` once it has said
  ``"A/1/1" in plate``: as soon as it notices a change it answers
  everything from the JSON documents, with a ``SnapshotStaleWarning``.
* The JSON fallback validates what it serves with the builder's rules:
  malformed JSON, wrong types, a root well path ``../x/y``, image and dataset
  paths out of their group give ``PlateValidationError`` or
  ``NotAPlateError`` (``SnapmetaError``), never a raw ``ValueError``,
  ``TypeError``, ``KeyError`` or ``IndexError``.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import snapmeta
from snapmeta._open import clear_cache
from snapmeta.testing import write_plate

OLD = {"shape": (1, 2, 1, 64, 64), "levels": 2}  # chunks (1, 1, 1, 64, 64): 4096 values
NEW = {"shape": (1, 1, 2, 64, 64), "chunks": (1, 1, 2, 64, 64), "levels": 1}  # 8192 values


def _plate(store: Path, ngff: str, layout: dict[str, Any], **extra: Any) -> Path:
    return write_plate(
        store, rows=1, columns=2, fields=1, ngff=ngff, data="fill", **layout, **extra
    )  # type: ignore[arg-type]


def _recreate(store: Path, ngff: str, rebuild: bool) -> None:
    shutil.rmtree(store)
    _plate(store, ngff, NEW)
    if rebuild:
        snapmeta.build_snapshot(store)


def _chunk(store: Path) -> Path:
    """The first chunk file of A/2/0's level 0 (whatever the key encoding)."""
    files = sorted(
        p for p in (store / "A/2/0/0").rglob("*") if p.is_file() and not p.name.startswith(".")
    )
    chunks = [p for p in files if p.name != "zarr.json"]
    assert chunks, files
    return chunks[0]


def _not_raw(fn: Callable[[], Any]) -> Any:
    """``fn()``, or the SnapmetaError it raised; anything else fails the test."""
    try:
        return fn()
    except snapmeta.SnapmetaError as exc:
        return exc


@pytest.mark.parametrize("rebuild", [False, True], ids=["not-rebuilt", "rebuilt"])
@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_handle_kept_across_a_replaced_plate(tmp_path: Path, ngff: str, rebuild: bool) -> None:
    """The issue's reproduction: handles and arrays opened on a plate, the plate deleted
    and written again with other shapes (and rebuilt, or not), then used."""
    store = _plate(tmp_path / "plate", ngff, OLD)
    snapmeta.build_snapshot(store)
    pos = snapmeta.open_position(store, "A/2/0")
    strict = snapmeta.open_position(store, "A/2/0", on_stale="raise")
    array = pos[0]
    assert int(array[...].sum()) > 0  # A/2/0 holds data: its chunks exist
    _recreate(store, ngff, rebuild)
    assert zarr.open_array(store / "A/2/0/0", mode="r").shape == NEW["shape"]

    for read in (lambda: array[...], lambda: pos[0][...], lambda: pos.data[0, 0, 0, :2, :2]):
        with pytest.raises(snapmeta.StaleSnapshotError) as caught:
            read()
        message = str(caught.value)
        assert "A/2/0/0" in message and "changed" in message, message
        assert caught.value.changed, "the error names the changed documents"
    # a level first used after the change: checked, so never served from the old plate
    with pytest.raises(snapmeta.StaleSnapshotError):
        strict.level(1)
    # the default on_stale="fallback" too: the new plate has one level only, so level 1
    # cannot be answered from it (format 1 raised a raw IndexError)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with pytest.raises(snapmeta.StaleSnapshotError):
            pos.level(1)
    # metadata of a handle that already checked its level: its snapshot's, or an error
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        for name in ("channel_names", "axes", "levels", "scale", "shape", "chunks", "dtype"):
            _not_raw(lambda n=name: getattr(pos, n))
        _not_raw(lambda: pos.attrs)
    # a new open in the same process sees the new plate, or says there is no snapshot
    clear_cache() if rebuild else None
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        reopened = _not_raw(lambda: snapmeta.open_position(store, "A/2/0"))
    if rebuild:
        assert isinstance(reopened, snapmeta.Position), reopened
        assert reopened.shape == NEW["shape"]
        np.testing.assert_array_equal(
            reopened[0][...], zarr.open_array(store / "A/2/0/0", mode="r")[...]
        )
    else:
        assert isinstance(reopened, snapmeta.SnapshotNotFoundError), reopened


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_writable_handle_never_writes_into_a_replaced_plate(tmp_path: Path, ngff: str) -> None:
    """A ``mode="r+"`` array kept across the replacement: a whole-chunk write (zarr reads
    nothing first) and a partial one raise StaleSnapshotError, and the new plate's chunk
    keeps its bytes (format 1 wrote the old layout into the new plate)."""
    store = _plate(tmp_path / "plate", ngff, OLD)
    snapmeta.build_snapshot(store)
    array = snapmeta.open_position(store, "A/2/0", mode="r+")[0]
    _recreate(store, ngff, rebuild=True)
    chunk = _chunk(store)
    before = chunk.read_bytes()
    raised = []
    for write in (
        lambda: array.__setitem__((0, 0, 0, slice(None), slice(None)), np.ones((64, 64), "u2")),
        lambda: array.__setitem__((0, 0, 0, 0, 0), 3),
    ):
        try:
            write()  # exactly one chunk (nothing to read first), then a part of one
        except snapmeta.StaleSnapshotError:
            raised.append(True)
        else:
            raised.append(False)
    assert all(raised), "a write through the old handle did not raise StaleSnapshotError"
    assert chunk.read_bytes() == before, "an old handle wrote into the new plate"
    clear_cache()
    assert snapmeta.verify(store).ok


# ---------------------------------------------------------------------------
# a Plate that never contradicts itself


def _add_position(store: Path) -> None:
    """Position A/1/1: the well document lists it, its group and array are written."""
    shutil.copytree(store / "A/1/0", store / "A/1/1")
    well = store / "A/1/zarr.json"
    doc = json.loads(well.read_bytes())
    doc["attributes"]["ome"]["well"]["images"].append({"path": "1", "acquisition": 0})
    well.write_text(json.dumps(doc, indent=2))


def _answers(plate: snapmeta.Plate) -> dict[str, Any]:
    """Everything a Plate says about its structure, in one go."""
    return {
        "len": len(plate),
        "list": list(plate),
        "positions": [path for path, _ in plate.positions()],
        "well": plate.well("A/1").positions,
        "contains": "A/1/1" in plate,
        "wells": plate.wells,
    }


FIVE = ["A/1/0", "A/1/1", "A/2/0", "B/1/0", "B/2/0"]


@pytest.mark.parametrize("first", ["contains", "len", "getitem", "list", "well"])
@pytest.mark.parametrize("structure_checked", [False, True], ids=["fresh", "len-before"])
def test_plate_answers_consistently_after_a_position_is_added(
    tmp_path: Path, first: str, structure_checked: bool
) -> None:
    """A Plate opened on 4 positions; A/1/1 is added. Whatever is asked first, once the
    Plate says anything of A/1/1 it says 5 positions everywhere, with a warning."""
    store = write_plate(
        tmp_path / "plate", rows=2, columns=2, fields=1, shape=(1, 2, 1, 8, 8), data="none"
    )
    snapmeta.build_snapshot(store)
    plate = snapmeta.open_plate(store)
    if structure_checked:
        assert len(plate) == 4  # the structure is checked before the change
    _add_position(store)
    ask: dict[str, Callable[[], Any]] = {
        "contains": lambda: "A/1/1" in plate,
        "len": lambda: len(plate),
        "getitem": lambda: plate["A/1/1"].path,
        "list": lambda: list(plate),
        "well": lambda: plate.well("A/1").positions,
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first_answer = ask[first]()
        before = _answers(plate)  # may still hold answers given before it noticed
        after = _answers(plate)
    noticed = before["contains"] or "A/1/1" in before["well"] or before["len"] == 5
    if structure_checked and first in ("len", "list"):
        # the structure was checked once per Plate, before the change: until it notices,
        # a Plate may answer from its snapshot
        assert first_answer in (4, FIVE[:1] + FIVE[2:], 5, FIVE)
    else:
        assert noticed, f"asking {first} first did not notice the new position: {before}"
    if noticed:
        assert after == {
            "len": 5,
            "list": FIVE,
            "positions": FIVE,
            "well": ("A/1/0", "A/1/1"),
            "contains": True,
            "wells": ("A/1", "A/2", "B/1", "B/2"),
        }, after
        assert any(issubclass(w.category, snapmeta.SnapshotStaleWarning) for w in caught)
        assert plate["A/1/1"].channel_names == ("DAPI", "GFP")
        assert not plate.from_snapshot
    else:
        assert after == before and after["len"] == 4 and not after["contains"], after


# ---------------------------------------------------------------------------
# the JSON fallback validates what it serves


def _edit(path: Path, change: Callable[[Any], Any]) -> None:
    doc = json.loads(path.read_bytes())
    result = change(doc)
    path.write_text(json.dumps(doc if result is None else result, indent=2))


def _ome(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["attributes"]["ome"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-9])


def _datasets(d: dict[str, Any]) -> list[dict[str, Any]]:
    return _ome(d)["multiscales"][0]["datasets"]


# document -> change; every one makes the JSON fallback's node invalid
FALLBACK_CASES: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "root-malformed": ("zarr.json", _truncate),
    "root-not-an-object": ("zarr.json", lambda p: _edit(p, lambda d: [d])),
    "root-not-a-group": ("zarr.json", lambda p: _edit(p, lambda d: d.update(node_type="array"))),
    "root-well-path-dotdot": (
        "zarr.json",
        lambda p: _edit(p, lambda d: _ome(d)["plate"]["wells"][0].update(path="../x/y")),
    ),
    "root-wells-not-a-list": (
        "zarr.json",
        lambda p: _edit(p, lambda d: _ome(d)["plate"].update(wells={"path": "A/1"})),
    ),
    "root-row-index-string": (
        "zarr.json",
        lambda p: _edit(p, lambda d: _ome(d)["plate"]["wells"][0].update(rowIndex="0")),
    ),
    "root-rows-empty": (
        "zarr.json",
        lambda p: _edit(p, lambda d: _ome(d)["plate"].update(rows=[])),
    ),
    "well-malformed": ("A/1/zarr.json", _truncate),
    "well-images-not-a-list": (
        "A/1/zarr.json",
        lambda p: _edit(p, lambda d: _ome(d)["well"].update(images="0")),
    ),
    "well-images-empty": (
        "A/1/zarr.json",
        lambda p: _edit(p, lambda d: _ome(d)["well"].update(images=[])),
    ),
    "well-image-path-dotdot": (
        "A/1/zarr.json",
        lambda p: _edit(p, lambda d: _ome(d)["well"]["images"][0].update(path="../../B/1")),
    ),
    "well-image-path-int": (
        "A/1/zarr.json",
        lambda p: _edit(p, lambda d: _ome(d)["well"]["images"][0].update(path=0)),
    ),
    "position-malformed": ("A/1/0/zarr.json", _truncate),
    "position-multiscales-empty": (
        "A/1/0/zarr.json",
        lambda p: _edit(p, lambda d: _ome(d).update(multiscales=[])),
    ),
    "position-datasets-path-dotdot": (
        "A/1/0/zarr.json",
        lambda p: _edit(p, lambda d: _datasets(d)[0].update(path="../../..")),
    ),
    "position-datasets-path-absolute": (
        "A/1/0/zarr.json",
        lambda p: _edit(p, lambda d: _datasets(d)[0].update(path="/tmp")),
    ),
    "position-axes-wrong-types": (
        "A/1/0/zarr.json",
        lambda p: _edit(p, lambda d: _ome(d)["multiscales"][0].update(axes=[{"name": 5}, 7])),
    ),
    "position-scale-strings": (
        "A/1/0/zarr.json",
        lambda p: _edit(
            p,
            lambda d: _datasets(d)[0].update(
                coordinateTransformations=[{"type": "scale", "scale": ["1"] * 5}]
            ),
        ),
    ),
    "position-channels-not-a-list": (
        "A/1/0/zarr.json",
        lambda p: _edit(p, lambda d: _ome(d)["omero"].update(channels="DAPI")),
    ),
    "array-malformed": ("A/1/0/0/zarr.json", _truncate),
    "array-shape-strings": (
        "A/1/0/0/zarr.json",
        lambda p: _edit(p, lambda d: d.update(shape=["1", "2", "1", "8", "8"])),
    ),
    "array-shape-ndim": ("A/1/0/0/zarr.json", lambda p: _edit(p, lambda d: d.update(shape=[8]))),
}


@pytest.mark.parametrize("case", list(FALLBACK_CASES))
def test_json_fallback_rejects_invalid_documents(
    small_plate: Path, tmp_path: Path, case: str
) -> None:
    """A document changed after the build into something the builder would reject: every
    read that reaches it raises PlateValidationError or NotAPlateError (the others
    answer), ``verify`` reports it; no raw exception escapes."""
    store = tmp_path / "plate"
    shutil.copytree(small_plate, store)
    document, change = FALLBACK_CASES[case]
    change(store / document)
    clear_cache()
    outcomes: dict[str, Any] = {}

    def run(label: str, fn: Callable[[], Any]) -> None:
        try:
            outcomes[label] = fn()
        except (snapmeta.PlateValidationError, snapmeta.NotAPlateError) as exc:
            outcomes[label] = exc
        except snapmeta.SnapmetaError as exc:  # e.g. a position no longer listed
            outcomes[label] = exc
        except Exception as exc:
            raise AssertionError(f"{label}: raw {type(exc).__name__}: {exc}") from exc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", snapmeta.SnapshotStaleWarning)
        run("open_position", lambda: snapmeta.open_position(store, "A/1/0").channel_names)
        run("open_position.level", lambda: snapmeta.open_position(store, "A/1/0").level(0))
        run("open_position.array", lambda: snapmeta.open_position(store, "A/1/0")[0].shape)
        run("other position", lambda: snapmeta.open_position(store, "A/2/0")[0].shape)
        run("open_plate", lambda: snapmeta.open_plate(store).name)
        run("len", lambda: len(snapmeta.open_plate(store)))
        run("list", lambda: list(snapmeta.open_plate(store)))
        run("plate[]", lambda: snapmeta.open_plate(store)["A/1/0"].channel_names)
        run("well", lambda: snapmeta.open_plate(store).well("A/1").positions)
        run("contains", lambda: "A/1/0" in snapmeta.open_plate(store))
        report = snapmeta.verify(store)
    rejected = [
        label
        for label, value in outcomes.items()
        if isinstance(value, (snapmeta.PlateValidationError, snapmeta.NotAPlateError))
    ]
    assert rejected, f"nothing rejected the invalid document: {outcomes}"
    if document == "A/1/0/zarr.json" or document.startswith("A/1/0/0/"):
        assert isinstance(outcomes["open_position.array"], snapmeta.SnapmetaError), outcomes
    assert not report.ok
