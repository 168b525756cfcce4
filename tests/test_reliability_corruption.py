"""Damaged snapshots: a documented error or the right answer, never a crash or a lie.

Every damaged file is read in a *subprocess* (a batch of files per process),
so a segfault in a reader is counted as a failure instead of killing pytest.
The worker (:func:`_worker`) installs each damaged file as the store's
snapshot (the chunk ``.snapmeta/0``), runs every read of the public API (plate
facts and lists, iteration, every well, every position through ``plate[path]``
and through ``open_position`` with its levels, arrays and attributes, missing
keys) plus ``verify``, and compares every value that comes back with the
plate's true metadata, read independently from its JSON documents with
``json`` and zarr.

Outcomes per damaged file: ``correct`` (every read right; a stale warning is
allowed), ``error`` (some reads raised a documented ``SnapmetaError``, the
others were right), ``wrong`` (a read returned wrong metadata, or claimed an
existing position does not exist), ``other`` (an undocumented exception
escaped) and ``crash`` (the reader process died or hung).

Damage comes three ways:

* crafted files: truncations, flipped bytes in the Arrow messages, the footer
  and every section, foreign files, other format versions (format 1
  included), another plate's snapshot;
* crafted *valid-CRC* files that break a rule of format 2 (docs/format.md):
  entries re-sealed after their payload was changed to values of the wrong
  type or out of range, shared entries swapped, a lookup slot pointing at
  another node, a plate entry lying about its counts, a leading schema
  message that differs from the footer's, nulls, offsets out of bounds. They
  are built from the public rules (``entry = crc32(name NUL payload) LE ||
  msgpack payload``) with pyarrow;
* a seeded byte-mutation fuzz over every Arrow buffer, both IPC messages,
  the footer and the trailer.

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
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from conftest import snapshot_file

import snapmeta
from snapmeta._format import crc32, pack, seal, unpack
from snapmeta.errors import PositionNotFoundError, SnapmetaError, SnapshotStaleWarning
from snapmeta.testing import write_plate

HERE = Path(__file__).resolve().parent
GOLDEN_V1 = HERE / "data" / "golden" / "v1" / "plate-0.5.ome.zarr" / ".snapmeta.arrow"
SLOW = bool(os.environ.get("SNAPMETA_SLOW"))
slow = pytest.mark.skipif(not SLOW, reason="large run: set SNAPMETA_SLOW=1")

# Default sample: mutants per plate (two plates, one worker process each).
FUZZ_DEFAULT = 150
FUZZ_SLOW = 5000
MISSING = "Z/99/0"
MISSING_WELL = "Z/99"

# Regressions found by this module in format 1 (fixed in f2a9a55): typed columns
# read with to_pylist() before validation (segfaults, SystemError,
# UnicodeDecodeError, wrong paths from list(plate)), and ArrowNotImplementedError
# escaping open_file. Their format-2 counterparts are the "offsets" and "arrow"
# crafted cases below.


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
    wells: dict[str, Any] = {}
    for well in plate["wells"]:
        well_attrs = _attrs(store, well["path"], zf)
        images = _ome(well_attrs, zf)["well"]["images"]
        wells[well["path"]] = {
            "positions": [f"{well['path']}/{image['path']}" for image in images],
            "attrs": well_attrs,
        }
        for image in images:
            path = f"{well['path']}/{image['path']}"
            attrs = _attrs(store, path, zf)
            ome = _ome(attrs, zf)
            ms = ome["multiscales"][0]
            global_scale, global_translation = _transforms(ms.get("coordinateTransformations"))
            levels = []
            arrays = []
            for dataset in ms["datasets"]:
                scale, translation = _transforms(dataset["coordinateTransformations"])
                ndim = len(ms["axes"])
                scale = scale or [1.0] * ndim
                if translation is not None or global_translation is not None:
                    translation = translation or [0.0] * ndim
                    if global_scale is not None:
                        translation = [
                            t * s for t, s in zip(translation, global_scale, strict=True)
                        ]
                    if global_translation is not None:
                        translation = [
                            t + g for t, g in zip(translation, global_translation, strict=True)
                        ]
                if global_scale is not None:
                    scale = [a * b for a, b in zip(scale, global_scale, strict=True)]
                node = store / path / dataset["path"]
                doc = _read_json(node / ("zarr.json" if zf == 3 else ".zarray"))
                levels.append(
                    {
                        "path": dataset["path"],
                        "shape": doc["shape"],
                        "chunks": doc["chunk_grid"]["configuration"]["chunk_shape"]
                        if zf == 3
                        else doc["chunks"],
                        # numpy's name: "uint16" for zarr 3's uint16 and zarr 2's <u2
                        "dtype": str(np.dtype(doc["data_type"] if zf == 3 else doc["dtype"])),
                        "scale": scale,
                        "translation": translation,
                    }
                )
                array_ = zarr.open_array(
                    zstore, path=f"{path}/{dataset['path']}", mode="r", zarr_format=zf
                )
                arrays.append({"path": array_.path, "metadata": array_.metadata.to_dict()})
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
        "field_count": plate.get("field_count"),
        "attrs": root,
        "acquisitions": [
            [a["id"], a.get("name"), a.get("maximumfieldcount")]
            for a in plate.get("acquisitions", [])
        ],
        "well_views": wells,
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
        array_ = pos[i]
        arrays.append({"path": array_.path, "metadata": array_.metadata.to_dict()})
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


def _missing_verdict(fn: Callable[[], Any]) -> list[Any]:
    try:
        value = fn()
    except PositionNotFoundError:
        return ["ok"]
    except SnapmetaError as exc:
        return ["error", type(exc).__name__, str(exc)[:300]]
    except Exception as exc:
        return ["other", type(exc).__name__, str(exc)[:300]]
    return ["wrong", f"found a node that does not exist: {value!r}"]


def observe(
    store: Path, truth: dict[str, Any], *, check: str = "stat", on_stale: str = "fallback"
) -> dict[str, Any]:
    """Run every read of the public API on ``store``; a verdict per read."""
    from snapmeta._open import clear_cache

    clear_cache()
    ops: dict[str, list[Any]] = {}
    options = {"check": check, "on_stale": on_stale}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            plate = snapmeta.open_plate(store, **options)  # type: ignore[arg-type]
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
                ("field_count", lambda: plate.field_count, truth["field_count"]),
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
            for well, expected in truth["well_views"].items():
                ops[f"well:{well}"] = _verdict(
                    lambda well=well: {
                        "positions": list(plate.well(well).positions),
                        "attrs": plate.well(well).attrs,
                    },
                    expected,
                )
            for path, expected in truth["positions"].items():
                ops[path] = _verdict(lambda path=path: position_view(plate[path]), expected)
            ops["missing"] = _missing_verdict(lambda: plate[MISSING])
            ops["missing-well"] = _missing_verdict(lambda: plate.well(MISSING_WELL))
        # the worker's entry point: its own way to the snapshot (cached mapping)
        for path, expected in truth["positions"].items():
            ops[f"open:{path}"] = _verdict(
                lambda path=path: position_view(snapmeta.open_position(store, path, **options)),  # type: ignore[arg-type]
                expected,
            )
        ops["open:missing"] = _missing_verdict(
            lambda: snapmeta.open_position(store, MISSING, **options)  # type: ignore[arg-type]
        )
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
# the file's parts, read with pyarrow (regions for mutations, sections for crafting)


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

    def walk(array_: pa.Array, name: str) -> Iterator[tuple[str, int, int]]:
        t = array_.type
        if pa.types.is_list(t):
            own, children = 2, [(array_.values, f"{name}[]")]
        elif pa.types.is_string(t) or pa.types.is_binary(t):
            own, children = 3, []
        else:  # uint32, fixed_size_binary: validity and values
            own, children = 2, []
        for i, b in enumerate(array_.buffers()[:own]):
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


class Parts:
    """A snapshot's sections as Python values, to change and reassemble (crafted files).

    Entries are sealed by the public rule of docs/format.md: ``crc32(name NUL
    payload)`` little-endian, then the MessagePack payload.
    """

    def __init__(self, data: bytes) -> None:
        reader = ipc.open_file(pa.py_buffer(data))
        self.schema = reader.schema
        batch = reader.get_batch(0)
        self.values: dict[str, Any] = {n: batch.column(n)[0].as_py() for n in self.schema.names}

    def index(self, path: str) -> int:
        return int(self.values["paths"].index(path))

    def payload(self, section: str, index: int) -> Any:
        return unpack(self.values[section][index][4:])

    def node(self, path: str) -> Any:
        return self.payload("nodes", self.index(path))

    def set_node(self, path: str, value: Any = None, *, raw: bytes | None = None) -> Parts:
        payload = pack(value) if raw is None else raw
        self.values["nodes"][self.index(path)] = seal(path, payload)
        return self

    def set_shared(self, section: str, index: int, value: Any) -> Parts:
        self.values[section][index] = seal(f"{section}/{index}", pack(value))
        return self

    def plate(self) -> dict[str, Any]:
        return unpack(self.values["plate"][4:])  # type: ignore[no-any-return]

    def set_plate(self, plate: dict[str, Any]) -> Parts:
        self.values["plate"] = seal("plate", pack(plate))
        return self

    def fix_checksums(self) -> Parts:
        """Recompute the plate entry's section CRCs for the current sections."""
        plate = self.plate()
        plate["checksums"] = {
            "lookup": crc32(array("I", self.values["lookup"]).tobytes()),
            "paths": crc32(b"".join(p.encode() + b"\0" for p in self.values["paths"])),
            "contents": crc32(b"".join(self.values["contents"])),
        }
        return self.set_plate(plate)

    def slot_of(self, path: str) -> int:
        slots = self.values["lookup"]
        mask = len(slots) - 1
        slot = zlib.crc32(path.encode()) & mask
        while slots[slot] != self.index(path) + 1:
            assert slots[slot] != 0, path
            slot = (slot + 1) & mask
        return slot

    def build(self, schema: pa.Schema | None = None) -> bytes:
        schema = schema or self.schema  # another schema: same columns, in the same order
        columns = [
            pa.array([self.values[name]], type=f.type)
            for name, f in zip(self.schema.names, schema, strict=True)
        ]
        batch = pa.RecordBatch.from_arrays(columns, schema=schema)
        sink = pa.BufferOutputStream()
        with ipc.new_file(sink, schema) as writer:
            writer.write_batch(batch)
        return sink.getvalue().to_pybytes()


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
        target.symlink_to(target.with_name("does-not-exist"))
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
    target = snapshot_file(store)
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
    _add_attrs(path, "A/2", {"well-note": "bubbles", "qc": [0.5, None]})
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
# sanity: the reader itself, the mutations, the crafting


