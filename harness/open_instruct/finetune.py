"""Reference SFT trainer: open-instruct ``finetune.py`` at commit 30d11b4, for scaled-down twins.

Why a port and not the real script: finetune.py at that commit needs CUDA, flash-attn, DeepSpeed, W&B
and the HF hub at import time, and its dependency pins (torch 2.4, transformers 4.43) cannot be
installed on CPU CI.  This module keeps its *semantics* - flags and defaults, tulu chat template,
assistant-only labels, the ``mean``/``sum`` loss reductions, the logged ``train_loss``, accelerate's
scheduler stepping, seedable sampler, checkpoint names - so a twin run of a Tulu 3 SFT command behaves
like the published run, only smaller.  Where it deliberately differs, the code says so at the spot
(search for "DEVIATION").

Run it the way the recipes run finetune.py::

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        harness/open_instruct_sft.py --model_name_or_path meta-llama/Llama-3.1-8B ...

(on CPU, ``--multi_gpu`` + ``Accelerator(cpu=True)`` is what gives real gloo DDP; ``--cpu`` silently runs
one process), or as ``python -m harness.open_instruct_sft`` for one process, or under
``accelerate launch --use_deepspeed --deepspeed_config_file X`` on a GPU machine.

Hub ids are resolved offline through the twin asset map: ``REPRO_TWIN_ASSET_MAP=<asset_map.json>`` or
``REPRO_TWIN_CACHE=<dir>`` (builds the assets there first).  Each optimizer step appends a
``repro.metrics.MetricRecord`` to ``OUTPUT_DIR/metrics.jsonl`` (rank 0) and prints upstream's
``  Step: N, LR: x, Loss: y, TPS: z`` line.  Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[2])  # run as a script path by the launchers

import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import timedelta  # noqa: E402
from functools import partial  # noqa: E402
from typing import Any  # noqa: E402

from harness.chat_templates import CHAT_TEMPLATES  # noqa: E402
from harness.open_instruct.data import MixerError, get_datasets, parse_mixer_list, resolve_dataset_path  # noqa: E402
from harness.runtime import checkpoint as ckpt  # noqa: E402
from harness.runtime.cli import parse_dataclasses  # noqa: E402
from harness.runtime.clock import StepClock  # noqa: E402
from harness.runtime.dist import make_accelerator as runtime_accelerator  # noqa: E402
from harness.runtime.dist import shutdown  # noqa: E402
from harness.runtime.entry import run_main  # noqa: E402
from harness.runtime.hub import HubMap, load_hub_map  # noqa: E402
from harness.runtime.metrics import MetricsWriter  # noqa: E402
from repro.device import cuda_usable  # noqa: E402
from repro.errors import ReproError  # noqa: E402
from repro.metrics import MetricRecord  # noqa: E402

PROG = "open_instruct_sft"
#: Checkpoint folder prefixes, in upstream's order of preference for auto-resume.
CHECKPOINT_PREFIXES = ("step", "epoch")
#: Upstream logs through accelerate's get_logger(__name__) in a script, i.e. the "__main__" logger.
logger = logging.getLogger("__main__")
#: open_instruct.dataset_processor: tokenisation throughput used to size preprocessing workers.
APPLY_CHAT_TEMPLATE_EXAMPLE_PER_SECOND_PER_CPU = 400
LR_SCHEDULER_TYPES = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)


# ----------------------------------------------------------------------------------------------------
# Arguments: the FlatArguments fields the Tulu 3 SFT commands use, with upstream's defaults.


@dataclass
class FlatArguments:
    """finetune.py's FlatArguments (subset).  Defaults are upstream's, including the surprising ones
    (per_device_train_batch_size 8, push_to_hub True, use_slow_tokenizer True, reduce_loss mean)."""

    exp_name: str = "finetune"
    model_name_or_path: str | None = None
    tokenizer_name: str | None = None
    tokenizer_revision: str | None = None
    model_revision: str | None = None
    chat_template_name: str = "tulu"
    use_flash_attn: bool = True
    use_slow_tokenizer: bool = True
    dataset_mixer_list: list[str] | None = None
    dataset_mix_dir: str | None = None
    train_file: str | None = None
    max_train_samples: int | None = None
    preprocessing_num_workers: int | None = None
    max_seq_length: int | None = None
    overwrite_cache: bool = False
    add_bos: bool = False
    clip_grad_norm: float = -1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    logging_steps: int | None = None
    lr_scheduler_type: str = field(default="linear", metadata={"choices": LR_SCHEDULER_TYPES})
    num_train_epochs: int = 2
    output_dir: str = "output/"
    per_device_train_batch_size: int = 8
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    timeout: int = 1800
    reduce_loss: str = "mean"
    wandb_entity: str | None = None
    resume_from_checkpoint: str | None = None
    with_tracking: bool = False
    report_to: list[str] = field(default_factory=lambda: ["all"])
    gradient_checkpointing: bool = False
    max_train_steps: int | None = None
    seed: int = 42
    checkpointing_steps: str | None = None
    overwrite_output_dir: bool = False
    keep_last_n_checkpoints: int = 3
    fused_optimizer: bool = True
    push_to_hub: bool = True
    try_launch_beaker_eval_jobs: bool = True


def parse_args(argv: list[str] | None) -> FlatArguments:
    """Parse and apply upstream's ``__post_init__`` checks (they are part of what a command may say)."""
    (args,) = parse_dataclasses((FlatArguments,), argv, PROG, __doc__.splitlines()[0])
    if args.reduce_loss not in ("mean", "sum"):
        raise ReproError("reduce_loss must be either 'mean' or 'sum'")
    chosen = [x for x in (args.dataset_mixer_list, args.train_file) if x is not None]
    if not chosen:
        raise ReproError(
            "need either a dataset mixer (--dataset_mixer_list) or a training file (--train_file)"
        )
    if len(chosen) > 1:
        raise ReproError("cannot provide two dataset selection mechanisms")
    if args.try_launch_beaker_eval_jobs and not args.push_to_hub:
        raise ReproError("cannot launch Beaker evaluation jobs without pushing to the Hub (upstream check)")
    if args.checkpointing_steps is not None and args.checkpointing_steps.lower() != "epoch":
        if not args.checkpointing_steps.isdigit() or int(args.checkpointing_steps) < 1:
            raise ReproError(
                f"--checkpointing_steps must be a positive int or 'epoch', got {args.checkpointing_steps!r}"
            )
    if args.model_name_or_path is None:
        raise ReproError(
            "--model_name_or_path is required (training from scratch is not supported upstream either)"
        )
    return args


