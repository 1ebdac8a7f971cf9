"""Bundled SFT data in the Tulu 3 row format, and open-instruct's ``--dataset_mixer_list`` semantics.

Why generated, not downloaded: twins run offline, and the numbers they produce must not depend on a
hub snapshot.  Every row is derived from ``corpus/lexicon.json`` with a seeded ``random.Random`` (seeded
from the source name through SHA-256, never ``hash()``), so two builds write the same bytes.

Rows look like ``allenai/tulu-3-sft-mixture`` rows: ``{"id", "messages": [{"role", "content"}], "source"}``
with system/user/assistant roles, some multi-turn.  Several sources exist so that a mixer list with
fractions or counts selects something meaningful; the "mixture" file is their concatenation, standing in
for the hub mixture that the recipes name.

The mixer port (:func:`get_datasets`) mirrors ``open_instruct/utils.py::get_datasets`` at commit 30d11b4:
flat name/value pairs, "." in a value means a float fraction else an int count, any value > 1 turns
every value into a count, each dataset is ``shuffle(seed=42)``-ed (independent of ``--seed``) before the
first ``int(f*len)`` / first ``n`` rows are taken, names ending in .json/.jsonl are local files.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import CORPUS_DIR

#: The fixed seed open-instruct shuffles every mixed dataset with (not ``--seed``).
MIXER_SHUFFLE_SEED = 42
#: Rows generated per source; the mixture takes the first MIXTURE_ROWS_PER_SOURCE of each.
ROWS_PER_SOURCE = 64
MIXTURE_ROWS_PER_SOURCE = 50
#: File name of the concatenated mixture inside the data folder.
MIXTURE_FILE = "tulu3_sft_mixture_twin.jsonl"
#: Hub ids the Tulu 3 SFT recipes train on; the twin maps each of them to the bundled mixture.
TULU3_SFT_HUB_IDS = ("allenai/tulu-v.3.9-mix-preview-noncommercial", "allenai/tulu-3-sft-mixture")

Message = dict[str, str]


@dataclass(frozen=True)
class Lexicon:
    """The hand-written word lists every generator draws from (see corpus/lexicon.json)."""

    words: Mapping[str, list]

    @classmethod
    def load(cls, path: Path = CORPUS_DIR / "lexicon.json") -> Lexicon:
        with open(path, encoding="utf-8") as fh:
            return cls(json.load(fh))

    def __getitem__(self, key: str) -> list:
        return self.words[key]


def stable_rng(*parts: object) -> random.Random:
    """A Random seeded from SHA-256 of the parts: the same on every machine and Python hash seed."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def pseudo_name(rng: random.Random, lex: Lexicon) -> str:
    """A made-up person name from syllables, so that names never collide with real people."""
    return "".join(rng.choice(lex["syllables"]) for _ in range(rng.randint(2, 3))).capitalize()


# --- per-source conversation generators: each returns the messages of one row (without system) ---


def arithmetic_messages(rng: random.Random, lex: Lexicon) -> list[Message]:
    """Single-turn arithmetic in three phrasings; answers are exact so the data is self-consistent."""
    a, b = rng.randint(2, 999), rng.randint(2, 99)
    kind = rng.choice(["add", "sub", "mul", "story"])
    if kind == "add":
        return _qa(f"What is {a} + {b}?", f"{a} + {b} = {a + b}. The answer is {a + b}.")
    if kind == "sub":
        return _qa(f"Subtract {b} from {a}.", f"{a} - {b} = {a - b}.")
    if kind == "mul":
        a = rng.randint(2, 99)
        return _qa(f"Compute {a} times {b}.", f"{a} * {b} = {a * b}. So {a} times {b} is {a * b}.")
    name, item = pseudo_name(rng, lex), rng.choice(["marbles", "coins", "stamps", "stickers", "shells"])
    b = rng.randint(1, a)
    return _qa(
        f"{name} has {a} {item} and gives {b} of them to a friend. How many {item} does {name} have left?",
        f"{name} starts with {a} {item} and gives away {b}, so {a} - {b} = {a - b}. "
        f"{name} has {a - b} {item} left.",
    )


def knowledge_messages(rng: random.Random, lex: Lexicon) -> list[Message]:
    """Short factual Q&A (opposites, plurals, categories, examples) of varying answer length."""
    kind = rng.choice(["opposite", "plural", "category", "examples"])
    if kind == "opposite":
        x, y = rng.choice(lex["opposites"])
        return _qa(f"What is the opposite of {x}?", f"The opposite of {x} is {y}.")
    if kind == "plural":
        x, y = rng.choice(lex["plurals"])
        return _qa(f"What is the plural of {x}?", f"The plural of {x} is {y}.")
    categories = {"animal": "animals", "fruit": "fruits", "vegetable": "vegetables", "tool": "tools"}
    if kind == "category":
        cat = rng.choice(sorted(categories))
        item = rng.choice(lex[categories[cat]])
        return _qa(
            f"Is {article(item)} {item} an animal, a fruit, a vegetable or a tool?",
            f"{article(item).capitalize()} {item} is {article(cat)} {cat}.",
        )
    cat = rng.choice(sorted(categories.values()))
    n = rng.randint(2, 6)
    items = rng.sample(lex[cat], n)
    return _qa(
        f"Give {n} examples of {cat}.", f"Here are {n} {cat}: {', '.join(items[:-1])} and {items[-1]}."
    )


