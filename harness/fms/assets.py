"""Offline stand-ins for the fms recipes' hub artifacts: tokenizers, tiny models, generated data.

Builders follow the twin runtime's contract ``build(out: Path, params: dict, deps: dict[str, Path])``:
they write into an empty folder and are cached by content. What each one keeps of the real artifact:

- ``llama2_tokenizer``: Llama-2's *kind* of tokenizer - SentencePiece-style BPE with byte fallback
  (``<0x0A>`` for a newline), a prefix ``▁``, ``<s>`` added in front, special tokens ``<unk> <s> </s>`` and
  **no pad token** (as meta-llama/Llama-2-7b-hf). That matters: fms-hf-tuning strips the first two ids of
  the encoded response template (``[2:]``: ``▁`` and ``<0x0A>`` for Llama-2), and only adds a pad token
  when ``--tokenizer_name_or_path`` is *not* given.
- ``gpt_oss_tokenizer``: byte-level BPE with gpt-oss's special tokens (``<|startoftext|>`` bos,
  ``<|return|>`` eos, ``<|endoftext|>`` pad, no unk) and a harmony-shaped chat template.
- ``tiny_gpt_oss_mxfp4``: GptOssForCausalLM written as a pre-quantized MXFP4 checkpoint (expert weights as
  ``*_blocks``/``*_scales``, ``quantization_config.quant_method: mxfp4``) by harness.fms.mxfp4.
- ``twitter_output_json`` / ``input_output_json`` / ``multilingual_thinking_jsonl``: generated rows in
  the three data formats the recipes use.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from harness.assets.tokenizers import corpus_files

#: Files besides this module whose bytes decide the assets (part of their content keys).
ASSET_INPUTS = [*corpus_files(), Path(__file__).parent / "mxfp4.py"]

LLAMA2_SPECIALS = ("<unk>", "<s>", "</s>")
GPT_OSS_SPECIALS = ("<|startoftext|>", "<|endoftext|>", "<|return|>", "<|start|>", "<|end|>", "<|message|>",
                    "<|channel|>")
# DEVIATION: a shortened harmony template (no date/knowledge-cutoff preamble, no tool sections): the
# twin needs the role structure and the analysis/final channels that Multilingual-Thinking rows carry.
GPT_OSS_CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}"
    "{%- if m.get('thinking') -%}<|start|>assistant<|channel|>analysis<|message|>{{ m['thinking'] }}<|end|>{%- endif -%}"
    "<|start|>assistant<|channel|>final<|message|>{{ m['content'] }}"
    "{%- if loop.last -%}<|return|>{%- else -%}<|end|>{%- endif -%}"
    "{%- elif m['role'] == 'system' -%}<|start|>developer<|message|>{{ m['content'] }}<|end|>"
    "{%- else -%}<|start|>{{ m['role'] }}<|message|>{{ m['content'] }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"
)


# Markers the fms data formats use: SentencePiece had them in its training text too ("##", "#" are Llama-2 pieces)
_MARKER_LINES = ("### Input: x ### Response: y", "## Label: z", "### Text: t ### Label: l") * 50


def _training_lines() -> list[str]:
    """Corpus lines without control characters: Llama-2 has no piece for "\n", it falls back to <0x0A>."""
    out = list(_MARKER_LINES)
    for f in corpus_files():
        for line in f.read_text(encoding="utf-8").splitlines():
            line = "".join(ch for ch in line if ch.isprintable())
            if line.strip():
                out.append(line)
    return out


def _train_llama2_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # training only: pieces never span a word boundary (SentencePiece's "▁word" pieces); the saved
    # tokenizer has no pre-tokenizer, like the converted Llama-2 tokenizer.json
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[*LLAMA2_SPECIALS, *byte_tokens],
                                  show_progress=False)
    tok.train_from_iterator(_training_lines(), trainer)
    data = json.loads(tok.to_str())
    # byte tokens are plain vocabulary in Llama-2 (ids 3..258), not added tokens matched in raw text
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] in LLAMA2_SPECIALS]
    data["pre_tokenizer"] = None
    tok = Tokenizer.from_str(json.dumps(data))
    tok.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


def llama2_tokenizer(out: Path, params: dict, deps: dict[str, Path]) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = _train_llama2_tokenizer(int(params.get("vocab_size", 1024)))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=int(params.get("model_max_length", 4096)),
                                   padding_side="right", clean_up_tokenization_spaces=False)
    fast.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    # fms-hf-tuning branches on isinstance(tokenizer, LlamaTokenizerFast); the twin reads this name
    cfg["fms_tokenizer_class"] = "LlamaTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def gpt_oss_tokenizer(out: Path, params: dict, deps: dict[str, Path]) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=int(params.get("vocab_size", 1024)) - len(GPT_OSS_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(f) for f in corpus_files()], trainer)
    tok.add_special_tokens(list(GPT_OSS_SPECIALS))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|return|>",
                                   pad_token="<|endoftext|>", model_max_length=131072, padding_side="right",
                                   clean_up_tokenization_spaces=False)
    fast.chat_template = GPT_OSS_CHAT_TEMPLATE
    fast.save_pretrained(out)


EXPERT_PARAMS = ("gate_up_proj", "down_proj")


def tiny_gpt_oss_mxfp4(out: Path, params: dict, deps: dict[str, Path]) -> None:
    """GptOssForCausalLM from config (params {config, init_seed}, like models:from_config), random init, its
    expert weights written as MXFP4 blocks/scales the way openai/gpt-oss-* ships; the rest bf16."""
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from harness.assets.models import model_config
    from harness.fms import mxfp4

    (tok_dep,) = deps.values()
    tok = AutoTokenizer.from_pretrained(tok_dep)
    config = {"pad_token_id": tok.pad_token_id, **params["config"]}
    cls, cfg = model_config("GptOssForCausalLM", config, tok)
    torch.manual_seed(int(params.get("init_seed", 1234)))
    model = cls(cfg).to(torch.float32)
    model.save_pretrained(out / "_plain", safe_serialization=True)  # config.json + generation config
    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        value = value.detach().contiguous()
        if name.rsplit(".", 1)[-1] in EXPERT_PARAMS and ".mlp.experts." in name:
            blocks, scales = mxfp4.quantize_param(value.numpy())
            tensors[f"{name}_blocks"] = torch.from_numpy(np.ascontiguousarray(blocks))
            tensors[f"{name}_scales"] = torch.from_numpy(np.ascontiguousarray(scales))
        else:
            tensors[name] = value.to(torch.bfloat16)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config_json = json.loads((out / "_plain" / "config.json").read_text())
    config_json["dtype"] = "bfloat16"
    config_json["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
                                   "lm_head"],
    }
    (out / "config.json").write_text(json.dumps(config_json, indent=2, sort_keys=True))
    for f in sorted((out / "_plain").iterdir()):
        if f.name == "generation_config.json":
            (out / f.name).write_text(f.read_text())
        f.unlink()
    (out / "_plain").rmdir()
    tok.save_pretrained(out)


# ---------------------------------------------------------------------------------------------
# data


def _sentences() -> list[str]:
    lines: list[str] = []
    for f in corpus_files():
        for line in f.read_text(encoding="utf-8").splitlines():
            line = " ".join(line.split())
            if 20 <= len(line) <= 160:
                lines.append(line)
    return lines


_LABELS = ("complaint", "no complaint")


def _rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pool = _sentences()
    out = []
    for _ in range(n):
        text = rng.choice(pool)
        label = _LABELS[len(text.split()) % 2]  # learnable from the text: word-count parity
        out.append((text, label))
    return out


def twitter_output_json(out: Path, params: dict, deps: dict[str, Path]) -> str:
    """Rows as the single-GPU block's comment describes: {"output": "### Input: text \\n\\n### Response: text"}."""
    rows = [{"output": f"### Input: {t} \n\n### Response: {lab}"} for t, lab in
            _rows(int(params.get("rows", 64)), int(params.get("seed", 1)))]
    (out / "twitter_complaints.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    return "twitter_complaints.json"


def input_output_json(out: Path, params: dict, deps: dict[str, Path]) -> str:
    """Rows as the formatter block's comment describes: [{"input": text, "output": text}]."""
    rows = [{"input": t, "output": lab} for t, lab in _rows(int(params.get("rows", 64)), int(params.get("seed", 2)))]
    (out / "twitter_complaints.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    return "twitter_complaints.json"


def multilingual_thinking_jsonl(out: Path, params: dict, deps: dict[str, Path]) -> str:
    """HuggingFaceH4/Multilingual-Thinking's shape: a messages column (system, user, assistant with thinking)."""
    rng = random.Random(int(params.get("seed", 3)))
    pool = _sentences()
    langs = ("English", "French", "German", "Spanish", "Italian")
    rows = []
    for _ in range(int(params.get("rows", 32))):
        lang = rng.choice(langs)
        q, a, t = rng.choice(pool), rng.choice(pool), rng.choice(pool)
        rows.append({
            "reasoning_language": lang, "developer": f"reasoning language: {lang}", "user": q, "final": a,
            "messages": [
                {"role": "system", "content": f"reasoning language: {lang}", "thinking": None},
                {"role": "user", "content": q, "thinking": None},
                {"role": "assistant", "content": a, "thinking": t},
            ],
        })
    path = out / "train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return "train.jsonl"


__all__ = ["llama2_tokenizer", "gpt_oss_tokenizer", "tiny_gpt_oss_mxfp4",
           "twitter_output_json", "input_output_json", "multilingual_thinking_jsonl"]