def test_reader_agrees_with_json_on_valid_snapshots(plates: dict[str, Path]) -> None:
    for name in ("v05", "v04", "other"):
        truth = json_truth(plates[name])
        result = observe(plates[name], truth)
        assert classify(result) == "correct", (name, result)
        assert not result["stale_warning"]
        assert result["verify"] == ["ok"]
        assert snapmeta.verify(plates[name]).ok


def test_mutations_are_deterministic_and_cover_every_buffer(plates: dict[str, Path]) -> None:
    data = snapshot_file(plates["v05"]).read_bytes()
    regions = file_regions(data)
    names = {name for name, _, _ in regions}
    assert {
        "magic",
        "schema-message",
        "batch-metadata",
        "footer",
        "trailer",
        "lookup#1",
        "lookup[]#1",
        "paths[]#1",
        "paths[]#2",
        "nodes[]#1",
        "nodes[]#2",
        "contents[]#1",
        "arrays[]#2",
        "templates[]#2",
        "images[]#2",
        "plate#1",
        "plate#2",
    } <= names
    schedule = region_schedule(regions)
    a = [mutate(data, regions, schedule, 7, i) for i in range(len(schedule))]
    b = [mutate(data, regions, schedule, 7, i) for i in range(len(schedule))]
    assert a == b
    assert all(m != data for m, _ in a)
    covered = {label.split(":")[0] for _, label in a}
    assert names <= covered


