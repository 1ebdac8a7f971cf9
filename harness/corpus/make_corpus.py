"""Regenerate the bundled tokenizer corpus under ``harness/corpus/text/`` (run by hand, output is committed).

Why a committed corpus: the twin tokenizer is trained at asset-build time and its bytes must never
change unless this text changes, so the text is shipped rather than regenerated on every build.  It is
written from the hand-made ``lexicon.json`` (plain English vocabulary and elementary facts, no third-party
text), in three parts:

* ``conversations.txt``: conversations in the shape of the bundled SFT data (different seeds than the
  SFT rows), rendered with the tulu markers ``<|system|>``/``<|user|>``/``<|assistant|>`` as plain text,
  so the BPE learns merges for exactly what the trainer tokenizes;
* ``prose.txt``: template sentences that use every lexicon word several times;
* ``names.txt``: syllable pseudo-words, which give the BPE enough distinct material for a 2048 vocab.

Usage: ``python harness/corpus/make_corpus.py`` from the repository root.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness.open_instruct.data import SOURCES, Lexicon, pseudo_name, stable_rng, with_optional_system  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent / "text"
CONVERSATIONS = 300
PROSE_SENTENCES = 800
NAMES = 1500


def render_tulu_plain(messages: list[dict[str, str]]) -> str:
    """The tulu template's text without the eos token (a special token is never learned as BPE text)."""
    markers = {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"}
    return "".join(markers[m["role"]] + m["content"] + "\n" for m in messages)


def conversations_text(lex: Lexicon) -> str:
    sources = sorted(SOURCES)
    parts = []
    for i in range(CONVERSATIONS):
        source = sources[i % len(sources)]
        rng = stable_rng("corpus", source, i)
        parts.append(render_tulu_plain(with_optional_system(rng, lex, SOURCES[source](rng, lex))))
    return "\n".join(parts)


def prose_text(lex: Lexicon) -> str:
    rng = stable_rng("corpus", "prose")
    templates = [
        "The {adj} {noun} will {verb} near the {place}.",
        "A {prof} can {verb} a {tool} in the {place}.",
        "Every {animal} likes the {color} {fruit}.",
        "In the {place}, the {prof} keeps {number} {noun}s and one {vegetable}.",
        "Why would a {adj} {animal} {verb} the {tool}?",
        '{name} said: "Please {verb} the {color} {noun} before {number} o\'clock."',
        "The word {noun} has {length} letters, and {animal} has {length2}.",
    ]
    lines = []
    for _ in range(PROSE_SENTENCES):
        noun, animal = rng.choice(lex["nouns"]), rng.choice(lex["animals"])
        lines.append(
            rng.choice(templates).format(
                adj=rng.choice(lex["adjectives"]),
                noun=noun,
                verb=rng.choice(lex["verbs"]),
                place=rng.choice(lex["places"]),
                prof=rng.choice(lex["professions"]),
                tool=rng.choice(lex["tools"]),
                animal=animal,
                color=rng.choice(lex["colors"]),
                fruit=rng.choice(lex["fruits"]),
                vegetable=rng.choice(lex["vegetables"]),
                number=rng.choice(lex["number_words"]),
                name=pseudo_name(rng, lex),
                length=len(noun),
                length2=len(animal),
            )
        )
    return "\n".join(lines)


def names_text(lex: Lexicon) -> str:
    rng = stable_rng("corpus", "names")
    names = [pseudo_name(rng, lex) for _ in range(NAMES)]
    return "\n".join(" ".join(names[i : i + 12]) for i in range(0, len(names), 12))


def main() -> None:
    lex = Lexicon.load()
    OUT_DIR.mkdir(exist_ok=True)
    for name, text in {
        "conversations.txt": conversations_text(lex),
        "prose.txt": prose_text(lex),
        "names.txt": names_text(lex),
    }.items():
        (OUT_DIR / name).write_text(text + "\n", encoding="utf-8", newline="\n")
        print(f"{name}: {len(text) + 1} bytes")


if __name__ == "__main__":
    main()
