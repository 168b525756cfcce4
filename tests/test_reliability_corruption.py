"""Damaged snapshots: a documented error or the right answer, never a crash or a lie.

Every damaged file is read in a *subprocess* (a batch of files per process),
so a segfault in a reader is counted as a failure instead of killing pytest.
The worker (:func:`_worker`) installs each damaged file as the store's
snapshot, runs every read of the public API (plate lists, iteration, every
position with its levels, arrays and attributes, a missing key) plus
``verify``, and compares every value that comes back with the plate's true
metadata, read independently from its JSON documents with ``json`` and zarr.

Outcomes per damaged file: ``correct`` (every read right; a stale warning is
allowed), ``error`` (some reads raised a documented ``SnapmetaError``, the
others were right), ``wrong`` (a read returned wrong metadata, or claimed an
existing position does not exist), ``other`` (an undocumented exception
escaped) and ``crash`` (the reader process died or hung).

The fuzz run prints its tally; ``SNAPMETA_SLOW=1`` runs the large sample.
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

import snapmeta
from snapmeta import _format
from snapmeta.testing import write_plate
from snapmeta.errors import PositionNotFoundError, SnapmetaError, SnapshotStaleWarning

HERE = Path(__file__).resolve().parent
SLOW = bool(os.environ.get("SNAPMETA_SLOW"))
slow = pytest.mark.skipif(not SLOW, reason="large run: set SNAPMETA_SLOW=1")

# Default sample: mutants per plate (two plates, one worker process each).
FUZZ_DEFAULT = 150
FUZZ_SLOW = 5000
MISSING = "Z/99/0"

# Regressions found by this module (fixed in f2a9a55): typed columns read with
# to_pylist() before validation (segfaults, SystemError, UnicodeDecodeError,
# wrong paths from list(plate)), and ArrowNotImplementedError escaping open_file.


# ---------------------------------------------------------------------------
# ground truth, read from JSON without snapmeta


def _read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def _attrs(store: Path, node: str, zarr_format: int) -> dict[str, Any]:
    base = store / node if node else store
    if zarr_format == 3:
        return _read_json(base / "zarr.json").get("attributes", {})
    return _read_json(base / ".zattrs") if (base / ".zattrs").exists() else {}


def _ome(attrs: dict[str, Any], zarr_format: int) -> dict[str, Any]:
    return attrs.get("ome", {}) if zarr_format == 3 else attrs


def _transforms(
    items: list[dict[str, Any]] | None,
) -> tuple[list[float] | None, list[float] | None]:
    scale = translation = None
    for item in items or []:
        if item["type"] == "scale":
            scale = [float(v) for v in item["scale"]]
        elif item["type"] == "translation":
            translation = [float(v) for v in item["translation"]]
    return scale, translation


def json_truth(store: Path) -> dict[str, Any]:
    """Everything the read operations return, computed from the JSON documents."""
    import zarr
    from zarr.storage import LocalStore

    zf = 3 if (store / "zarr.json").exists() else 2
    zstore = LocalStore(store, read_only=True)
    root = _attrs(store, "", zf)
    plate = _ome(root, zf)["plate"]
    positions: dict[str, Any] = {}
    for well in plate["wells"]:
        images = _ome(_attrs(store, well["path"], zf), zf)["well"]["images"]
        for image in images:
            path = f"{well['path']}/{image['path']}"
            attrs = _attrs(store, path, zf)
            ome = _ome(attrs, zf)
            ms = ome["multiscales"][0]
            global_scale, _ = _transforms(ms.get("coordinateTransformations"))
            levels = []
            arrays = []
            for dataset in ms["datasets"]:
                scale, translation = _transforms(dataset["coordinateTransformations"])
                if global_scale is not None:
                    scale = [a * b for a, b in zip(scale, global_scale, strict=False)]
                node = store / path / dataset["path"]
                doc = _read_json(node / ("zarr.json" if zf == 3 else ".zarray"))
                levels.append(
                    {
                        "path": dataset["path"],
                        "shape": doc["shape"],
                        "chunks": doc["chunk_grid"]["configuration"]["chunk_shape"]
                        if zf == 3
                        else doc["chunks"],
                        "dtype": doc["data_type"] if zf == 3 else doc["dtype"],
                        "scale": scale,
                        "translation": translation,
                    }
                )
                array = zarr.open_array(
                    zstore, path=f"{path}/{dataset['path']}", mode="r", zarr_format=zf
                )
                arrays.append({"path": array.path, "metadata": array.metadata.to_dict()})
            channels = (ome.get("omero") or {}).get("channels", [])
            positions[path] = {
                "path": path,
                "well": well["path"],
                "field": image["path"],
                "acquisition": image.get("acquisition"),
                "channels": [str(c.get("label", i)) for i, c in enumerate(channels)],
                "axes": [[a["name"], a.get("type"), a.get("unit")] for a in ms["axes"]],
                "levels": levels,
                "arrays": arrays,
                "attrs": attrs,
            }
    return {
        "rows": [r["name"] for r in plate["rows"]],
        "columns": [c["name"] for c in plate["columns"]],
        "wells": [w["path"] for w in plate["wells"]],
        "len": len(positions),
        "paths": list(positions),
        "name": plate.get("name"),
        "attrs": root,
        "acquisitions": [
            [a["id"], a.get("name"), a.get("maximumfieldcount")]
            for a in plate.get("acquisitions", [])
        ],
        "positions": positions,
    }


def position_view(pos: snapmeta.Position) -> dict[str, Any]:
    """What the public API says about one position, in ``json_truth`` form."""
    levels = []
    arrays = []
    for i in range(len(pos.levels)):
        info = pos.level(i)
        levels.append(
            {
                "path": info.path,
                "shape": list(info.shape),
                "chunks": list(info.chunks),
                "dtype": info.dtype,
                "scale": list(info.scale),
                "translation": None if info.translation is None else list(info.translation),
            }
        )
        array = pos[i]
        arrays.append({"path": array.path, "metadata": array.metadata.to_dict()})
    return {
        "path": pos.path,
        "well": pos.well,
        "field": pos.field,
        "acquisition": pos.acquisition,
        "channels": list(pos.channel_names),
        "axes": [[a.name, a.type, a.unit] for a in pos.axes],
        "levels": levels,
        "arrays": arrays,
        "attrs": pos.attrs,
    }


# ---------------------------------------------------------------------------
# the reader: every public read, each compared with the truth


def _verdict(fn: Callable[[], Any], expected: Any) -> list[Any]:
    try:
        value = fn()
    except PositionNotFoundError as exc:
        return ["wrong", f"PositionNotFoundError for an existing key: {exc}"[:300]]
    except SnapmetaError as exc:
        return ["error", type(exc).__name__, str(exc)[:300]]
    except Exception as exc:
        return ["other", type(exc).__name__, str(exc)[:300]]
    if value != expected:
        return ["wrong", f"{value!r:.300}"]
    return ["ok"]


def _missing_verdict(plate: snapmeta.Plate) -> list[Any]:
    try:
        value = plate[MISSING]
    except PositionNotFoundError:
        return ["ok"]
    except SnapmetaError as exc:
        return ["error", type(exc).__name__, str(exc)[:300]]
    except Exception as exc:
        return ["other", type(exc).__name__, str(exc)[:300]]
    return ["wrong", f"found a position that does not exist: {value!r}"]


def observe(
    store: Path, truth: dict[str, Any], *, check: str = "stat", on_stale: str = "fallback"
) -> dict[str, Any]:
    """Run every read of the public API on ``store``; a verdict per read."""
    from snapmeta._open import clear_cache

    clear_cache()
    ops: dict[str, list[Any]] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            plate = snapmeta.open_plate(store, check=check, on_stale=on_stale)
        except SnapmetaError as exc:
            ops["open"] = ["error", type(exc).__name__, str(exc)[:300]]
            plate = None
        except Exception as exc:
            ops["open"] = ["other", type(exc).__name__, str(exc)[:300]]
            plate = None
        if plate is not None:
            ops["open"] = ["ok"]
            reads: list[tuple[str, Callable[[], Any], Any]] = [
                ("rows", lambda: list(plate.rows), truth["rows"]),
                ("columns", lambda: list(plate.columns), truth["columns"]),
                ("wells", lambda: list(plate.wells), truth["wells"]),
                ("len", lambda: len(plate), truth["len"]),
                ("paths", lambda: list(plate), truth["paths"]),
                ("name", lambda: plate.name, truth["name"]),
                ("attrs", lambda: plate.attrs, truth["attrs"]),
                (
                    "acquisitions",
                    lambda: [[a.id, a.name, a.maximum_field_count] for a in plate.acquisitions],
                    truth["acquisitions"],
                ),
                ("contains", lambda: all(p in plate for p in truth["paths"]), True),
            ]
            for name, fn, expected in reads:
                ops[name] = _verdict(fn, expected)
            for path, expected in truth["positions"].items():
                ops[path] = _verdict(lambda path=path: position_view(plate[path]), expected)
            ops["missing"] = _missing_verdict(plate)
    stale = [w for w in caught if issubclass(w.category, SnapshotStaleWarning)]
    others = [f"{w.category.__name__}: {w.message}" for w in caught if w not in stale]
    try:
        report = snapmeta.verify(store, reread=False)
        verified = ["ok"] if report.ok else ["problems", report.problems[0][:300]]
    except Exception as exc:
        verified = ["other", type(exc).__name__, str(exc)[:300]]
    return {"ops": ops, "stale_warning": bool(stale), "other_warnings": others, "verify": verified}


def classify(result: dict[str, Any]) -> str:
    kinds = {v[0] for v in result["ops"].values()}
    if result["verify"][0] == "other":
        kinds.add("other")
    for outcome in ("wrong", "other", "error"):
        if outcome in kinds:
            return outcome
    return "correct"


# ---------------------------------------------------------------------------
# mutations


def file_regions(data: bytes) -> list[tuple[str, int, int]]:
    """Byte ranges of an Arrow IPC file: magic, messages, every body buffer, footer."""
    (schema_len,) = struct.unpack_from("<i", data, 12)
    batch_at = 16 + schema_len
    (batch_len,) = struct.unpack_from("<i", data, batch_at + 4)
    body_at = batch_at + 8 + batch_len
    (footer_len,) = struct.unpack_from("<i", data, len(data) - 10)
    footer_at = len(data) - 10 - footer_len
    regions = [
        ("magic", 0, 8),
        ("schema-message", 8, batch_at),
        ("batch-metadata", batch_at, body_at),
        ("footer", footer_at, len(data) - 10),
        ("trailer", len(data) - 10, len(data)),
    ]
    buf = pa.py_buffer(data)
    batch = ipc.open_file(buf).get_batch(0)

    def walk(array: pa.Array, name: str) -> Iterator[tuple[str, int, int]]:
        t = array.type
        if pa.types.is_struct(t):
            own, children = (
                1,
                [(array.field(i), f"{name}.{t.field(i).name}") for i in range(t.num_fields)],
            )
        elif pa.types.is_list(t):
            own, children = 2, [(array.values, f"{name}[]")]
        elif pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
            own, children = 3, []
        else:
            own, children = 2, []
        for i, b in enumerate(array.buffers()[:own]):
            if b is not None and b.size:
                yield (f"{name}#{i}", b.address - buf.address, b.address - buf.address + b.size)
        for child, child_name in children:
            yield from walk(child, child_name)

    for i, column in enumerate(batch.columns):
        regions.extend(walk(column, batch.schema.names[i]))
    return regions


_STRUCTURAL_WEIGHT = {
    "magic": 1,
    "schema-message": 3,
    "batch-metadata": 10,
    "footer": 10,
    "trailer": 3,
}


def region_schedule(regions: list[tuple[str, int, int]]) -> list[int]:
    """Indices of regions, structural ones repeated: one round covers every buffer."""
    schedule = []
    for i, (name, _, _) in enumerate(regions):
        schedule += [i] * _STRUCTURAL_WEIGHT.get(name, 1)
    schedule += [-1] * 8  # whole-file mutations
    return schedule


def mutate(
    data: bytes, regions: list[tuple[str, int, int]], schedule: list[int], seed: int, i: int
) -> tuple[bytes, str]:
    """Mutant ``i`` of ``data`` (deterministic); returns it and a description."""
    rng = random.Random(seed * 1_000_003 + i)
    order = list(schedule)
    random.Random(seed).shuffle(order)
    pick = order[i % len(order)]
    if pick < 0:
        name, start, end = "file", 0, len(data)
    else:
        name, start, end = regions[pick]
    out = bytearray(data)
    in_body = pick >= 0 and name not in _STRUCTURAL_WEIGHT
    ops = ["replace"] * 6 + ["bitflip"] * 3 + ["run"]
    if not in_body:
        ops += ["truncate", "insert", "delete", "duplicate"]
    op = rng.choice(ops)
    at = rng.randrange(start, end)
    if op == "replace":
        for _ in range(rng.randint(1, 3)):
            j = rng.randrange(start, end)
            out[j] = (out[j] + rng.randrange(1, 256)) % 256
        detail = f"replace near {at}"
    elif op == "bitflip":
        out[at] ^= 1 << rng.randrange(8)
        detail = f"bitflip at {at}"
    elif op == "run":
        n = min(rng.randint(2, 32), end - at)
        fill = rng.choice([b"\x00", b"\xff", None])
        out[at : at + n] = fill * n if fill else bytes(rng.randrange(256) for _ in range(n))
        detail = f"run of {n} at {at}"
    elif op == "truncate":
        out = out[:at]
        detail = f"truncate at {at}"
    elif op == "insert":
        out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        detail = f"insert at {at}"
    elif op == "delete":
        del out[at : at + rng.randint(1, 16)]
        detail = f"delete at {at}"
    else:
        n = rng.randint(1, 64)
        out[at:at] = out[at : at + n]
        detail = f"duplicate {n} at {at}"
    if bytes(out) == data:  # the change was a no-op: flip one bit instead
        out[at % len(out)] ^= 0x01
    return bytes(out), f"{name}: {detail}"


# ---------------------------------------------------------------------------
# the worker process and its driver


def _install(target: Path, case: dict[str, Any]) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)
    kind = case.get("install", "bytes")
    if kind == "dir":
        target.mkdir()
    elif kind == "dangling-symlink":
        target.symlink_to(target.with_name("does-not-exist.arrow"))
    elif kind == "bytes":
        tmp = target.with_name(target.name + ".install")
        tmp.write_bytes(case["data"])
        os.replace(tmp, target)


def _worker() -> None:
    """Subprocess entry point: read a job from stdin, print JSON lines."""
    import faulthandler

    faulthandler.enable()
    job = json.loads(sys.stdin.read())
    store = Path(job["store"])
    target = _format.snapshot_path(store)
    truth = json_truth(store)
    if job["kind"] == "fuzz":
        original = Path(job["original"]).read_bytes()
        regions = file_regions(original)
        schedule = region_schedule(regions)

        def make(i: int) -> dict[str, Any]:
            data, label = mutate(original, regions, schedule, job["seed"], i)
            return {"data": data, "label": label}

        stop = job["stop"]
    else:
        cases = job["cases"]

        def make(i: int) -> dict[str, Any]:
            case = dict(cases[i])
            if "file" in case:
                case["data"] = Path(case["file"]).read_bytes()
            return case

        stop = len(cases)
    for i in range(job["start"], stop):
        case = make(i)
        print(json.dumps({"begin": i, "label": case["label"]}), flush=True)
        _install(target, case)
        result = observe(store, truth, **case.get("options", {}))
        result["outcome"] = classify(result)
        if job["kind"] == "fuzz" and result["outcome"] in ("correct", "error"):
            result = {
                "outcome": result["outcome"],
                "stale_warning": result["stale_warning"],
                "verify_ok": result["verify"][0] == "ok",
                "error": next((v[1] for v in result["ops"].values() if v[0] == "error"), None),
            }
        result.update(end=i, label=case["label"])
        print(json.dumps(result), flush=True)


def _spawn(job: dict[str, Any], attempt: int) -> tuple[subprocess.Popen[bytes], Path]:
    """Start a worker; its job, stdout and stderr are files next to the store."""
    base = Path(job["store"]).with_name(f"{Path(job['store']).name}.job{attempt}")
    base.with_suffix(".json").write_text(json.dumps(job))
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); "
        "import test_reliability_corruption as t; t._worker()"
    )
    with (
        open(base.with_suffix(".json"), "rb") as stdin,
        open(base.with_suffix(".out"), "wb") as stdout,
        open(base.with_suffix(".err"), "wb") as stderr,
    ):
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=stdin, stdout=stdout, stderr=stderr, cwd=str(HERE)
        )
    return proc, base


def run_jobs(
    jobs: list[dict[str, Any]], *, timeout: float = 300.0
) -> list[dict[int, dict[str, Any]]]:
    """Run jobs in parallel worker processes; restart a worker after a crash.

    Returns, per job, ``{index: result}``; a reader that died (signal, exit
    code) or hung on an input records ``{"outcome": "crash"}`` for it.
    """
    results: list[dict[int, dict[str, Any]]] = [{} for _ in jobs]
    pending = [(k, dict(job)) for k, job in enumerate(jobs)]
    attempt = 0
    while pending:
        attempt += 1
        running = [(k, job, *_spawn(job, attempt * 100 + k)) for k, job in pending]
        pending = []
        for k, job, proc, base in running:
            try:
                proc.wait(timeout=timeout)
                hung = False
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                hung = True
            out = base.with_suffix(".out").read_text()
            err = base.with_suffix(".err").read_text(errors="replace")
            begun = None
            for line in out.splitlines():
                record = json.loads(line)
                if "begin" in record:
                    begun = record
                else:
                    results[k][record["end"]] = record
                    begun = None
            if begun is not None:
                results[k][begun["begin"]] = {
                    "outcome": "crash",
                    "label": begun["label"],
                    "returncode": proc.returncode,
                    "hung": hung,
                    "stderr": err[-2000:],
                }
                pending.append((k, {**job, "start": begun["begin"] + 1}))
            elif proc.returncode != 0:
                raise AssertionError(
                    f"worker failed outside any input (rc={proc.returncode}):\n{err[-3000:]}"
                )
    return results


# ---------------------------------------------------------------------------
# plates


def _add_attrs(store: Path, node: str, extra: dict[str, Any]) -> None:
    """Merge custom attributes into a group document, as a user would."""
    base = store / node if node else store
    if (base / "zarr.json").exists():
        doc = _read_json(base / "zarr.json")
        doc["attributes"].update(extra)
        (base / "zarr.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        path = base / ".zattrs"
        doc = _read_json(path) if path.exists() else {}
        doc.update(extra)
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False))


def _make_plate(path: Path, **kwargs: Any) -> Path:
    write_plate(path, data="none", **kwargs)
    _add_attrs(path, "", {"operator": "Zoë", "séance": [1, 2.5, None, True]})
    _add_attrs(path, "A/1/0", {"note": "première", "nested": {"k": [1, 2, {"x": "y"}]}})
    snapmeta.build_snapshot(path)
    return path


@pytest.fixture(scope="module")
def plates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("corruption")
    return {
        "v05": _make_plate(
            base / "v05.zarr", rows=2, columns=3, fields=2, ngff="0.5", levels=2, acquisitions=2
        ),
        "v04": _make_plate(
            base / "v04.zarr", rows=2, columns=2, fields=[1, 2], ngff="0.4", levels=2
        ),
        "other": _make_plate(
            base / "other.zarr",
            rows=3,
            columns=4,
            fields=1,
            ngff="0.5",
            levels=1,
            name="another plate",
        ),
    }


def _copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)  # copy2 keeps mtimes: the snapshot stays fresh
    return dst


# ---------------------------------------------------------------------------
# sanity: the reader itself


def test_reader_agrees_with_json_on_valid_snapshots(plates: dict[str, Path]) -> None:
    for name in ("v05", "v04", "other"):
        truth = json_truth(plates[name])
        result = observe(plates[name], truth)
        assert classify(result) == "correct", (name, result)
        assert not result["stale_warning"]
        assert result["verify"] == ["ok"]
        assert snapmeta.verify(plates[name]).ok


def test_mutations_are_deterministic_and_cover_every_buffer(plates: dict[str, Path]) -> None:
    data = _format.snapshot_path(plates["v05"]).read_bytes()
    regions = file_regions(data)
    names = {name for name, _, _ in regions}
    assert {
        "magic",
        "footer",
        "trailer",
        "positions[].path#1",
        "positions[].path#2",
        "lookup[].hash#1",
    } <= names
    schedule = region_schedule(regions)
    a = [mutate(data, regions, schedule, 7, i) for i in range(len(schedule))]
    b = [mutate(data, regions, schedule, 7, i) for i in range(len(schedule))]
    assert a == b
    assert all(m != data for m, _ in a)
    covered = {label.split(":")[0] for _, label in a}
    assert names <= covered


# ---------------------------------------------------------------------------
# crafted damage


def _rewrite(
    data: bytes,
    *,
    meta: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
    fix_checksum: bool = True,
    schema: pa.Schema | None = None,
) -> bytes:
    """Re-encode a snapshot with changed schema metadata (an otherwise valid file)."""
    batch = ipc.open_file(pa.py_buffer(data)).get_batch(0)
    new_meta = {k.decode(): v.decode() for k, v in batch.schema.metadata.items()}
    for key in drop:
        new_meta.pop(key, None)
    new_meta.update(meta or {})
    if fix_checksum:
        new_meta[_format.META_PREFIX + "header_checksum"] = str(_format.header_checksum(new_meta))
    if schema is not None:
        batch = pa.RecordBatch.from_arrays(
            [c.cast(f.type) for c, f in zip(batch.columns, schema, strict=True)], schema=schema
        )
    batch = batch.replace_schema_metadata(new_meta)
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _buffer(data: bytes, name: str) -> tuple[int, int]:
    for region, start, end in file_regions(data):
        if region == name:
            return start, end
    raise KeyError(name)


def _record_range(data: bytes, section: str, index: int) -> tuple[int, int]:
    """Byte range of one entry's msgpack record inside the file."""
    start, _ = _buffer(data, f"{section}[].record#1")
    data_at, _ = _buffer(data, f"{section}[].record#2")
    lo, hi = struct.unpack_from("<ii", data, start + 4 * index)
    return data_at + lo, data_at + hi


