"""Files a twin block names that must exist before a run starts (the runner script).

Why here: `repro run` (before any stage trains) and `repro lint` apply the same rule; a missing runner
otherwise reached the launcher and came back as exit 1 with a log excerpt instead of one clear line.
"""

from __future__ import annotations

from repro.base.paths import ROOT
from repro.catalog.schema import Recipe


def missing_runner(recipe: Recipe) -> str | None:
    """'twin.runner: ... does not exist; ...' when the twin block names a runner file that is not there."""
    if recipe.twin is None or (ROOT / recipe.twin.runner).is_file():
        return None
    return f"twin.runner: {recipe.twin.runner} does not exist; name the trainer script under harness/"
