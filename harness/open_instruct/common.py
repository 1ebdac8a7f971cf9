"""What open-instruct's accelerate entry points share: optimizer groups, the schedule and its
accelerate ticks, the logged loss, resume and checkpoint rules (with the harness's fixes marked
DEVIATION), and the notices for flags whose upstream effect needs the network."""

from __future__ import annotations

from typing import Any

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from datetime import timedelta

from harness.open_instruct import log_main
from harness.runtime import checkpoint as ckpt
from harness.runtime.dist import make_accelerator as runtime_accelerator
from harness.runtime.launch_config import deepspeed_requested, describe_deepspeed_config, read_deepspeed_config
from repro.base.errors import ReproError

#: Checkpoint folder prefixes, in upstream's order of preference for auto-resume.
CHECKPOINT_PREFIXES = ("step", "epoch")


def make_optimizer(model, args: Any):
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


def make_scheduler(optimizer, args: Any, num_processes: int, unprepared_batches: int):
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


def find_resume_checkpoint(args: Any) -> str | None:
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


def make_accelerator(args: Any):
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


def log_offline_notices(args: Any, accelerator) -> None:
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
    if ds_file and deepspeed_requested():
        log_main(accelerator, f"{describe_deepspeed_config(read_deepspeed_config(ds_file))} ({ds_file})")


def should_log(args: Any, completed_steps: int) -> bool:
    return bool(args.logging_steps) and completed_steps % args.logging_steps == 0


def logged_train_loss(accelerator, total_loss, args: Any) -> float:
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


def save_checkpoint(run: Any, name: str, totals: tuple[int, int], clock: Any) -> None:
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


def maybe_checkpoint_step(run: Any, totals: tuple[int, int], clock: Any) -> None:
    steps = run.args.checkpointing_steps
    if steps is not None and steps.isdigit() and run.completed_steps % int(steps) == 0:
        save_checkpoint(run, f"step_{run.completed_steps}", totals, clock)
