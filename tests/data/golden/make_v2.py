"""Writes the format-2 golden plates and snapshots (run once; the output is committed).

    python tests/data/golden/make_v2.py

The plates are small and exercise what format 2 must carry exactly: per-field
translations, multiscale-level transforms, a channel without a label, array
attributes, a NaN fill value and a NaN attribute, a big integer, non-ASCII
text and two acquisitions. ``expected-<ngff>.json`` is computed from the
plates' JSON documents here, without snapmeta: it is what a reader must serve.
Tests never run this script; they only read its committed output.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent / "v2"
AXES = [
    {"name": "t", "type": "time", "unit": "second"},
    {"name": "c", "type": "channel"},
    {"name": "z", "type": "space", "unit": "micrometer"},
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
]
POSITIONS: dict[str, dict[str, Any]] = {
    "A/1/0": {"translation": [0.0, 0.0, 0.0, 0.0, 0.0], "labels": ["DAPI", "GFP"], "acq": 0},
    "A/1/1": {"translation": [0.0, 0.0, 0.0, 100.5, -3.25], "labels": ["DAPI", None], "acq": 1},
    "A/2/0": {"translation": [0.0, 0.0, 0.0, 7.0, 9.0], "labels": ["DAPI", "GFP"], "acq": 0},
}
GLOBAL = [{"type": "scale", "scale": [1.0, 1.0, 1.0, 2.0, 2.0]}]


def image_attrs(path: str, spec: dict[str, Any], ngff: str) -> dict[str, Any]:
    datasets = []
    for level in (0, 1):
        factor = 2.0**level
        ds: dict[str, Any] = {
            "path": str(level),
            "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, 1.0, 2.0, 0.5 * factor, 0.5 * factor]},
                {
                    "type": "translation",
                    "translation": [
                        t + (0.25 * level if i > 2 else 0)
                        for i, t in enumerate(spec["translation"])
                    ],
                },
            ],
        }
        datasets.append(ds)
    ms: dict[str, Any] = {"name": f"FOV {path} – ü", "axes": AXES, "datasets": datasets}
    if path == "A/1/0":
        ms["coordinateTransformations"] = [
            *GLOBAL,
            {"type": "translation", "translation": [0.0, 0.0, 0.0, 10.0, 20.0]},
        ]
    if ngff == "0.4":
        ms["version"] = "0.4"
    channels = []
    for label in spec["labels"]:
        ch: dict[str, Any] = {
            "color": "FFFFFF",
            "window": {"start": 0, "end": 65535, "min": 0, "max": 65535},
        }
        if label is not None:
            ch["label"] = label
        channels.append(ch)
    ome = {"multiscales": [ms], "omero": {"channels": channels}}
    extra = {
        "custom": {
            "nan": math.nan,
            "big": 123456789012345678901234567890,
            "list": [1, 1.5, True, None],
        }
    }
    if ngff == "0.4":
        return {**ome, **extra}
    return {"ome": {"version": "0.5", **ome}, **extra}


def array_doc(ngff: str, level: int, floats: bool, attrs: dict[str, Any] | None) -> dict[str, Any]:
    shape = [1, 2, 1, 16 >> level, 16 >> level]
    if ngff == "0.4":
        return {
            "zarr_format": 2,
            "shape": shape,
            "chunks": shape,
            "dtype": "<f4" if floats else "<u2",
            "compressor": None,
            "fill_value": "NaN" if floats else 0,
            "order": "C",
            "filters": None,
            "dimension_separator": "/",
        }
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": shape,
        "data_type": "float32" if floats else "uint16",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": shape}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": "NaN" if floats else 0,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "attributes": attrs or {},
        "dimension_names": ["t", "c", "z", "y", "x"],
    }


def write_group(node: Path, ngff: str, attrs: dict[str, Any]) -> None:
    node.mkdir(parents=True, exist_ok=True)
    if ngff == "0.4":
        (node / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
        (node / ".zattrs").write_text(json.dumps(attrs, indent=2, ensure_ascii=False))
    else:
        doc = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
        (node / "zarr.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))


def write_plate(store: Path, ngff: str) -> None:
    if store.exists():
        shutil.rmtree(store)
    plate = {
        "name": "golden v2",
        "rows": [{"name": "A"}],
        "columns": [{"name": "1"}, {"name": "2"}],
        "wells": [
            {"path": "A/1", "rowIndex": 0, "columnIndex": 0},
            {"path": "A/2", "rowIndex": 0, "columnIndex": 1},
        ],
        "acquisitions": [
            {"id": 0, "name": "first"},
            {"id": 1, "name": "second", "maximumfieldcount": 2},
        ],
        "field_count": 2,
    }
    if ngff == "0.4":
        write_group(store, ngff, {"plate": {**plate, "version": "0.4"}})
    else:
        write_group(store, ngff, {"ome": {"version": "0.5", "plate": plate}})
    for well in ("A/1", "A/2"):
        row, col = well.split("/")
        write_group(store / row, ngff, {})
        images = [
            {"path": p.rsplit("/", 1)[1], "acquisition": s["acq"]}
            for p, s in POSITIONS.items()
            if p.startswith(well + "/")
        ]
        well_meta = {"images": images}
        attrs = (
            {"well": {**well_meta, "version": "0.4"}}
            if ngff == "0.4"
            else {"ome": {"version": "0.5", "well": well_meta}}
        )
        write_group(store / row / col, ngff, attrs)
    for path, spec in POSITIONS.items():
        write_group(store / path, ngff, image_attrs(path, spec, ngff))
        for level in (0, 1):
            node = store / path / str(level)
            node.mkdir(parents=True)
            floats = path == "A/2/0"
            attrs = (
                {"note": "level zero", "big": 2**70} if (path == "A/1/1" and level == 0) else None
            )
            doc = array_doc(ngff, level, floats, attrs)
            if ngff == "0.4":
                (node / ".zarray").write_text(json.dumps(doc, indent=2))
                if attrs:
                    (node / ".zattrs").write_text(json.dumps(attrs))
            else:
                (node / "zarr.json").write_text(json.dumps(doc, indent=2))


def effective(ms: dict[str, Any], level: int) -> tuple[list[float], list[float] | None]:
    """NGFF: dataset transforms first, then the multiscale's."""

    def find(items: list[dict[str, Any]] | None, kind: str) -> list[float] | None:
        for t in items or []:
            if t["type"] == kind:
                return [float(v) for v in t[kind]]
        return None

    ds = ms["datasets"][level]["coordinateTransformations"]
    s_l, t_l = find(ds, "scale") or [1.0] * 5, find(ds, "translation")
    s_g, t_g = (
        find(ms.get("coordinateTransformations"), "scale"),
        find(ms.get("coordinateTransformations"), "translation"),
    )
    scale = [a * (s_g[i] if s_g else 1.0) for i, a in enumerate(s_l)]
    if t_l is None and t_g is None:
        return scale, None
    trans = [
        (t_l[i] if t_l else 0.0) * (s_g[i] if s_g else 1.0) + (t_g[i] if t_g else 0.0)
        for i in range(5)
    ]
    return scale, trans


