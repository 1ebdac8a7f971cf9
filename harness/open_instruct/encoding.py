"""open-instruct's SFT encoding: the chat template decides the tokens, re-tokenised message prefixes
decide which of them are labels (assistant content and its end-of-turn only)."""

from __future__ import annotations

from typing import Any

import os
from functools import partial

from harness.open_instruct import log_main

#: open_instruct.dataset_processor: tokenisation throughput used to size preprocessing workers.
APPLY_CHAT_TEMPLATE_EXAMPLE_PER_SECOND_PER_CPU = 400


def encode_sft_example(example: dict, tokenizer, max_seq_length: int | None) -> dict:
    """Tokenise a conversation with the chat template; labels are -100 on every non-assistant span.

    A span's boundaries come from re-tokenising message prefixes; when the next message is the
    assistant's, the prefix is rendered with add_generation_prompt=True so ``<|assistant|>\\n`` is masked.
    (transformers 5 needs return_dict=False to return ids as 4.43 did.)
    """
    messages = example["messages"]
    if len(messages) == 0:
        raise ValueError("messages field is empty.")

    def encode(conversation: list[dict], add_generation_prompt: bool):
        return tokenizer.apply_chat_template(
            conversation=conversation,
            tokenize=True,
            return_tensors="pt",
            padding=False,
            truncation=True,
            max_length=max_seq_length,
            add_generation_prompt=add_generation_prompt,
            return_dict=False,
        )

    input_ids = encode(messages, False)
    labels = input_ids.clone()
    for message_idx, message in enumerate(messages):
        if message["role"] == "assistant":
            continue
        message_start_idx = 0 if message_idx == 0 else encode(messages[:message_idx], False).shape[1]
        next_is_assistant = (
            message_idx < len(messages) - 1 and messages[message_idx + 1]["role"] == "assistant"
        )
        message_end_idx = encode(messages[: message_idx + 1], next_is_assistant).shape[1]
        labels[:, message_start_idx:message_end_idx] = -100
        if max_seq_length and message_end_idx >= max_seq_length:
            break
    attention_mask = input_ids.new_ones(input_ids.shape)
    return {
        "input_ids": input_ids.flatten(),
        "labels": labels.flatten(),
        "attention_mask": attention_mask.flatten(),
    }


def preprocessing_workers(requested: int | None, rows: int) -> int | None:
    """DEVIATION (speed only): cap the recipe's 128 workers by CPUs and by upstream's own later sizing
    rule (rows / 400 per CPU); the tokenised rows are identical for any worker count."""
    if not requested or requested <= 1:
        return None
    workers = min(
        requested, os.cpu_count() or 1, max(1, rows // APPLY_CHAT_TEMPLATE_EXAMPLE_PER_SECOND_PER_CPU)
    )
    return workers if workers > 1 else None


def tokenize_train_dataset(args: Any, train_dataset, tokenizer, accelerator):
    """Truncate to max_train_samples, encode, drop rows whose labels are all masked (upstream order)."""
    if args.max_train_samples is not None:
        n = min(len(train_dataset), args.max_train_samples)
        log_main(accelerator, f"Limiting training samples to {n} from {len(train_dataset)}.")
        train_dataset = train_dataset.select(range(n))
    with accelerator.main_process_first():
        train_dataset = train_dataset.map(
            partial(encode_sft_example, tokenizer=tokenizer, max_seq_length=args.max_seq_length),
            batched=False,
            num_proc=preprocessing_workers(args.preprocessing_num_workers, len(train_dataset)),
            load_from_cache_file=not args.overwrite_cache,
            remove_columns=[
                c for c in train_dataset.column_names if c not in ("input_ids", "labels", "attention_mask")
            ],
            desc="Tokenizing and reformatting instruction data",
        )
        train_dataset.set_format(type="pt")
        train_dataset = train_dataset.filter(lambda example: (example["labels"] != -100).any())
    return train_dataset
