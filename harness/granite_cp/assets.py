"""Twin data for the PR #642 ablations: input/output rows long enough that every example fills the sequence.

The ablation dataset is undisclosed; the rows mirror its one known property, sequences at the full
``max_seq_length`` (s8192 / s131072 cut into cp chunks), so every batch divides into cp equal chunks with no
padding. The output repeats the input's opening words: predicting it needs the beginning of the sequence,
which sits in an earlier CP chunk, so a run without the ring exchange or the Mamba state passing learns a
different curve (the negative controls).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from harness.assets.tokenizers import corpus_files

ASSET_INPUTS = corpus_files()


def _words() -> list[str]:
    out: list[str] = []
    for f in corpus_files():
        out += f.read_text(encoding="utf-8").split()
    return [w for w in out if w.isascii()]


def long_copy_rows(out: Path, params: dict, deps: dict[str, Path]) -> str:
    """Builder: params {rows, seq_len (tokens every example must reach), copy_words, gap (tokens left for the
    output inside seq_len; default seq_len // 4), seed}; deps: the tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(next(iter(deps.values())))
    rng = random.Random(int(params.get("seed", 7)))
    words = _words()
    seq_len, copy_words = int(params["seq_len"]), int(params.get("copy_words", 12))
    gap = int(params.get("gap", max(4, seq_len // 4)))
    rows, attempts = [], 0
    while len(rows) < int(params.get("rows", 64)):
        attempts += 1
        if attempts > 100 * int(params.get("rows", 64)):
            raise ValueError(f"long_copy_rows: cannot fill {seq_len} tokens with a {gap}-token gap and "
                             f"{copy_words} copied words; raise copy_words or lower gap")
        start = rng.randrange(0, len(words) - 4 * seq_len)
        inp = " ".join(words[start:start + 4 * seq_len])
        head = " ".join(words[start:start + copy_words])
        # cut the input so its tokens leave room for part of the output inside seq_len
        ids = tok(inp).input_ids
        keep = seq_len - gap
        inp = tok.decode(ids[1:keep], skip_special_tokens=True).strip()
        row = {"input": inp, "output": head}
        total = len(tok(inp + " " + head + tok.eos_token).input_ids)
        if total >= seq_len and len(tok(inp).input_ids) < seq_len - 2:
            rows.append(row)
    (out / "train.json").write_text(json.dumps(rows, indent=1))
    return "train.json"