def instruction_messages(rng: random.Random, lex: Lexicon) -> list[Message]:
    """Verifiable instructions (sort, reverse, upper-case, count, enumerate) with variable lengths."""
    kind = rng.choice(["sort", "reverse", "upper", "count", "evens"])
    if kind == "sort":
        nums = [rng.randint(0, 500) for _ in range(rng.randint(3, 14))]
        order = rng.choice(["ascending", "descending"])
        out = sorted(nums, reverse=order == "descending")
        return _qa(
            f"Sort these numbers in {order} order: {', '.join(map(str, nums))}.", ", ".join(map(str, out))
        )
    if kind == "reverse":
        word = rng.choice(lex["nouns"] + lex["places"])
        return _qa(f"Write the word '{word}' backwards.", f"'{word}' backwards is '{word[::-1]}'.")
    if kind == "upper":
        words = [rng.choice(lex["adjectives"]), rng.choice(lex["nouns"]), rng.choice(lex["verbs"])]
        text = " ".join(words)
        return _qa(f"Rewrite in capital letters: {text}", text.upper())
    if kind == "count":
        word = rng.choice(lex["animals"] + lex["tools"])
        return _qa(
            f"How many letters are in the word '{word}'?", f"The word '{word}' has {len(word)} letters."
        )
    n = rng.randint(2, 12)
    return _qa(f"List the first {n} even numbers.", ", ".join(str(2 * i) for i in range(1, n + 1)) + ".")


def multiturn_messages(rng: random.Random, lex: Lexicon) -> list[Message]:
    """A running-total dialogue of 2-4 user turns: exercises masking of every non-assistant span."""
    total = rng.randint(1, 50)
    messages: list[Message] = [
        {"role": "user", "content": f"Let's keep a running total. Start with {total}."},
        {"role": "assistant", "content": f"Okay. The total is {total}."},
    ]
    for _ in range(rng.randint(1, 3)):
        delta = rng.randint(1, 40)
        if rng.random() < 0.5:
            messages += _qa(
                f"Add {delta}.", f"{total} + {delta} = {total + delta}. The total is now {total + delta}."
            )
            total += delta
        else:
            messages += _qa(
                f"Take away {delta}.",
                f"{total} - {delta} = {total - delta}. The total is now {total - delta}.",
            )
            total -= delta
    return messages


def _qa(question: str, answer: str) -> list[Message]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


#: Source name (as it appears in the row's ``source`` field and as a twin hub id) -> generator.
SOURCES: dict[str, Callable[[random.Random, Lexicon], list[Message]]] = {
    "twin/arithmetic": arithmetic_messages,
    "twin/knowledge": knowledge_messages,
    "twin/instructions": instruction_messages,
    "twin/multiturn": multiturn_messages,
}


def with_optional_system(rng: random.Random, lex: Lexicon, messages: list[Message]) -> list[Message]:
    """About a quarter of Tulu 3 style rows carry a system prompt; the masking must cover it too."""
    if rng.random() < 0.25:
        return [{"role": "system", "content": rng.choice(lex["system_prompts"])}] + messages
    return messages


def source_rows(source: str, n: int = ROWS_PER_SOURCE, lex: Lexicon | None = None) -> list[dict]:
    """The first n rows of one source, in a fixed order (row i depends only on source and i)."""
    lex = lex or Lexicon.load()
    slug = source.split("/")[-1]
    rows = []
    for i in range(n):
        rng = stable_rng("sft", source, i)
        messages = with_optional_system(rng, lex, SOURCES[source](rng, lex))
        rows.append({"id": f"{slug}_{i}", "messages": messages, "source": source})
    return rows


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    """Deterministic bytes: fixed key order, ASCII only, '\\n' line ends."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=True) + "\n")


def write_bundled_data(data_dir: Path, rows_per_source: int = ROWS_PER_SOURCE,
                       mixture_rows_per_source: int = MIXTURE_ROWS_PER_SOURCE) -> dict[str, str]:
    """Write one JSONL per source plus the mixture; return {hub id: file name relative to data_dir}."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lex = Lexicon.load()
    names: dict[str, str] = {}
    mixture: list[dict] = []
    for source in SOURCES:
        rows = source_rows(source, rows_per_source, lex)
        file_name = source.replace("/", "_") + ".jsonl"
        write_jsonl(data_dir / file_name, rows)
        names[source] = file_name
        mixture += rows[:mixture_rows_per_source]
    write_jsonl(data_dir / MIXTURE_FILE, mixture)
    for hub_id in TULU3_SFT_HUB_IDS:
        names[hub_id] = MIXTURE_FILE
    return names


