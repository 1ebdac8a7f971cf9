"""The command line of ``fast_llm/tools/train.py`` at Fast-LLM@1aa6040, as that commit parses it.

Upstream (``fast_llm/tools/train.py``, ``fast_llm/config.py::Config.to_argparse/from_args``):

1. ``train()`` takes the positional model type with ``parse_known_args`` (choices: the trainer registry,
   only ``gpt`` at this commit); everything else is passed on.
2. ``from_args`` runs a first ``parse_known_args`` pass for ``--config_url`` / ``--config_auth_token_file``.
3. The rest goes to one flat ``argparse`` parser holding every leaf field of the config tree, each as
   ``--name`` and ``--name-with-dashes``, with ``parse_args``: an unknown flag is an error (exit 2),
   unique prefixes resolve (argparse's ``allow_abbrev``), booleans are ``bool(int(x))`` so ``--gated=1``
   works and ``--gated=True`` is rejected, and ``None`` has no spelling.

The flag table is data: the entry-point schema the linter already holds
(``recipes/_entrypoints/fast-llm_1aa6040_fast_llm_tools_train.py.yaml``), so the twin parses exactly
what ``repro lint`` checks. DEVIATION: argparse's usage block and exit are replaced by one line on
stderr and exit 2 (``ReproError``, printed by ``harness.runtime.entry.run_main`` as
``fast_llm/tools/train.py: error: <argparse's message>``), the house contract.
"""

from __future__ import annotations

import argparse
from functools import lru_cache
from pathlib import Path

import yaml

from repro.base.errors import ReproError

PROG = "fast_llm/tools/train.py"
SCHEMA_FILE = (Path(__file__).resolve().parents[2] / "recipes" / "_entrypoints"
               / "fast-llm_1aa6040_fast_llm_tools_train.py.yaml")
#: fast_llm/models/auto.py @1aa6040: the trainer registry.
MODEL_TYPES = ("gpt",)


class _OneLineParser(argparse.ArgumentParser):
    """argparse's messages, but as one ReproError line (exit 2) instead of usage + SystemExit."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise ReproError(message)  # run_main prefixes "fast_llm/tools/train.py: error:"

    def exit(self, status: int = 0, message: str | None = None):
        if status:
            raise ReproError((message or "error").strip())
        raise SystemExit(0)  # --help: argparse already printed it


def _int_bool(text: str) -> bool:
    return bool(int(text))


_int_bool.__name__ = "<lambda>"  # upstream passes `lambda x: bool(int(x))`; argparse names the type in errors

_TYPES = {"str": str, "int": int, "float": float, "bool": _int_bool}


@lru_cache(maxsize=2)
def load_flags(path: Path = SCHEMA_FILE) -> dict[str, dict]:
    """The flag table (name -> spec) from the entry-point schema; one-line error if it is unusable."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ReproError(f"{path}: cannot read the Fast-LLM flag schema ({exc})") from None
    flags = data.get("flags") if isinstance(data, dict) else None
    if not isinstance(flags, dict) or not flags:
        raise ReproError(f"{path}: no 'flags' table")
    return flags


def option_strings(name: str) -> list[str]:
    """``--name`` and, when it differs, ``--name-with-dashes`` (Config.to_argparse)."""
    dashed = f"--{name.replace('_', '-')}"
    return [f"--{name}"] if dashed == f"--{name}" else [f"--{name}", dashed]


def build_parser(flags: dict[str, dict] | None = None) -> argparse.ArgumentParser:
    """The flat parser ``GPTTrainerConfig.get_parser()`` builds at 1aa6040."""
    flags = load_flags() if flags is None else flags
    parser = _OneLineParser(prog=PROG)
    for name, spec in flags.items():
        kwargs: dict = {"type": _TYPES[spec.get("type", "str")], "default": spec.get("default")}
        if "nargs" in spec:
            kwargs["nargs"] = spec["nargs"]
        if "choices" in spec:
            kwargs["choices"] = spec["choices"]
        parser.add_argument(*option_strings(name), dest=name, **kwargs)
    return parser


def parse_train_args(argv: list[str]) -> tuple[str, argparse.Namespace]:
    """``train gpt --a=b ...`` argv (after the script) -> (model type, flat namespace), as upstream."""
    first = _OneLineParser(prog=PROG)
    first.add_argument("model_type", choices=MODEL_TYPES)
    parsed, unparsed = first.parse_known_args(argv)
    initial = _OneLineParser(prog=PROG, add_help=False)
    initial.add_argument("--config_url")
    initial.add_argument("--config_auth_token_file")
    initial_args, remaining = initial.parse_known_args(unparsed)
    if initial_args.config_url:
        # DEVIATION: upstream fetches the YAML over HTTP (requests); twins run offline.
        raise ReproError(f"--config_url={initial_args.config_url}: fetching a config over the network "
                         "is not available offline; pass the flags on the command line")
    return parsed.model_type, build_parser().parse_args(remaining)


def defaults() -> dict[str, object]:
    """Every flag's default, as the parser would fill it."""
    return {name: spec.get("default") for name, spec in load_flags().items()}
