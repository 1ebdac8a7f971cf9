"""Flag schemas per entry point and version (recipes/_entrypoints/*.yaml) and flag resolution.

fms-hf-tuning drops unknown flags silently and argparse accepts unambiguous prefixes, so whether a
published flag does anything depends on the parser at the pinned commit. These files record that
parser; `resolve` answers "what does this spelling mean there".
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from repro.base.paths import RECIPES_DIR
from repro.catalog.loader import load_model

ENTRYPOINTS_DIR = RECIPES_DIR / "_entrypoints"


class FlagSpec(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    type: Literal["str", "int", "float", "bool", "json"] = "str"
    default: Any = None
    nargs: str | int | None = None
    choices: list[Any] | None = None
    note: str | None = None


class EntrySchema(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    id: str
    kind: Literal["entry", "launcher"]
    parser: str = "argparse"
    allow_abbrev: bool = True
    unknown_flags: Literal["error", "ignored"] = "error"
    bool_style: Literal["value", "store_true", "int"] = "value"
    includes: list[str] = []
    source_note: str | None = None
    flags: dict[str, FlagSpec]


@functools.lru_cache(maxsize=None)
def load_schemas(directory: Path = ENTRYPOINTS_DIR) -> dict[str, EntrySchema]:
    schemas = {}
    for path in sorted(directory.glob("*.yaml")):
        schema = load_model(path, EntrySchema)
        schemas[schema.id] = schema
    return schemas


def all_flags(schema_id: str, schemas: dict[str, EntrySchema]) -> dict[str, FlagSpec]:
    """The schema's flags plus those of every schema it includes (its own win)."""
    schema = schemas[schema_id]
    flags: dict[str, FlagSpec] = {}
    for inc in schema.includes:
        flags.update(all_flags(inc, schemas))
    flags.update(schema.flags)
    return flags


@dataclass(frozen=True)
class Resolution:
    spelled: str  # as written, without dashes
    name: str | None  # the field it reaches, None if unknown
    how: Literal["exact", "alias", "abbrev", "ambiguous", "unknown"]
    candidates: tuple[str, ...] = ()


def _canon(name: str) -> str:
    return name.replace("-", "_")


def resolve(flag: str, schema: EntrySchema, flags: dict[str, FlagSpec]) -> Resolution:
    spelled = flag.lstrip("-")
    if spelled in flags:
        return Resolution(spelled, spelled, "exact")
    # HfArgumentParser and torchrun accept both the dash and the underscore spelling
    by_canon = {_canon(n): n for n in flags}
    alias = _canon(spelled)
    if alias in by_canon:
        return Resolution(spelled, by_canon[alias], "alias")
    if schema.allow_abbrev:
        matches = tuple(sorted(by_canon[c] for c in by_canon if c.startswith(alias)))
        if len(matches) == 1:
            return Resolution(spelled, matches[0], "abbrev")
        if len(matches) > 1:
            return Resolution(spelled, None, "ambiguous", matches)
    return Resolution(spelled, None, "unknown")


def value_problem(spec: FlagSpec, values: tuple[str, ...] | list[str], bool_style: str) -> str | None:
    """Why these values would not parse for this flag (None when they would, or cannot be judged)."""
    if any("$" in v for v in values):
        return None  # filled in by the shell at run time
    if spec.type == "bool":
        if bool_style == "store_true":
            return f"takes no value, got {len(values)}" if values else None
        if not values:
            return None
        if len(values) > 1 or values[0].lower() not in {"true", "false", "yes", "no", "1", "0", "t", "f", "y", "n"}:
            return f"expects a boolean, got {' '.join(values)!r}"
        return None
    if not values and spec.nargs not in ("?", "*", 0):
        return "expects a value"
    one_value = spec.nargs in (None, "?", 1)
    if one_value and len(values) > 1:
        return f"takes one value, got {len(values)}: {' '.join(values)!r}"
    for v in values:
        if spec.type == "int" and not _is_int(v):
            return f"expects an integer, got {v!r}"
        if spec.type == "float" and not _is_float(v):
            return f"expects a number, got {v!r}"
        if spec.choices and v not in [str(c) for c in spec.choices]:
            return f"{v!r} is not one of {', '.join(map(str, spec.choices))}"
    return None


def _is_int(v: str) -> bool:
    try:
        int(v)
        return True
    except ValueError:
        return False


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False
