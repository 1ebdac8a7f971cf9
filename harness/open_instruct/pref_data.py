"""Offline twin data for the Tulu 3 preference and RLVR stages, in the upstream row formats.

Preference rows look like ``allenai/llama-3.1-tulu-3-8b-preference-mixture`` rows: ``{"id", "prompt",
"chosen": [messages], "rejected": [messages], "source"}``, chosen and rejected sharing every message but
the final assistant turn.  The learnable signal: the chosen turn is the SFT generators' correct answer;
the rejected turn is either a hedge/refusal from a short fixed list (most rows: a tiny model learns to
lower those tokens within a few dozen steps) or the correct text with its numbers changed (a harder
signal).  A few rows have a prompt far longer than the twins' sequence limit, so that the DPO trainer's
"drop rows whose labels are all masked" and the RM's prompt-length filter have something to drop, and a
few have a chosen turn longer than the limit with a short prompt (kept by the RM filter's quirk).

RLVR rows look like ``allenai/RLVR-GSM-MATH-IF-Mixed-Constraints`` rows: ``{"messages": [one user
message], "ground_truth": str, "dataset": "gsm8k" | "MATH" | "ifeval", "constraint_type",
"constraint"}``.  The prompts are chosen so that a tiny model can raise its verifiable reward within a
few PPO steps: short arithmetic whose answer is one small number (gsm8k), the same boxed (MATH), and
IFEval constraints that a short response meets often but not always (lowercase, no commas, a keyword).

Everything is derived from ``corpus/lexicon.json`` with ``stable_rng`` (SHA-256 seeded), so two builds
write the same bytes.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from harness import CORPUS_DIR
from harness.open_instruct import data as _data_module
from harness.open_instruct.data import Lexicon, _qa, arithmetic_messages, instruction_messages, knowledge_messages
from harness.open_instruct.data import stable_rng, with_optional_system, write_jsonl

PREFERENCE_FILE = "tulu3_preference_mixture_twin.jsonl"
PREFERENCE_EVAL_FILE = "tulu3_preference_eval_twin.jsonl"
RLVR_FILE = "tulu3_rlvr_mixture_twin.jsonl"
#: Hub ids the preference recipes name, mapped to the bundled preference file.
PREFERENCE_HUB_IDS = (
    "allenai/llama-3.1-tulu-3-8b-preference-mixture",
    "allenai/llama-3.1-tulu-3-70b-preference-mixture",
)
PREFERENCE_EVAL_HUB_IDS = ("allenai/ultrafeedback_binarized_cleaned",)
RLVR_HUB_IDS = ("allenai/RLVR-GSM-MATH-IF-Mixed-Constraints",)
HEDGES = (
    "I am not sure about that.",
    "Sorry, I can not help with that.",
    "I do not know the answer.",
    "That is hard to say.",
)
PREFERENCE_ROWS = 126  # + 2 long-chosen rows = 128 pairs after the 4 long-prompt rows are dropped
LONG_PROMPT_ROWS = 4
LONG_CHOSEN_ROWS = 2
EVAL_ROWS = 16
RLVR_ROWS = 64


def _perturb_numbers(text: str, rng: random.Random) -> str:
    """Every number shifted by a nonzero amount, so the rejected answer is wrong but well formed."""
    return re.sub(r"\d+", lambda m: str(int(m.group()) + rng.choice([-3, -2, -1, 1, 2, 3]) + 10), text)


def rejected_turn(correct: str, rng: random.Random) -> str:
    if re.search(r"\d", correct) and rng.random() < 0.3:
        return _perturb_numbers(correct, rng)
    return rng.choice(HEDGES)


_GENERATORS = (arithmetic_messages, knowledge_messages, instruction_messages)


def preference_row(i: int, lex: Lexicon, split: str = "train") -> dict:
    rng = stable_rng("preference", split, i)
    messages = with_optional_system(rng, lex, _GENERATORS[i % len(_GENERATORS)](rng, lex))
    prefix, correct = messages[:-1], messages[-1]["content"]
    return {
        "id": f"pref_{split}_{i}",
        "prompt": prefix[-1]["content"],
        "chosen": prefix + [{"role": "assistant", "content": correct}],
        "rejected": prefix + [{"role": "assistant", "content": rejected_turn(correct, rng)}],
        "source": f"twin/preference/{_GENERATORS[i % len(_GENERATORS)].__name__.split('_')[0]}",
    }


def _long_text(rng: random.Random, lex: Lexicon, words: int) -> str:
    pool = lex["nouns"] + lex["adjectives"] + lex["verbs"] + lex["places"]
    return " ".join(rng.choice(pool) for _ in range(words))


def long_prompt_row(i: int, lex: Lexicon) -> dict:
    """A prompt of ~600 words: past any twin limit, so every assistant label is truncated away."""
    rng = stable_rng("preference-long-prompt", i)
    question = "Summarise this text in one word: " + _long_text(rng, lex, 600)
    answer = rng.choice(lex["nouns"])
    prefix = [{"role": "user", "content": question}]
    return {"id": f"pref_longprompt_{i}", "prompt": question,
            "chosen": prefix + [{"role": "assistant", "content": f"In one word: {answer}."}],
            "rejected": prefix + [{"role": "assistant", "content": rng.choice(HEDGES)}],
            "source": "twin/preference/long_prompt"}


def long_chosen_row(i: int, lex: Lexicon) -> dict:
    """A short prompt with a ~600-word chosen turn (the RM filter keeps it when both limits are set)."""
    rng = stable_rng("preference-long-chosen", i)
    question = f"Write a long list of words about {rng.choice(lex['places'])}."
    prefix = [{"role": "user", "content": question}]
    return {"id": f"pref_longchosen_{i}", "prompt": question,
            "chosen": prefix + [{"role": "assistant", "content": _long_text(rng, lex, 600)}],
            "rejected": prefix + [{"role": "assistant", "content": rng.choice(HEDGES)}],
            "source": "twin/preference/long_chosen"}


def preference_rows(lex: Lexicon | None = None) -> list[dict]:
    """The training mixture: regular rows with the special ones spread through it (fixed positions)."""
    lex = lex or Lexicon.load()
    rows = [preference_row(i, lex) for i in range(PREFERENCE_ROWS)]
    for k in range(LONG_PROMPT_ROWS):
        rows.insert(7 + 31 * k, long_prompt_row(k, lex))
    for k in range(LONG_CHOSEN_ROWS):
        rows.insert(19 + 53 * k, long_chosen_row(k, lex))
    return rows


# ----------------------------------------------------------------------------------------------- RLVR

GSM8K_SHOT = "Question: What is 2 + 3?\nAnswer: 2 + 3 = 5. The answer is 5.\n\n"
MATH_SHOT = "Problem:\nWhat is $1 + 1$?\n\nSolution:\n$1 + 1 = 2$. The answer is $\\boxed{2}$.\n\n"
IFEVAL_CONSTRAINTS = (
    ("validate_lowercase", "Your entire response should be in English, and in all lowercase letters.", {}),
    ("validate_no_commas", "In your entire response, refrain from the use of any commas.", {}),
    ("verify_keywords", "Include the keyword {word} in your response.", {"keyword_list": None}),
)


def gsm8k_row(i: int, rng: random.Random) -> dict:
    a, b = rng.randint(1, 4), rng.randint(1, 4)
    prompt = GSM8K_SHOT + f"Question: What is {a} + {b}?"
    return {"messages": [{"role": "user", "content": prompt}], "ground_truth": str(a + b),
            "dataset": "gsm8k", "constraint_type": None, "constraint": None}


def math_row(i: int, rng: random.Random) -> dict:
    a, b = rng.randint(1, 4), rng.randint(1, 4)
    prompt = MATH_SHOT + f"Problem:\nWhat is ${a} + {b}$?"
    return {"messages": [{"role": "user", "content": prompt}], "ground_truth": str(a + b),
            "dataset": "MATH", "constraint_type": None, "constraint": None}


def ifeval_row(i: int, rng: random.Random, lex: Lexicon) -> dict:
    func, text, args = IFEVAL_CONSTRAINTS[i % len(IFEVAL_CONSTRAINTS)]
    if func == "verify_keywords":
        word = rng.choice(["the", "is", "a"])
        text, args = text.format(word=word), {"keyword_list": [word]}
    topic = rng.choice(lex["animals"] + lex["fruits"])
    prompt = f"Write one sentence about {topic}. {text}"
    truth = json.dumps({"func_name": func, **args})
    return {"messages": [{"role": "user", "content": prompt}], "ground_truth": truth,
            "dataset": "ifeval", "constraint_type": func, "constraint": text}


def rlvr_rows(lex: Lexicon | None = None, n: int = RLVR_ROWS) -> list[dict]:
    lex = lex or Lexicon.load()
    rows = []
    for i in range(n):
        rng = stable_rng("rlvr", i)
        kind = i % 3
        rows.append(gsm8k_row(i, rng) if kind == 0 else math_row(i, rng) if kind == 1 else ifeval_row(i, rng, lex))
    return rows


def write_preference_and_rlvr_data(data_dir: Path) -> dict[str, str]:
    """Write the three files; return {hub id: file name relative to data_dir}."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lex = Lexicon.load()
    write_jsonl(data_dir / PREFERENCE_FILE, preference_rows(lex))
    write_jsonl(data_dir / PREFERENCE_EVAL_FILE, [preference_row(i, lex, "test") for i in range(EVAL_ROWS)])
    write_jsonl(data_dir / RLVR_FILE, rlvr_rows(lex))
    names = {h: PREFERENCE_FILE for h in PREFERENCE_HUB_IDS}
    names.update({h: PREFERENCE_EVAL_FILE for h in PREFERENCE_EVAL_HUB_IDS})
    names.update({h: RLVR_FILE for h in RLVR_HUB_IDS})
    return names


#: Files whose bytes decide these data sets besides this module (they enter the asset content key).
ASSET_INPUTS = [CORPUS_DIR / "lexicon.json", Path(_data_module.__file__)]


def preference_data(out: Path, params: dict, deps: dict) -> dict[str, str]:
    """Asset builder: the preference mixture, its eval split and the RLVR prompts; {hub id: file}."""
    return write_preference_and_rlvr_data(out)


__all__ = ["preference_rows", "rlvr_rows", "write_preference_and_rlvr_data", "preference_data", "_qa"]
