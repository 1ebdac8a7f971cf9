"""Generated ToolGen data: a tool list and the three published row formats (reasonwang/ToolGen-Datasets).

Offline and byte-reproducible (SHA-256-seeded).  ``{"conversations": [{"role", "content", "loss"}]}`` rows:

* memorization (toolgen_atomic_memorization.json): user "Tool Name: ... Tool Description: ... Api Name:
  ... Api Description: ..." (no loss) -> assistant ``<<tool&&api>>`` (loss); one row per API.
* retrieval (toolgen_atomic_retrieval_G123.json): a user request (no loss) -> the API's token (loss);
  several phrasings per API.
* end-to-end (toolgen_atomic_G123_dfs.json): system prompt, query, then per step a thought (loss),
  "Generate the action." -> token (loss), "Please give the input. Here is the documentation: {...}" ->
  JSON arguments (loss), a ``function`` message with the API's response (no loss; the template maps it
  to the assistant role), finally ``<<Finish>>`` and its give_answer arguments.

The tool list (virtual_tokens.txt) starts with ``<<Finish>>`` as upstream's does; names are ASCII.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from harness import CORPUS_DIR
from harness.toolgen.vtokens import FINISH

FILES = {
    "memorization": "toolgen_atomic_memorization.json",
    "retrieval": "toolgen_atomic_retrieval_G123.json",
    "e2e": "toolgen_atomic_G123_dfs.json",
}
VIRTUAL_TOKENS = "virtual_tokens.txt"
ACTIONS = [("get", "fetch"), ("search", "look up"), ("list", "list"), ("convert", "convert"), ("check", "check")]
SYSTEM = ("You are an AutoGPT, capable of utilizing numerous tools. Use one tool per step, and finish with the "
          f"action \"{FINISH} with argument give_answer\".")


def stable_rng(*parts: object) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big"))


def _lexicon() -> dict:
    return json.loads((CORPUS_DIR / "lexicon.json").read_text(encoding="utf-8"))


def tools(n_tools: int = 16, apis_per_tool: int = 2) -> list[dict]:
    """Tools with distinct names and APIs: [{tool, description, apis: [{api, verb, noun, description}]}]."""
    lex = _lexicon()
    rng = stable_rng("toolgen", "tools")
    nouns = rng.sample(lex["nouns"], n_tools * apis_per_tool)
    used, out = set(), []
    while len(out) < n_tools:
        name = "".join(rng.choice(lex["syllables"]) for _ in range(2)).capitalize() + " " + rng.choice(lex["tools"]).capitalize()
        if name in used:
            continue
        used.add(name)
        i = len(out)
        apis = []
        for j in range(apis_per_tool):
            verb, gloss = ACTIONS[(i + j) % len(ACTIONS)]
            noun = nouns[i * apis_per_tool + j]
            apis.append({"api": f"{verb}_{noun}", "verb": gloss, "noun": noun,
                         "description": f"{gloss.capitalize()} the {noun} records of {name}."})
        out.append({"tool": name, "description": f"{name} works with {', '.join(a['noun'] for a in apis)} data.", "apis": apis})
    return out


def token(tool: dict, api: dict) -> str:
    return f"<<{tool['tool']}&&{api['api']}>>"


def virtual_token_lines(tool_list: list[dict]) -> list[str]:
    return [FINISH, *(token(t, a) for t in tool_list for a in t["apis"])]


def _msg(role: str, content: str, loss: bool) -> dict:
    return {"role": role, "content": content, "loss": loss}


def memorization_rows(tool_list: list[dict]) -> list[dict]:
    rows = []
    for t in tool_list:
        for a in t["apis"]:
            prompt = (f"Tool Name: {t['tool']}. Tool Description: {t['description']} Api Name: {a['api']} "
                      f"Api Description: {a['description']}.")
            rows.append({"conversations": [_msg("user", prompt, False), _msg("assistant", token(t, a), True)]})
    return rows


def retrieval_rows(tool_list: list[dict], per_api: int = 3) -> list[dict]:
    lex = _lexicon()
    rows = []
    for t in tool_list:
        for a in t["apis"]:
            rng = stable_rng("toolgen", "retrieval", t["tool"], a["api"])
            for _ in range(per_api):
                who = rng.choice(lex["professions"])
                q = f"I am a {who}. Please {a['verb']} the {a['noun']} for my {rng.choice(lex['places'])} project."
                rows.append({"conversations": [_msg("user", q, False), _msg("assistant", token(t, a), True)]})
    return rows


def e2e_rows(tool_list: list[dict], n: int = 16) -> list[dict]:
    lex = _lexicon()
    rows = []
    for i in range(n):
        rng = stable_rng("toolgen", "e2e", i)
        t = rng.choice(tool_list)
        a = rng.choice(t["apis"])
        place = rng.choice(lex["places"])
        doc = {"name": a["api"], "description": a["description"], "required": ["place"], "optional": []}
        answer = f"The {a['noun']} for the {place} is {rng.choice(lex['colors'])}."
        conv = [
            _msg("system", SYSTEM, False),
            _msg("user", f"Can you {a['verb']} the {a['noun']} for the {place}?", False),
            _msg("assistant", f"I should {a['verb']} the {a['noun']} with {t['tool']}.", True),
            _msg("user", "Generate the action.", False),
            _msg("assistant", token(t, a), True),
            _msg("user", f"Please give the input. Here is the documentation: {doc}", False),
            _msg("assistant", json.dumps({"place": place}), True),
            _msg("function", json.dumps({"error": "", "response": answer}), False),
            _msg("assistant", "I have the answer now.", True),
            _msg("user", "Generate the action.", False),
            _msg("assistant", FINISH, True),
            _msg("user", "Please give the input.", False),
            _msg("assistant", json.dumps({"return_type": "give_answer", "final_answer": answer}), True),
        ]
        rows.append({"conversations": conv})
    return rows


def write_all(out: Path, n_tools: int = 16, apis_per_tool: int = 2) -> dict[str, str]:
    """virtual_tokens.txt plus the three JSON files; returns stage -> file name."""
    out.mkdir(parents=True, exist_ok=True)
    tl = tools(n_tools, apis_per_tool)
    (out / VIRTUAL_TOKENS).write_text("\n".join(virtual_token_lines(tl)) + "\n", encoding="utf-8")
    for stage, rows in (("memorization", memorization_rows(tl)), ("retrieval", retrieval_rows(tl)),
                        ("e2e", e2e_rows(tl))):
        (out / FILES[stage]).write_text(json.dumps(rows, indent=0) + "\n", encoding="utf-8")
    return dict(FILES, virtual_tokens=VIRTUAL_TOKENS)
