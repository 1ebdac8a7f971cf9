"""The twin's working directory: what an upstream entry point reads relative to its cwd.

Some entry points read files from the directory they are started in (ToolGen's train.py reads
src/configs/project_config.json and virtual_tokens.txt; AceRAG's commands name data/... paths). When a
twin block declares ``workdir_files``, the twin runs in OUT/work, which holds the recipe's stored
config files at their published refs (copies) and each declared file as a symlink into the asset
cache (read-only by convention; the trainer writes only under --output_dir, which points elsewhere).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from repro.catalog import loader as catalog
from repro.catalog.schema import Recipe
from repro.base.errors import ReproError


def uses_workdir(recipe: Recipe) -> bool:
    return bool(recipe.twin and recipe.twin.workdir_files)


def materialize(recipe: Recipe, out_dir: Path, roots: dict[str, Path]) -> Path | None:
    """Create OUT/work for the recipe (None when the twin needs none); `roots` = asset name -> folder."""
    if not uses_workdir(recipe):
        return None
    work = out_dir / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for c in recipe.config_files:
        target = work / c.ref
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(catalog.config_file_path(recipe.id, c.file), target)
    for rel, source in recipe.twin.workdir_files.items():
        name, _, sub = source.partition("/")
        src = roots[name] / sub if sub else roots[name]
        if not src.exists():
            raise ReproError(f"{recipe.id}: twin.workdir_files.{rel}: {source!r} is not in the built asset ({src})")
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src, target)
    return work