def _poke(data: bytes, at: int, new: bytes) -> bytes:
    out = bytearray(data)
    out[at : at + len(new)] = new
    return bytes(out)


def _flip(data: bytes, at: int) -> bytes:
    return _poke(data, at, bytes([data[at] ^ 0xFF]))


def _crafted_cases(plates: dict[str, Path], work: Path) -> list[dict[str, Any]]:
    valid = _format.snapshot_path(plates["v05"]).read_bytes()
    other = _format.snapshot_path(plates["other"]).read_bytes()
    n = len(valid)
    regions = {name: (s, e) for name, s, e in file_regions(valid)}
    footer = regions["footer"]
    batch_meta = regions["batch-metadata"]
    cases: list[dict[str, Any]] = []

    def add(
        label: str, data: bytes | None = None, expect: tuple[Any, ...] = ("safe",), **extra: Any
    ) -> None:
        case: dict[str, Any] = {"label": label, "expect": list(expect), **extra}
        if data is not None:
            path = work / f"case-{len(cases)}.arrow"
            path.write_bytes(data)
            case["file"] = str(path)
        cases.append(case)

    corrupt = ("open_error", "SnapshotCorruptError")
    add("zero-length", b"", corrupt)
    for cut in sorted(
        {1, 6, 8, 64, batch_meta[0], batch_meta[1], n // 2, footer[0], n - 10, n - 6, n - 1}
    ):
        add(f"truncated to {cut} of {n} bytes", valid[:cut], corrupt)
    add("trailing magic damaged", _flip(valid, n - 1), corrupt)
    add("footer length damaged", _poke(valid, n - 10, struct.pack("<i", n * 2)), corrupt)
    add("footer length zero", _poke(valid, n - 10, struct.pack("<i", 0)), corrupt)
    for k, at in enumerate(range(footer[0], footer[1], max(1, (footer[1] - footer[0]) // 12))):
        add(f"footer byte {k} flipped", _flip(valid, at))
    for k, at in enumerate(
        range(batch_meta[0], batch_meta[1], max(1, (batch_meta[1] - batch_meta[0]) // 12))
    ):
        add(f"batch metadata byte {k} flipped", _flip(valid, at))
    for at in (0, 3, 7, 20):
        add(f"header byte {at} flipped", _flip(valid, at))
    lo, hi = _record_range(valid, "positions", 3)
    add("positions[3] record damaged", _flip(valid, (lo + hi) // 2), ("local", "A/2/1"))
    lo, hi = _record_range(valid, "wells", 0)
    add("wells[0] record damaged", _flip(valid, (lo + hi) // 2), ("has_error",))
    start, end = _buffer(valid, "blobs[].data#2")
    add("blob data damaged", _flip(valid, (start + end) // 2), ("has_error",))
    start, end = _buffer(valid, "lookup[].target#1")
    add("lookup slot damaged", _poke(valid, start, struct.pack("<q", 5)), ("verify_problem",))
    start, end = _buffer(valid, "positions[].checksum#1")
    add("record checksum damaged", _flip(valid, start), ("local", "A/1/0"))
    start, end = _buffer(valid, "rows[]#2")
    add("rows bytes changed (still UTF-8)", _poke(valid, start, b"Q"), ("has_error",))
    prefix = _format.META_PREFIX
    add(
        "wrong magic",
        _rewrite(valid, meta={prefix + "magic": "some-other-tool"}),
        ("open_error", "SnapshotFormatError"),
    )
    add(
        "no snapmeta metadata",
        _rewrite(valid, drop=tuple(k for k in _format_meta(valid))),
        ("open_error", "SnapshotFormatError"),
    )
    add(
        "future format version",
        _rewrite(valid, meta={prefix + "format_version": "2"}),
        ("open_error", "UnsupportedFormatVersionError"),
    )
    add(
        "future version, stale header checksum",
        _rewrite(valid, meta={prefix + "format_version": "2"}, fix_checksum=False),
        ("open_error", "UnsupportedFormatVersionError"),
    )
    add(
        "format version not a number",
        _rewrite(valid, meta={prefix + "format_version": "1.1"}),
        ("open_error", "UnsupportedFormatVersionError"),
    )
    add(
        "header value changed, checksum kept",
        _rewrite(valid, meta={prefix + "position_count": "11"}, fix_checksum=False),
        corrupt,
    )
    add(
        "header counts consistent but wrong",
        _rewrite(valid, meta={prefix + "position_count": "11"}),
        corrupt,
    )
    add(
        "root digest changed, checksum kept",
        _rewrite(valid, meta={prefix + "root_digest": "00" * 16}, fix_checksum=False),
        corrupt,
    )
    wrong_schema = pa.schema(
        [
            f.with_type(pa.list_(pa.large_string())) if f.name == "rows" else f
            for f in _format.SCHEMA
        ]
    ).with_metadata({})
    add("schema differs from format v1", _rewrite(valid, schema=wrong_schema), corrupt)
    rng = random.Random(4)
    add("random bytes", bytes(rng.randrange(256) for _ in range(4096)), corrupt)
    add("a JSON document", json.dumps({"zarr_format": 3}).encode(), corrupt)
    stream = pa.BufferOutputStream()
    table = pa.table({"x": [1, 2, 3]})
    with ipc.new_stream(stream, table.schema) as writer:
        writer.write_table(table)
    add("an Arrow IPC stream", stream.getvalue().to_pybytes(), corrupt)
    plain = pa.BufferOutputStream()
    with ipc.new_file(plain, table.schema) as writer:
        writer.write_table(table)
    add(
        "a plain Arrow IPC file",
        plain.getvalue().to_pybytes(),
        ("open_error", "SnapshotFormatError"),
    )
    add("two snapshots concatenated", valid + valid, ("safe",))
    add("snapshot path is a directory", None, ("open_error", "SnapshotFormatError"), install="dir")
    add(
        "snapshot path is a dangling symlink",
        None,
        ("open_error", "SnapshotNotFoundError"),
        install="dangling-symlink",
    )
    add("no snapshot", None, ("open_error", "SnapshotNotFoundError"), install="absent")
    add("snapshot of another plate", other, ("stale_fallback",))
    add(
        "snapshot of another plate, digest check",
        other,
        ("stale_fallback",),
        options={"check": "digest"},
    )
    add(
        "snapshot of another plate, on_stale=raise",
        other,
        ("open_error", "StaleSnapshotError"),
        options={"on_stale": "raise"},
    )
    # regressions: damaged typed columns and undocumented Arrow exceptions
    start, _ = _buffer(valid, "positions[].path#1")
    add(
        "path offsets negative",
        _poke(valid, start + 4, struct.pack("<i", -7)),
        ("safe",),
        regression="typed",
    )
    add(
        "path offsets huge",
        _poke(valid, start + 48, struct.pack("<i", 1 << 30)),
        ("safe",),
        regression="typed",
    )
    start, _ = _buffer(valid, "positions[].path#2")
    add("path byte changed", _poke(valid, start + 4, b"7"), ("safe",), regression="typed")
    start, _ = _buffer(valid, "rows[]#2")
    add("rows not UTF-8", _poke(valid, start, b"\xff"), ("safe",), regression="typed")
    at = _bitwidth_offset(valid)
    add("footer integer width damaged", _poke(valid, at, b"\x48"), corrupt, regression="arrow")
    return cases


def _format_meta(data: bytes) -> list[str]:
    return [k.decode() for k in ipc.open_file(pa.py_buffer(data)).schema.metadata]


def _bitwidth_offset(data: bytes) -> int:
    """Offset in the footer of an Int type's bitWidth (64): found by trying each candidate."""
    regions = {name: (s, e) for name, s, e in file_regions(data)}
    start, end = regions["footer"]
    for at in range(start, end - 4):
        if data[at : at + 4] != b"\x40\x00\x00\x00":
            continue
        try:
            ipc.open_file(pa.py_buffer(_poke(data, at, b"\x48"))).schema  # noqa: B018
        except pa.ArrowNotImplementedError:
            return at
        except pa.ArrowException:
            continue
    raise AssertionError("no bitWidth field found in the footer")


@pytest.fixture(scope="module")
def crafted(
    plates: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    work = tmp_path_factory.mktemp("crafted")
    cases = _crafted_cases(plates, work)
    store = _copy_store(plates["v05"], work / "store.zarr")
    job = {
        "kind": "cases",
        "store": str(store),
        "cases": [{k: v for k, v in c.items() if k != "expect"} for c in cases],
        "start": 0,
    }
    (results,) = run_jobs([job])
    return [(case, results[i]) for i, case in enumerate(cases)]


def _check_expectation(case: dict[str, Any], result: dict[str, Any]) -> None:
    assert result["outcome"] not in ("crash", "wrong", "other"), result
    assert not result.get("other_warnings"), result
    kind, *args = case["expect"]
    ops = result["ops"]
    if kind == "open_error":
        assert ops == {"open": ["error", args[0], ops["open"][2]]}, result
        if args[0] in (
            "SnapshotCorruptError",
            "SnapshotFormatError",
            "UnsupportedFormatVersionError",
        ):
            assert result["verify"][0] == "problems", result
    elif kind == "local":
        (path,) = args
        assert ops[path][:2] == ["error", "SnapshotCorruptError"], result
        assert all(v == ["ok"] for k, v in ops.items() if k not in (path, "contains")), result
        assert result["verify"][0] == "problems", result
    elif kind == "has_error":
        assert any(v[0] == "error" for v in ops.values()), result
        assert result["verify"][0] == "problems", result
    elif kind == "verify_problem":
        assert result["outcome"] in ("correct", "error"), result
        assert result["verify"][0] == "problems", result
    elif kind == "stale_fallback":
        assert result["outcome"] == "correct", result
        assert result["stale_warning"], result
        assert result["verify"][0] == "problems", result
    else:
        assert kind == "safe", kind
        assert result["outcome"] in ("correct", "error"), result


def test_crafted_damage(crafted: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Every crafted damaged file gives its documented outcome."""
    failures = []
    for case, result in crafted:
        try:
            _check_expectation(case, result)
        except AssertionError as exc:
            failures.append(f"{case['label']}: {exc}")
    outcomes = collections.Counter(r["outcome"] for _, r in crafted)
    print(f"\ncrafted damaged snapshots: {len(crafted)} cases: {dict(outcomes)}")
    assert not failures, "\n".join(failures)


def test_damaged_typed_columns_give_documented_errors(
    crafted: list[tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    bad = [(c["label"], r) for c, r in crafted if c.get("regression") == "typed"]
    assert bad
    for label, result in bad:
        assert result["outcome"] in ("correct", "error"), (label, result)
        assert result["verify"][0] == "problems", (label, result)


def test_damaged_footer_schema_gives_corrupt_error(
    crafted: list[tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    bad = [(c["label"], r) for c, r in crafted if c.get("regression") == "arrow"]
    assert bad
    for label, result in bad:
        assert result["ops"]["open"][:2] == ["error", "SnapshotCorruptError"], (label, result)
        assert result["verify"][0] == "problems", (label, result)


def test_future_version_error_fields(plates: dict[str, Path], tmp_path: Path) -> None:
    """A well-formed file from a newer snapmeta: UnsupportedFormatVersionError with its fields."""
    store = _copy_store(plates["v05"], tmp_path / "store.zarr")
    target = _format.snapshot_path(store)
    target.write_bytes(
        _rewrite(target.read_bytes(), meta={_format.META_PREFIX + "format_version": "2"})
    )
    with pytest.raises(snapmeta.UnsupportedFormatVersionError) as info:
        snapmeta.open_plate(store)
    assert info.value.found_version == "2"
    assert info.value.supported == (1,)
    assert "build" in str(info.value)
    assert isinstance(info.value, snapmeta.SnapshotFormatError)
    # a rebuild repairs it
    snapmeta.build_snapshot(store)
    assert snapmeta.open_plate(store)["A/1/0"].channel_names == ("DAPI", "GFP")


def test_corrupt_error_fields_locate_the_damage(plates: dict[str, Path], tmp_path: Path) -> None:
    store = _copy_store(plates["v05"], tmp_path / "store.zarr")
    target = _format.snapshot_path(store)
    data = target.read_bytes()
    lo, hi = _record_range(data, "positions", 3)
    target.write_bytes(_flip(data, (lo + hi) // 2))
    plate = snapmeta.open_plate(store)
    with pytest.raises(snapmeta.SnapshotCorruptError) as info:
        plate["A/2/1"]
    assert (info.value.section, info.value.index) == ("positions", 3)
    assert info.value.snapshot == str(target)
    assert "snapmeta build" in str(info.value)
    assert plate["A/2/0"].channel_names == ("DAPI", "GFP")  # damage stays local
    report = snapmeta.verify(store)
    assert not report.ok
    assert any("positions[3]" in p for p in report.problems)


def test_different_plate_copied_in(plates: dict[str, Path], tmp_path: Path) -> None:
    """In-process view of the copied-snapshot case: warning, then A's own metadata."""
    store = _copy_store(plates["v05"], tmp_path / "store.zarr")
    shutil.copyfile(_format.snapshot_path(plates["other"]), _format.snapshot_path(store))
    truth = json_truth(store)
    with pytest.warns(SnapshotStaleWarning):
        plate = snapmeta.open_plate(store)
    # the root document differs, so the whole plate is served from JSON, silently now
    assert list(plate) == truth["paths"]
    assert plate.name == truth["name"]
    assert position_view(plate["B/3/1"]) == truth["positions"]["B/3/1"]
    with pytest.warns(SnapshotStaleWarning), pytest.raises(PositionNotFoundError):
        snapmeta.open_plate(store)["C/4/0"]  # exists only in the other plate
    with pytest.raises(snapmeta.StaleSnapshotError) as info:
        snapmeta.open_position(store, "A/1/0", on_stale="raise")
    assert "zarr.json" in info.value.changed


# ---------------------------------------------------------------------------
# fuzz


def _fuzz(
    plates: dict[str, Path], work: Path, count: int, seeds: dict[str, int]
) -> collections.Counter[str]:
    jobs = []
    for name, seed in seeds.items():
        store = _copy_store(plates[name], work / f"{name}.zarr")
        original = work / f"{name}.original.arrow"
        shutil.copyfile(_format.snapshot_path(store), original)
        jobs.append(
            {
                "kind": "fuzz",
                "store": str(store),
                "original": str(original),
                "seed": seed,
                "start": 0,
                "stop": count,
            }
        )
    results = run_jobs(jobs, timeout=max(300.0, count * 0.5))
    tally: collections.Counter[str] = collections.Counter()
    bad = []
    for per_job in results:
        assert len(per_job) == count
        for i, r in sorted(per_job.items()):
            tally[r["outcome"]] += 1
            if r["outcome"] == "error":
                tally[f"error:{r['error']}"] += 1
            if r.get("stale_warning"):
                tally["stale-fallback"] += 1
            if r.get("verify_ok"):
                tally["verify-ok"] += 1
                if r["outcome"] != "correct":
                    bad.append((i, "verify ok but a read failed", r))
            if r["outcome"] in ("wrong", "other", "crash"):
                bad.append((i, r["outcome"], r))
    total = sum(tally[k] for k in ("correct", "error", "wrong", "other", "crash"))
    print(
        f"\nfuzz: {total} mutants tried: " + ", ".join(f"{k}={v}" for k, v in sorted(tally.items()))
    )
    for i, what, r in bad[:15]:
        print(f"  mutant {i} ({r['label']}): {what}: {_describe(r)}")
    assert total == count * len(seeds)
    assert not bad, f"{len(bad)} mutants gave a wrong answer, an undocumented error or a crash"
    return tally


def _describe(result: dict[str, Any]) -> str:
    if result["outcome"] == "crash":
        frames = [
            line.strip()
            for line in result["stderr"].splitlines()
            if line.strip().startswith("File") and "snapmeta" in line
        ]
        return f"rc={result['returncode']} hung={result['hung']} at {frames[:2]}"
    failed = {k: v for k, v in result.get("ops", {}).items() if v[0] not in ("ok", "error")}
    return f"{failed} verify={result.get('verify')}"


def test_fuzz_mutants(plates: dict[str, Path], tmp_path: Path) -> None:
    """300 seeded mutants (every buffer, message and footer hit): no wrong answer, no crash."""
    _fuzz(plates, tmp_path, FUZZ_DEFAULT, {"v05": 1, "v04": 2})


@pytest.mark.slow
@slow
def test_fuzz_mutants_large(plates: dict[str, Path], tmp_path: Path) -> None:
    _fuzz(plates, tmp_path, FUZZ_SLOW, {"v05": 11, "v04": 12})


def test_crc_detects_every_single_byte_change_of_a_record(plates: dict[str, Path]) -> None:
    """CRC-32 catches every change confined to one record (the basis of 'never wrong')."""
    data = _format.snapshot_path(plates["v05"]).read_bytes()
    lo, hi = _record_range(data, "positions", 0)
    record = data[lo:hi]
    crc = zlib.crc32(record)
    for at in range(len(record)):
        for delta in (1, 0x80, 0xFF):
            changed = bytearray(record)
            changed[at] = (changed[at] + delta) % 256
            assert zlib.crc32(bytes(changed)) != crc
