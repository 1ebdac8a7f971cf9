"""Offline twin assets: a BPE tokenizer trained from the bundled corpus, tiny Llama-3.1-shaped models, data.

Why build instead of download: twins run with no hub access, and the verifier compares their numbers
bit for bit across runs, so every asset has to be reproducible from files in this repository.
``build_assets(cache_dir)`` writes the same bytes on every machine (checked by hashing two builds), and
caches the result under a key that hashes every builder input (corpus, builder sources, library
versions), so a second call returns at once and a changed input can never reuse a stale build.

What mirrors the real thing and why:

* Tokenizer: byte-level BPE with the Llama-3 pre-tokenizer regex, Llama-3 special-token names
  (``<|begin_of_text|>`` bos, ``<|end_of_text|>`` eos, header/eot tokens), a post-processor that adds BOS
  for plain ``tokenizer(text)`` (as Llama-3 does) and no pad token: so finetune.py's "add ``<pad>`` and
  resize to a multiple of 8" path runs exactly as for Llama-3 (2048 -> 2049 -> 2056, like 128256 ->
  128264).  ``<|system|>``/``<|user|>``/``<|assistant|>`` are NOT special tokens, as in Llama-3: the tulu
  template renders them as plain text.  The tokenizer's own template is the Llama-3 one.
* Models: ``LlamaForCausalLM`` configs shaped like Llama-3.1-8B / -70B (GQA 32/8 and 64/8 heads, rope
  theta 500000 with llama3 rope scaling, untied embeddings, RMSNorm eps 1e-5, SiLU, bf16 weights) at
  tiny width and depth.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import CORPUS_DIR, HARNESS_DIR
from harness.chat_templates import LLAMA3_CHAT_TEMPLATE
from harness.sft_data import write_bundled_data

#: Bump when the layout changes in a way the hashed inputs would not notice.
LAYOUT_VERSION = 1
TOKENIZER_VOCAB = 2048
MODEL_INIT_SEED = 1234
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
#: Llama-3.1's first special tokens (ids 128000..128010 there), then reserved ones up to 16 in all.
SPECIAL_TOKENS = [
    BOS,
    EOS,
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    *[f"<|reserved_special_token_{i}|>" for i in range(3, 8)],
]
#: Llama-3 pre-tokenizer split (tokenizer.json of meta-llama/Llama-3.1-8B).
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Files whose bytes define the assets (besides the corpus); part of the cache key.
BUILDER_SOURCES = ("assets.py", "sft_data.py", "chat_templates.py")


@dataclass(frozen=True)
class TinyLlamaShape:
    """The published model's architecture ratios at twin size; see MODEL_SHAPES for the two recipes."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int


#: Twin folder name -> (hub ids it stands in for, shape).  Real: 8B 4096/14336/32 layers/32q/8kv,
#: 70B 8192/28672/80 layers/64q/8kv; intermediate/hidden = 3.5 is kept, head_dim is 8 instead of 128.
MODEL_SHAPES: dict[str, tuple[tuple[str, ...], TinyLlamaShape]] = {
    "llama-3.1-8b-twin": (
        ("meta-llama/Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-8B"),
        TinyLlamaShape(64, 224, 2, 32, 8, 8),
    ),
    "llama-3.1-70b-twin": (
        ("meta-llama/Llama-3.1-70B", "meta-llama/Meta-Llama-3.1-70B"),
        TinyLlamaShape(128, 448, 3, 64, 8, 8),
    ),
}


def corpus_files() -> list[Path]:
    """Tokenizer training text, in a fixed order (the BPE result depends on it)."""
    return sorted((CORPUS_DIR / "text").glob("*.txt"))


def cache_key() -> str:
    """SHA-256 over everything that determines the assets' bytes."""
    h = hashlib.sha256(f"layout={LAYOUT_VERSION}\n".encode())
    for path in [*(HARNESS_DIR / s for s in BUILDER_SOURCES), CORPUS_DIR / "lexicon.json", *corpus_files()]:
        h.update(f"{path.relative_to(HARNESS_DIR)}\n".encode())
        h.update(path.read_bytes())
    for dist in ("torch", "transformers", "tokenizers", "safetensors"):
        h.update(
            f"{dist}={importlib.metadata.version(dist)}\n".encode()
        )  # no import: keeps a cache hit instant
    return h.hexdigest()


