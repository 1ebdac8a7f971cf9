"""The ``tuning.sft_trainer`` command line as fms-hf-tuning 3.2.2 parses it.

Upstream builds ``HfArgumentParser`` over a dozen dataclasses and calls
``parse_args_into_dataclasses(return_remaining_strings=True)``: an unknown option and the words after
it are dropped without a word, and argparse's ``allow_abbrev`` resolves a unique prefix
(``--data_config`` reaches ``--data_config_path``). Which spelling does what therefore depends on the
*complete* option set at the pin, which the suite already records in
``recipes/_entrypoints/fms-hf-tuning_3.2.2_tuning.sft_trainer.yaml`` (plus the transformers 4.55.4
``TrainingArguments`` file it includes). The parser here is built from that schema with argparse itself,
so prefixes, ambiguities and drops behave as upstream's do, and the dataclass ``__post_init__`` steps
that change values (template unescaping, ``["all-linear"]`` -> ``"all-linear"``, the JSON
``lr_scheduler_kwargs``) are applied after it.

``compare`` tells what a published command really did next to what its author meant, flag by flag.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Any

from repro.catalog import flagschema
from repro.base.errors import ReproError

SCHEMA_ID = "fms-hf-tuning@3.2.2:tuning.sft_trainer"
_TRUE = {"yes", "true", "t", "y", "1"}
_FALSE = {"no", "false", "f", "n", "0"}
# DataArguments.__post_init__ runs str.encode().decode("unicode_escape") on these
UNESCAPED = ("chat_template", "data_formatter_template", "response_template", "instruction_template")


def string_to_bool(value: str | bool) -> bool:
    """HfArgumentParser's bool reading (transformers.hf_argparser.string_to_bool)."""
    if isinstance(value, bool):
        return value
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"Truthy value expected: got {value} but expected one of yes/no, true/false")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit 2: one line instead
        raise ReproError(f"tuning.sft_trainer: {message}")


_TYPES = {"str": str, "int": int, "float": float, "json": str}


def build_parser(schema_id: str = SCHEMA_ID) -> argparse.ArgumentParser:
    """An argparse parser with exactly the option strings (and value rules) of the pinned entry point."""
    schemas = flagschema.load_schemas()
    flags = flagschema.all_flags(schema_id, schemas)
    raw = _raw_specs(schema_id)
    parser = _Parser(prog="tuning.sft_trainer", allow_abbrev=schemas[schema_id].allow_abbrev, add_help=False)
    for name, spec in flags.items():
        strings = [f"--{name}", *[a for a in raw.get(name, {}).get("aliases", []) if a != f"--{name}"]]
        if spec.nargs == 0:  # auto-generated --no_<field> (store_false) or a plain store_true flag
            target = name[3:] if name.startswith("no_") and name[3:] in flags else name
            action = "store_false" if target != name else "store_true"
            parser.add_argument(*strings, dest=target, action=action, default=argparse.SUPPRESS)
            continue
        kwargs: dict[str, Any] = {"dest": name, "default": spec.default}
        if spec.type == "bool":
            kwargs.update(type=string_to_bool, nargs="?", const=True)
        else:
            kwargs["type"] = str.lower if name in ("peft_method", "quantization_method") else _TYPES[spec.type]
            if spec.nargs in ("+", "*"):
                kwargs["nargs"] = spec.nargs
            if spec.choices and name in ("peft_method", "quantization_method", "lr_scheduler_type"):
                kwargs["choices"] = [c for c in spec.choices if c is not None]
        parser.add_argument(*strings, **kwargs)
    return parser


def _raw_specs(schema_id: str) -> dict[str, dict]:
    """Aliases live in the YAML but not in FlagSpec; read them from the files (own entries win)."""
    import yaml

    out: dict[str, dict] = {}
    schemas = flagschema.load_schemas()
    for inc in schemas[schema_id].includes:
        out.update(_raw_specs(inc))
    path = flagschema.ENTRYPOINTS_DIR / (schema_id.replace("@", "_").replace(":", "_").replace("/", "_") + ".yaml")
    data = yaml.safe_load(path.read_text())
    out.update(data.get("flags") or {})
    return out


@dataclass
class Parsed:
    """Every field's value after upstream's parse and post-init steps, and what argparse left over."""

    values: dict[str, Any]
    remaining: list[str]
    argv: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def lora(self) -> dict[str, Any] | None:
        """The LoRA settings when ``--peft_method lora`` selects them (upstream passes None otherwise)."""
        if self.values.get("peft_method") not in ("lora", "alora"):
            return None
        return {k: self.values[k] for k in ("r", "lora_alpha", "lora_dropout", "target_modules", "init_lora_weights",
                                            "exclude_modules", "bias", "target_parameters") if k in self.values}

    @property
    def mxfp4(self) -> dict[str, Any] | None:
        """``Mxfp4Config`` when ``--quantization_method mxfp4`` selects it."""
        if self.values.get("quantization_method") != "mxfp4":
            return None
        return {"dequantize": bool(self.values.get("dequantize", True))}


def _post_init(values: dict[str, Any]) -> dict[str, Any]:
    v = dict(values)
    for key in UNESCAPED:
        if isinstance(v.get(key), str):
            v[key] = v[key].encode("utf-8").decode("unicode_escape")
    if v.get("target_modules") == ["all-linear"]:
        v["target_modules"] = "all-linear"
    kwargs = v.get("lr_scheduler_kwargs")
    if isinstance(kwargs, str) and kwargs.startswith("{"):
        try:
            v["lr_scheduler_kwargs"] = json.loads(kwargs)
        except json.JSONDecodeError as exc:
            raise ReproError(f"tuning.sft_trainer: --lr_scheduler_kwargs {kwargs!r} is not JSON ({exc.msg})") from None
    if v.get("peft_method") in (None, "none"):
        v["peft_method"] = None
    if v.get("quantization_method") in (None, "none"):
        v["quantization_method"] = None
    return v


def parse(argv: list[str], schema_id: str = SCHEMA_ID) -> Parsed:
    """``parse_args_into_dataclasses(return_remaining_strings=True)`` plus the post-init steps."""
    namespace, remaining = build_parser(schema_id).parse_known_args(list(argv))
    return Parsed(_post_init(vars(namespace)), list(remaining), list(argv))


@dataclass(frozen=True)
class Difference:
    field: str
    published: Any
    intended: Any


@dataclass
class Comparison:
    """What the published argv did versus what the intended one does."""

    dropped: list[str]  # words of the published argv that upstream silently ignored
    differences: list[Difference]

    def lines(self) -> list[str]:
        out = []
        if self.dropped:
            out.append("silently dropped by tuning.sft_trainer: " + " ".join(repr(w) for w in self.dropped))
        for d in self.differences:
            out.append(f"{d.field}: published command runs with {d.published!r}, its author meant {d.intended!r}")
        return out


def compare(published_argv: list[str], intended_argv: list[str], ignore: tuple[str, ...] = ()) -> Comparison:
    pub, want = parse(published_argv), parse(intended_argv)
    diffs = [
        Difference(k, pub.values.get(k), want.values.get(k))
        for k in sorted(set(pub.values) | set(want.values))
        if k not in ignore and pub.values.get(k) != want.values.get(k)
    ]
    return Comparison(pub.remaining, diffs)
