"""Generated AceRAG training files in the published row formats (AceRAG-Data/train/compressive_encoder).

Why generated: offline and byte-reproducible (seeded from SHA-256 of the file name).  Why these
contents: every row's answer (and, in pretraining, much of each later window) is stated in its context,
so the frozen LM can only score it better through what the encoder carries across; that is the signal a
compressive encoder learns from.

Formats, as ``train_compressive_encoder.py`` reads them:

* pretrain ``redpajama.json``: ``{"text": ...}`` rows.
* non-QA fine-tuning files (longalpaca, multi_news, gov_report, trec_fine, banking77, arc_*):
  ``{"conversations": [{"role": "user", "content": prompt with context, "prompt": prompt with
  CONTEXT_TAG, "context": ...}, {"role": "assistant", "content": answer}]}``.
* QA files (hotpotqa, nq): ``{"query", "key": [retrieved docs], "answers": [...]}``, turned into a
  conversation with the first 5 docs by the entry point (``prepare_ft_data``).

The QA prompt and the per-file compression instructions are upstream's literal strings, kept as data in
``upstream_prompts.json`` (they decide the encoder input and where the prompt's head and tail fall); the
generated rows' own prompts (conversation files) stand in for the hub data's.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from harness import CORPUS_DIR
from harness.acerag.compress import CONTEXT_TAG, INPUT_TAG

LEXICON_FILE = CORPUS_DIR / "lexicon.json"


class Lexicon(dict):
    """The bundled word lists (corpus/lexicon.json)."""

    @classmethod
    def load(cls) -> "Lexicon":
        return cls(json.loads(LEXICON_FILE.read_text(encoding="utf-8")))


def stable_rng(*parts: object) -> random.Random:
    """A Random seeded from SHA-256 of the parts: the same on every machine and Python hash seed."""
    return random.Random(int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big"))


def pseudo_name(rng: random.Random, lex: Lexicon) -> str:
    """A made-up name from syllables, so that names never collide with real people."""
    return "".join(rng.choice(lex["syllables"]) for _ in range(rng.randint(2, 3))).capitalize()

#: Files the published commands name (under data/train/compressive_encoder/), and the kind of rows each holds.
FILES = {
    "redpajama": "text",
    "longalpaca": "conversation",
    "hotpotqa": "qa",
    "nq": "qa",
    "multi_news": "conversation",
    "gov_report": "conversation",
    "trec_fine": "conversation",
    "banking77": "conversation",
    "arc_easy": "conversation",
    "arc_challenge": "conversation",
}
#: Rows per generated file (the twin's data_splits x train_num_per_data resample these up or down).
DEFAULT_ROWS = {"redpajama": 24, "longalpaca": 32}
OTHER_ROWS = 6

#: Upstream's literal prompt strings (data the twin must match, not prose): the QA prompt prepare_ft_data
#: builds and src/config.py's dataset2compression_instruction for the files the commands name.
UPSTREAM_PROMPTS = Path(__file__).resolve().parent / "upstream_prompts.json"
_PROMPTS = json.loads(UPSTREAM_PROMPTS.read_text(encoding="utf-8"))
COMPRESSION_INSTRUCTION: dict[str, str] = dict(_PROMPTS["compression_instruction"])
#: The QA prompt the entry point builds from a {query, key, answers} row.
QA_PROMPT = _PROMPTS["qa_prompt"].format(context=CONTEXT_TAG, input=INPUT_TAG)
QA_RETRIEVAL_NUM = 5


def _facts(rng, lex: Lexicon, n: int) -> list[tuple[str, str, str]]:
    return [(pseudo_name(rng, lex), rng.choice(lex["professions"]), rng.choice(lex["places"])) for _ in range(n)]


def _sentence(rng, lex: Lexicon, fact: tuple[str, str, str]) -> str:
    name, job, place = fact
    verb, noun, adj = rng.choice(lex["verbs"]), rng.choice(lex["nouns"]), rng.choice(lex["adjectives"])
    return f"{name} is a {job} in the {place}, and {name} likes to {verb} the {adj} {noun}."


def text_rows(name: str, n: int, lex: Lexicon) -> list[dict]:
    """Long texts that mention the same people again and again, so later windows repeat earlier facts."""
    rows = []
    for i in range(n):
        rng = stable_rng("acerag", name, i)
        facts = _facts(rng, lex, 4)
        sentences = [_sentence(rng, lex, rng.choice(facts)) for _ in range(rng.randint(14, 30))]
        rows.append({"text": " ".join(sentences)})
    return rows


def conversation_rows(name: str, n: int, lex: Lexicon) -> list[dict]:
    """A context of facts, a question whose answer is one of them; prompt and content as upstream's fields."""
    rows = []
    for i in range(n):
        rng = stable_rng("acerag", name, i)
        facts = _facts(rng, lex, rng.randint(6, 12))
        context = " ".join(_sentence(rng, lex, f) for f in facts)
        who, job, place = rng.choice(facts)
        prompt = f"Read the notes and answer.\n\n{CONTEXT_TAG}\n\nWhere does {who} work?"
        rows.append(
            {
                "conversations": [
                    {"role": "user", "content": prompt.replace(CONTEXT_TAG, context), "prompt": prompt, "context": context},
                    {"role": "assistant", "content": f"{who} works in the {place} as a {job}."},
                ]
            }
        )
    return rows


def qa_rows(name: str, n: int, lex: Lexicon) -> list[dict]:
    """Retrieved documents (more than the 5 the entry point keeps) and a short answer."""
    rows = []
    for i in range(n):
        rng = stable_rng("acerag", name, i)
        facts = _facts(rng, lex, 7)
        docs = [_sentence(rng, lex, f) + " " + _sentence(rng, lex, f) for f in facts]
        who, job, place = facts[rng.randrange(5)]
        rows.append({"query": f"What is the job of {who}?", "key": docs, "answers": [job]})
    return rows


GENERATORS = {"text": text_rows, "conversation": conversation_rows, "qa": qa_rows}


def file_rows(name: str, n: int | None = None, lex: Lexicon | None = None) -> list[dict]:
    kind = FILES[name]
    return GENERATORS[kind](name, n if n is not None else DEFAULT_ROWS.get(name, OTHER_ROWS), lex or Lexicon.load())


def write_files(out: Path, names=tuple(FILES)) -> dict[str, str]:
    """Write ``<name>.json`` (a JSON list, as the hub files are) for each name; returns name -> file name."""
    out.mkdir(parents=True, exist_ok=True)
    lex = Lexicon.load()
    written = {}
    for name in names:
        path = out / f"{name}.json"
        path.write_text(json.dumps(file_rows(name, lex=lex), ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        written[name] = path.name
    return written
