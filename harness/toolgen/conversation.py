"""ToolGen's conversation tokenization (training/prompts/{utils,conversations}.py @6839374), llama-3 template.

* Roles: a ``system`` message sets the system prompt; ``human``/``user`` map to the template's user role;
  EVERY other role (assistant, function, tool, ...) maps to its assistant role.  Whether a message is
  trained on is decided only by its ``loss`` flag (missing = False).
* llama-3 segments: the text starts with ``<|begin_of_text|>`` (+ the system block); a message with loss
  is split into a no-loss header segment and a loss segment ``content.strip() + <|eot_id|>`` (so the EOT
  token is trained); a message without loss is one no-loss segment with header and text.
* ``tokenize_conversation`` prepends ``tokenizer.bos_token`` to the FIRST segment as well: every sequence
  starts with two BOS tokens (upstream quirk, kept).  Segments are tokenized separately with
  ``add_special_tokens=False``; labels are -100 on no-loss segments; everything is cut to ``max_length``.
* The collator pads on the right with ``pad_token_id = eos_token_id`` (labels -100).
"""

from __future__ import annotations

from collections.abc import Sequence

from repro.base.errors import ReproError

TEMPLATES = ("llama-3",)
HUMAN_ROLES = {"human", "user"}


def llama3_segments(messages: Sequence[dict]) -> list[tuple[str, bool]]:
    """(text, to_loss) pieces as Conversation.get_separate_prompt_with_to_loss builds them for LLAMA3."""
    if not messages:
        raise ReproError("a conversation with no messages")
    first = messages[0]
    if "from" in first:
        role_key, content_key = "from", "value"
    elif "role" in first:
        role_key, content_key = "role", "content"
    else:
        raise ReproError("Cannot find role label and content label in the data.")
    system = ""
    turns: list[tuple[str, str, bool]] = []
    for m in messages:
        if m[role_key] == "system":
            system = m[content_key]
        else:
            role = "user" if m[role_key] in HUMAN_ROLES else "assistant"
            turns.append((role, m[content_key], bool(m.get("loss", False))))
    out: list[tuple[str, bool]] = []
    ret = "<|begin_of_text|>"
    if system:
        ret += f"<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
    for role, message, to_loss in turns:
        header = f"<|start_header_id|>{role}<|end_header_id|>\n\n"
        if to_loss and message:
            out.append((ret + header, False))
            out.append((f"{message.strip()}<|eot_id|>", True))
        elif message:
            out.append((ret + header + f"{message.strip()}<|eot_id|>", False))
        else:
            out.append((ret + header, False))
        ret = ""
    return out


def tokenize_conversation(messages: Sequence[dict], tokenizer, template: str, max_length: int) -> dict:
    """input_ids / attention_mask / labels lists for one conversation (prompts/utils.py)."""
    if template not in TEMPLATES:
        raise ReproError(f"--template {template!r}: the twin implements {', '.join(TEMPLATES)} (the published commands' template)")
    ids: list[int] = []
    labels: list[int] = []
    for i, (text, to_loss) in enumerate(llama3_segments(messages)):
        if i == 0 and tokenizer.bos_token:
            text = tokenizer.bos_token + text
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        labels.extend(piece if to_loss else [-100] * len(piece))
    ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


class CausalLMCollator:
    """Right padding with eos as pad (the collator sets tokenizer.pad_token_id = eos_token_id)."""

    def __init__(self, tokenizer):
        tokenizer.pad_token_id = tokenizer.eos_token_id
        self.pad = tokenizer.eos_token_id

    def __call__(self, rows: Sequence[dict]) -> dict:
        import torch

        n = max(len(r["input_ids"]) for r in rows)

        def pad(key, value):
            return torch.tensor([list(r[key]) + [value] * (n - len(r[key])) for r in rows])

        return {"input_ids": pad("input_ids", self.pad), "attention_mask": pad("attention_mask", 0),
                "labels": pad("labels", -100)}