# ----------------------------------------------------------------------------------------------------
# Pre-flight: resolve every name offline before any process group exists, so bad input fails fast.


@dataclass(frozen=True)
class ResolvedInputs:
    model_path: str
    tokenizer_path: str
    chat_template_source: str  # a CHAT_TEMPLATES key or a local tokenizer folder
    hub_datasets: dict[str, str]


def preflight(args: FlatArguments) -> ResolvedInputs:
    hub: HubMap = load_hub_map()
    model_path = hub.model(args.model_name_or_path, "model")
    tokenizer_path = hub.model(args.tokenizer_name or args.model_name_or_path, "tokenizer")
    template = args.chat_template_name
    if template not in CHAT_TEMPLATES:
        template = hub.model(template, "chat template (tokenizer)")
    try:
        if args.dataset_mixer_list is not None:
            for name in parse_mixer_list(args.dataset_mixer_list):
                resolve_dataset_path(name, hub.datasets)
        elif not os.path.isfile(args.train_file) or not args.train_file.endswith((".json", ".jsonl")):
            raise ReproError(f"--train_file must be an existing .json/.jsonl file: {args.train_file}")
    except MixerError as exc:
        raise ReproError(str(exc)) from None
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        if not cuda_usable():
            raise ReproError(
                "DeepSpeed launch needs CUDA (on CPU accelerate silently drops it); on CPU use "
                "'accelerate launch --multi_gpu --num_processes N'"
            )
        read_deepspeed_config(os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"))
    return ResolvedInputs(model_path, tokenizer_path, template, hub.datasets)


def read_deepspeed_config(path: str | None) -> dict:
    """The recipe's DeepSpeed JSON (accelerate fills its "auto" fields, gradient_clipping "auto" -> 1.0).

    Read here so that a missing or malformed file is bad input (exit 2) instead of a launcher traceback.
    """
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ReproError(f"DeepSpeed config {path}: {exc}") from None
    if not isinstance(config, dict):
        raise ReproError(f"DeepSpeed config {path}: not a JSON object")
    return config


def describe_deepspeed_config(config: dict) -> str:
    """One log line with what decides the run's numerics (stage, bf16, clipping after accelerate)."""
    stage = config.get("zero_optimization", {}).get("stage")
    clip = config.get("gradient_clipping", "auto")
    bf16 = config.get("bf16", {}).get("enabled")
    clip_note = " (accelerate: 1.0)" if clip == "auto" else ""
    return f"DeepSpeed: ZeRO stage {stage}, bf16 {bf16}, gradient_clipping {clip}{clip_note}"


# ----------------------------------------------------------------------------------------------------
# Data: encode_sft_example is upstream's, line for line (prefix re-tokenisation decides the masks).


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


def load_raw_train_dataset(args: FlatArguments, inputs: ResolvedInputs, is_main_process: bool):
    """finetune.py's dataset branch: the mixer (with its dataset_mix_dir quirk) or a local json file."""
    from datasets import load_dataset

    try:
        if args.dataset_mixer_list is not None:
            raw = get_datasets(
                args.dataset_mixer_list,
                inputs.hub_datasets,
                save_data_dir=args.dataset_mix_dir if is_main_process else None,
            )
        else:
            raw = load_dataset("json", data_files={"train": args.train_file})
    except MixerError as exc:
        raise ReproError(str(exc)) from None
    if "messages" not in raw["train"].column_names:
        raise ReproError("training data has no 'messages' column (twins read the Tulu 3 messages format)")
    return raw["train"]


def tokenize_train_dataset(args: FlatArguments, train_dataset, tokenizer, accelerator):
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


def log_samples(accelerator, train_dataset, tokenizer) -> None:
    """Upstream logs 3 random samples (random.sample after set_seed); the twin logs them decoded, short."""
    for index in random.sample(range(len(train_dataset)), min(3, len(train_dataset))):
        row = train_dataset[index]
        n_labels = int((row["labels"] != -100).sum())
        text = tokenizer.decode(row["input_ids"])
        log_main(
            accelerator,
            f"Sample {index}: {len(row['input_ids'])} tokens, {n_labels} labelled: {text[:160]!r}",
        )


# ----------------------------------------------------------------------------------------------------
# Model and tokenizer: upstream's pad-token / resize / chat-template handling.


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


def embedding_rows(model) -> int:
    """Rows of the input embedding; under ZeRO-3 the parameter is partitioned, so gather it first."""
    embeddings = model.get_input_embeddings()
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        import deepspeed

        with deepspeed.zero.GatheredParameters(embeddings.weight, modifier_rank=None):
            return embeddings.weight.shape[0]
    return embeddings.weight.shape[0]


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


def load_model_and_tokenizer(args: FlatArguments, inputs: ResolvedInputs, accelerator):
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


# ----------------------------------------------------------------------------------------------------
# Optimisation pieces.


def make_optimizer(model, args: FlatArguments):
    """AdamW with upstream's two groups.  Upstream's no-decay list is the literal substrings "bias" and
    "layer_norm.weight", which match nothing in Llama (RMSNorm weights are "*layernorm.weight"/"norm.weight"),
    so Llama norms DO get decay upstream; kept as is (irrelevant for Tulu 3's weight_decay 0.0)."""
    import torch

    no_decay = ["bias", "layer_norm.weight"]
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
            "weight_decay": args.weight_decay,
        },
        {
            "params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)],
            "weight_decay": 0.0,
        },
    ]
    return torch.optim.AdamW(groups, lr=args.learning_rate, fused=args.fused_optimizer)


