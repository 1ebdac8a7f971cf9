"""open-instruct's model and tokenizer preparation: pad token, embedding resize to a multiple of 8,
the --chat_template_name choice, bf16 on GPU / fp32 on CPU."""

from __future__ import annotations

from typing import Any

from dataclasses import dataclass

from harness.chat_templates import CHAT_TEMPLATES
from harness.open_instruct import log_main
from harness.runtime.models import attention_implementation, embedding_rows
from repro.base.errors import ReproError


@dataclass(frozen=True)
class ResolvedInputs:
    model_path: str
    tokenizer_path: str
    chat_template_source: str  # a CHAT_TEMPLATES key or a local tokenizer folder
    hub_datasets: dict[str, str]


def resolve_model_inputs(hub, model_name: str, tokenizer_name: str | None, template: str) -> tuple[str, str, str]:
    """Hub ids -> local folders (offline), and the chat template source."""
    model_path = hub.model(model_name, "model")
    tokenizer_path = hub.model(tokenizer_name or model_name, "tokenizer")
    if template not in CHAT_TEMPLATES:
        template = hub.model(template, "chat template (tokenizer)")
    return model_path, tokenizer_path, template


def add_pad_token_like_upstream(tokenizer) -> int:
    """finetune.py: Llama-1/2 tokenizers get their specials re-added; any fast tokenizer without a pad
    token (Llama-3) gets ``<pad>``.  (Its GPT-NeoX/OPT branches are not needed by Tulu 3 recipes.)"""
    import transformers

    if type(tokenizer).__name__ in ("LlamaTokenizer", "LlamaTokenizerFast"):
        added = tokenizer.add_special_tokens(
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
        )
        assert added in (0, 1), "LlamaTokenizer should only add the pad token"
        return added
    if isinstance(tokenizer, transformers.PreTrainedTokenizerFast) and tokenizer.pad_token is None:
        added = tokenizer.add_special_tokens({"pad_token": "<pad>"})
        assert added == 1, "We detected no padding token but add_special_tokens did not add one."
        return added
    return 0


def resize_embeddings_like_upstream(model, tokenizer) -> int:
    """Resize only when the tokenizer outgrew the embedding, padded to a multiple of 8.

    DEVIATION (library version): mean_resizing=False, because transformers 4.43.4 (upstream's pin)
    initialised new rows with _init_weights, and 5.x would otherwise use mean resizing.
    """
    size = embedding_rows(model)
    if len(tokenizer) > size:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8, mean_resizing=False)
        size = embedding_rows(model)
        assert size % 8 == 0, f"embedding rows {size} not a multiple of 8 after resize"
    return size


def apply_chat_template_choice(tokenizer, source: str, add_bos: bool) -> None:
    """``--chat_template_name``: a CHAT_TEMPLATES key, else copy the named tokenizer's template."""
    from transformers import AutoTokenizer

    if source in CHAT_TEMPLATES:
        tokenizer.chat_template = CHAT_TEMPLATES[source]
    else:
        tokenizer.chat_template = AutoTokenizer.from_pretrained(source).chat_template
    if add_bos:
        if tokenizer.chat_template.startswith("{{ bos_token }}") or (
            tokenizer.bos_token is not None and tokenizer.chat_template.startswith(tokenizer.bos_token)
        ):
            raise ReproError(
                "You specified add_bos=True, but the chat template already has a bos_token at the beginning."
            )
        tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template


def load_model_and_tokenizer(args: Any, inputs: ResolvedInputs, accelerator):
    """Upstream loads bf16 weights with flash-attn; the twin uses bf16 on GPU and fp32 on CPU."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    on_gpu = accelerator.device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    log_main(accelerator, f"precision: {'bf16 weights (GPU)' if on_gpu else 'fp32 (CPU: bf16 only on GPU)'}")
    impl, notice = attention_implementation(args.use_flash_attn, on_gpu)
    if notice:
        log_main(accelerator, notice)
    config = AutoConfig.from_pretrained(inputs.model_path)
    tokenizer = AutoTokenizer.from_pretrained(inputs.tokenizer_path, use_fast=not args.use_slow_tokenizer)
    model = AutoModelForCausalLM.from_pretrained(
        inputs.model_path, config=config, dtype=dtype, attn_implementation=impl
    )
    add_pad_token_like_upstream(tokenizer)
    embedding_size = resize_embeddings_like_upstream(model, tokenizer)
    apply_chat_template_choice(tokenizer, inputs.chat_template_source, args.add_bos)
    if args.gradient_checkpointing:
        # upstream's gradient_checkpointing_enable() is activation_checkpointing_enable in transformers 5
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    log_main(
        accelerator,
        f"model: {type(model).__name__} attn={impl} embedding rows={embedding_size} "
        f"tokenizer={len(tokenizer)}",
    )
    return model, tokenizer, embedding_size