def expected(store: Path, ngff: str) -> dict[str, Any]:
    def attrs_of(node: Path) -> dict[str, Any]:
        if ngff == "0.4":
            return json.loads((node / ".zattrs").read_text())
        return json.loads((node / "zarr.json").read_text())["attributes"]

    out: dict[str, Any] = {"positions": {}, "wells": {}}
    root = attrs_of(store)
    plate = root["plate"] if ngff == "0.4" else root["ome"]["plate"]
    out["plate"] = {
        "name": plate["name"],
        "version": ngff,
        "rows": [r["name"] for r in plate["rows"]],
        "columns": [c["name"] for c in plate["columns"]],
        "wells": [w["path"] for w in plate["wells"]],
        "field_count": plate["field_count"],
        "acquisitions": [a["id"] for a in plate["acquisitions"]],
        "attrs": root,
    }
    for well in out["plate"]["wells"]:
        wattrs = attrs_of(store / well)
        images = (wattrs["well"] if ngff == "0.4" else wattrs["ome"]["well"])["images"]
        out["wells"][well] = {"attrs": wattrs, "positions": [f"{well}/{i['path']}" for i in images]}
        for image in images:
            path = f"{well}/{image['path']}"
            attrs = attrs_of(store / path)
            ome = attrs if ngff == "0.4" else attrs["ome"]
            ms = ome["multiscales"][0]
            levels = []
            for i, ds in enumerate(ms["datasets"]):
                node = store / path / ds["path"]
                doc = json.loads((node / (".zarray" if ngff == "0.4" else "zarr.json")).read_text())
                scale, trans = effective(ms, i)
                levels.append(
                    {
                        "path": ds["path"],
                        "shape": doc["shape"],
                        "chunks": doc["chunks"]
                        if ngff == "0.4"
                        else doc["chunk_grid"]["configuration"]["chunk_shape"],
                        "dtype": {"<u2": "uint16", "<f4": "float32"}.get(
                            doc.get("dtype"), doc.get("data_type")
                        ),
                        "scale": scale,
                        "translation": trans,
                        "array_attrs": json.loads((node / ".zattrs").read_text())
                        if (node / ".zattrs").exists()
                        else doc.get("attributes", {}),
                    }
                )
            out["positions"][path] = {
                "channel_names": [
                    c.get("label", str(i)) if isinstance(c.get("label"), str) else str(i)
                    for i, c in enumerate(ome["omero"]["channels"])
                ],
                "axis_names": [a["name"] for a in ms["axes"]],
                "axes": [[a["name"], a.get("type"), a.get("unit")] for a in ms["axes"]],
                "acquisition": image.get("acquisition"),
                "levels": levels,
                "attrs": attrs,
            }
    return out


def main() -> None:
    import snapmeta

    for ngff in ("0.4", "0.5"):
        store = HERE / f"plate-{ngff}.ome.zarr"
        write_plate(store, ngff)
        snapmeta.build_snapshot(store)
        (HERE / f"expected-{ngff}.json").write_text(
            json.dumps(expected(store, ngff), indent=1, ensure_ascii=False)
        )


if __name__ == "__main__":
    main()
