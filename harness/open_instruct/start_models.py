"""Start-model builder for the Tulu 3 preference and RL twins (``build(out, params, deps) -> str | None``).

* ``sft_like_model``: the bundled tiny Llama with the tokenizer finetune.py leaves behind (``<pad>`` added,
  embeddings resized to a multiple of 8 with new rows initialised by the model's own init under a fixed
  seed), i.e. the *shape* of allenai/Llama-3.1-Tulu-3-*-SFT.  Used when no SFT twin output is chained in:
  a model without a pad token would be resized separately for policy and reference in DPO, with
  different random rows, and step 1 would no longer be ln 2 (upstream starts from an SFT checkpoint that
  already has its pad token, so it never resizes there either).
"""

from __future__ import annotations

from pathlib import Path

SFT_LIKE_SEED = 4321


def sft_like_model(out: Path, params: dict, deps: dict[str, Path]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if len(deps) != 1:
        raise ValueError("sft_like_model: expects exactly one dependency, the base model asset")
    base = next(iter(deps.values()))
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    torch.manual_seed(SFT_LIKE_SEED)
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8, mean_resizing=False)
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return None  # the folder itself is the model
