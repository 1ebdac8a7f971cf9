"""open-instruct ``finetune.py`` @30d11b4 for the Tulu 3 SFT twins: its flags and defaults, the data
branch, the ``mean``/``sum`` losses and the logged ``train_loss``, the loop, checkpoints and the final
save. What open-instruct's entry points share lives in encoding/model_setup/common, what every
trainer shares in harness/runtime. Deliberate differences are marked DEVIATION.

Why a port: finetune.py at that commit needs CUDA, flash-attn, DeepSpeed, W&B and the hub at import
time, and its pins (torch 2.4, transformers 4.43) cannot install on CPU CI. Launched exactly as the
recipe launches finetune.py (``accelerate launch ... harness/open_instruct/finetune.py --flags``).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[2])  # run as a script path by the launchers

import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from harness.open_instruct import log_main, logger  # noqa: E402
from harness.open_instruct.common import (  # noqa: E402
    ResumeCounters, clean_last_n_checkpoints, find_resume_checkpoint, gather_totals, log_offline_notices,
    log_process_count, logged_train_loss, make_accelerator, make_optimizer, make_scheduler,
    maybe_checkpoint_step, resume_point, save_checkpoint, should_log,
)
from harness.open_instruct.data import MixerError, get_datasets, parse_mixer_list, resolve_dataset_path  # noqa: E402
from harness.open_instruct.encoding import tokenize_train_dataset  # noqa: E402
from harness.open_instruct.model_setup import ResolvedInputs, load_model_and_tokenizer, resolve_model_inputs  # noqa: E402
from harness.runtime import faults  # noqa: E402
from harness.runtime.cli import parse_dataclasses  # noqa: E402
from harness.runtime.clock import StepClock  # noqa: E402
from harness.runtime.dist import shutdown  # noqa: E402
from harness.runtime.entry import run_main  # noqa: E402
from harness.runtime.hub import load_hub_map  # noqa: E402
from harness.runtime.launch_config import check_deepspeed_launch  # noqa: E402
from harness.runtime.logs import configure_logging, log_samples  # noqa: E402
from harness.runtime.metrics import MetricsWriter  # noqa: E402
from harness.runtime.step import end_of_step  # noqa: E402
from harness.runtime.models import save_with_accelerate  # noqa: E402
from repro.base.errors import ReproError  # noqa: E402
from repro.base.metrics import MetricRecord  # noqa: E402

PROG = "open_instruct_sft"
LR_SCHEDULER_TYPES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


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


def preflight(args: FlatArguments) -> ResolvedInputs:
    hub = load_hub_map()
    model_path, tokenizer_path, template = resolve_model_inputs(
        hub, args.model_name_or_path, args.tokenizer_name, args.chat_template_name)
    try:
        if args.dataset_mixer_list is not None:
            for name in parse_mixer_list(args.dataset_mixer_list):
                resolve_dataset_path(name, hub.datasets)
        elif not os.path.isfile(args.train_file) or not args.train_file.endswith((".json", ".jsonl")):
            raise ReproError(f"--train_file must be an existing .json/.jsonl file: {args.train_file}")
    except MixerError as exc:
        raise ReproError(str(exc)) from None
    check_deepspeed_launch()
    return ResolvedInputs(model_path, tokenizer_path, template, hub.datasets)


# ----------------------------------------------------------------------------------------------------
# Data: encode_sft_example is upstream's, line for line (prefix re-tokenisation decides the masks).


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


# ----------------------------------------------------------------------------------------------------
# Model and tokenizer: upstream's pad-token / resize / chat-template handling.


# ----------------------------------------------------------------------------------------------------
# Optimisation pieces.


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


def gradient_norm(accelerator, model, clip_grad_norm: float) -> tuple[float | None, float | None]:
    """(norm before clipping, norm the optimizer steps with) of the synced gradients; upstream clips only
    when --clip_grad_norm > 0. Under DeepSpeed the engine clips inside its step at the config's
    gradient_clipping (accelerate fills "auto" with 1.0), so only the pre-clip norm is known here; on the
    CPU path the twin passes that effective value as --clip_grad_norm (twin.config_effects)."""
    import torch
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        value = model.get_global_grad_norm()
        return (None if value is None else float(value)), None
    grads = lambda: [p.grad for p in model.parameters() if p.grad is not None]  # noqa: E731
    if clip_grad_norm > 0:
        before = float(accelerator.clip_grad_norm_(model.parameters(), clip_grad_norm))
        return before, float(torch.nn.utils.get_total_norm(grads(), 2.0))
    norm = float(torch.nn.utils.get_total_norm(grads(), 2.0)) if grads() else None
    return norm, norm


# ----------------------------------------------------------------------------------------------------
# Checkpoints: step_N / epoch_N + COMPLETED, like upstream, plus what the twin needs to resume exactly.


# ----------------------------------------------------------------------------------------------------
# Logging: upstream's stdout line, and the suite's MetricRecord per optimizer step.


# ----------------------------------------------------------------------------------------------------
# The run.


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
    faults.maybe_inject_oom(args.per_device_train_batch_size)
    train_dataset = tokenize_train_dataset(args, raw, tokenizer, accelerator)
    log_samples(logger, accelerator, train_dataset, tokenizer)
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
        grad_norm, applied_norm, lr_applied = None, None, None
        for batch in batches:
            local_tokens += batch["attention_mask"].sum()
            local_tokens_padded += batch["attention_mask"].numel()
            with accelerator.accumulate(run.model):
                loss = compute_loss(run.model, batch, args.reduce_loss, run.embedding_size)
                total_loss += loss.detach().float()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm, applied_norm = gradient_norm(accelerator, run.model, args.clip_grad_norm)
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
            record = record_step(run, StepFigures(epoch, loss_value, grad_norm, applied_norm, lr_applied, totals),
                                 clock)
            end_of_step(run.metrics, record, output_dir=args.output_dir, is_main=accelerator.is_main_process,
                        step=run.completed_steps, after=lambda: maybe_checkpoint_step(run, totals, clock),
                        loss=loss_value, grad_norm=grad_norm)
            if run.completed_steps >= run.max_train_steps:
                break
        if args.checkpointing_steps is not None and args.checkpointing_steps.lower() == "epoch":
            totals = gather_totals(accelerator, local_tokens, local_tokens_padded, run.tokens_base)
            save_checkpoint(run, f"epoch_{epoch}", totals, clock)


@dataclass(frozen=True)
class StepFigures:
    """What one optimizer step measured, handed from the loop to the recorder."""

    epoch: int
    loss: float | None  # upstream's logged train_loss, None between logging steps
    grad_norm: float | None  # before clipping (what upstream logs)
    grad_norm_after_clip: float | None  # what the optimizer stepped with
    lr_applied: float | None  # the LR this step used (upstream logs the next one)
    totals: tuple[int, int]  # cumulative (non-pad, including padding) tokens, all processes


def record_step(run: Run, fig: StepFigures, clock: StepClock) -> MetricRecord | None:
    """Upstream's metrics (stdout line + W&B keys) and the suite's MetricRecord (rank 0; None elsewhere),
    which the end-of-step hook writes."""
    accelerator, n = run.accelerator, run.accelerator.num_processes
    step_time, elapsed = clock.tick()
    loss = fig.loss
    total_tokens, total_padded = fig.totals
    step_tokens = total_tokens - run.logged_total_tokens
    run.logged_total_tokens = total_tokens
    lr = run.scheduler.get_last_lr()[0]
    if not accelerator.is_main_process:
        return None
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
            **({"grad_norm_after_clip": fig.grad_norm_after_clip} if fig.grad_norm_after_clip is not None else {}),
        },
    )
    return record


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
    save_with_accelerate(accelerator, run.model, run.args.output_dir, run.tokenizer)  # <pad> + training template
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
