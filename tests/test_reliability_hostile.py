"""Hostile and odd plates: a faithful snapshot or a located rejection, never a crash.

Each case starts from a small generated plate, damages or bends it the way
real plates are damaged (missing and wrong-typed keys, duplicate wells, wells
outside the declared grid, files missing on disk, invalid JSON, odd names,
deep pyramids, huge attributes, NaN, symlinks) and builds. The builder must
either

* snapshot faithfully: every public read equals the plate's metadata read
  independently from its JSON (``json_truth``), and ``verify`` is ok; or
* raise ``PlateValidationError`` whose ``problems`` list every problem
  planted, each located by document and field (``NotAPlateError`` when the
  store is not a plate at all, ``SnapshotWriteError`` when the snapshot's
  place is taken).

Whatever happens, nothing in the store changes but the snapshot's own array
``.snapmeta`` (every file, directory and link outside it is hashed with its
mode, mtime and bytes before and after). A failed build leaves ``.snapmeta``
exactly as it was (absent if it was absent: an empty ``.snapmeta`` directory
would make zarr warn about the plate), and a successful one leaves in it the
chunk and the array document only, no temp file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import snapshot_file

import snapmeta
from snapmeta.errors import NotAPlateError, PlateValidationError, SnapshotWriteError
from snapmeta.testing import write_plate

try:
    from test_reliability_corruption import json_truth, position_view
except ModuleNotFoundError:  # tests/ imported as a package
    from tests.test_reliability_corruption import json_truth, position_view

# Regressions found by this module (fixed in f2a9a55): integers accepted as
# "0", 0.0 or true and then crashing the writer; unreadable documents (a
# directory, a symlink loop) raising a raw OSError; root attributes ignoring
# the inline limit.

TALLY = {"faithful": 0, "rejected": 0, "not-a-plate": 0}
ARRAY_DIR = ".snapmeta"


# ---------------------------------------------------------------------------
# helpers


def _hash_tree(top: Path, *, skip: str | None = None) -> str:
    """Hash of every entry under ``top``: path, mode, mtime, link target or bytes."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        if skip is not None and Path(dirpath) == top and skip in dirnames:
            dirnames.remove(skip)
        for name in sorted(dirnames + filenames):
            if skip is not None and Path(dirpath) == top and name == skip:
                continue
            path = Path(dirpath) / name
            st = path.lstat()
            h.update(
                f"{path.relative_to(top)}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0".encode()
            )
            if path.is_symlink():
                h.update(os.readlink(path).encode())
            elif path.is_file():
                h.update(path.read_bytes())
    return h.hexdigest()


def tree_state(store: Path) -> str:
    """The store outside the snapshot's array ``.snapmeta``."""
    return _hash_tree(store, skip=ARRAY_DIR)


def array_state(store: Path) -> str | None:
    """The snapshot's array ``.snapmeta`` (None when absent)."""
    top = store / ARRAY_DIR
    if not os.path.lexists(top):
        return None
    st = top.lstat()
    return f"{st.st_mode}:{_hash_tree(top) if top.is_dir() else ''}"


