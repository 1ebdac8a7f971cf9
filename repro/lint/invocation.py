"""A launcher invocation parsed out of a bash simple command: its options with their values, the entry point,
the entry's arguments and stray words. What the published text lints and the fms reading of it share."""

from __future__ import annotations

import re
from dataclasses import dataclass

from repro.catalog import flagschema
from repro.plan import shell

LAUNCHER_WORDS = {"accelerate": "accelerate", "deepspeed": "deepspeed", "torchrun": "torchrun",
                  "python": "python", "python3": "python"}
_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")

@dataclass
class Option:
    flag: shell.Word
    values: list[shell.Word]

    @property
    def name(self) -> str:
        return self.flag.text.split("=", 1)[0]

    @property
    def value_texts(self) -> list[str]:
        if "=" in self.flag.text and self.flag.text.startswith("-"):
            return [self.flag.text.split("=", 1)[1]]
        return [v.text for v in self.values]


@dataclass
class Invocation:
    launcher: str
    launcher_options: list[Option]
    entry: shell.Word | None
    entry_args: list[Option]
    strays: list[shell.Word]  # positional words the entry point would not expect


def _is_flag(text: str) -> bool:
    return text.startswith("-") and not _NUMBER.match(text) and len(text) > 1


def _group(words: list[shell.Word]) -> tuple[list[Option], list[shell.Word]]:
    """--flag v1 v2 --flag2 ...: values are the non-flag words up to the next flag."""
    options: list[Option] = []
    strays: list[shell.Word] = []
    for w in words:
        if _is_flag(w.text):
            options.append(Option(w, []))
        elif options and "=" not in options[-1].flag.text:
            options[-1].values.append(w)
        else:
            strays.append(w)
    return options, strays


def split_invocation(cmd: shell.SimpleCommand, launcher_flags: dict[str, flagschema.FlagSpec] | None,
                     bool_style: str = "store_true") -> Invocation | None:
    words = cmd.words
    if not words or words[0].text not in LAUNCHER_WORDS:
        return None
    kind = LAUNCHER_WORDS[words[0].text]
    i = 2 if kind == "accelerate" and len(words) > 1 and words[1].text == "launch" else 1
    options: list[Option] = []
    entry = None
    while i < len(words):
        w = words[i]
        if w.text in ("-m", "--module"):
            entry = words[i + 1] if i + 1 < len(words) else None
            i += 2
            break
        if not _is_flag(w.text):
            entry = w
            i += 1
            break
        opt = Option(w, [])
        spec = (launcher_flags or {}).get(w.text.lstrip("-").split("=")[0].replace("-", "_")) or \
            (launcher_flags or {}).get(w.text.lstrip("-").split("=")[0])
        takes_value = "=" not in w.text and not (spec and spec.type == "bool" and bool_style == "store_true")
        if takes_value and i + 1 < len(words) and not _is_flag(words[i + 1].text):
            # without a schema, a value-less flag followed by the script would swallow it: a script
            # path ends in .py, so keep it as the entry point
            nxt = words[i + 1].text
            if spec is not None or not nxt.endswith(".py"):
                opt.values.append(words[i + 1])
                i += 1
        options.append(opt)
        i += 1
    entry_args, strays = _group(words[i:])
    return Invocation(kind, options, entry, entry_args, strays)