def train_tokenizer(files: list[Path]):
    """Byte-level BPE with the Llama-3 split; specials appended last so their ids sit at the top."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(f) for f in files], trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    if tok.get_vocab_size() != TOKENIZER_VOCAB:
        raise RuntimeError(f"tokenizer corpus too small: vocab {tok.get_vocab_size()} != {TOKENIZER_VOCAB}")
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)]
    )
    return tok


def wrap_tokenizer(tok):
    """A transformers fast tokenizer like Llama-3's: bos/eos set, no pad, Llama-3 chat template."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = LLAMA3_CHAT_TEMPLATE
    return fast


def tiny_llama_config(shape: TinyLlamaShape, tokenizer) -> Any:
    """Llama-3.1 hyper-parameters (rope, eps, act, untied, bf16) with the twin's width and depth."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        head_dim=shape.head_dim,
        hidden_act="silu",
        max_position_embeddings=131072,
        initializer_range=0.02,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        dtype="bfloat16",
    )


def save_tiny_model(shape: TinyLlamaShape, tokenizer, out_dir: Path) -> None:
    """Initialise from config under a fixed seed and save like a hub repo (weights + tokenizer files)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(MODEL_INIT_SEED)
    model = LlamaForCausalLM(tiny_llama_config(shape, tokenizer)).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def write_manifest(root: Path) -> None:
    """SHA-256 of every file, sorted: the byte-identity check and a cheap cache-validity marker."""
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}"
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "MANIFEST.sha256"
    ]
    (root / "MANIFEST.sha256").write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_into(root: Path) -> None:
    """Build every asset into an empty folder (no caching here)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars are noise in twin logs
    tokenizer = wrap_tokenizer(train_tokenizer(corpus_files()))
    tokenizer.save_pretrained(root / "tokenizer")
    models: dict[str, str] = {}
    for folder, (hub_ids, shape) in MODEL_SHAPES.items():
        save_tiny_model(shape, tokenizer, root / "models" / folder)
        models.update({hub_id: f"models/{folder}" for hub_id in hub_ids})
    datasets = {k: f"data/{v}" for k, v in write_bundled_data(root / "data").items()}
    asset_map = {"models": models, "datasets": datasets, "tokenizer": "tokenizer"}
    (root / "asset_map.json").write_text(
        json.dumps(asset_map, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    write_manifest(root)


def build_assets(cache_dir: str | os.PathLike) -> dict[str, Path]:
    """Build (or reuse) the twin assets under ``cache_dir``; returns the paths, see :func:`asset_paths`.

    Safe to call from several processes at once: each builds into a private temp folder and renames it
    into place; the loser of the race discards its copy (the bytes are identical anyway).
    """
    cache_dir = Path(cache_dir).resolve()
    final = cache_dir / f"twin-assets-{cache_key()[:16]}"
    if not (final / "MANIFEST.sha256").is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            build_into(tmp)
            os.rename(tmp, final)
        except OSError:
            if not (final / "MANIFEST.sha256").is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return asset_paths(final)


def asset_paths(root: Path) -> dict[str, Path]:
    """Named paths inside a built asset folder (the folder is relocatable: the map holds relative paths)."""
    asset_map = json.loads((root / "asset_map.json").read_text(encoding="utf-8"))
    paths = {"root": root, "asset_map": root / "asset_map.json", "tokenizer": root / asset_map["tokenizer"]}
    paths.update({folder: root / "models" / folder for folder in MODEL_SHAPES})
    paths["data"] = root / "data"
    return paths


@dataclass(frozen=True)
class HubMap:
    """Hub id -> local path for models/tokenizers and datasets, resolved against an asset folder."""

    models: dict[str, str]
    datasets: dict[str, str]

    @classmethod
    def load(cls, asset_map_path: str | os.PathLike) -> HubMap:
        path = Path(asset_map_path).resolve()
        raw = json.loads(path.read_text(encoding="utf-8"))
        root = path.parent
        return cls(
            models={k: str(root / v) for k, v in raw.get("models", {}).items()},
            datasets={k: str(root / v) for k, v in raw.get("datasets", {}).items()},
        )

    @classmethod
    def empty(cls) -> HubMap:
        return cls({}, {})


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.assets CACHE_DIR``: build (or find) the assets and print the asset map path."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harness.assets CACHE_DIR", file=sys.stderr)
        return 2
    print(build_assets(args[0])["asset_map"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
