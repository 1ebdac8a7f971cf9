"""Values as the shell would pass them after a recipe's prelude (AceRAG's OUTPUE_NAME=..., BASE=...).

The runnable command may use variables its prelude sets; the twin (which runs no shell) and the chain
linter need the expanded value: ``data/outputs/.../${OUTPUE_NAME}`` -> ``data/outputs/.../acerag-llama2-pretrain``.
Command substitutions (``$(ls ...)``) are not run: such a variable stays unexpanded.
"""

from __future__ import annotations

from functools import lru_cache

from repro.catalog.schema import Recipe
from repro.plan import shell
from repro.plan.render import quote


@lru_cache(maxsize=256)
def _variables(prelude: tuple[str, ...]) -> dict[str, str]:
    return shell.parse("\n".join(prelude), 1, {}).variables if prelude else {}


def expand(recipe: Recipe, value: str) -> str:
    """`value` with the prelude's plain assignments substituted (unchanged when it has no $)."""
    if "$" not in value or not recipe.command.prelude:
        return value

    variables = _variables(tuple(recipe.command.prelude))
    words = shell.parse(f"echo {quote(value)}", 1, variables).commands[0].argv[1:]
    return " ".join(words)


def arg_value(recipe: Recipe, flag: str) -> str | None:
    """The expanded first value of an entry-point flag of the runnable command, or None."""
    for a in recipe.command.args:
        if a.flag == flag and a.values:
            return expand(recipe, a.values[0])
    return None
