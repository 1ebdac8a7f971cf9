"""Lint of chained stages: the path a stage reads must be the path its predecessor's command writes
(after the prelude); for a published model, the hub id must be what the recipe's flag carries."""

from __future__ import annotations

from repro.base.errors import ReproError
from repro.catalog import loader as catalog
from repro.catalog.schema import Needs, Recipe
from repro.plan.prelude import _variables, arg_value


def check_paths(recipe: Recipe) -> list[str]:
    """Lint: the path a stage reads must be the path its predecessor's command writes (after the prelude);
    for a published model, the hub id must be what the recipe's flag carries."""
    problems = []
    for needs in recipe.needs_list:
        problems += _check_one(recipe, needs)
    return problems


def _check_one(recipe: Recipe, needs: Needs) -> list[str]:
    try:
        up = catalog.get(needs.stage)
    except ReproError:
        return [f"needs.stage {needs.stage!r} is not a recipe"]
    problems = []
    written = arg_value(up, "--output_dir")
    if needs.find == "published_model":
        read = arg_value(recipe, needs.flag)
        if read != needs.path:
            problems.append(f"{needs.flag} is {read!r} in the command, not needs.path {needs.path!r}")
        if not written:
            problems.append(f"{up.id} has no --output_dir: there is no folder its published model is saved to")
        outputs = {a.id for a in up.provenance.artifacts if a.role == "published output"}
        if needs.path not in outputs:
            problems.append(f"needs.path {needs.path!r} is not {up.id}'s published output ({', '.join(sorted(outputs))})")
        return problems
    if written != needs.path:
        problems.append(f"needs.path {needs.path!r} is not what {up.id} writes (--output_dir {written!r})")
    if needs.find == "fixed":
        read = arg_value(recipe, needs.flag)
        if read != needs.path:
            problems.append(f"{needs.flag} is {read!r} in the command, not needs.path {needs.path!r}")
    else:
        variables = _variables(tuple(recipe.command.prelude))
        if needs.path not in variables.values():
            problems.append(f"the prelude sets no variable to needs.path {needs.path!r} (the BASE it lists)")
        read = next((a.values[0] for a in recipe.command.args if a.flag == needs.flag and a.values), None)
        if read is None or "$" not in read:
            problems.append(f"{needs.flag} does not take the prelude's latest-checkpoint variable ({read!r})")
    return problems
