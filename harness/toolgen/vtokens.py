"""ToolGen's virtual tool tokens (training/models/loading.py @6839374): one new token per tool API.

``add_virtual_tokens True`` reads ``src/configs/virtual_tokens.txt`` (``<<tool_name&&api_name>>`` per line,
``<<Finish>>`` too), adds them as normal (non-special) tokens, resizes the embeddings to the new length
and sets each new INPUT row to the mean of the input embeddings of the subwords of "tool_name api_name"
(space-joined).  The untied output rows are whatever ``resize_token_embeddings`` gives: with
transformers 4.48.3 (what ToolGen resolves to) and the suite's 5.24 alike, ``mean_resizing=True``
samples them from N(mean of the old rows, 1e-9 x their covariance), i.e. the mean output row.

Bad lists are refused in one line instead of training on a wrong vocabulary: a duplicate line (upstream's
``add_tokens`` would keep one copy, so ids stop being one per line and the evaluation's fixed id range
``128256 + line`` points at the wrong tools), a line that is not ``<<...>>``, a token that does not
encode to exactly one id (upstream: a bare ``assert``).

DEVIATION: upstream passes each line through ``unidecode``; the package is not in the suite's
environment, so the twin requires ASCII lines (for which unidecode is the identity) and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from repro.errors import ReproError

VIRTUAL_TOKENS_FILE = "src/configs/virtual_tokens.txt"
FINISH = "<<Finish>>"


def parse_virtual_tokens(lines: Sequence[str], source: str = VIRTUAL_TOKENS_FILE) -> list[str]:
    """Normalised token list (``line.strip()``), or a one-line error naming the line."""
    seen: dict[str, int] = {}
    tokens = []
    for n, raw in enumerate(lines, start=1):
        tok = raw.strip()
        if not tok.isascii():
            raise ReproError(f"{source} line {n}: {tok!r} is not ASCII (upstream unidecodes it; the twin has no unidecode)")
        if not (tok.startswith("<<") and tok.endswith(">>") and len(tok) > 4):
            raise ReproError(f"{source} line {n}: {tok!r} is not a <<tool&&api>> token")
        if tok in seen:
            raise ReproError(
                f"{source} line {n}: duplicate tool token {tok!r} (first on line {seen[tok]}); add_tokens would keep one "
                "copy and token ids would no longer follow the list"
            )
        seen[tok] = n
        tokens.append(tok)
    if not tokens:
        raise ReproError(f"{source}: no tool tokens")
    return tokens


def read_virtual_tokens(path: str | Path = VIRTUAL_TOKENS_FILE) -> list[str]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReproError(f"{p}: cannot read the tool token list ({exc.strerror or exc})") from None
    return parse_virtual_tokens(text.splitlines(), str(path))


def combined_name(token: str) -> str:
    """``<<QRCheck&&quality_v1>>`` -> ``"QRCheck quality_v1"``; ``<<Finish>>`` -> ``"Finish"``."""
    return " ".join(token[2:-2].split("&&"))


def add_virtual_tokens(tokenizer, tokens: Sequence[str]) -> int:
    """``tokenizer.add_tokens(tokens, special_tokens=False)``; returns how many were new."""
    return tokenizer.add_tokens(new_tokens=list(tokens), special_tokens=False)


def init_virtual_embeddings(model, tokenizer, tokens: Sequence[str]) -> dict[str, int]:
    """Resize, then input row of each token = mean of its name's subword rows; returns token -> id."""
    import torch

    model.resize_token_embeddings(len(tokenizer))
    embed = model.get_input_embeddings()
    ids = {}
    for tok in tokens:
        sub = tokenizer(combined_name(tok), add_special_tokens=False).input_ids
        own = tokenizer(tok, add_special_tokens=False).input_ids
        if len(own) != 1:
            raise ReproError(f"tool token {tok!r} encodes to {len(own)} ids, not 1 (was it added to the tokenizer?)")
        with torch.no_grad():
            row = embed(torch.tensor(sub, device=embed.weight.device)).mean(dim=0)
            embed.weight.data[own[0]] = row
        ids[tok] = own[0]
    return ids


def tool_token_ids(tokenizer, tokens: Sequence[str]) -> list[int]:
    """Ids of the tool tokens the tokenizer knows as single tokens (the accuracy metric's target set)."""
    vocab = tokenizer.get_vocab()
    return sorted(vocab[t] for t in tokens if t in vocab)