def make_scheduler(optimizer, args: FlatArguments, num_processes: int, unprepared_batches: int):
    """Upstream's schedule length: epochs x ceil(len(unprepared dataloader) / GA) when epochs decide it
    (accelerate then ticks the scheduler num_processes times per optimizer step), else max_train_steps
    x num_processes.  Warmup is int(length x warmup_ratio) ticks."""
    from transformers import get_scheduler

    steps_per_epoch = math.ceil(unprepared_batches / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        length = args.num_train_epochs * steps_per_epoch
    else:
        length = args.max_train_steps * num_processes
    scheduler = get_scheduler(
        name=args.lr_scheduler_type,
        optimizer=optimizer,
        num_training_steps=length,
        num_warmup_steps=int(length * args.warmup_ratio),
    )
    return scheduler, length


def compute_loss(model, batch: dict, reduce_loss: str, embedding_size: int):
    """``mean``: HF's token mean within the micro-batch.  ``sum``: CrossEntropy(reduction="sum") over the
    micro-batch's shifted labels, never divided by a token count (accelerate divides by GA in backward).
    Logits are upcast to fp32 as transformers 4.43's Llama did before returning them."""
    import torch

    outputs = model(**batch, use_cache=False)
    if reduce_loss == "mean":
        return outputs.loss
    shift_logits = outputs.logits.float()[..., :-1, :].contiguous().view(-1, embedding_size)
    shift_labels = batch["labels"][..., 1:].contiguous().view(-1).to(shift_logits.device)
    return torch.nn.CrossEntropyLoss(reduction="sum")(shift_logits, shift_labels)


def gradient_norm(accelerator, model, clip_grad_norm: float) -> float | None:
    """Total grad norm of the synced gradients (read-only unless clipping is asked for, as upstream)."""
    import torch
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        value = model.get_global_grad_norm()  # the engine stepped (and clipped) inside backward
        return None if value is None else float(value)
    if clip_grad_norm > 0:
        return float(accelerator.clip_grad_norm_(model.parameters(), clip_grad_norm))
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads, 2.0)) if grads else None


