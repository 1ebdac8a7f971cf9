"""The primitives every recipe block is built from: a strict frozen model, the one path rule, and a
command-line argument (used by the command, the twin block and the planner alike)."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def inside(v: str, what: str, under: str | None = None) -> str:
    """The one rule for every path a recipe names: relative, no '..', no '~', nothing a file system
    would read as another place; optionally under one top folder. A recipe never reaches outside
    the project, whatever it says."""
    p = PurePosixPath(v)
    if (not v or p.is_absolute() or ".." in p.parts or v.startswith("~") or "\\" in v or "\0" in v
            or any(ord(c) < 32 for c in v) or (under is not None and (not p.parts or p.parts[0] != under))):
        where = f"under {under}/ " if under else ""
        raise ValueError(f"{v!r}: {what} must be a relative path {where}inside the project (no '/', '..' or '~' "
                         "at the start)")
    return v


#: Asset parameters whose names end like these hold paths, which must stay inside the project too.
PATH_PARAM = re.compile(r"(^|_)(path|file|dir|folder)s?$")




class Arg(Strict):
    """One command-line argument: a flag and its values, or a positional value (flag '')."""

    flag: str
    values: tuple[str, ...] = ()
    joined: bool = False  # render as --flag=value (one token)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """YAML shorthand: "--flag", "--flag=value", or [--flag, v1, v2, ...]."""
        if isinstance(data, str):
            if data.startswith("-") and "=" in data:
                flag, _, value = data.partition("=")
                return {"flag": flag, "values": (value,), "joined": True}
            if data.startswith("-"):
                return {"flag": data}
            return {"flag": "", "values": (data,)}
        if isinstance(data, (list, tuple)):
            if not data:
                raise ValueError("empty argument")
            head, *rest = data
            return {"flag": str(head), "values": tuple(_scalar(v) for v in rest)}
        return data

    @model_validator(mode="after")
    def _well_formed(self) -> "Arg":
        if self.joined and len(self.values) != 1:
            raise ValueError(f"{self.flag}: a joined --flag=value needs exactly one value")
        if not self.flag and len(self.values) != 1:
            raise ValueError("a positional argument needs exactly one value")
        return self

    def tokens(self) -> list[str]:
        if not self.flag:
            return list(self.values)
        if self.joined:
            return [f"{self.flag}={self.values[0]}"]
        return [self.flag, *self.values]


def _scalar(v: Any) -> str:
    """YAML turns 1.0 into a float and True into a bool; a command line only has strings."""
    if isinstance(v, bool):
        return "True" if v else "False"
    if v is None:
        raise ValueError("null is not a command-line value; quote it")
    return str(v)
