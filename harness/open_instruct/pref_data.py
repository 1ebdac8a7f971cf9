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
"constraint"}``, GSM8K/MATH prompts in the ``Question:``/``Problem:`` few-shot form (one shot, not 8/4).
The prompt set is small and fixed so that a tiny model can raise its verifiable reward within a few PPO
steps: the policy is warm-started (``warm_start_conversations``) to answer each prompt either with a
verified completion or with an unverified one, about half and half.

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
RLVR_ROWS = 48


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

GSM8K_SHOT = "Question: What is 1 + 1?\nAnswer: 1 + 1 = 2. The answer is 2.\n\n"
MATH_SHOT = "Problem:\nWhat is $1 + 1$?\n\nSolution:\n$1 + 1 = 2$. The answer is $\\boxed{2}$.\n\n"
#: The twin's prompt set: a few fixed prompts per verifier, each with one verified and one unverified
#: completion for the policy's warm start (start_models.warm_started_policy), so that the starting
#: policy is right about half the time and PPO has something to raise.
RLVR_SUMS = ((2, 2), (3, 1), (1, 2), (2, 3))
IFEVAL_TOPICS = ("cats", "apples")
HEDGE = "I am not sure."


def rlvr_prompts() -> list[dict]:
    """[{messages, ground_truth, dataset, constraint_type, constraint, good, bad}] - 12 fixed prompts."""
    out = []
    for a, b in RLVR_SUMS:
        out.append({"messages": [{"role": "user", "content": GSM8K_SHOT + f"Question: What is {a} + {b}?"}],
                    "ground_truth": str(a + b), "dataset": "gsm8k", "constraint_type": None, "constraint": None,
                    "good": f"{a} + {b} = {a + b}. The answer is {a + b}.", "bad": HEDGE})
    for a, b in RLVR_SUMS:
        out.append({"messages": [{"role": "user", "content": MATH_SHOT + f"Problem:\nWhat is ${a} + {b}$?"}],
                    "ground_truth": str(a + b), "dataset": "MATH", "constraint_type": None, "constraint": None,
                    "good": f"${a} + {b} = {a + b}$. The answer is $\\boxed{{{a + b}}}$.", "bad": HEDGE})
    for topic in IFEVAL_TOPICS:
        text = "Your entire response should be in English, and in all lowercase letters."
        out.append({"messages": [{"role": "user", "content": f"Write one sentence about {topic}. {text}"}],
                    "ground_truth": json.dumps({"func_name": "validate_lowercase"}), "dataset": "ifeval",
                    "constraint_type": "validate_lowercase", "constraint": text,
                    "good": f"here is one sentence about {topic}.", "bad": f"Here Is One Sentence About {topic.title()}."})
        text = "In your entire response, refrain from the use of any commas."
        out.append({"messages": [{"role": "user", "content": f"Describe {topic} in a few words. {text}"}],
                    "ground_truth": json.dumps({"func_name": "validate_no_commas"}), "dataset": "ifeval",
                    "constraint_type": "validate_no_commas", "constraint": text,
                    "good": f"{topic} are nice and good.", "bad": f"{topic}, nice, and good."})
    return out


def rlvr_rows(n: int = RLVR_ROWS) -> list[dict]:
    """The RLVR mixture rows (upstream columns only), cycling through the prompt set."""
    prompts = rlvr_prompts()
    keep = ("messages", "ground_truth", "dataset", "constraint_type", "constraint")
    return [{k: prompts[i % len(prompts)][k] for k in keep} for i in range(n)]


def warm_start_conversations() -> list[list[dict]]:
    """Each prompt twice: with its verified and with its unverified completion (equal weight)."""
    convs = []
    for p in rlvr_prompts():
        for reply in (p["good"], p["bad"]):
            convs.append(p["messages"] + [{"role": "assistant", "content": reply}])
    return convs


def write_preference_and_rlvr_data(data_dir: Path) -> dict[str, str]:
    """Write the three files; return {hub id: file name relative to data_dir}."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lex = Lexicon.load()
    write_jsonl(data_dir / PREFERENCE_FILE, preference_rows(lex))
    write_jsonl(data_dir / PREFERENCE_EVAL_FILE, [preference_row(i, lex, "test") for i in range(EVAL_ROWS)])
    write_jsonl(data_dir / RLVR_FILE, rlvr_rows())
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