def test_reassembled_parts_read_as_the_original(plates: dict[str, Path], tmp_path: Path) -> None:
    """The crafting helper itself: unchanged parts make a snapshot snapmeta accepts."""
    store = _copy_store(plates["v05"], tmp_path / "store.zarr")
    target = snapshot_file(store)
    parts = Parts(target.read_bytes())
    assert parts.values["plate"][:4] == crc32(b"plate\0", parts.values["plate"][4:]).to_bytes(
        4, "little"
    )
    assert parts.fix_checksums().plate() == Parts(target.read_bytes()).plate()
    target.write_bytes(parts.build())
    truth = json_truth(store)
    result = observe(store, truth)
    assert classify(result) == "correct", result
    assert result["verify"] == ["ok"]


# ---------------------------------------------------------------------------
# crafted damage


def _buffer(data: bytes, name: str) -> tuple[int, int]:
    for region, start, end in file_regions(data):
        if region == name:
            return start, end
    raise KeyError(name)


def _entry_range(data: bytes, section: str, index: int) -> tuple[int, int]:
    """Byte range of one entry (CRC and payload) of a list<binary> section in the file."""
    start, _ = _buffer(data, f"{section}[]#1")
    data_at, _ = _buffer(data, f"{section}[]#2")
    lo, hi = struct.unpack_from("<ii", data, start + 4 * index)
    return data_at + lo, data_at + hi


def _poke(data: bytes, at: int, new: bytes) -> bytes:
    out = bytearray(data)
    out[at : at + len(new)] = new
    return bytes(out)


def _flip(data: bytes, at: int) -> bytes:
    return _poke(data, at, bytes([data[at] ^ 0xFF]))


def _with_metadata(data: bytes, metadata: dict[bytes, bytes] | None) -> bytes:
    """The same batch under the same schema with other schema metadata."""
    parts = Parts(data)
    return parts.build(
        parts.schema.with_metadata(metadata) if metadata else parts.schema.remove_metadata()
    )


def _with_leading_schema(data: bytes, other: bytes) -> bytes:
    """``data`` with the leading schema message of ``other`` (same length)."""
    (length,) = struct.unpack_from("<i", data, 12)
    (other_length,) = struct.unpack_from("<i", other, 12)
    assert length == other_length, "the two schema messages must have the same length"
    return data[:8] + other[8 : 16 + length] + data[16 + length :]


def _nulls(data: bytes, column: str, *, item: bool) -> bytes:
    """A valid file whose ``column`` (or an item of it, with ``item``) is null."""
    parts = Parts(data)
    columns = []
    for field in parts.schema:
        value = parts.values[field.name]
        if field.name != column:
            columns.append(pa.array([value], type=field.type))
        elif not item:
            columns.append(pa.array([None], type=field.type))
        else:
            items = pa.array([*value[:1], None, *value[2:]], type=field.type.value_type)
            offsets = pa.array([0, len(items)], type=pa.int32())
            columns.append(pa.ListArray.from_arrays(offsets, items, type=field.type))
    batch = pa.RecordBatch.from_arrays(columns, schema=parts.schema)
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, parts.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _batches(data: bytes, rows: list[int]) -> bytes:
    """The snapshot's row repeated: one batch per entry of ``rows`` with that many rows."""
    parts = Parts(data)
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, parts.schema) as writer:
        for n in rows:
            columns = [pa.array([parts.values[f.name]] * n, type=f.type) for f in parts.schema]
            writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=parts.schema))
    return sink.getvalue().to_pybytes()


def _bitwidth_offset(data: bytes) -> int:
    """Offset in the footer of an Int type's bitWidth (32): found by trying each candidate."""
    regions = {name: (s, e) for name, s, e in file_regions(data)}
    start, end = regions["footer"]
    for at in range(start, end - 3):
        if data[at : at + 4] != b"\x20\x00\x00\x00":
            continue
        try:
            ipc.open_file(pa.py_buffer(_poke(data, at, b"\x48"))).schema  # noqa: B018
        except pa.ArrowNotImplementedError:
            return at
        except pa.ArrowException:
            continue
    raise AssertionError("no bitWidth field found in the footer")


def _merge_patch(patch: list[Any], changes: dict[int, Any]) -> list[Any]:
    merged = dict(zip(patch[0::2], patch[1::2], strict=True))
    merged.update(changes)
    out: list[Any] = []
    for key in sorted(merged):
        out += [key, merged[key]]
    return out


