"""Find, load and validate recipe files; the only place that reads recipes/ from disk."""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from repro.base.paths import RECIPES_DIR
from repro.base.errors import ReproError
from repro.inputs import read_text
from repro.catalog.schema import Recipe

#: Directories under recipes/ that hold data other than recipes.
NON_RECIPE_DIRS = {"_entrypoints"}


def recipe_paths(root: Path | None = None) -> list[Path]:
    """Every recipe file: recipes/<family>/<id>.yaml (config copies live in subfolders)."""
    root = root or RECIPES_DIR  # read at call time (tests point the catalog elsewhere)
    return sorted(
        p
        for p in root.glob("*/*.yaml")
        if p.parent.name not in NON_RECIPE_DIRS and not p.name.startswith("_")
    )


def read_yaml(path: Path) -> Any:
    """YAML with a one-line error naming the file and line on a syntax error."""
    text = read_text(path)  # a folder, a device, a FIFO or non-UTF-8 bytes: one line naming the file
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ReproError(f"{path}{where}: invalid YAML: {problem}; fix the syntax there") from None


def validation_message(path: Path | str, exc: ValidationError) -> str:
    """pydantic's multi-line report as one line: file: field.path: problem (+N more)."""
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-after"))
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{path}: {loc or '<top>'}: {msg}{more}"


#: Per-family twin defaults (recipes/<family>/_twin.yaml): merged under each recipe's twin block.
TWIN_DEFAULTS = "_twin.yaml"


def merge(base: Any, over: Any) -> Any:
    """Mappings merge key by key (the recipe wins); anything else is replaced by the recipe's value."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: merge(base[k], v) if k in base else v for k, v in over.items()}}
    return over


@functools.lru_cache(maxsize=None)
def twin_defaults(family_dir: Path) -> dict:
    path = family_dir / TWIN_DEFAULTS
    if not path.is_file():
        return {}
    data = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("twin"), dict):
        raise ReproError(f"{path}: expected a mapping with a 'twin' key (defaults for the family's twin blocks)")
    return data["twin"]


def load_model(path: Path, model: type[BaseModel]) -> Any:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ReproError(f"{path}: expected a mapping at the top level")
    if model is Recipe and isinstance(data.get("twin"), dict):
        data["twin"] = merge(twin_defaults(path.parent), data["twin"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ReproError(validation_message(path, exc)) from None


def load_recipe_file(path: Path) -> Recipe:
    recipe = load_model(path, Recipe)
    if recipe.id != path.stem:
        raise ReproError(f"{path}: id: '{recipe.id}' must equal the file name '{path.stem}'")
    if recipe.family != path.parent.name:
        raise ReproError(f"{path}: family: '{recipe.family}' must equal the folder '{path.parent.name}'")
    return recipe


@functools.lru_cache(maxsize=None)
def _load(root: Path) -> tuple[dict[str, Recipe], dict[str, str]]:
    """Every recipe that loads, and for each file that does not: its id (file stem) -> the one-line error.

    One broken file must not stop commands on the others: it is kept aside, `repro lint` reports it
    as a finding and a command that names it gets its error instead of "unknown recipe"."""
    recipes: dict[str, Recipe] = {}
    broken: dict[str, str] = {}
    for path in recipe_paths(root):
        try:
            recipe = load_recipe_file(path)
        except ReproError as exc:
            broken[path.stem] = exc.message
            continue
        recipes[recipe.id] = recipe
    for recipe in list(recipes.values()):
        missing = [dep for dep in recipe.depends_on if dep not in recipes]
        if missing:
            broken[recipe.id] = (f"{recipe_path(recipe.id, root)}: depends_on: unknown recipe '{missing[0]}'"
                                 + (f" (it does not load: {broken[missing[0]]})" if missing[0] in broken else ""))
            del recipes[recipe.id]
    return recipes, broken


def load_all(root: Path | None = None) -> dict[str, Recipe]:
    """The recipes that load (see broken() for the ones that do not)."""
    root = root or RECIPES_DIR  # read at call time (tests point the catalog elsewhere)
    return _load(root)[0]


def broken(root: Path | None = None) -> dict[str, str]:
    """Recipe files that do not load: id -> one-line error naming file and field."""
    root = root or RECIPES_DIR  # read at call time (tests point the catalog elsewhere)
    return _load(root)[1]


@functools.lru_cache(maxsize=None)
def _path_index(root: Path) -> dict[str, Path]:
    return {p.stem: p for p in recipe_paths(root)}


def recipe_path(recipe_id: str, root: Path | None = None) -> Path:
    root = root or RECIPES_DIR  # read at call time (tests point the catalog elsewhere)
    index = _path_index(root)
    if recipe_id not in index:
        raise unknown_recipe(recipe_id, index)
    return index[recipe_id]


def get(recipe_id: str, root: Path | None = None) -> Recipe:
    root = root or RECIPES_DIR  # read at call time (tests point the catalog elsewhere)
    recipes, bad = _load(root)
    if recipe_id in bad:
        raise ReproError(bad[recipe_id])
    if recipe_id not in recipes:
        raise unknown_recipe(recipe_id, [*recipes, *bad])
    return recipes[recipe_id]


def unknown_recipe(recipe_id: str, known: Iterable[str]) -> ReproError:
    shown = recipe_id if len(recipe_id) <= 80 else recipe_id[:60] + f"... ({len(recipe_id)} characters)"
    if not recipe_id.strip():
        return ReproError("recipe id: empty; pass one of the ids 'repro list' shows")
    close = difflib.get_close_matches(recipe_id, list(known), n=3) if len(recipe_id) <= 200 else []
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ReproError(f"unknown recipe '{shown}'{hint} ('repro list' shows every id)")


def config_file_path(recipe_id: str, stored: str, root: Path | None = None) -> Path:
    """A stored config copy; the schema keeps the name relative, this keeps a symlink from leaving the project."""
    root = root or RECIPES_DIR  # read at call time (tests point the catalog elsewhere)
    folder = recipe_path(recipe_id, root).parent
    path = folder / stored
    if not path.resolve().is_relative_to(root.resolve().parent):
        raise ReproError(f"{recipe_path(recipe_id, root)}: config_files: {stored!r} resolves to {path.resolve()}, "
                         "outside the project")
    return path
