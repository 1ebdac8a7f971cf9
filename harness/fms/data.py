"""fms-hf-tuning 3.2.2 data handling: formats, templates, data configs, special tokens, masking.

Which path a run takes (``tuning/data/setup_dataprocessor.py``):

- ``--dataset_text_field F`` with ``--response_template``: each row becomes the Jinja text
  ``{{ element['F'] }}{{ eos_token }}`` (column F), then TRL tokenizes it (``<s>`` in front).
- ``--data_formatter_template T`` with ``--response_template``: T is rendered as Jinja in a sandbox with
  undefined keys an error, the row's columns and the tokenizer's special tokens as variables, into column
  ``text``; TRL 0.19.1 then appends ``eos_token`` to a ``text`` column that does not already end with it.
- ``--data_config_path``: the handlers named in the YAML/JSON run; the recipes use
  ``tokenize_and_apply_chat_template_with_masking`` (labels -100 on every non-assistant message span).

Completion-only masking is trl 0.19.1's ``DataCollatorForCompletionOnlyLM`` fed
``tokenizer.encode(response_template, add_special_tokens=False)[2:]`` (fms strips two ids, meant for
Llama-2's ``▁`` and ``<0x0A>``): labels are the input ids with every id equal to the pad id set to -100,
then everything up to the end of the **last** occurrence of the template ids is masked; a row without it
is masked entirely (upstream warns and trains on nothing from it).

Bad input raises ``ReproError`` with one line naming the file, field or value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from repro.base.errors import ReproError

IGNORE_INDEX = -100
DEFAULT_PAD_TOKEN = "<PAD>"
DEFAULT_EOS_TOKEN = "</s>"
DEFAULT_BOS_TOKEN = "<s>"
DEFAULT_UNK_TOKEN = "<unk>"
KNOWN_HANDLERS = (
    "remove_columns", "select_columns", "rename_columns", "tokenize", "apply_custom_jinja_template",
    "tokenize_and_apply_input_masking", "apply_tokenizer_chat_template",
    "tokenize_and_apply_chat_template_with_masking", "duplicate_columns", "skip_samples_with_large_columns",
    "prepare_multimodal_data_processor",
)


# ---------------------------------------------------------------------------------------------
# files


def load_rows(path: str | Path, what: str = "--training_data_path") -> list[dict]:
    """A JSON array or JSONL file of objects (upstream's ``json`` loader accepts both)."""
    p = Path(path)
    if not p.is_file():
        raise ReproError(f"{what} {path}: no such file")
    if p.suffix.lower() not in (".json", ".jsonl"):
        raise ReproError(f"{what} {path}: the twin reads JSON/JSONL only (got {p.suffix or 'no extension'})")
    text = p.read_text(encoding="utf-8")
    try:
        stripped = text.lstrip()
        if stripped.startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ReproError(f"{what} {path}: not JSON/JSONL (line {exc.lineno}: {exc.msg})") from None
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise ReproError(f"{what} {path}: expected a non-empty list of JSON objects")
    return rows


# ---------------------------------------------------------------------------------------------
# templates


def render_template(template: str, element: dict, special_tokens: dict[str, str], what: str) -> str:
    """``apply_custom_jinja_template``: sandboxed Jinja, undefined names are errors."""
    from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
    from jinja2.sandbox import SandboxedEnvironment, SecurityError

    env = SandboxedEnvironment(undefined=StrictUndefined)
    try:
        return env.from_string(template).render(element=element, **{**special_tokens, **element})
    except TemplateSyntaxError as exc:
        raise ReproError(f"{what} {template!r}: invalid Jinja syntax ({exc.message})") from None
    except UndefinedError as exc:
        raise ReproError(f"{what} {template!r}: {exc.message} - the data has columns {sorted(element)}") from None
    except SecurityError as exc:
        raise ReproError(f"{what} {template!r}: unsafe operation ({exc})") from None


def text_field_template(field_name: str) -> str:
    return f"{{{{ element['{field_name}'] }}}}{{{{ eos_token }}}}"


def single_sequence_texts(rows: Sequence[dict], *, dataset_text_field: str | None, data_formatter_template: str | None,
                          response_template: str | None, special_tokens: dict[str, str], eos_token: str,
                          packing: bool = False) -> list[str]:
    """Data format "single sequence": the texts TRL will tokenize, with upstream's validation order."""
    if response_template is None and not packing:
        raise ReproError("--response_template is not set: without it fms-hf-tuning needs --packing or padding-free "
                         "(pretraining over all tokens)")
    if response_template and not (dataset_text_field or data_formatter_template):
        raise ReproError("--response_template needs --dataset_text_field or --data_formatter_template")
    if dataset_text_field and data_formatter_template:
        raise ReproError("--dataset_text_field and --data_formatter_template are mutually exclusive")
    if dataset_text_field:
        missing = [i for i, r in enumerate(rows) if dataset_text_field not in r]
        if missing:
            raise ReproError(f"--dataset_text_field {dataset_text_field!r}: row {missing[0]} has no such column "
                             f"(columns: {sorted(rows[missing[0]])})")
        tpl, what = text_field_template(dataset_text_field), "--dataset_text_field"
        texts = [render_template(tpl, r, special_tokens, what) for r in rows]
        return texts  # column is F, not "text": TRL's add_eos leaves it alone (the template added one)
    texts = [render_template(data_formatter_template, r, special_tokens, "--data_formatter_template") for r in rows]
    # TRL 0.19.1 _prepare_dataset add_eos: only for a column named "text"
    return [t if t.endswith(eos_token) else t + eos_token for t in texts]


# ---------------------------------------------------------------------------------------------
# special tokens (tuning/data/tokenizer_utils.get_special_tokens_dict)


def special_tokens_to_add(tokenizer_name_or_path: str | None, tokenizer_class: str, tokens: dict[str, str | None]) -> dict:
    """What fms adds to the tokenizer; nothing at all when ``--tokenizer_name_or_path`` is given."""
    add: dict[str, str] = {}
    if tokenizer_name_or_path:
        return add
    if tokenizer_class in ("LlamaTokenizer", "LlamaTokenizerFast"):
        add.update(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    elif tokenizer_class in ("GPT2Tokenizer", "GPTNeoXTokenizerFast"):
        add["pad_token"] = "<pad>"
    defaults = {"pad_token": DEFAULT_PAD_TOKEN, "eos_token": DEFAULT_EOS_TOKEN, "bos_token": DEFAULT_BOS_TOKEN,
                "unk_token": DEFAULT_UNK_TOKEN}
    for key, default in defaults.items():
        if tokens.get(key) is None:
            add[key] = default
    if tokens.get("pad_token") is not None and tokens.get("pad_token") == tokens.get("eos_token"):
        if tokens.get("eos_token") != DEFAULT_PAD_TOKEN:
            add["pad_token"] = DEFAULT_PAD_TOKEN
        else:
            add["eos_token"] = DEFAULT_EOS_TOKEN
    return add


# ---------------------------------------------------------------------------------------------
# completion-only masking


def response_template_ids(tokenizer, response_template: str) -> list[int]:
    ids = list(tokenizer.encode(response_template, add_special_tokens=False))[2:]
    if not ids:
        raise ReproError(f"--response_template {response_template!r}: encodes to {len(ids) + 2} ids or fewer, and "
                         f"fms-hf-tuning drops the first two, leaving nothing to match")
    return ids


def find_last(seq: Sequence[int], pattern: Sequence[int]) -> int | None:
    """Start of the last occurrence of ``pattern`` in ``seq`` (the collator keeps overwriting its match)."""
    n, m = len(seq), len(pattern)
    found = None
    for i in range(n - m + 1):
        if seq[i] == pattern[0] and list(seq[i:i + m]) == list(pattern):
            found = i
    return found


def completion_labels(input_ids: Sequence[int], template_ids: Sequence[int], pad_id: int | None) -> tuple[list[int], bool]:
    """Labels for one row and whether the template was found (not found: every label -100)."""
    labels = [IGNORE_INDEX if (pad_id is not None and t == pad_id) else int(t) for t in input_ids]
    start = find_last(labels, template_ids)  # upstream searches the labels, pads already -100
    if start is None:
        return [IGNORE_INDEX] * len(labels), False
    end = start + len(template_ids)
    return [IGNORE_INDEX] * end + labels[end:], True


def check_template_matches(rows_ids: Sequence[Sequence[int]], template_ids: Sequence[int], template: str,
                           source: str) -> list[int]:
    """Indices of rows without the template; all of them -> one-line error (nothing would be trained)."""
    missing = [i for i, ids in enumerate(rows_ids) if find_last(list(ids), template_ids) is None]
    if rows_ids and len(missing) == len(rows_ids):
        # DEVIATION: upstream warns once per row and trains on zero tokens; the twin refuses
        raise ReproError(f"--response_template {template!r} matches no row of {source} (after fms drops its first "
                         f"two token ids): every label would be masked")
    return missing


def pad_batch(rows: Sequence[dict], pad_id: int | None, padding_side: str = "right") -> dict[str, list[list[int]]]:
    """``tokenizer.pad`` as the collator calls it; a tokenizer without pad token cannot pad (upstream raises)."""
    if pad_id is None:
        raise ReproError("the tokenizer has no pad token, so the data collator cannot pad a batch (transformers: "
                         "'Asking to pad but the tokenizer does not have a padding token'); fms-hf-tuning only adds "
                         "one when --tokenizer_name_or_path is not given")
    width = max(len(r["input_ids"]) for r in rows)
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for r in rows:
        ids, n = list(r["input_ids"]), width - len(r["input_ids"])
        labels = list(r.get("labels", ids))
        if padding_side == "left":
            out["input_ids"].append([pad_id] * n + ids)
            out["attention_mask"].append([0] * n + [1] * len(ids))
            out["labels"].append([pad_id] * n + labels)
        else:
            out["input_ids"].append(ids + [pad_id] * n)
            out["attention_mask"].append([1] * len(ids) + [0] * n)
            out["labels"].append(labels + [pad_id] * n)
    return out


def completion_only_batch(rows: Sequence[dict], template_ids: Sequence[int], pad_id: int | None,
                          padding_side: str = "right") -> dict[str, list[list[int]]]:
    """DataCollatorForLanguageModeling(mlm=False) then the completion-only masking, row by row."""
    batch = pad_batch([{"input_ids": r["input_ids"]} for r in rows], pad_id, padding_side)
    batch["labels"] = [completion_labels(ids, template_ids, pad_id)[0] for ids in batch["input_ids"]]
    return batch


def pretokenized_batch(rows: Sequence[dict], pad_id: int | None, padding_side: str = "right") -> dict:
    """DataCollatorForSeq2Seq(padding=True): labels padded with -100 (data-config handlers produce labels)."""
    batch = pad_batch(rows, pad_id, padding_side)
    width = len(batch["input_ids"][0])
    labels = []
    for r in rows:
        lab, n = list(r["labels"]), width - len(r["labels"])
        labels.append([IGNORE_INDEX] * n + lab if padding_side == "left" else lab + [IGNORE_INDEX] * n)
    batch["labels"] = labels
    return batch


# ---------------------------------------------------------------------------------------------
# data config (tuning/data/data_config.py)


@dataclass
class HandlerConfig:
    name: str
    arguments: dict


@dataclass
class DatasetConfig:
    name: str
    data_paths: list[str]
    data_handlers: list[HandlerConfig] = field(default_factory=list)
    split: dict[str, float] | None = None
    sampling: float | None = None
    shuffle: bool = True


@dataclass
class DataConfig:
    datasets: list[DatasetConfig]
    processor_type: str = "default"
    seed: int = 42
    streaming: bool = False
    chat_template: str | None = None


def _bad(path: str, where: str, why: str) -> ReproError:
    return ReproError(f"--data_config_path {path}: {where}: {why}")


def load_data_config(path: str | Path) -> DataConfig:
    """``load_and_validate_data_config`` with each upstream assertion as a one-line error."""
    import yaml

    p = str(path)
    if not Path(p).is_file():
        raise ReproError(f"--data_config_path {p}: no such file")
    suffix = Path(p).suffix.lower()
    try:
        text = Path(p).read_text(encoding="utf-8")
        raw = yaml.safe_load(text) if suffix in (".yaml", ".yml") else json.loads(text) if suffix == ".json" else None
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ReproError(f"--data_config_path {p}: not valid {suffix[1:].upper()} ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise _bad(p, "top level", "expected a mapping with 'datasets' (a .yaml/.yml/.json file)")
    if "datasets" not in raw:
        raise _bad(p, "datasets", "missing")
    if not isinstance(raw["datasets"], list) or not raw["datasets"]:
        raise _bad(p, "datasets", "must be a non-empty list")
    proc = raw.get("dataprocessor") or {}
    if not isinstance(proc, dict):
        raise _bad(p, "dataprocessor", "must be a mapping")
    ptype = proc.get("type", "default")
    if ptype not in ("default", "odm"):
        raise _bad(p, "dataprocessor.type", f"{ptype!r} is not 'default' or 'odm'")
    if ptype == "odm":
        raise _bad(p, "dataprocessor.type", "'odm' needs the fms_acceleration_odm plugin, which the twin does not have")
    seed = proc.get("seed", 42)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise _bad(p, "dataprocessor.seed", f"{seed!r} is not an int")
    streaming = proc.get("streaming", False)
    if not isinstance(streaming, bool):
        raise _bad(p, "dataprocessor.streaming", f"{streaming!r} is not a bool")
    datasets = []
    for k, d in enumerate(raw["datasets"]):
        where = f"datasets[{k}]"
        if not isinstance(d, dict):
            raise _bad(p, where, "must be a mapping")
        if "data_paths" not in d:
            raise _bad(p, f"{where}.data_paths", "missing")
        if not isinstance(d["data_paths"], list) or not all(isinstance(x, str) for x in d["data_paths"]):
            raise _bad(p, f"{where}.data_paths", "must be a list of strings")
        handlers = []
        for j, h in enumerate(d.get("data_handlers") or []):
            hw = f"{where}.data_handlers[{j}]"
            if not isinstance(h, dict) or not isinstance(h.get("name"), str):
                raise _bad(p, hw, "needs a 'name' string")
            if "arguments" not in h or not isinstance(h["arguments"], dict):
                raise _bad(p, f"{hw}.arguments", "missing or not a mapping")
            if h["name"] not in KNOWN_HANDLERS:
                raise _bad(p, f"{hw}.name", f"{h['name']!r} is not a registered data handler")
            handlers.append(HandlerConfig(h["name"], dict(h["arguments"])))
        split = d.get("split")
        if split is not None and (not isinstance(split, dict) or not all(
                isinstance(v, (int, float)) and 0 <= v <= 1 for v in split.values())):
            raise _bad(p, f"{where}.split", "must map split names to ratios in [0, 1]")
        sampling = d.get("sampling")
        if sampling is not None and not (isinstance(sampling, (int, float)) and 0 <= sampling <= 1):
            raise _bad(p, f"{where}.sampling", f"{sampling!r} is not in [0, 1]")
        datasets.append(DatasetConfig(str(d.get("name", "")), list(d["data_paths"]), handlers,
                                      {k2: float(v) for k2, v in split.items()} if split else None,
                                      float(sampling) if sampling is not None else None, bool(d.get("shuffle", True))))
    return DataConfig(datasets, ptype, seed, streaming, proc.get("chat_template"))


# ---------------------------------------------------------------------------------------------
# tokenize_and_apply_chat_template_with_masking


def _chat_ids(tokenizer, messages: list[dict], max_len: int | None, add_generation_prompt: bool) -> list[int]:
    from jinja2 import TemplateError

    try:
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                            truncation=max_len is not None, max_length=max_len, return_dict=False)
    except TemplateError as exc:
        raise ReproError(f"chat template failed on the data: {exc}") from None
    if hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def chat_with_masking(tokenizer, element: dict, max_seq_length: int | None, conversation_column: str = "messages",
                      **_ignored: Any) -> dict[str, list[int]]:
    """Labels -100 on each non-assistant message's span, measured by rendering prefixes of the chat.

    ``**_ignored`` mirrors upstream's ``**kwargs``: the seed's ``conversation_column_name`` lands there and
    the default column "messages" is what is read.
    """
    if conversation_column not in element:
        raise ReproError(f"tokenize_and_apply_chat_template_with_masking: column {conversation_column!r} not in the "
                         f"data (columns: {sorted(element)})")
    messages = element[conversation_column]
    if not messages:
        raise ReproError(f"tokenize_and_apply_chat_template_with_masking: column {conversation_column!r} is empty")
    ids = _chat_ids(tokenizer, messages, max_seq_length, False)
    labels = list(ids)
    for k, msg in enumerate(messages):
        if msg["role"] == "assistant":
            continue
        start = 0 if k == 0 else len(_chat_ids(tokenizer, messages[:k], max_seq_length, False))
        follows = k < len(messages) - 1 and messages[k + 1]["role"] == "assistant"
        end = len(_chat_ids(tokenizer, messages[:k + 1], max_seq_length, follows))
        labels[start:end] = [IGNORE_INDEX] * len(labels[start:end])
        if max_seq_length and end >= max_seq_length:
            break
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}
