"""Lint what `repro run` would refuse, before anyone runs: twin overrides the pinned entry point knows,
asset builders and the twin runner that exist (the expected claims, which `repro verify` reads, are
linted by repro.verify.claims.lint_problem: lint comes before verify in the import order). Each rule is a pure function of the recipe and the files it names.

Why: these were found only at run time (a missing runner as exit 1 with a log excerpt, an unknown
override flag as the trainer's error after the assets were built), or never (a claim without a source).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from repro.catalog import flagschema
from repro.catalog.schema import Recipe
from repro.catalog.twin_files import missing_runner  # noqa: F401 - lint's rule is run's rule


def builder_problem(ref: str) -> str | None:
    """'harness.<module>:<function>' must name a module file that defines the function (read, not imported:
    lint must not load torch)."""
    module, sep, func = ref.partition(":")
    if not sep or not module.startswith("harness.") or not func.isidentifier():
        return f"{ref!r} is not 'harness.<module>:<function>'"
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return f"{ref!r}: there is no module {module}"
    try:
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        return f"{ref!r}: {spec.origin} does not parse ({exc})"
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    names |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    return None if func in names else f"{ref!r}: {module} defines no function {func}"


def builders(recipe: Recipe) -> list[tuple[str, str]]:
    """(field, builder ref) of every asset builder the recipe names (twin assets, needs.then)."""
    out = [(f"twin.assets.{name}.builder", a.builder) for name, a in (recipe.twin.assets.items() if recipe.twin else [])]
    out += [(f"needs.then.builder ({n.stage})", n.then.builder) for n in recipe.needs_list if n.then is not None]
    return out


def override_problems(recipe: Recipe) -> list[str]:
    """Twin overrides (and config effects) with a flag the pinned entry point's parser does not know."""
    if recipe.twin is None or not recipe.command.entry.schema_id:
        return []
    schemas = flagschema.load_schemas()
    sid = recipe.command.entry.schema_id
    if sid not in schemas:
        return []
    schema, flags = schemas[sid], flagschema.all_flags(sid, schemas)
    named = [("twin.overrides", o.flag) for o in recipe.twin.overrides if o.flag]
    named += [("twin.config_effects", e.flag) for e in recipe.twin.config_effects if e.flag]  # None: the trainer applies it
    out = []
    for field, flag in named:
        res = flagschema.resolve(flag, schema, flags)
        if res.how in ("unknown", "ambiguous"):
            out.append(f"{field}: {flag} is {'not a flag' if res.how == 'unknown' else 'an ambiguous prefix'} of "
                       f"{sid}; the pinned entry point would refuse it")
    return out