# ----------------------------------------------------------------------------------------------------
# Checkpoints: step_N / epoch_N + COMPLETED, like upstream, plus what the twin needs to resume exactly.


@dataclass
class ResumeCounters:
    """Cumulative figures upstream restarts from zero on resume; the twin carries them in the checkpoint
    (DEVIATION) so a resumed run's total_tokens/per_device_tps continue instead of jumping."""

    total_tokens: int = 0
    total_tokens_including_padding: int = 0
    elapsed_s: float = 0.0

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def last_completed_checkpoint(output_dir: str) -> str | None:
    """Upstream's rule (step_* preferred over epoch_*, COMPLETED marker required), but ordered by number:
    DEVIATION, upstream takes max() of the number as a *string*, so step_9 would beat step_10."""
    return ckpt.latest_completed(output_dir, CHECKPOINT_PREFIXES)


def find_resume_checkpoint(args: FlatArguments) -> str | None:
    """Auto-resume from output_dir unless --overwrite_output_dir, else --resume_from_checkpoint.

    DEVIATION: upstream creates output_dir before looking, so it never honours --resume_from_checkpoint
    unless --overwrite_output_dir is also given; the twin uses it whenever output_dir has no checkpoint.
    """
    if not args.overwrite_output_dir:
        found = last_completed_checkpoint(args.output_dir)
        if found:
            return found
    if args.resume_from_checkpoint:
        if not os.path.isdir(args.resume_from_checkpoint):
            raise ReproError(f"--resume_from_checkpoint: no such folder: {args.resume_from_checkpoint}")
        return args.resume_from_checkpoint
    return None


