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


#: Warm start: plain next-token training on the completions only, fixed seed, one thread (deterministic).
WARM_START_SEED = 2024


def warm_started_policy(out: Path, params: dict, deps: dict[str, Path]) -> None:
    """The RLVR twin's starting policy (stands for the DPO model): the SFT-shaped model trained for
    ``params["steps"]`` full-batch steps on ``pref_data.warm_start_conversations()`` (tulu template, loss
    on assistant tokens), so it answers the twin's prompts in their formats and ends its turn with EOS,
    right about half the time.  Upstream starts RLVR from Tulu-3-8B-DPO, which has learned the same."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.chat_templates import CHAT_TEMPLATES
    from harness.open_instruct.encoding import encode_sft_example
    from harness.open_instruct.pref_data import warm_start_conversations

    if len(deps) != 1:
        raise ValueError("warm_started_policy: expects exactly one dependency, the start model asset")
    base = next(iter(deps.values()))
    torch.set_num_threads(1)
    torch.manual_seed(WARM_START_SEED)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = CHAT_TEMPLATES["tulu"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    rows = [encode_sft_example({"messages": c}, tokenizer, None) for c in warm_start_conversations()]
    width = max(len(r["input_ids"]) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.stack([torch.nn.functional.pad(r["input_ids"], (0, width - len(r["input_ids"])), value=pad) for r in rows])
    labels = torch.stack([torch.nn.functional.pad(r["labels"], (0, width - len(r["labels"])), value=-100) for r in rows])
    mask = (labels != -100) | (torch.arange(width) < torch.tensor([len(r["input_ids"]) for r in rows])[:, None])
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(params.get("lr", 3e-3)))
    model.train()
    for _ in range(int(params.get("steps", 200))):
        loss = model(input_ids=ids, attention_mask=mask.long(), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.chat_template = None
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    (out / "warm_start_loss.txt").write_text(f"{loss.item():.6f}\n", encoding="utf-8")


def reward_model_shape(out: Path, params: dict, deps: dict[str, Path]) -> None:
    """A sequence classifier (num_labels 1) on the start model's backbone, score head initialised
    N(0, 1/sqrt(hidden + 1)) under a fixed seed: the shape of allenai/Llama-3.1-Tulu-3-*-RM.  The RLVR
    recipes multiply its score by 0.0; it still initialises the value model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from harness.open_instruct.rm import init_score_head

    if len(deps) != 1:
        raise ValueError("reward_model_shape: expects exactly one dependency, the start model asset")
    base = next(iter(deps.values()))
    torch.manual_seed(SFT_LIKE_SEED + 1)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    init_score_head(model)
    model.to(torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
