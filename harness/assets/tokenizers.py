"""A Llama-3-style byte-level BPE tokenizer trained at build time from the bundled corpus.

Why it mirrors Llama-3: the Llama-3 pre-tokenizer regex, its special-token names (bos
``<|begin_of_text|>``, eos ``<|end_of_text|>``, header/eot tokens), a post-processor that adds BOS for
plain ``tokenizer(text)`` and no pad token, so finetune.py's "add ``<pad>`` and resize to a multiple of
8" path runs exactly as for Llama-3 (2048 -> 2049 -> 2056, like 128256 -> 128264). ``<|user|>`` and
friends are NOT special tokens, as in Llama-3: the tulu template renders them as plain text.
"""

from __future__ import annotations

from pathlib import Path

from harness import CORPUS_DIR
from harness.chat_templates import LLAMA3_CHAT_TEMPLATE

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
#: Llama-3.1's first special tokens (ids 128000..128010 there), then reserved ones up to 16 in all.
SPECIAL_TOKENS = [
    BOS, EOS, "<|reserved_special_token_0|>", "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
    "<|python_tag|>", *[f"<|reserved_special_token_{i}|>" for i in range(3, 8)],
]
#: Llama-3 pre-tokenizer split (tokenizer.json of meta-llama/Llama-3.1-8B).
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def corpus_files() -> list[Path]:
    """Tokenizer training text, in a fixed order (the BPE result depends on it)."""
    return sorted((CORPUS_DIR / "text").glob("*.txt"))


#: Files besides this module whose bytes decide the tokenizer (part of its cache key).
ASSET_INPUTS = [*corpus_files(), Path(__file__).parent.parent / "chat_templates.py"]


def train_tokenizer(files: list[Path], vocab: int):
    """Byte-level BPE with the Llama-3 split; specials appended last so their ids sit at the top."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab - len(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(f) for f in files], trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    if tok.get_vocab_size() != vocab:
        raise RuntimeError(f"tokenizer corpus too small: vocab {tok.get_vocab_size()} != {vocab}")
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)])
    return tok


def wrap_tokenizer(tok):
    """A transformers fast tokenizer like Llama-3's: bos/eos set, no pad, Llama-3 chat template."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, model_max_length=131072,
                                   clean_up_tokenization_spaces=False)
    fast.chat_template = LLAMA3_CHAT_TEMPLATE
    return fast


def bpe_llama3(out: Path, params: dict, deps: dict[str, Path]) -> None:
    """Builder: params {vocab}; writes a from_pretrained-able tokenizer folder."""
    wrap_tokenizer(train_tokenizer(corpus_files(), int(params.get("vocab", 2048)))).save_pretrained(out)
