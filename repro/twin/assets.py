"""The twin block's assets, built (or found) in the suite's cache, one content key each."""

from __future__ import annotations

import json
import os
from pathlib import Path

from repro import ROOT
from repro.catalog.schema import Recipe

CACHE_DIR = Path(os.environ.get("REPRO_CACHE", ROOT / ".repro-cache"))


def specs(recipe: Recipe) -> dict:
    from harness.assets.cache import AssetSpec

    return {name: AssetSpec(name, a.kind, a.builder, dict(a.params), tuple(a.stands_for), tuple(a.deps))
            for name, a in recipe.twin.assets.items()}


def build(recipe: Recipe, cache_dir: Path | None = None) -> dict:
    from harness.assets.cache import build_all

    return build_all(specs(recipe), (cache_dir or CACHE_DIR) / "assets")


def keys(recipe: Recipe, cache_dir: Path | None = None) -> dict[str, str]:
    return {name: b.key for name, b in build(recipe, cache_dir).items()}


def write_asset_map(recipe: Recipe, path: Path, cache_dir: Path | None = None,
                    models: dict[str, str] | None = None) -> dict[str, str]:
    """Build what is missing, write the map the trainer reads, return {asset name: key}. ``models``:
    hub ids that name a predecessor stage's published model -> that stage's output (repro.twin.chain)."""
    from harness.assets.cache import asset_map

    built = build(recipe, cache_dir)
    data = asset_map(built)
    data["models"].update(models or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return data["keys"]


def roots(recipe: Recipe, cache_dir: Path | None = None) -> dict[str, Path]:
    """Asset name -> its built folder (builds what is missing)."""
    return {name: b.root for name, b in build(recipe, cache_dir).items()}