def clean_last_n_checkpoints(output_dir: str, keep_last_n_checkpoints: int) -> None:
    """Delete all but the newest n checkpoints.  DEVIATION: -1 keeps all (upstream's help says so, its
    code deletes all)."""
    ckpt.keep_last_n(output_dir, keep_last_n_checkpoints, CHECKPOINT_PREFIXES)


@dataclass(frozen=True)
class ResumePoint:
    epoch: int
    completed_steps: int
    skip_batches: int  # batches of `epoch` already consumed (per process)


def resume_point(
    checkpoint: str | None, steps_per_epoch: int, gradient_accumulation_steps: int
) -> ResumePoint:
    """Where a checkpoint folder name puts the loop.  DEVIATION: upstream maps step_N to N x GA batches,
    which is off when an epoch's batch count is not a multiple of GA; this maps through steps_per_epoch."""
    if checkpoint is None:
        return ResumePoint(0, 0, 0)
    name = os.path.basename(os.path.normpath(checkpoint))
    number = int(name.split("_")[-1])
    if name.startswith("epoch_"):
        return ResumePoint(number + 1, (number + 1) * steps_per_epoch, 0)
    epoch = number // steps_per_epoch
    return ResumePoint(epoch, number, (number - epoch * steps_per_epoch) * gradient_accumulation_steps)


# ----------------------------------------------------------------------------------------------------
# Logging: upstream's stdout line, and the suite's MetricRecord per optimizer step.


def log_main(accelerator, message: str) -> None:
    if accelerator is None or accelerator.is_main_process:
        logger.info(message)


def configure_logging() -> None:
    """Upstream's log format; on stdout so the twin's stdout carries the ``Step:`` lines."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        level=logging.INFO,
        stream=sys.stdout,
        force=True,
    )
    import datasets
    import transformers

    logging.getLogger("accelerate").setLevel(logging.WARNING)  # per-file checkpoint chatter
    # Upstream's collator on "pt"-formatted rows warns about list->tensor speed on every run; noise here.
    warnings.filterwarnings("ignore", message="Creating a tensor from a list of numpy.ndarrays")
    datasets.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


# ----------------------------------------------------------------------------------------------------
# The run.


def make_accelerator(args: FlatArguments):
    """Upstream's Accelerator(GA, seedable sampler, timeout), through the runtime's CPU-safe constructor."""
    from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

    return runtime_accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=args.timeout))],
    )


def log_process_count(accelerator) -> None:
    log_main(
        accelerator,
        f"processes: {accelerator.num_processes} (WORLD_SIZE={os.environ.get('WORLD_SIZE', '1')}), "
        f"distributed_type={accelerator.distributed_type.value}, device={accelerator.device.type}, "
        f"mixed_precision={accelerator.mixed_precision}",
    )


def log_offline_notices(args: FlatArguments, accelerator) -> None:
    """Flags whose upstream effect needs the network: accepted, and said to be ignored."""
    if args.with_tracking:
        log_main(
            accelerator,
            f"--with_tracking --report_to {' '.join(args.report_to)}: tracking disabled (twin runs offline)",
        )
    if args.push_to_hub:
        log_main(accelerator, "--push_to_hub: ignored, the twin never pushes")
    if args.try_launch_beaker_eval_jobs:
        log_main(accelerator, "--try_launch_beaker_eval_jobs: ignored, the twin launches no Beaker jobs")
    ds_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if ds_file and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        log_main(accelerator, f"{describe_deepspeed_config(read_deepspeed_config(ds_file))} ({ds_file})")


@dataclass
class Run:
    """Everything the loop mutates, so the loop's helpers take one argument instead of twelve."""

    args: FlatArguments
    accelerator: Any
    tokenizer: Any
    model: Any
    optimizer: Any
    dataloader: Any
    scheduler: Any
    embedding_size: int
    max_train_steps: int
    num_train_epochs: int
    steps_per_epoch: int
    metrics: MetricsWriter | None
    counters: ResumeCounters
    completed_steps: int = 0
    logged_total_tokens: int = 0
    tokens_base: tuple[int, int] = (0, 0)  # totals restored from the checkpoint resumed from


