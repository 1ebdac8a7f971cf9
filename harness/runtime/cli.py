"""HfArgumentParser semantics for upstream dataclass CLIs, with the twin's one-line errors.

Upstream entry points (open-instruct, HF Trainer scripts, fms-hf-tuning) parse their flags with
HfArgumentParser: one ``--field`` per dataclass field, bools as ``--flag`` / ``--flag False``,
``--no_<field>`` for True defaults, lists as nargs="+", Optional[X] as X. A twin must accept and reject
exactly what upstream does, so the parser is built from the same dataclasses the trainer defines.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any

from repro.base.errors import ReproError


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage and exits 2 on error; the twin contract is one line on stderr instead."""

    def error(self, message: str) -> typing.NoReturn:
        raise ReproError(f"{message} (see '{self.prog} --help')")


def string_to_bool(value: str | bool) -> bool:
    """HfArgumentParser's bool parsing: --flag alone is True, --flag False / no / 0 is False."""
    if isinstance(value, bool):
        return value
    lowered = value.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"truthy value expected, got {value!r}")


def base_type(hint: Any) -> tuple[type, tuple | None]:
    """(type, choices): ``int | None`` -> int, ``list[str]`` -> list, ``Literal["a","b"]`` -> (str, (a, b))."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
        return type(choices[0]), choices
    return (list if typing.get_origin(hint) is list else hint), None


def list_item_type(hint: Any):
    """The element type of ``list[int]`` / ``list[int] | None`` (HfArgumentParser converts items too);
    str when unparameterised."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    args = typing.get_args(hint)
    item = args[0] if args else str
    return string_to_bool if item is bool else item


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, literal = base_type(hints[f.name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if default is dataclasses.MISSING:
            default = None
        if kind is bool:
            parser.add_argument(f"--{f.name}", type=string_to_bool, nargs="?", const=True, default=default)
            if default is True:  # HfArgumentParser adds --no_<field> for True defaults
                parser.add_argument(f"--no_{f.name}", dest=f.name, action="store_false")
        elif kind is list:
            parser.add_argument(f"--{f.name}", nargs="+", default=default, type=list_item_type(hints[f.name]))
        else:
            choices = f.metadata.get("choices", literal)
            parser.add_argument(f"--{f.name}", type=kind, default=default, choices=choices)


def build_parser(classes: Sequence[type], prog: str, description: str = "") -> OneLineParser:
    parser = OneLineParser(prog=prog, description=description, allow_abbrev=False)
    for cls in classes:
        add_dataclass_arguments(parser, cls)
    return parser


def parse_dataclasses(classes: Sequence[type], argv: Sequence[str] | None, prog: str,
                      description: str = "") -> tuple:
    """One instance per dataclass, each built from its own fields of the parsed namespace."""
    ns = vars(build_parser(classes, prog, description).parse_args(argv))
    return tuple(cls(**{f.name: ns[f.name] for f in dataclasses.fields(cls)}) for cls in classes)
