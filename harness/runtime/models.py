"""Model-side plumbing every HF-model trainer needs: the attention kernel that exists here, embedding
rows under ZeRO-3, and saving through accelerate."""

from __future__ import annotations


def attention_implementation(use_flash_attn: bool, on_gpu: bool) -> tuple[str, str | None]:
    """flash_attention_2 only where it exists (CUDA + flash_attn); returns (impl, notice or None)."""
    if not use_flash_attn:
        return "eager", None
    if on_gpu:
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2", None
        except ImportError:
            pass
    return (
        "sdpa",
        "--use_flash_attn: flash_attention_2 unavailable here (needs CUDA + flash_attn); using sdpa",
    )


def embedding_rows(model) -> int:
    """Rows of the input embedding; under ZeRO-3 the parameter is partitioned, so gather it first."""
    embeddings = model.get_input_embeddings()
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        import deepspeed

        with deepspeed.zero.GatheredParameters(embeddings.weight, modifier_rank=None):
            return embeddings.weight.shape[0]
    return embeddings.weight.shape[0]


def save_with_accelerate(accelerator, model, output_dir: str, tokenizer=None) -> None:
    """The unwrapped model's full state dict (gathered under ZeRO-3), saved by rank 0 with its tokenizer."""
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)
    unwrapped.save_pretrained(output_dir, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save, state_dict=state_dict)
    if tokenizer is not None and accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)