def train(args: FlatArguments, inputs: ResolvedInputs) -> int:
    from accelerate.utils import set_seed

    accelerator = make_accelerator(args)
    run: Run | None = None
    try:
        log_process_count(accelerator)
        log_main(
            accelerator,
            f"run_name: {args.exp_name}__{args.model_name_or_path.replace('/', '_')}__{args.seed}"
            f"__{int(time.time())}",
        )
        log_offline_notices(args, accelerator)
        set_seed(args.seed)
        if accelerator.is_main_process:
            os.makedirs(args.output_dir, exist_ok=True)
        accelerator.wait_for_everyone()
        run = setup_run(args, inputs, accelerator)
        train_loop(run)
        finish_run(run)
        return 0
    finally:
        objects = (run.model, run.optimizer, run.dataloader, run.scheduler) if run else ()
        del run
        shutdown(accelerator, *objects)


def setup_run(args: FlatArguments, inputs: ResolvedInputs, accelerator) -> Run:
    """Data, model, optimizer, scheduler, prepare, resume: finetune.py's order of operations."""
    from torch.utils.data import DataLoader
    from transformers import DataCollatorForSeq2Seq

    raw = load_raw_train_dataset(args, inputs, accelerator.is_main_process)
    model, tokenizer, embedding_size = load_model_and_tokenizer(args, inputs, accelerator)
    train_dataset = tokenize_train_dataset(args, raw, tokenizer, accelerator)
    log_samples(accelerator, train_dataset, tokenizer)
    dataloader = DataLoader(
        train_dataset,
        shuffle=True,
        collate_fn=DataCollatorForSeq2Seq(tokenizer=tokenizer, model=model, padding="longest"),
        batch_size=args.per_device_train_batch_size,
    )
    optimizer = make_optimizer(model, args)
    scheduler, schedule_length = make_scheduler(optimizer, args, accelerator.num_processes, len(dataloader))
    model, optimizer, dataloader, scheduler = accelerator.prepare(model, optimizer, dataloader, scheduler)
    steps_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_train_epochs = math.ceil(max_train_steps / steps_per_epoch)
    counters = ResumeCounters()
    accelerator.register_for_checkpointing(counters)
    total_batch = (
        args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    )
    for line in (
        "***** Running training *****",
        f"  Num examples = {len(train_dataset)}",
        f"  Num Epochs = {num_train_epochs}",
        f"  Instantaneous batch size per device = {args.per_device_train_batch_size}",
        f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch}",
        f"  Gradient Accumulation steps = {args.gradient_accumulation_steps}",
        f"  Total optimization steps = {max_train_steps}",
        f"  LR schedule: {schedule_length} scheduler ticks, "
        f"{int(schedule_length * args.warmup_ratio)} warmup, "
        f"{accelerator.num_processes} tick(s) per optimizer step",
    ):
        log_main(accelerator, line)
    run = Run(
        args,
        accelerator,
        tokenizer,
        model,
        optimizer,
        dataloader,
        scheduler,
        embedding_size,
        max_train_steps,
        num_train_epochs,
        steps_per_epoch,
        None,
        counters,
    )
    return run