def same(a: Any, b: Any) -> bool:
    """JSON equality where NaN equals NaN (as in the JSON text)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def doc_name(store: Path) -> str:
    return "zarr.json" if (store / "zarr.json").exists() else ".zattrs"


def edit(store: Path, node: str, fn: Callable[[dict[str, Any]], Any], *, ome: bool = True) -> None:
    """Edit a node's attributes: NGFF metadata (``ome`` namespace for v3, top level for
    v2), or with ``ome=False`` the custom attributes beside it."""
    path = (store / node if node else store) / doc_name(store)
    doc = json.loads(path.read_bytes())
    if path.name == "zarr.json":
        fn(doc["attributes"]["ome"] if ome else doc["attributes"])
    else:
        fn(doc)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=True))


def edit_raw(store: Path, rel: str, fn: Callable[[dict[str, Any]], Any]) -> None:
    path = store / rel
    doc = json.loads(path.read_bytes())
    fn(doc)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=True))


def attrs_doc(store: Path, node: str) -> str:
    return f"{node}/{doc_name(store)}" if node else doc_name(store)


def array_names(store: Path) -> list[str]:
    zarr_format = 3 if (store / "zarr.json").exists() else 2
    return sorted(["0", *((".zarray", ".zattrs") if zarr_format == 2 else ("zarr.json",))])


def build(store: Path, **kwargs: Any) -> Exception | None:
    """Build; checks the store did not change, and that a failure left ``.snapmeta`` as
    it was and a success left the chunk and its document in it, nothing else."""
    before = tree_state(store)
    array_before = array_state(store)
    try:
        snapmeta.build_snapshot(store, **kwargs)
        error = None
    except (PlateValidationError, NotAPlateError, SnapshotWriteError) as exc:
        error = exc
    assert tree_state(store) == before, "the build modified the store"
    if error is not None:
        assert array_state(store) == array_before, "a failed build changed .snapmeta"
    else:
        assert sorted(p.name for p in (store / ARRAY_DIR).iterdir()) == array_names(store)
    return error


def assert_faithful(store: Path, **kwargs: Any) -> None:
    error = build(store, **kwargs)
    assert error is None, f"{type(error).__name__}: {error}"
    truth = json_truth(store)
    plate = snapmeta.open_plate(store)
    assert list(plate) == truth["paths"]
    assert list(plate.wells) == truth["wells"]
    assert (list(plate.rows), list(plate.columns)) == (truth["rows"], truth["columns"])
    assert same(plate.attrs, truth["attrs"])
    for path, expected in truth["positions"].items():
        assert same(position_view(plate[path]), expected), path
        assert same(position_view(snapmeta.open_position(store, path, check="digest")), expected)
    report = snapmeta.verify(store)
    assert report.ok, report
    TALLY["faithful"] += 1


def assert_rejected(
    store: Path, expected: list[tuple[str, str]], *, exact: bool = True
) -> PlateValidationError:
    """Build fails with every expected (document, field prefix) problem, and no other."""
    error = build(store)
    assert isinstance(error, PlateValidationError), f"expected PlateValidationError, got {error!r}"
    problems = list(error.problems)
    assert all(p.document and p.message for p in problems), problems
    for document, field in expected:
        assert any(p.document == document and p.field.startswith(field) for p in problems), (
            f"no problem at {document}: {field} in {[str(p) for p in problems]}"
        )
        assert document in str(error)
    if exact:
        assert len(problems) == len(expected), [str(p) for p in problems]
    assert error.store == str(store)
    TALLY["rejected"] += 1
    return error


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hostile-pristine")
    out = {}
    for ngff in ("0.4", "0.5"):
        out[ngff] = write_plate(
            base / f"p{ngff}.zarr", rows=2, columns=3, fields=2, ngff=ngff, levels=2, data="none"
        )
    return out


@pytest.fixture
def plate05(pristine: dict[str, Path], tmp_path: Path) -> Path:
    return shutil.copytree(pristine["0.5"], tmp_path / "plate.zarr", symlinks=True)


@pytest.fixture
def plate04(pristine: dict[str, Path], tmp_path: Path) -> Path:
    return shutil.copytree(pristine["0.4"], tmp_path / "plate.zarr", symlinks=True)


# ---------------------------------------------------------------------------
# rejected plates: every planted problem is listed with its location


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return apply


def _delete(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return apply


def _append_copy(path: list[Any], index: int) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        target = doc
        for key in path:
            target = target[key]
        target.append(copy.deepcopy(target[index]))

    return apply


WELLS = ["plate", "wells"]
AXES = ["multiscales", 0, "axes"]
SCALE0 = ["multiscales", 0, "datasets", 0, "coordinateTransformations", 0, "scale"]

# (id, node, edit, expected problems as (document without the doc name, field prefix))
PLATE_EDITS: list[tuple[str, str, Callable[[dict[str, Any]], None], list[tuple[str, str]]]] = [
    ("rows-not-a-list", "", _set(["plate", "rows"], "AB"), [("", "plate.rows")]),
    ("rows-empty", "", _set(["plate", "rows"], []), [("", "plate.rows")]),
    ("wells-missing", "", _delete(WELLS), [("", "plate.wells")]),
    ("well-path-wrong-type", "", _set([*WELLS, 0, "path"], 17), [("", "plate.wells[0].path")]),
    (
        "well-rowindex-negative",
        "",
        _set([*WELLS, 0, "rowIndex"], -1),
        [("", "plate.wells[0].rowIndex")],
    ),
    (
        "well-rowindex-missing",
        "",
        _delete([*WELLS, 4, "rowIndex"]),
        [("", "plate.wells[4].rowIndex")],
    ),
    ("duplicate-well", "", _append_copy(WELLS, 0), [("", "plate.wells[6].path")]),
    ("well-outside-rows", "", _set([*WELLS, 1, "rowIndex"], 7), [("", "plate.wells[1].rowIndex")]),
    (
        "well-outside-columns",
        "",
        _set([*WELLS, 2, "columnIndex"], 9),
        [("", "plate.wells[2].columnIndex")],
    ),
    (
        "well-path-not-its-row-column",
        "",
        _set([*WELLS, 0, "path"], "A/9"),
        [("", "plate.wells[0].path")],
    ),
    ("duplicate-row-names", "", _append_copy(["plate", "rows"], 0), [("", "plate.rows")]),
    (
        "acquisition-id-negative",
        "",
        _set(["plate", "acquisitions", 0, "id"], -3),
        [("", "plate.acquisitions[0].id")],
    ),
    ("field-count-zero", "", _set(["plate", "field_count"], 0), [("", "plate.field_count")]),
    ("well-metadata-missing", "A/3", _delete(["well"]), [("A/3", "well")]),
    ("well-images-empty", "A/2", _set(["well", "images"], []), [("A/2", "well.images")]),
    ("well-images-duplicate", "A/2", _append_copy(["well", "images"], 0), [("A/2", "well.images")]),
    ("multiscales-missing", "B/2/1", _delete(["multiscales"]), [("B/2/1", "multiscales")]),
    ("axes-wrong-type", "B/2/0", _set(AXES, "tczyx"), [("B/2/0", "multiscales[0].axes")]),
    (
        "axis-name-missing",
        "B/2/0",
        _delete([*AXES, 3, "name"]),
        [("B/2/0", "multiscales[0].axes[3].name")],
    ),
    ("axes-duplicate", "B/2/0", _set([*AXES, 4, "name"], "y"), [("B/2/0", "multiscales[0].axes")]),
    (
        "datasets-empty",
        "A/1/0",
        _set(["multiscales", 0, "datasets"], []),
        [("A/1/0", "multiscales[0].datasets")],
    ),
    (
        "dataset-path-missing",
        "A/1/0",
        _delete(["multiscales", 0, "datasets", 1, "path"]),
        [("A/1/0", "multiscales[0].datasets[1].path")],
    ),
    (
        "scale-wrong-length",
        "A/1/1",
        _set(SCALE0, [1.0, 1.0]),
        [("A/1/1", "multiscales[0].datasets[0].coordinateTransformations[0].scale")],
    ),
    (
        "scale-not-numbers",
        "A/1/1",
        _set(SCALE0, ["a", 1, 1, 1, 1]),
        [("A/1/1", "multiscales[0].datasets[0].coordinateTransformations[0].scale[0]")],
    ),
    (
        "transform-type-unknown",
        "A/1/1",
        _set([*SCALE0[:-1], "type"], "affine"),
        [("A/1/1", "multiscales[0].datasets[0].coordinateTransformations[0]")],
    ),
    (
        "channel-label-wrong-type",
        "B/1/1",
        _set(["omero", "channels", 0, "label"], 7),
        [("B/1/1", "omero.channels[0].label")],
    ),
]


def _doc(store: Path, node: str) -> str:
    return attrs_doc(store, node)


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
@pytest.mark.parametrize(
    ("case", "node", "change", "expected"), PLATE_EDITS, ids=[c[0] for c in PLATE_EDITS]
)
def test_rejected_metadata(
    pristine: dict[str, Path],
    tmp_path: Path,
    ngff: str,
    case: str,
    node: str,
    change: Callable[[dict[str, Any]], None],
    expected: list[tuple[str, str]],
) -> None:
    store = shutil.copytree(pristine[ngff], tmp_path / "plate.zarr", symlinks=True)
    edit(store, node, change)
    assert_rejected(store, [(_doc(store, n), f) for n, f in expected])


def test_rejected_files_on_disk(plate05: Path) -> None:
    """Wells, positions and arrays listed but missing, unreadable JSON: all listed at once."""
    store = plate05
    shutil.rmtree(store / "A" / "2")  # a well listed but missing
    shutil.rmtree(store / "A" / "1" / "1")  # a position listed but missing
    shutil.rmtree(store / "A" / "3" / "0" / "1")  # a level listed but missing
    (store / "B" / "1" / "0" / "zarr.json").write_text("{not json")
    (store / "B" / "1" / "1" / "zarr.json").write_text("[1, 2]")
    edit_raw(store, "B/2/0/0/zarr.json", _set(["shape"], [1, 2, 4, 64]))  # fewer dims than axes
    edit_raw(store, "B/2/1/0/zarr.json", _set(["data_type"], "uint99"))
    edit(store, "B/3/0", lambda d: d["omero"]["channels"].pop())  # one channel for a 2-channel axis
    (store / "B" / "3" / "1").rename(store / "B" / "3" / "elsewhere")
    (store / "B" / "3" / "1").symlink_to(store / "B" / "3" / "nowhere")  # dangling
    error = assert_rejected(
        store,
        [
            ("A/2/zarr.json", ""),
            ("A/1/1/zarr.json", ""),
            ("A/3/0/1/zarr.json", ""),
            ("B/1/0/zarr.json", ""),
            ("B/1/1/zarr.json", ""),
            ("B/2/0/0/zarr.json", ""),
            ("B/2/1/0/zarr.json", ""),
            ("B/3/0/0/zarr.json", "shape"),
            ("B/3/0/1/zarr.json", "shape"),
            ("B/3/1/zarr.json", ""),
        ],
    )
    text = str(error)
    assert "missing on disk" in text
    assert "10 problem(s)" in text


def test_rejected_v2_position_without_zarray(plate04: Path) -> None:
    (plate04 / "A" / "1" / "0" / "0" / ".zarray").unlink()
    (plate04 / "B" / "2" / "1" / ".zattrs").unlink()
    assert_rejected(plate04, [("A/1/0/0/.zarray", ""), ("B/2/1/.zattrs", "")])


@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("no-plate-key", lambda d: d.pop("plate")),
        ("plate-not-an-object", _set(["plate"], [1, 2])),
    ],
)
@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_not_a_plate(
    pristine: dict[str, Path], tmp_path: Path, ngff: str, case: str, change: Any
) -> None:
    store = shutil.copytree(pristine[ngff], tmp_path / "plate.zarr", symlinks=True)
    edit(store, "", change)
    error = build(store)
    assert isinstance(error, NotAPlateError), error
    assert error.document == str(store / doc_name(store))


def _not_a_plate(kind: str, path: Path) -> Any:
    """Make a store of ``kind`` at ``path``; returns what to pass to build_snapshot."""
    if kind == "absent":
        return path
    if kind == "remote-url":
        return "s3://bucket/plate.ome.zarr"
    if kind == "a-file":
        path.write_text("{}")
        return path
    path.mkdir()
    if kind == "garbage-zarr-json":
        (path / "zarr.json").write_text("not json at all")
    elif kind == "zarr-json-a-list":
        (path / "zarr.json").write_text("[1, 2]")
    elif kind == "zarr-3-array":
        (path / "zarr.json").write_text(
            json.dumps({"zarr_format": 3, "node_type": "array", "shape": [1]})
        )
    elif kind == "zarr-2-group-without-attributes":
        (path / ".zgroup").write_text('{"zarr_format": 2}')
    elif kind == "an-image-not-a-plate":
        attrs = {"ome": {"version": "0.5", "multiscales": [{"axes": [], "datasets": []}]}}
        (path / "zarr.json").write_text(
            json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs})
        )
    else:
        assert kind == "empty"
    return path


@pytest.mark.parametrize(
    "kind",
    [
        "empty",
        "absent",
        "a-file",
        "remote-url",
        "garbage-zarr-json",
        "zarr-json-a-list",
        "zarr-3-array",
        "zarr-2-group-without-attributes",
        "an-image-not-a-plate",
    ],
)
def test_not_a_plate_at_all(tmp_path: Path, kind: str) -> None:
    """Stores that are not plates: NotAPlateError, and nothing written anywhere."""
    store = _not_a_plate(kind, tmp_path / "store.zarr")
    path = tmp_path / "store.zarr"
    before = (sorted(os.listdir(tmp_path)), path.is_dir() and _hash_tree(path))
    with pytest.raises(NotAPlateError) as info:
        snapmeta.build_snapshot(store)
    assert info.value.store
    after = (sorted(os.listdir(tmp_path)), path.is_dir() and _hash_tree(path))
    assert after == before, "a failed build wrote something"
    assert not (tmp_path / "store.zarr" / ARRAY_DIR).exists()
    TALLY["not-a-plate"] += 1


def test_snapshot_place_taken(plate05: Path) -> None:
    """A file where the snapshot's array goes: a documented SnapshotWriteError, the file
    and the store untouched."""
    (plate05 / ARRAY_DIR).write_text("mine")
    error = build(plate05)
    assert isinstance(error, SnapshotWriteError), error
    assert (plate05 / ARRAY_DIR).read_text() == "mine"


def test_rejected_after_a_good_build_keeps_the_snapshot(plate05: Path) -> None:
    """A plate broken after a successful build: the rebuild is rejected, the previous
    snapshot stays byte for byte, and readers notice the change."""
    assert build(plate05) is None
    edit(plate05, "B/2/0", _set(AXES, "tczyx"))
    assert_rejected(plate05, [("B/2/0/zarr.json", "multiscales[0].axes")])
    assert snapmeta.open_position(plate05, "A/1/0").channel_names == ("DAPI", "GFP")
    with pytest.raises(snapmeta.StaleSnapshotError):
        snapmeta.open_position(plate05, "B/2/0", on_stale="raise")
    assert not snapmeta.verify(plate05).ok


# ---------------------------------------------------------------------------
# found by this module, fixed since: strict integers, unreadable documents


@pytest.mark.parametrize(
    ("case", "node", "change", "field"),
    [
        ("rowIndex-string", "", _set([*WELLS, 0, "rowIndex"], "0"), "plate.wells[0].rowIndex"),
        ("rowIndex-float", "", _set([*WELLS, 0, "rowIndex"], 0.0), "plate.wells[0].rowIndex"),
        ("rowIndex-bool", "", _set([*WELLS, 3, "rowIndex"], True), "plate.wells[3].rowIndex"),
        (
            "acquisition-id-string",
            "",
            _set(["plate", "acquisitions", 0, "id"], "0"),
            "plate.acquisitions[0].id",
        ),
        (
            "maximumfieldcount-string",
            "",
            _set(["plate", "acquisitions", 0, "maximumfieldcount"], "2"),
            "plate.acquisitions[0].maximumfieldcount",
        ),
        (
            "starttime-string",
            "",
            _set(["plate", "acquisitions", 0, "starttime"], "5"),
            "plate.acquisitions[0].starttime",
        ),
        (
            "image-acquisition-string",
            "B/3",
            _set(["well", "images", 0, "acquisition"], "x"),
            "well.images[0].acquisition",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and v and "/" not in v and "." not in v else "",
)
def test_integers_must_be_integers(
    plate05: Path, case: str, node: str, change: Any, field: str
) -> None:
    edit(plate05, node, change)
    assert_rejected(plate05, [(attrs_doc(plate05, node), field)])


@pytest.mark.parametrize(
    "case", ["position-symlink-loop", "position-doc-is-a-directory", "well-doc-is-a-directory"]
)
def test_unreadable_documents_are_located_problems(plate05: Path, case: str) -> None:
    if case == "position-symlink-loop":
        shutil.rmtree(plate05 / "A" / "1" / "0")
        (plate05 / "A" / "1" / "0").symlink_to("0")  # points at itself: ELOOP
        document = "A/1/0/zarr.json"
    elif case == "position-doc-is-a-directory":
        (plate05 / "A" / "1" / "0" / "zarr.json").unlink()
        (plate05 / "A" / "1" / "0" / "zarr.json").mkdir()
        document = "A/1/0/zarr.json"
    else:
        (plate05 / "B" / "2" / "zarr.json").unlink()
        (plate05 / "B" / "2" / "zarr.json").mkdir()
        document = "B/2/zarr.json"
    assert_rejected(plate05, [(document, "")])


# ---------------------------------------------------------------------------
# odd but valid plates: faithful snapshots


def _rename_node(store: Path, old: str, new: str) -> None:
    (store / old).rename(store / new)


def test_unusual_names(tmp_path: Path) -> None:
    """Non-ASCII, spaces, punctuation in rows, columns, fields and channels."""
    store = write_plate(
        tmp_path / "plate.zarr", rows=2, columns=2, fields=2, ngff="0.5", levels=1, data="none"
    )
    rows, columns = ["Å", "β row"], ["一", "10%#"]
    fields = ["ü", "fov 1 (日本)"]
    for r_old, r_new in zip("AB", rows, strict=True):
        for c_old, c_new in zip("12", columns, strict=True):
            for f_old, f_new in zip("01", fields, strict=True):
                _rename_node(store, f"{r_old}/{c_old}/{f_old}", f"{r_old}/{c_old}/{f_new}")
                edit(
                    store,
                    f"{r_old}/{c_old}/{f_new}",
                    lambda d: d["omero"]["channels"][0].update(label="DAPI 🔬 λ=405nm"),
                )
            edit(
                store,
                f"{r_old}/{c_old}",
                lambda d: [
                    img.update(path=fields[int(img["path"])]) for img in d["well"]["images"]
                ],
            )
            _rename_node(store, f"{r_old}/{c_old}", f"{r_old}/{c_new}")
        _rename_node(store, r_old, r_new)

    def plate(d: dict[str, Any]) -> None:
        d["plate"]["rows"] = [{"name": r} for r in rows]
        d["plate"]["columns"] = [{"name": c} for c in columns]
        d["plate"]["name"] = "plaque n° 7 — ✓"
        for w in d["plate"]["wells"]:
            w["path"] = f"{rows[w['rowIndex']]}/{columns[w['columnIndex']]}"

    edit(store, "", plate)
    edit(store, "β row/一/ü", lambda d: d["multiscales"][0]["axes"][2].update(unit="µm"))
    assert_faithful(store)
    pos = snapmeta.open_position(store, "β row/10%#/fov 1 (日本)")
    assert pos.channel_names == ("DAPI 🔬 λ=405nm", "GFP")
    assert snapmeta.open_plate(store).name == "plaque n° 7 — ✓"
    assert snapmeta.open_position(store, "β row/一/ü").axes[2].unit == "µm"
    with pytest.raises(snapmeta.PositionNotFoundError):
        snapmeta.open_position(store, "β row/一/u")


def test_deep_pyramid(tmp_path: Path) -> None:
    store = write_plate(
        tmp_path / "plate.zarr",
        rows=1,
        columns=2,
        fields=1,
        ngff="0.4",
        levels=10,
        shape=(1, 1, 1, 1024, 1024),
        data="none",
    )
    assert_faithful(store)
    pos = snapmeta.open_position(store, "A/2/0")
    assert len(pos.levels) == 10
    assert pos.level(9).shape == (1, 1, 1, 2, 2)
    assert pos.level(9).scale[-1] == 0.5 * 2**9
    assert pos[9].shape == (1, 1, 1, 2, 2)


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_huge_position_attributes_are_stored_once(tmp_path: Path, ngff: str) -> None:
    """4 MB of position attributes are snapshotted faithfully; positions with the same
    attributes share one template, so the snapshot holds them once."""
    store = write_plate(
        tmp_path / "plate.zarr", rows=1, columns=2, fields=2, ngff=ngff, levels=1, data="none"
    )
    snapmeta.build_snapshot(store)
    baseline = snapshot_file(store).stat().st_size
    huge = {
        "cells": [{"id": i, "area": i * 0.25, "label": f"cell-{i}"} for i in range(2_000)],
        "raw": "x" * 4_000_000,
    }
    medium = {"table": "y" * 900_000}
    for node in ("A/1/0", "A/2/0"):  # the same field in two wells: the same attributes
        edit(store, node, lambda d: d.update(custom=huge), ome=False)
    edit(store, "A/2/1", lambda d: d.update(custom=medium), ome=False)
    size = (store / attrs_doc(store, "A/1/0")).stat().st_size
    assert size > 4_000_000
    assert_faithful(store)
    snapshot = snapshot_file(store).stat().st_size
    assert snapshot < baseline + size + 1_000_000, (baseline, size, snapshot)
    for node in ("A/1/0", "A/2/0"):
        assert snapmeta.open_position(store, node).attrs["custom"] == huge
    assert snapmeta.open_position(store, "A/2/1").attrs["custom"] == medium


def test_huge_root_attributes_stay_out_of_the_snapshot(plate05: Path) -> None:
    edit(plate05, "", lambda d: d.update(history="z" * 4_000_000), ome=False)
    assert build(plate05) is None
    assert snapshot_file(plate05).stat().st_size < 1_000_000
    assert snapmeta.open_plate(plate05).attrs["history"] == "z" * 4_000_000


def test_nan_and_infinity(plate04: Path) -> None:
    """zarr v2 .zattrs with NaN/Infinity, and a float array whose fill value is NaN."""
    special = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "list": [math.nan, 1.0]}
    edit(plate04, "", lambda d: d.update(qc=special))
    edit(plate04, "A/1/0", lambda d: d.update(qc=special))
    edit(plate04, "A/2", lambda d: d.update(qc=special))
    for level in ("0", "1"):
        edit_raw(
            plate04, f"B/3/1/{level}/.zarray", lambda d: d.update(dtype="<f4", fill_value="NaN")
        )
    (plate04 / "B" / "3" / "1" / "0" / ".zattrs").write_text(
        '{"calibration": NaN, "offset": -Infinity}'
    )
    assert "NaN" in (plate04 / "A" / "1" / "0" / ".zattrs").read_text()
    assert_faithful(plate04)
    plate = snapmeta.open_plate(plate04)
    assert math.isnan(plate.attrs["qc"]["nan"])
    assert plate.attrs["qc"]["inf"] == math.inf
    pos = plate["A/1/0"]
    assert math.isnan(pos.attrs["qc"]["list"][0]) and pos.attrs["qc"]["ninf"] == -math.inf
    arr = plate["B/3/1"][0]
    assert math.isnan(arr.fill_value)
    assert str(arr.dtype) == "float32"
    assert math.isnan(float(arr[0, 0, 0, 0, 0]))  # no chunk written: the fill value
    assert math.isnan(arr.attrs["calibration"])


def test_symlinked_positions_inside_the_store(plate05: Path) -> None:
    """Positions that are symlinks inside the store: two positions share one directory."""
    shutil.rmtree(plate05 / "B" / "2" / "1")
    (plate05 / "B" / "2" / "1").symlink_to("0")  # B/2/1 and B/2/0 share one directory
    shutil.move(plate05 / "A" / "1" / "0", plate05 / "A" / "fov-store")
    (plate05 / "A" / "1" / "0").symlink_to("../fov-store")  # elsewhere in the store
    assert_faithful(plate05)
    assert snapmeta.open_position(plate05, "A/1/0").data.shape == (1, 2, 4, 64, 64)
    a, b = snapmeta.open_position(plate05, "B/2/0"), snapmeta.open_position(plate05, "B/2/1")
    assert a.channel_names == b.channel_names and a.path != b.path


def test_position_symlinked_outside_the_store_is_rejected(plate05: Path, tmp_path: Path) -> None:
    """A position that leads out of the store (a symlink to another directory) is a located
    problem: snapmeta reads nothing outside the store; the target stays untouched."""
    outside = tmp_path / "elsewhere" / "fov"
    outside.parent.mkdir()
    shutil.move(plate05 / "A" / "1" / "0", outside)
    (plate05 / "A" / "1" / "0").symlink_to(outside)
    (plate05 / "B" / "3" / "1" / "0").rename(tmp_path / "elsewhere" / "level")
    (plate05 / "B" / "3" / "1" / "0").symlink_to(tmp_path / "elsewhere" / "level")
    outside_before = _hash_tree(outside.parent)
    assert_rejected(plate05, [("A/1/0/zarr.json", ""), ("B/3/1/0/zarr.json", "")])
    assert _hash_tree(outside.parent) == outside_before


def test_optional_keys_absent_and_extra_keys_present(plate05: Path) -> None:
    """No omero, no plate name, no acquisitions, no versions; unknown keys everywhere."""

    def root(d: dict[str, Any]) -> None:
        for key in ("name", "acquisitions", "field_count"):
            d["plate"].pop(key, None)
        d["plate"]["vendor"] = {"x": [1, {"y": None}]}

    edit(plate05, "", root)
    edit(plate05, "A/1", lambda d: [img.pop("acquisition") for img in d["well"]["images"]])
    edit(plate05, "A/1/0", lambda d: d.pop("omero"))
    edit(
        plate05,
        "A/1/1",
        lambda d: d["multiscales"][0].update(
            coordinateTransformations=[{"type": "scale", "scale": [2.0, 1.0, 1.0, 3.0, 3.0]}],
            extra={"k": "v"},
        ),
    )
    edit(
        plate05,
        "A/2/0",
        lambda d: d["multiscales"][0]["datasets"][0]["coordinateTransformations"].pop(),
    )
    assert_faithful(plate05)
    plate = snapmeta.open_plate(plate05)
    assert plate.name is None and plate.acquisitions == ()
    assert plate["A/1/0"].channel_names == ()
    assert plate["A/1/0"].acquisition is None
    assert plate["A/1/1"].scale == (2.0, 1.0, 2.0, 1.5, 1.5)
    assert plate["A/2/0"].level(0).translation is None