def _crafted_cases(plates: dict[str, Path], work: Path) -> list[dict[str, Any]]:
    valid = snapshot_file(plates["v05"]).read_bytes()
    other = snapshot_file(plates["other"]).read_bytes()
    n = len(valid)
    regions = {name: (s, e) for name, s, e in file_regions(valid)}
    footer = regions["footer"]
    batch_meta = regions["batch-metadata"]
    base = Parts(valid)
    cases: list[dict[str, Any]] = []

    def parts() -> Parts:
        return Parts(valid)

    group = "damage"

    def add(
        label: str, data: bytes | None = None, expect: tuple[Any, ...] = ("safe",), **extra: Any
    ) -> None:
        case: dict[str, Any] = {"label": label, "expect": list(expect), "group": group, **extra}
        if data is not None:
            path = work / f"case-{len(cases)}.arrow"
            path.write_bytes(data)
            case["file"] = str(path)
        cases.append(case)

    corrupt = ("open_error", "SnapshotCorruptError")
    local = ("local", "A/2/1")
    node = base.index("A/2/1")
    well = base.index("A/2")
    position = base.node("A/2/1")
    image = base.payload("images", position[0])
    template = base.payload("templates", image[0])
    assert base.plate()["zarr_format"] == 3 and len(position[3]) == 4  # group, well, 2 levels

    # --- the container ------------------------------------------------------------
    add("zero-length", b"", corrupt)
    for cut in sorted(
        {1, 6, 8, 64, batch_meta[0], batch_meta[1], n // 2, footer[0], n - 10, n - 6, n - 1}
    ):
        add(f"truncated to {cut} of {n} bytes", valid[:cut], corrupt)
    add("trailing magic damaged", _flip(valid, n - 1), corrupt)
    for k in (1, 9, 10):  # 9 and 10: the leading schema message ends early (fuzz, seed 11)
        add(f"first {k} bytes deleted", valid[k:], corrupt)
    add("trailing magic of another format", valid[:-6] + b"PAR1\0\0", corrupt)
    add("leading magic of another format", b"PAR1\0\0" + valid[6:], ("safe",))
    add("both magics of another format", b"PAR1\0\0" + valid[6:-6] + b"PAR1\0\0", corrupt)
    add("footer length damaged", _poke(valid, n - 10, struct.pack("<i", n * 2)), corrupt)
    add("footer length zero", _poke(valid, n - 10, struct.pack("<i", 0)), corrupt)
    for k, at in enumerate(range(footer[0], footer[1], max(1, (footer[1] - footer[0]) // 12))):
        add(f"footer byte {k} flipped", _flip(valid, at), ("safe",))
    for k, at in enumerate(
        range(batch_meta[0], batch_meta[1], max(1, (batch_meta[1] - batch_meta[0]) // 12))
    ):
        add(f"batch metadata byte {k} flipped", _flip(valid, at), ("safe",))
    for at in (0, 3, 7, 20):
        add(f"header byte {at} flipped", _flip(valid, at), ("safe",))
    add("two snapshots concatenated", valid + valid, ("safe",))
    add("two record batches", _batches(valid, [1, 1]), corrupt)
    add("a batch of two rows", _batches(valid, [2]), corrupt)
    add("a batch of no rows", _batches(valid, [0]), corrupt)
    add(
        "footer integer width damaged",
        _poke(valid, _bitwidth_offset(valid), b"\x48"),
        corrupt,
        regression="arrow",
    )

    # --- entries damaged in place ---------------------------------------------------
    lo, hi = _entry_range(valid, "nodes", node)
    add("position entry payload damaged", _flip(valid, (lo + hi) // 2), local)
    add("position entry CRC damaged", _flip(valid, lo), local)
    lo, hi = _entry_range(valid, "nodes", well)
    add("well entry damaged", _flip(valid, (lo + hi) // 2), ("has_error",))
    for section in ("arrays", "templates", "images"):
        lo, hi = _entry_range(valid, section, 0)
        add(f"{section}[0] damaged", _flip(valid, (lo + hi) // 2), ("has_error",))
    start, end = _buffer(valid, "plate#2")
    add("plate entry damaged", _flip(valid, (start + end) // 2), corrupt)
    start, end = _buffer(valid, "paths[]#2")
    add("paths bytes changed (still UTF-8)", _poke(valid, start, b"Q"), ("has_error",))
    add("paths not UTF-8", _poke(valid, start + 2, b"\xff"), ("has_error",))
    lo = start + sum(len(p.encode()) for p in base.values["paths"][: base.index("A/1/1")])
    assert valid[lo : lo + 5] == b"A/1/1"
    add("a position path changed (A/1/1 to A/1/7)", _poke(valid, lo + 4, b"7"), ("has_error",))
    start, end = _buffer(valid, "contents[]#1")
    add("a digest damaged", _flip(valid, start + 5), ("verify_problem",))
    start, end = _buffer(valid, "lookup[]#1")
    slot = base.slot_of("A/2/1")
    add("lookup slot emptied", _poke(valid, start + 4 * slot, b"\0\0\0\0"), ("has_error",))
    add(
        "lookup slot out of range",
        _poke(valid, start + 4 * slot, struct.pack("<I", 10_000)),
        ("has_error",),
    )

    # --- offsets out of bounds (format 1's "typed column" regressions) ---------------
    for section in ("nodes", "paths"):
        start, _ = _buffer(valid, f"{section}[]#1")
        add(
            f"{section} offset negative",
            _poke(valid, start + 4 * (node + 1), struct.pack("<i", -7)),
            ("damaged",),
            regression="offsets",
        )
        add(
            f"{section} offset huge",
            _poke(valid, start + 4 * (node + 1), struct.pack("<i", 1 << 30)),
            ("damaged",),
            regression="offsets",
        )
        add(
            f"{section} offsets decreasing",
            _poke(valid, start + 4 * (node + 1), struct.pack("<i", 1)),
            ("damaged",),
            regression="offsets",
        )
    for column in ("nodes", "lookup", "contents"):
        start, _ = _buffer(valid, f"{column}#1")
        add(
            f"{column} list offsets past the values",
            _poke(valid, start + 4, struct.pack("<i", 1 << 20)),
            ("damaged",),
            regression="offsets",
        )
    start, _ = _buffer(valid, "plate#1")
    add(
        "plate offsets past the data",
        _poke(valid, start + 4, struct.pack("<i", 1 << 20)),
        corrupt,
        regression="offsets",
    )

    # --- valid CRC, values of the wrong type or out of range: position entry ----------
    group = "valid-crc"
    image_i, patch, acquisition, fps = position
    crafted_nodes: list[tuple[str, Any]] = [
        ("payload a map", {"image": image_i}),
        ("payload an integer", 7),
        ("payload of 3 items", [image_i, patch, acquisition]),
        ("image index out of range", [len(base.values["images"]), patch, acquisition, fps]),
        ("image index a string", ["0", patch, acquisition, fps]),
        ("image index negative", [-1, patch, acquisition, fps]),
        ("patch of odd length", [image_i, [0], acquisition, fps]),
        ("patch index out of range", [image_i, [len(template[1]), 1], acquisition, fps]),
        ("patch indexes decreasing", [image_i, [3, "a", 1, "b"], acquisition, fps]),
        ("patch value a list", [image_i, [0, [1, 2]], acquisition, fps]),
        ("patch value a map", [image_i, [0, {"a": 1}], acquisition, fps]),
        ("patch a map", [image_i, {"0": 1}, acquisition, fps]),
        ("acquisition a string", [image_i, patch, "1", fps]),
        ("acquisition a float", [image_i, patch, 1.0, fps]),
        ("fingerprints not a list", [image_i, patch, acquisition, 5]),
        ("a fingerprint of 2 values", [image_i, patch, acquisition, [fps[0][:2], *fps[1:]]]),
        (
            "fingerprint content out of range",
            [image_i, patch, acquisition, [[fps[0][0], fps[0][1], 10_000], *fps[1:]]],
        ),
        (
            "fingerprint size negative",
            [image_i, patch, acquisition, [[-1, fps[0][1], fps[0][2]], *fps[1:]]],
        ),
        (
            "fingerprint mtime a float",
            [image_i, patch, acquisition, [[fps[0][0], 1.5, fps[0][2]], *fps[1:]]],
        ),
        ("a fingerprint missing", [image_i, patch, acquisition, fps[:-1]]),
        ("a fingerprint too many", [image_i, patch, acquisition, [*fps, fps[-1]]]),
        ("the well fingerprint nil", [image_i, patch, acquisition, [None, *fps[1:]]]),
    ]
    for label, value in crafted_nodes:
        add(f"crafted position entry: {label}", parts().set_node("A/2/1", value).build(), local)
    good = pack(position)
    for label, raw in [
        ("trailing bytes after the payload", good + b"\xc0"),
        ("payload cut short", good[:-1]),
        ("an unknown ext type", msgpack.packb(msgpack.ExtType(5, b"x"))),
        ("ext type 1 (big integer) not a number", msgpack.packb(msgpack.ExtType(1, b"1x"))),
        ("empty payload", b""),
    ]:
        add(f"crafted position entry: {label}", parts().set_node("A/2/1", raw=raw).build(), local)
    # leaves the format forbids: bin values, and a level path that leaves the position
    path_leaf = image[3][0][0]
    label_leaf = image[2][0]
    for label, changes in [
        ("a bin leaf (no bin values occur)", {label_leaf: b"DAPI"}),
        ("a level path '../..'", {path_leaf: "../.."}),
        ("a level path with a NUL", {path_leaf: "0\0"}),
        ("a level path not a string", {path_leaf: 0}),
    ]:
        value = [image_i, _merge_patch(patch, changes), acquisition, fps]
        add(f"crafted position entry: {label}", parts().set_node("A/2/1", value).build(), local)

    # --- valid CRC, wrong values: well entry ----------------------------------------------
    w_template, w_patch, w_count, w_fps = base.node("A/2")
    for label, value in [
        ("count 0", [w_template, w_patch, 0, w_fps]),
        ("count past the nodes", [w_template, w_patch, 10_000, w_fps]),
        ("count too large by one", [w_template, w_patch, w_count + 1, w_fps]),
        ("template out of range", [len(base.values["templates"]), w_patch, w_count, w_fps]),
        ("two fingerprints", [w_template, w_patch, w_count, [*w_fps, *w_fps]]),
        ("fingerprint nil", [w_template, w_patch, w_count, [None]]),
    ]:
        add(
            f"crafted well entry: {label}",
            parts().set_node("A/2", value).build(),
            ("has_error",),
        )

    # --- valid CRC, wrong values: shared entries ----------------------------------------
    for section in ("templates", "images", "arrays"):
        assert len(base.values[section]) >= 2, section
        p = parts()
        p.values[section][0], p.values[section][1] = p.values[section][1], p.values[section][0]
        add(f"{section}[0] and [1] swapped", p.build(), ("has_error",))
    p = parts()
    a, b = base.index("A/1/0"), base.index("A/1/1")
    p.values["nodes"][a], p.values["nodes"][b] = p.values["nodes"][b], p.values["nodes"][a]
    add("two node entries swapped", p.build(), ("has_error",))
    p = parts()
    for key in ("nodes", "paths"):
        p.values[key][a], p.values[key][b] = p.values[key][b], p.values[key][a]
    add("two nodes swapped with their paths", p.build(), ("has_error",))
    t_index = image[0]
    leaves = len(template[1])
    for label, value in [
        ("image template out of range", [len(base.values["templates"]), *image[1:]]),
        ("image axis reference out of range", [image[0], [[leaves, None, None]], *image[2:]]),
        ("image channel reference a string", [image[0], image[1], ["0"], *image[3:]]),
        ("image without levels", [*image[:3], [], *image[4:]]),
        (
            "image level array out of range",
            [*image[:3], [[lv[0], 99, lv[2], lv[3]] for lv in image[3]], *image[4:]],
        ),
        (
            "image transform past the leaves",
            [*image[:3], [[lv[0], lv[1], leaves - 1, lv[3]] for lv in image[3]], *image[4:]],
        ),
        ("image of 5 items", image[:5]),
    ]:
        add(
            f"crafted images entry: {label}",
            parts().set_shared("images", position[0], value).build(),
            ("has_error",),
        )
    for label, value in [
        ("template defaults do not match the shape", [template[0], template[1][:-1]]),
        ("template default a list", [template[0], [[1], *template[1][1:]]]),
        ("template not a pair", [template[0]]),
    ]:
        add(
            f"crafted templates entry: {label}",
            parts().set_shared("templates", t_index, value).build(),
            ("has_error",),
        )
    level_array = image[3][0][1]
    array_doc = base.payload("arrays", level_array)
    for label, value in [
        ("array document a list", [1, 2]),
        ("array document empty", {}),
        ("array document without a shape", {k: v for k, v in array_doc.items() if k != "shape"}),
        ("array document shape a string", {**array_doc, "shape": "big"}),
    ]:
        add(
            f"crafted arrays entry: {label}",
            parts().set_shared("arrays", level_array, value).build(),
            ("has_error",),
        )

    # --- valid CRC, wrong values: the plate entry ------------------------------------------
    plate = base.plate()

    def with_plate(**changes: Any) -> bytes:
        return parts().set_plate({**plate, **changes}).build()

    add("plate entry: node count too large", with_plate(positions=plate["positions"] + 1), corrupt)
    add(
        "plate entry: counts lying, sum kept",
        with_plate(wells=plate["wells"] + 1, positions=plate["positions"] - 1),
        ("never_wrong",),
    )
    add("plate entry: zarr_format 4", with_plate(zarr_format=4), corrupt)
    add("plate entry: zarr_format true", with_plate(zarr_format=True), corrupt)
    add("plate entry: ngff_version a number", with_plate(ngff_version=0.5), corrupt)
    add(
        "plate entry: root content out of range",
        with_plate(root=[*plate["root"][:2], 999]),
        corrupt,
    )
    add("plate entry: a checksum missing", with_plate(checksums={"lookup": 1, "paths": 2}), corrupt)
    add(
        "plate entry: keys reordered",
        parts().set_plate(dict(reversed(plate.items()))).build(),
        corrupt,
    )
    add("plate entry: an extra key", parts().set_plate({**plate, "extra": 1}).build(), corrupt)
    add("plate entry: a map of 2", parts().set_plate({"wells": 1, "positions": 2}).build(), corrupt)
    add("plate entry: a list", parts().set_plate([1, 2, 3]).build(), corrupt)
    add(
        "plate entry: the plate object with its wells",
        with_plate(plate={**plate["plate"], "wells": []}),
        corrupt,
    )
    for label, value in [
        ("without rows", {k: v for k, v in plate["plate"].items() if k != "rows"}),
        ("rows a string", {**plate["plate"], "rows": "AB"}),
        ("a row without a name", {**plate["plate"], "rows": [{"nom": "A"}, {"name": "B"}]}),
        ("acquisitions a map", {**plate["plate"], "acquisitions": {"id": 0}}),
        ("an acquisition without an id", {**plate["plate"], "acquisitions": [{"name": "x"}]}),
    ]:
        add(f"plate entry: the plate object {label}", with_plate(plate=value), ("never_wrong",))
    add(
        "plate entry: lookup checksum wrong",
        with_plate(checksums={**plate["checksums"], "lookup": 1}),
        ("verify_problem",),
    )
    add(
        "plate entry: location of another plate",
        with_plate(location="/elsewhere/plate.zarr"),
        ("safe",),
    )
    add("plate entry: mtime base moved", with_plate(mtime_base=plate["mtime_base"] + 1), ("safe",))

    # --- valid CRC: digests that match no document ---------------------------------------
    p = parts()
    p.values["contents"] = [bytes(16)] * len(p.values["contents"])
    add("every digest zeroed, section CRC recomputed", p.fix_checksums().build(), ("safe",))
    add(
        "the same, digest check",
        p.build(),
        ("stale_fallback",),
        options={"check": "digest"},
    )

    # --- valid CRC: a lookup slot pointing to another node --------------------------------
    p = parts()
    p.values["lookup"][slot] = base.index("B/1") + 1
    add("lookup slot pointing to another node", p.build(), ("has_error",))
    add("the same, lookup checksum recomputed", p.fix_checksums().build(), ("never_wrong",))
    p = parts()
    p.values["lookup"][slot] = node + 1 + 1  # A/2/1's slot names the next node
    add("lookup slot pointing to the next node", p.fix_checksums().build(), ("never_wrong",))

    # --- the schema ------------------------------------------------------------------------
    group = "damage"
    meta = {b"snapmeta.format": b"2"}
    add(
        "future format version",
        _with_metadata(valid, {b"snapmeta.format": b"3"}),
        ("open_error", "UnsupportedFormatVersionError"),
    )
    add(
        "format version not a number",
        _with_metadata(valid, {b"snapmeta.format": b"2.0"}),
        ("open_error", "UnsupportedFormatVersionError"),
    )
    add("no snapmeta metadata", _with_metadata(valid, None), ("open_error", "SnapshotFormatError"))
    add("an extra metadata key", _with_metadata(valid, {**meta, b"x": b"y"}), corrupt)
    renamed = parts().build(
        pa.schema(
            [f.with_name("pathz") if f.name == "paths" else f for f in base.schema], metadata=meta
        )
    )
    add("a column renamed", renamed, corrupt)
    add("leading schema: a column renamed", _with_leading_schema(valid, renamed), corrupt)
    add(
        "leading schema: another format version",
        _with_leading_schema(valid, _with_metadata(valid, {b"snapmeta.format": b"3"})),
        corrupt,
    )
    add(
        "leading schema: list items named otherwise",
        _with_leading_schema(
            valid,
            parts().build(
                pa.schema(
                    [
                        f.with_type(pa.list_(pa.field("elem", pa.binary(), nullable=False)))
                        if f.name == "nodes"
                        else f
                        for f in base.schema
                    ],
                    metadata=meta,
                )
            ),
        ),
        corrupt,
    )
    add(
        "lookup as list<uint64>",
        Parts(valid).build(
            pa.schema(
                [
                    f.with_type(pa.list_(pa.field("item", pa.uint64(), nullable=False)))
                    if f.name == "lookup"
                    else f
                    for f in base.schema
                ],
                metadata=meta,
            )
        ),
        corrupt,
    )

    # --- nulls -----------------------------------------------------------------------------
    add("plate entry null", _nulls(valid, "plate", item=False), corrupt)
    for column in ("nodes", "paths", "lookup"):
        add(f"{column} list null", _nulls(valid, column, item=False), corrupt)
    for column in ("nodes", "paths", "images"):
        add(f"an item of {column} null", _nulls(valid, column, item=True), ("damaged",))

    # --- other files -----------------------------------------------------------------------
    rng = random.Random(4)
    add("random bytes", bytes(rng.randrange(256) for _ in range(4096)), corrupt)
    add("a JSON document", json.dumps({"zarr_format": 3}).encode(), corrupt)
    table = pa.table({"x": [1, 2, 3]})
    stream = pa.BufferOutputStream()
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
    add(
        "a format-1 snapshot",
        GOLDEN_V1.read_bytes(),
        ("open_error", "UnsupportedFormatVersionError"),
    )
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
    return cases


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


def _open_errors(ops: dict[str, list[Any]]) -> set[str]:
    return {v[1] for k, v in ops.items() if k == "open" or k.startswith("open:")}


def _check_expectation(case: dict[str, Any], result: dict[str, Any]) -> None:
    assert result["outcome"] not in ("crash", "wrong", "other"), result
    assert not result.get("other_warnings"), result
    kind, *args = case["expect"]
    ops = result["ops"]
    if kind == "open_error":
        # every way in fails with the documented error, before any metadata
        assert set(ops) == {"open"} | {k for k in ops if k.startswith("open:")}, result
        assert _open_errors(ops) == {args[0]}, result
        assert all(v[0] == "error" for v in ops.values()), result
        assert result["verify"][0] == "problems", result
    elif kind == "local":
        (path,) = args
        damaged = {path, f"open:{path}", "contains"}
        assert ops[path][:2] == ["error", "SnapshotCorruptError"], result
        assert ops[f"open:{path}"][:2] == ["error", "SnapshotCorruptError"], result
        assert all(v == ["ok"] for k, v in ops.items() if k not in damaged), result
        assert result["verify"][0] == "problems", result
    elif kind == "has_error":
        assert any(v[0] == "error" for v in ops.values()), result
        assert result["verify"][0] == "problems", result
    elif kind in ("damaged", "never_wrong", "verify_problem"):
        # a documented error or the right answer; verify reports the damage
        assert result["outcome"] in ("correct", "error"), result
        assert result["verify"][0] == "problems", result
    elif kind == "stale_fallback":
        assert result["outcome"] == "correct", result
        assert result["stale_warning"], result
        assert result["verify"][0] == "problems", result
    else:
        assert kind == "safe", kind
        assert result["outcome"] in ("correct", "error"), result


def _check_group(crafted: list[tuple[dict[str, Any], dict[str, Any]]], group: str) -> None:
    failures = []
    cases = [(case, result) for case, result in crafted if case["group"] == group]
    for case, result in cases:
        try:
            _check_expectation(case, result)
        except AssertionError:
            bad = {k: v for k, v in result.get("ops", {}).items() if v[0] != "ok"}
            failures.append(
                f"{case['label']} (expected {case['expect']}): outcome {result['outcome']}, "
                f"verify {result.get('verify')}, {json.dumps(bad)[:600]}"
                + (f" {result.get('stderr', '')[-600:]}" if result["outcome"] == "crash" else "")
            )
    outcomes = collections.Counter(r["outcome"] for _, r in cases)
    print(f"\ncrafted snapshots ({group}): {len(cases)} cases: {dict(outcomes)}")
    assert not failures, f"{len(failures)} crafted cases failed:\n" + "\n".join(failures)


def test_crafted_damage(crafted: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Every damaged, truncated or foreign file gives its documented outcome."""
    _check_group(crafted, "damage")


def test_crafted_valid_crc_files(crafted: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Entries re-sealed with valid CRCs but values that break a rule of the format
    (types, ranges, swapped entries, lying counts, an inconsistent lookup): a
    documented error, never a wrong answer or another exception."""
    _check_group(crafted, "valid-crc")


def test_damaged_offsets_give_documented_errors(
    crafted: list[tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    bad = [(c["label"], r) for c, r in crafted if c.get("regression") == "offsets"]
    assert len(bad) >= 9
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
    target = snapshot_file(store)
    target.write_bytes(_with_metadata(target.read_bytes(), {b"snapmeta.format": b"3"}))
    with pytest.raises(snapmeta.UnsupportedFormatVersionError) as info:
        snapmeta.open_plate(store)
    assert info.value.found_version == "3"
    assert info.value.supported == (2,)
    assert "build" in str(info.value)
    assert isinstance(info.value, snapmeta.SnapshotFormatError)
    # a rebuild repairs it
    snapmeta.build_snapshot(store)
    assert snapmeta.open_plate(store)["A/1/0"].channel_names == ("DAPI", "GFP")


def test_format_1_snapshot_is_refused_then_replaced(
    plates: dict[str, Path], tmp_path: Path
) -> None:
    """Format 1 lived in PLATE/.snapmeta.arrow: found alone, it is refused with its version,
    in the chunk's place too; a build removes it."""
    store = _copy_store(plates["v05"], tmp_path / "store.zarr")
    shutil.rmtree(snapshot_file(store).parent)
    legacy = store / ".snapmeta.arrow"
    shutil.copyfile(GOLDEN_V1, legacy)
    for open_ in (snapmeta.open_plate, lambda s: snapmeta.open_position(s, "A/1/0")):
        with pytest.raises(snapmeta.UnsupportedFormatVersionError) as info:
            open_(store)
        assert info.value.found_version == "1"
        assert info.value.supported == (2,)
        assert "snapmeta build" in str(info.value)
    report = snapmeta.verify(store)
    assert not report.ok
    snapmeta.build_snapshot(store)
    assert not legacy.exists()
    assert snapmeta.open_plate(store)["A/1/0"].channel_names == ("DAPI", "GFP")
    # a format-1 file where the chunk goes
    snapshot_file(store).unlink()
    shutil.copyfile(GOLDEN_V1, snapshot_file(store))
    with pytest.raises(snapmeta.UnsupportedFormatVersionError) as info:
        snapmeta.open_plate(store)
    assert info.value.found_version == "1"


def test_corrupt_error_fields_locate_the_damage(plates: dict[str, Path], tmp_path: Path) -> None:
    store = _copy_store(plates["v05"], tmp_path / "store.zarr")
    target = snapshot_file(store)
    data = target.read_bytes()
    index = Parts(data).index("A/2/1")
    lo, hi = _entry_range(data, "nodes", index)
    target.write_bytes(_flip(data, (lo + hi) // 2))
    plate = snapmeta.open_plate(store)
    with pytest.raises(snapmeta.SnapshotCorruptError) as info:
        plate["A/2/1"]
    assert (info.value.section, info.value.index) == ("nodes", index)
    assert info.value.snapshot == str(target)
    assert "snapmeta build" in str(info.value)
    with pytest.raises(snapmeta.SnapshotCorruptError):
        snapmeta.open_position(store, "A/2/1")
    assert plate["A/2/0"].channel_names == ("DAPI", "GFP")  # damage stays local
    assert snapmeta.open_position(store, "A/2/0").channel_names == ("DAPI", "GFP")
    report = snapmeta.verify(store)
    assert not report.ok
    assert any(f"nodes[{index}]" in p for p in report.problems), report.problems


def test_different_plate_copied_in(plates: dict[str, Path], tmp_path: Path) -> None:
    """In-process view of the copied-snapshot case: warning, then A's own metadata."""
    store = _copy_store(plates["v05"], tmp_path / "store.zarr")
    shutil.copyfile(snapshot_file(plates["other"]), snapshot_file(store))
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


def test_external_snapshot_of_another_plate_is_ignored(
    plates: dict[str, Path], tmp_path: Path
) -> None:
    """An external snapshot names the plate it was built for (plate entry ``location``):
    one made for another plate, under this plate's name, is not used."""
    from snapmeta._locate import external_name

    store = _copy_store(plates["v05"], tmp_path / "store.zarr")
    shutil.rmtree(snapshot_file(store).parent)
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    built = snapmeta.build_snapshot(plates["other"], output=snapshots)
    assert not snapshot_file(store).exists()
    os.replace(built, snapshots / external_name(str(store)))
    with pytest.raises(snapmeta.SnapshotNotFoundError):
        snapmeta.open_plate(store, snapshot=snapshots)
    report = snapmeta.verify(store, snapshot=snapshots)
    assert not report.ok


# ---------------------------------------------------------------------------
# fuzz


def _fuzz(
    plates: dict[str, Path], work: Path, count: int, seeds: dict[str, int]
) -> collections.Counter[str]:
    jobs = []
    for name, seed in seeds.items():
        store = _copy_store(plates[name], work / f"{name}.zarr")
        original = work / f"{name}.original.arrow"
        shutil.copyfile(snapshot_file(store), original)
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
