"""`--set KEY=VALUE`: one override path for the twin and the full-scale run.

A value replaces the flag's values (never appends a second copy); a flag the entry point does not
know at the pinned commit is refused, because upstream parsers either exit or, worse, ignore it.
"""

from __future__ import annotations

from repro.catalog import flagschema
from repro.catalog.schema import Arg, Recipe
from repro.base.errors import ReproError
from repro.inputs import shell_words
from repro.plan.render import set_value

Sets = list[tuple[str, tuple[str, ...]]]


def parse_sets(items: list[str]) -> Sets:
    """--set KEY=VALUE -> (--KEY, values); VALUE is split like a shell word list, empty = bare flag."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or any(c.isspace() for c in key.strip()):
            raise ReproError(f"--set {item!r}: expected KEY=VALUE, e.g. --set learning_rate=1e-4")
        if any(ord(c) < 32 or ord(c) == 127 for c in key):
            raise ReproError(f"--set {item!r}: the key contains control characters")
        values = shell_words(value, f"--set {item!r}")
        flag = key.strip() if key.startswith("-") else f"--{key.strip()}"
        out.append((flag, values))
    return out


def entry_knows(recipe: Recipe, flag: str) -> bool:
    schemas = flagschema.load_schemas()
    sid = recipe.command.entry.schema_id
    if not sid or sid not in schemas:
        return False
    return flagschema.resolve(flag, schemas[sid], flagschema.all_flags(sid, schemas)).name is not None


def apply_sets(recipe: Recipe, args: list[Arg], sets: Sets) -> list[Arg]:
    known = {a.flag for a in args}
    for flag, values in sets:
        if flag not in known and not entry_knows(recipe, flag):
            raise ReproError(f"--set {flag.lstrip('-')}: {recipe.command.entry.target} has no flag {flag} "
                             f"at the pinned commit ('repro show {recipe.id}' lists the recipe's flags)")
        args = set_value(args, flag, *values)
    return args


def with_sets(recipe: Recipe, sets: Sets) -> Recipe:
    """The recipe with the user's values in its own command (what the full-scale plan renders)."""
    if not sets:
        return recipe
    args = apply_sets(recipe, list(recipe.command.args), sets)
    return recipe.model_copy(update={"command": recipe.command.model_copy(update={"args": args})})