#: Files besides this module whose bytes decide the data (part of the asset's cache key).
ASSET_INPUTS = [CORPUS_DIR / "lexicon.json"]


def tulu_sft_mixture(out: Path, params: dict, deps: dict) -> dict[str, str]:
    """Asset builder: params {rows_per_source, mixture_rows_per_source}; the mixture stands for the
    hub mixture, each source file for its source name."""
    return write_bundled_data(out, int(params.get("rows_per_source", ROWS_PER_SOURCE)),
                              int(params.get("mixture_rows_per_source", MIXTURE_ROWS_PER_SOURCE)))


# --- open-instruct dataset_mixer_list semantics ---


class MixerError(ValueError):
    """A mixer list that open-instruct would reject (odd length, mixed counts and fractions, ...)."""


def parse_mixer_list(values: Sequence[str]) -> dict[str, float | int]:
    """``name1 v1 name2 v2 ...`` -> dict; a value with "." is a float fraction, otherwise an int count."""
    if len(values) % 2 != 0:
        raise MixerError(f"data mixer list length is not even: {list(values)}")
    mixer: dict[str, float | int] = {}
    for name, raw in zip(values[0::2], values[1::2]):
        try:
            mixer[name] = float(raw) if "." in raw else int(raw)
        except ValueError:
            raise MixerError(f"mixer value {raw!r} for {name!r} is neither a fraction nor a count") from None
    return mixer


def mixer_uses_counts(mixer: Mapping[str, float | int]) -> bool:
    """Upstream rule: if ANY value is > 1 every value is a count, and all of them must be ints."""
    values = list(mixer.values())
    if any(v < 0 for v in values):
        raise MixerError("dataset fractions / lengths cannot be negative")
    if any(v > 1 for v in values):
        if not all(isinstance(v, int) for v in values):
            raise MixerError("cannot mix fractions and counts (any value > 1 makes all values counts)")
        return True
    return False


def rows_to_take(value: float | int, available: int, is_count: bool) -> int:
    """Count n -> the first n rows; fraction f -> the first int(f * len) rows (upstream truncates)."""
    if is_count:
        if value > available:
            raise MixerError(f"asked for {value} rows but the dataset has only {available}")
        return int(value)
    return int(value * available)


def resolve_dataset_path(name: str, hub_map: Mapping[str, str]) -> str:
    """Map a hub id to its bundled file, or accept a local .json/.jsonl path; anything else is offline."""
    if name in hub_map:
        return hub_map[name]
    if name.endswith((".json", ".jsonl")):
        if not os.path.isfile(name):
            raise MixerError(f"dataset file not found: {name}")
        return name
    raise MixerError(
        f"dataset {name!r} is not bundled with the twin and twins never download; "
        f"known ids: {', '.join(sorted(hub_map)) or 'none'}"
    )


def get_datasets(
    mixer_list: Sequence[str],
    hub_map: Mapping[str, str],
    columns_to_keep: Sequence[str] = ("messages",),
    save_data_dir: str | None = None,
    keep_ids: bool = False,
):
    """Port of ``open_instruct.utils.get_datasets`` for the train split, as finetune.py calls it.

    Returns a ``datasets.DatasetDict`` with a "train" split.  ``save_data_dir`` keeps upstream's
    quirk: the file is ``save_data_dir + "mixed_ds_train.json"`` with no path separator.
    """
    from datasets import DatasetDict, concatenate_datasets, load_dataset

    mixer = parse_mixer_list(mixer_list)
    is_count = mixer_uses_counts(mixer)
    subsets = []
    target_features = None
    for name, value in mixer.items():
        path = resolve_dataset_path(name, hub_map)
        dataset = load_dataset("json", data_files=path, split="train").shuffle(seed=MIXER_SHUFFLE_SEED)
        missing = [c for c in columns_to_keep if c not in dataset.column_names]
        if missing:
            raise MixerError(
                f"dataset {name!r} has no column(s) {missing} (twins read the Tulu 3 messages format)"
            )
        if "id" not in dataset.column_names:
            dataset = dataset.add_column("id", [f"{name}_{i}" for i in range(len(dataset))])
        dataset = dataset.remove_columns(
            [c for c in dataset.column_names if c not in [*columns_to_keep, "id"]]
        )
        target_features = target_features or dataset.features
        dataset = dataset.cast(target_features)
        subsets.append(dataset.select(range(rows_to_take(value, len(dataset), is_count))))
    train = concatenate_datasets(subsets)
    if save_data_dir:
        train.to_json(save_data_dir + "mixed_ds_train.json")
    if not keep_ids and "id" in train.column_names:
        train = train.remove_columns("id")
    return DatasetDict({"train": train})
