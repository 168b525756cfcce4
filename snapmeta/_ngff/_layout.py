"""Where a position's NGFF facts sit among the leaves of its attributes.

A snapshot stores a position's attributes as a shared template plus the few
leaves that differ, and serves every NGFF fact (axes, channel labels, level
paths, transforms) by pointing at leaves. The same layout is used for
positions read from JSON, so both sources answer identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import _format as fmt
from ._dialect import ome_prefix

Key = tuple[str | int, ...]


def leaf_index(value: Any) -> dict[Key, int]:
    """Leaf index of every leaf of a JSON value, keyed by its path of keys."""
    index: dict[Key, int] = {}

    def walk(node: Any, path: Key) -> None:
        if type(node) is dict:
            for k, v in node.items():
                walk(v, (*path, k))
        elif type(node) is list:
            for i, v in enumerate(node):
                walk(v, (*path, i))
        else:
            index[path] = len(index)

    walk(value, ())
    return index


def _transforms(
    items: Any, base: Key, index: dict[Key, int], deps: set[int]
) -> tuple[fmt.Ref, fmt.Ref]:
    scale = translation = None
    for j, item in enumerate(items if isinstance(items, list) else []):
        kind = item.get("type") if isinstance(item, dict) else None
        if (*base, j, "type") in index:
            deps.add(index[(*base, j, "type")])
        if kind in ("scale", "translation") and isinstance(item.get(kind), list) and item[kind]:
            ref = index.get((*base, j, kind, 0))
            if kind == "scale":
                scale = ref
            else:
                translation = ref
    return scale, translation


def image_layout(
    attrs: dict[str, Any], zarr_format: int, template: int, arrays: Sequence[int]
) -> tuple[fmt.Image, frozenset[int]]:
    """The image entry of a validated position (see ``_validate.validate_image``).

    The layout depends on the attributes' structure, and on the values of
    the leaves returned with it (the transforms' ``type``): positions that
    share a template and these values share the layout.
    """
    index = leaf_index(attrs)
    deps: set[int] = set()
    ome: Any = attrs
    for key in ome_prefix(zarr_format):
        ome = ome[key]
    base: Key = (*ome_prefix(zarr_format), "multiscales", 0)
    ms = ome["multiscales"][0]
    axes = []
    for i in range(len(ms["axes"])):
        at = (*base, "axes", i)
        axes.append((index.get((*at, "name")), index.get((*at, "type")), index.get((*at, "unit"))))
    omero = ome.get("omero")
    channels: list[fmt.Ref] = []
    if isinstance(omero, dict) and isinstance(omero.get("channels"), list):
        at = (*ome_prefix(zarr_format), "omero", "channels")
        channels = [index.get((*at, i, "label")) for i in range(len(omero["channels"]))]
    levels = []
    for i, dataset in enumerate(ms["datasets"]):
        at = (*base, "datasets", i)
        scale, translation = _transforms(
            dataset.get("coordinateTransformations"),
            (*at, "coordinateTransformations"),
            index,
            deps,
        )
        levels.append(fmt.Level(index[(*at, "path")], arrays[i], scale, translation))
    scale, translation = _transforms(
        ms.get("coordinateTransformations"), (*base, "coordinateTransformations"), index, deps
    )
    image = fmt.Image(
        template,
        tuple(axes),
        tuple(channels),
        tuple(levels),
        scale,
        translation,
    )
    return image, frozenset(deps)