def train_loop(run: Run) -> None:
    """finetune.py's loop: accumulate, backward, (clip), step, then log/checkpoint on sync steps."""
    import torch

    args, accelerator = run.args, run.accelerator
    checkpoint = find_resume_checkpoint(args)
    if checkpoint:
        accelerator.print(f"Resumed from checkpoint: {checkpoint}")
        accelerator.load_state(checkpoint)
    point = resume_point(checkpoint, run.steps_per_epoch, args.gradient_accumulation_steps)
    run.completed_steps = point.completed_steps
    run.metrics = MetricsWriter(args.output_dir, accelerator.is_main_process, point.completed_steps)
    run.tokens_base = (run.counters.total_tokens, run.counters.total_tokens_including_padding)
    run.logged_total_tokens = run.counters.total_tokens
    accelerator.print(f"Starting from epoch {point.epoch} and step {point.completed_steps}.")

    device = accelerator.device
    local_tokens = torch.tensor(0, dtype=torch.int64, device=device)
    local_tokens_padded = torch.tensor(0, dtype=torch.int64, device=device)
    clock = StepClock(offset_s=run.counters.elapsed_s)
    for epoch in range(point.epoch, run.num_train_epochs):
        run.model.train()
        run.dataloader.set_epoch(epoch)
        total_loss = 0
        # DEVIATION: upstream skips the resumed batch count in *every* later epoch too; only the first.
        skip = point.skip_batches if epoch == point.epoch else 0
        batches = accelerator.skip_first_batches(run.dataloader, skip) if skip else run.dataloader
        grad_norm, lr_applied = None, None
        for batch in batches:
            local_tokens += batch["attention_mask"].sum()
            local_tokens_padded += batch["attention_mask"].numel()
            with accelerator.accumulate(run.model):
                loss = compute_loss(run.model, batch, args.reduce_loss, run.embedding_size)
                total_loss += loss.detach().float()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = gradient_norm(accelerator, run.model, args.clip_grad_norm)
                    lr_applied = run.optimizer.param_groups[0]["lr"]
                run.optimizer.step()
                run.optimizer.zero_grad()
                run.scheduler.step()
            if not accelerator.sync_gradients:
                continue
            run.completed_steps += 1
            logged = should_log(args, run.completed_steps)
            loss_value = logged_train_loss(accelerator, total_loss, args) if logged else None
            if logged:
                total_loss = 0
            totals = gather_totals(accelerator, local_tokens, local_tokens_padded, run.tokens_base)
            record_step(run, StepFigures(epoch, loss_value, grad_norm, lr_applied, totals), clock)
            maybe_checkpoint_step(run, totals, clock)
            ckpt.maybe_die_for_test(run.completed_steps)
            if run.completed_steps >= run.max_train_steps:
                break
        if args.checkpointing_steps is not None and args.checkpointing_steps.lower() == "epoch":
            totals = gather_totals(accelerator, local_tokens, local_tokens_padded, run.tokens_base)
            save_checkpoint(run, f"epoch_{epoch}", totals, clock)


def should_log(args: FlatArguments, completed_steps: int) -> bool:
    return bool(args.logging_steps) and completed_steps % args.logging_steps == 0


def logged_train_loss(accelerator, total_loss, args: FlatArguments) -> float:
    """Upstream's train_loss: gather(total_loss).mean() / GA / logging_steps (the mean over processes of
    each process's summed micro-batch losses)."""
    return (
        accelerator.gather(total_loss).mean().item() / args.gradient_accumulation_steps / args.logging_steps
    )


def gather_totals(accelerator, local_tokens, local_tokens_padded, base: tuple[int, int]) -> tuple[int, int]:
    """Cumulative non-pad and padded token counts over all processes, plus what a resumed run had."""
    tokens = accelerator.gather(local_tokens).sum().item() + base[0]
    padded = accelerator.gather(local_tokens_padded).sum().item() + base[1]
    return int(tokens), int(padded)


@dataclass(frozen=True)
class StepFigures:
    """What one optimizer step measured, handed from the loop to the recorder."""

    epoch: int
    loss: float | None  # upstream's logged train_loss, None between logging steps
    grad_norm: float | None
    lr_applied: float | None  # the LR this step used (upstream logs the next one)
    totals: tuple[int, int]  # cumulative (non-pad, including padding) tokens, all processes


