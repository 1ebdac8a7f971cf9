"""The twin block's assets, built (or found) in the suite's cache, one content key each.

A key is computed from the declarations and the dependencies' keys alone (harness.assets.cache.asset_key),
so a stage's cache key needs no build; prepare() builds once per run and takes the asset map, the keys and
the work folder from that one build."""

from __future__ import annotations

import json
from pathlib import Path

from harness.assets.cache import AssetSpec, BuiltAsset, asset_key, asset_map, build_all, order
from repro.base.paths import CACHE_DIR  # noqa: F401  (re-exported: the old place of the name)
from repro.catalog.schema import Recipe


def specs(recipe: Recipe) -> dict[str, AssetSpec]:
    return {name: AssetSpec(name, a.kind, a.builder, dict(a.params), tuple(a.stands_for), tuple(a.deps))
            for name, a in recipe.twin.assets.items()}


def build(recipe: Recipe, cache_dir: Path | None = None) -> dict[str, BuiltAsset]:
    return build_all(specs(recipe), (cache_dir or CACHE_DIR) / "assets")


def keys(recipe: Recipe) -> dict[str, str]:
    """{asset name: content key} from the declarations, dependencies first; nothing is built."""
    declared = specs(recipe)
    out: dict[str, str] = {}
    for name in order(declared):
        out[name] = asset_key(declared[name], {d: out[d] for d in declared[name].deps})
    return out


def write_asset_map(recipe: Recipe, path: Path, cache_dir: Path | None = None,
                    models: dict[str, str] | None = None, built: dict[str, BuiltAsset] | None = None) -> dict[str, str]:
    """Write the map the trainer reads (building what is missing unless `built` is given), return
    {asset name: key}. ``models``: hub ids that name a predecessor stage's published model -> that stage's
    output (repro.twin.chain)."""
    data = asset_map(built if built is not None else build(recipe, cache_dir))
    data["models"].update(models or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return data["keys"]


def roots(recipe: Recipe, cache_dir: Path | None = None, built: dict[str, BuiltAsset] | None = None) -> dict[str, Path]:
    """Asset name -> its built folder (builds what is missing unless `built` is given)."""
    return {name: b.root for name, b in (built if built is not None else build(recipe, cache_dir)).items()}
