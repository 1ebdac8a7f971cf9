"""What `repro run` checks before anything trains: every file the run will read back later.

Why: a corrupt golden or settings.json found after a chain of stages trained costs the whole run; read
them first, so a bad file is one line (naming file and field) in the first second.
"""

from __future__ import annotations

from pathlib import Path

from repro.catalog import loader as catalog
from repro.catalog.schema import Recipe
from repro.catalog.twin_files import missing_runner
from repro.base.errors import ReproError
from repro.twin import golden, outdir, readback
from repro.twin.chain import chain_of


def check(recipe: Recipe, out: Path | None, fresh: bool = False) -> None:
    """The runner and goldens of the recipe and of every stage it starts from, and the --out folder's
    settings (unless --fresh discards them)."""
    stages = chain_of(recipe)
    for stage in stages:
        problem = missing_runner(stage)
        if problem:
            raise ReproError(f"{catalog.recipe_path(stage.id)}: {problem}")
    golden.validate([r.id for r in stages])
    if out is not None and not fresh:
        readback.settings(out / outdir.SETTINGS)