def record_step(run: Run, fig: StepFigures, clock: StepClock) -> None:
    """Upstream's metrics (stdout line + W&B keys) and the suite's MetricRecord, rank 0 only."""
    accelerator, n = run.accelerator, run.accelerator.num_processes
    step_time, elapsed = clock.tick()
    loss = fig.loss
    total_tokens, total_padded = fig.totals
    step_tokens = total_tokens - run.logged_total_tokens
    run.logged_total_tokens = total_tokens
    lr = run.scheduler.get_last_lr()[0]
    if not accelerator.is_main_process:
        return
    if loss is not None:
        logger.info(f"  Step: {run.completed_steps}, LR: {lr}, Loss: {loss}, TPS: {total_tokens / elapsed}")
    record = MetricRecord(
        step=run.completed_steps,
        loss=loss,
        lr=lr,
        tokens=float(step_tokens),
        tokens_per_s_per_device=step_tokens / step_time / n if step_time > 0 else None,
        grad_norm=fig.grad_norm,
        step_time_s=step_time,
        extra={
            "total_tokens": float(total_tokens),
            "total_tokens_including_padding": float(total_padded),
            "per_device_tps": total_tokens / n / elapsed,
            "per_device_tps_including_padding": total_padded / n / elapsed,
            "epoch": float(fig.epoch),
            "num_processes": float(n),
            **({"lr_applied": fig.lr_applied} if fig.lr_applied is not None else {}),
        },
    )
    run.metrics.write(record)


def maybe_checkpoint_step(run: Run, totals: tuple[int, int], clock: StepClock) -> None:
    steps = run.args.checkpointing_steps
    if steps is not None and steps.isdigit() and run.completed_steps % int(steps) == 0:
        save_checkpoint(run, f"step_{run.completed_steps}", totals, clock)


def save_checkpoint(run: Run, name: str, totals: tuple[int, int], clock: StepClock) -> None:
    """accelerator.save_state (model, optimizer, scheduler, RNG, sampler, counters) + COMPLETED marker.

    DEVIATION: the marker is written after a barrier into the folder just saved; upstream writes it
    without a barrier into get_last_checkpoint_path(incomplete=True), which its string ordering can aim
    at an older folder.
    """
    accelerator = run.accelerator
    run.counters.total_tokens, run.counters.total_tokens_including_padding = totals
    run.counters.elapsed_s = time.time() - clock.start + clock.offset_s
    folder = os.path.join(run.args.output_dir, name)
    accelerator.save_state(folder)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ckpt.mark_completed(folder)
    if accelerator.is_local_main_process:
        clean_last_n_checkpoints(run.args.output_dir, run.args.keep_last_n_checkpoints)
    accelerator.wait_for_everyone()


def finish_run(run: Run) -> None:
    """save_with_accelerate (model + tokenizer into output_dir), then delete every checkpoint (upstream)."""
    import transformers

    accelerator = run.accelerator
    unwrapped = accelerator.unwrap_model(run.model)
    unwrapped.generation_config = transformers.GenerationConfig(
        temperature=None,
        top_p=None,
        eos_token_id=unwrapped.config.eos_token_id,
        bos_token_id=unwrapped.config.bos_token_id,
    )
    state_dict = accelerator.get_state_dict(run.model)
    unwrapped.save_pretrained(
        run.args.output_dir,
        is_main_process=accelerator.is_main_process,
        save_function=accelerator.save,
        state_dict=state_dict,
    )
    if accelerator.is_main_process:
        run.tokenizer.save_pretrained(run.args.output_dir)  # with <pad> and the training chat template
    if accelerator.is_local_main_process:
        clean_last_n_checkpoints(run.args.output_dir, keep_last_n_checkpoints=0)
    accelerator.wait_for_everyone()
    log_main(accelerator, f"done: {run.completed_steps} optimizer steps, metrics in {run.metrics.path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    inputs = preflight(args)
    configure_logging()
    return train(args, inputs)


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
