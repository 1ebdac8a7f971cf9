"""Reference DPO trainer: open-instruct ``dpo_tune.py`` (live reference model) and ``dpo_tune_cache.py``
(cached reference log-probs) at commit 30d11b4, for scaled-down twins.

Why a port: the upstream scripts need CUDA, DeepSpeed, flash-attn, W&B and the hub at import time, and
their pins (torch 2.4, transformers 4.43) do not install on CPU CI.  This keeps their semantics: flags and
defaults of each script (``--concatenated_forward`` and ``--fused_optimizer`` exist only in the cache
script), chosen/rejected encoded as full conversations with every non-assistant token masked
(``encode_sft_example`` on each side), pairs with all chosen or all rejected labels masked dropped,
``dpo``/``dpo_norm``/``simpo``/``wpo`` losses, ``losses.mean()`` per micro-batch, the reference model
(a second ``from_pretrained`` of the same weights, no grad, eval mode) or the cache pass over the training
dataloader before step 1, the linear schedule with accelerate's per-process ticks, and the metric vector
reduced with a mean over ranks and divided by ``GA * logging_steps``.  Where it differs, "DEVIATION"
marks the spot.

Run it the way the recipes run dpo_tune.py::

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        harness/open_instruct/dpo_tune.py --model_name_or_path allenai/Llama-3.1-Tulu-3-8B-SFT ...

``harness/open_instruct/dpo_tune_cache.py`` is the same trainer in cache mode.  Each optimizer step appends a
``repro.metrics.MetricRecord`` to ``OUTPUT_DIR/metrics.jsonl`` (rank 0), with upstream's logged DPO keys
in ``extra``, and prints upstream's ``  Step: N, LR: x, Loss: y`` line.  Bad input: one line, exit 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[2])  # run as a script path by the launchers

import math  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from functools import partial  # noqa: E402
from typing import Any  # noqa: E402

from harness.open_instruct import dpo, encoding  # noqa: E402
from harness.open_instruct import finetune as sft  # noqa: E402
from harness.runtime import checkpoint as ckpt  # noqa: E402
from harness.runtime import faults  # noqa: E402
from harness.runtime import models as rt_models  # noqa: E402
from harness.runtime.cli import parse_dataclasses  # noqa: E402
from harness.runtime.clock import StepClock  # noqa: E402
from harness.runtime.dist import shutdown  # noqa: E402
from harness.runtime.entry import run_main  # noqa: E402
from harness.runtime.metrics import MetricsWriter  # noqa: E402
from harness.runtime.step import end_of_step  # noqa: E402
from repro.base.errors import ReproError  # noqa: E402
from repro.base.metrics import MetricRecord  # noqa: E402

logger = sft.logger
PROG_LIVE = "dpo_tune"
PROG_CACHE = "dpo_tune_cache"
#: Test hook: make every reference log-prob this much lower (a broken reference must fail the ln 2 check).
BREAK_REFERENCE_ENV = "REPRO_TWIN_BREAK_REFERENCE"


@dataclass
class DPOArguments:
    """dpo_tune.py's FlatArguments (the fields Tulu 3 commands use and their neighbours), upstream
    defaults included (dpo_beta 0.1, loss "dpo", per_device 8, push_to_hub True, reduce_loss unused)."""

    exp_name: str = PROG_LIVE
    model_name_or_path: str | None = None
    tokenizer_name: str | None = None
    tokenizer_revision: str | None = None
    model_revision: str | None = None
    chat_template_name: str = "tulu"
    use_flash_attn: bool = True
    use_slow_tokenizer: bool = True
    dpo_use_paged_optimizer: bool = False
    dpo_beta: float = 0.1
    dpo_loss_type: str = field(default="dpo", metadata={"choices": dpo.LOSS_TYPES})
    dpo_gamma_beta_ratio: float = 0.3
    dpo_label_smoothing: float = 0.0
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
    lr_scheduler_type: str = field(default="linear", metadata={"choices": sft.LR_SCHEDULER_TYPES})
    num_train_epochs: int = 2
    output_dir: str = "output/"
    per_device_train_batch_size: int = 8
    use_lora: bool = False
    use_qlora: bool = False
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
    load_balancing_loss: bool = False
    load_balancing_weight: float = 0.001
    push_to_hub: bool = True
    try_launch_beaker_eval_jobs: bool = True


@dataclass
class DPOCacheArguments(DPOArguments):
    """dpo_tune_cache.py adds exactly these two flags."""

    exp_name: str = PROG_CACHE
    fused_optimizer: bool = True
    concatenated_forward: bool = True


def parse_args(argv: list[str] | None, cache: bool) -> DPOArguments:
    """Parse and apply upstream's ``__post_init__`` checks, plus the twin's refusals of what it lacks."""
    cls, prog = (DPOCacheArguments, PROG_CACHE) if cache else (DPOArguments, PROG_LIVE)
    (args,) = parse_dataclasses((cls,), argv, prog, __doc__.splitlines()[0])
    if args.reduce_loss not in ("mean", "sum"):
        raise ReproError("reduce_loss must be either 'mean' or 'sum'")
    chosen = [x for x in (args.dataset_mixer_list, args.train_file) if x is not None]
    if not chosen:
        raise ReproError("Need either a dataset name, dataset mixer, or a training file.")
    if len(chosen) > 1:
        raise ReproError("Cannot provide two dataset selection mechanisms.")
    if args.try_launch_beaker_eval_jobs and not args.push_to_hub:
        raise ReproError("Cannot launch Beaker evaluation jobs without pushing to the Hub.")
    if args.model_name_or_path is None:
        raise ReproError("--model_name_or_path is required (training from scratch is not supported upstream)")
    if args.checkpointing_steps is not None and args.checkpointing_steps.lower() != "epoch":
        if not args.checkpointing_steps.isdigit() or int(args.checkpointing_steps) < 1:
            raise ReproError(f"--checkpointing_steps must be a positive int or 'epoch', got {args.checkpointing_steps!r}")
    for flag in ("use_lora", "use_qlora", "dpo_use_paged_optimizer", "load_balancing_loss"):
        if getattr(args, flag):
            raise ReproError(f"--{flag} is not part of the Tulu 3 recipes and the twin does not implement it")
    return args


# ----------------------------------------------------------------------------------------------------
# Data


def encode_dpo_example(example: dict, tokenizer, max_seq_length: int | None) -> dict:
    """Each side through encode_sft_example: the full conversation, non-assistant tokens masked."""
    out = {}
    for side in ("chosen", "rejected"):
        if len(example[side]) == 0:
            raise ValueError(f"{side} messages field is empty.")
        enc = encoding.encode_sft_example({"messages": example[side]}, tokenizer, max_seq_length)
        out.update({f"{side}_{k}": v for k, v in enc.items()})
    return out


ENCODED_KEYS = tuple(f"{s}_{k}" for s in ("chosen", "rejected") for k in ("input_ids", "labels", "attention_mask"))


def load_raw_preferences(args, inputs, is_main: bool):
    from datasets import load_dataset

    try:
        if args.dataset_mixer_list is not None:
            raw = sft.get_datasets(args.dataset_mixer_list, inputs.hub_datasets,
                                   columns_to_keep=("chosen", "rejected"),
                                   save_data_dir=args.dataset_mix_dir if is_main else None)["train"]
        else:
            raw = load_dataset("json", data_files={"train": args.train_file})["train"]
    except sft.MixerError as exc:
        raise ReproError(str(exc)) from None
    cols = raw.column_names
    if "prompt" in cols and "completion" in cols:
        raise ReproError("Sorry, prompt-completion format is not supported for DPO training.")
    if not ("chosen" in cols and "rejected" in cols):
        raise ReproError("You need to have 'chosen' and 'rejected in your column names.")
    return raw


def tokenize_preferences(args, train_dataset, tokenizer, accelerator):
    """Limit, encode both sides, then drop pairs whose chosen OR rejected labels are all masked."""
    if args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(len(train_dataset), args.max_train_samples)))
    with accelerator.main_process_first():
        train_dataset = train_dataset.map(
            partial(encode_dpo_example, tokenizer=tokenizer, max_seq_length=args.max_seq_length),
            batched=False,
            num_proc=encoding.preprocessing_workers(args.preprocessing_num_workers, len(train_dataset)),
            load_from_cache_file=not args.overwrite_cache,
            remove_columns=[c for c in train_dataset.column_names if c not in ENCODED_KEYS],
            desc="Tokenizing and reformatting instruction data",
        )
        train_dataset.set_format(type="pt")
        before = len(train_dataset)
        train_dataset = train_dataset.filter(lambda ex: (ex["chosen_labels"] != -100).any())
        train_dataset = train_dataset.filter(lambda ex: (ex["rejected_labels"] != -100).any())
    sft.log_main(accelerator, f"pairs: {len(train_dataset)} kept, {before - len(train_dataset)} dropped "
                              "(every chosen or rejected label masked after truncation)")
    return train_dataset


class DPOCollator:
    """DataCollatorForSeq2SeqDPO: pad chosen and rejected separately ('longest', labels -100, ids pad)."""

    def __init__(self, tokenizer, model):
        from transformers import DataCollatorForSeq2Seq

        self.inner = DataCollatorForSeq2Seq(tokenizer=tokenizer, model=model, padding="longest")

    def __call__(self, features):
        out = {}
        for side in ("chosen", "rejected"):
            part = [{k[len(side) + 1 :]: v for k, v in f.items() if k.startswith(side + "_")} for f in features]
            out.update({f"{side}_{k}": v for k, v in self.inner(part).items()})
        return out


# ----------------------------------------------------------------------------------------------------
# Model, optimizer


def load_reference_model(args, inputs, accelerator, tokenizer, embedding_size: int):
    """dpo_tune.py's second load_model(): same weights, resized like the policy, eval mode, no grads.

    DEVIATION: upstream wraps it with deepspeed.initialize (ZeRO-3 sharded on GPU); on CPU it is a plain
    module on each process, which holds the same values."""
    import torch
    from transformers import AutoModelForCausalLM

    on_gpu = accelerator.device.type == "cuda"
    impl, _ = rt_models.attention_implementation(args.use_flash_attn, on_gpu)
    ref = AutoModelForCausalLM.from_pretrained(
        inputs.model_path, dtype=torch.bfloat16 if on_gpu else torch.float32, attn_implementation=impl)
    if rt_models.embedding_rows(ref) < len(tokenizer):
        ref.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8, mean_resizing=False)
    if rt_models.embedding_rows(ref) != embedding_size:
        raise ReproError("reference and policy embeddings differ in size")
    ref.requires_grad_(False)
    ref.eval()
    return ref.to(accelerator.device)


def make_optimizer(model, args):
    """Upstream's two AdamW groups; dpo_tune.py builds it unfused, dpo_tune_cache.py with --fused_optimizer."""
    import torch

    no_decay = ["bias", "layer_norm.weight"]
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
         "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)],
         "weight_decay": 0.0},
    ]
    fused = getattr(args, "fused_optimizer", None)
    return torch.optim.AdamW(groups, lr=args.learning_rate, **({} if fused is None else {"fused": fused}))


# ----------------------------------------------------------------------------------------------------
# The run


@dataclass
class DPORun:
    args: DPOArguments
    cache: bool
    accelerator: Any
    tokenizer: Any
    model: Any
    reference: Any
    optimizer: Any
    dataloader: Any
    scheduler: Any
    max_train_steps: int
    num_train_epochs: int
    steps_per_epoch: int
    num_examples: int
    metrics: MetricsWriter | None
    forward: Any
    average_log_prob: bool
    ref_cache: tuple[list, list] | None = None
    completed_steps: int = 0
    episode: int = 0


def setup_run(args: DPOArguments, inputs, accelerator, cache: bool) -> DPORun:
    """Data, models, optimizer, scheduler, prepare: dpo_tune(.cache).py's order of operations."""
    from torch.utils.data import DataLoader

    raw = load_raw_preferences(args, inputs, accelerator.is_main_process)
    model, tokenizer, embedding_size = sft.load_model_and_tokenizer(args, inputs, accelerator)
    reference = None
    if not cache and dpo.needs_reference(args.dpo_loss_type):
        reference = load_reference_model(args, inputs, accelerator, tokenizer, embedding_size)
    train_dataset = tokenize_preferences(args, raw, tokenizer, accelerator)
    dataloader = DataLoader(train_dataset, shuffle=True, collate_fn=DPOCollator(tokenizer, model),
                            batch_size=args.per_device_train_batch_size)
    optimizer = make_optimizer(model, args)
    scheduler, length = sft.make_scheduler(optimizer, args, accelerator.num_processes, len(dataloader))
    model, optimizer, dataloader, scheduler = accelerator.prepare(model, optimizer, dataloader, scheduler)
    steps_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_train_epochs = math.ceil(max_train_steps / steps_per_epoch)
    total = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    for line in ("***** Running training *****", f"  Num examples = {len(train_dataset)}",
                 f"  Num Epochs = {num_train_epochs}",
                 f"  Instantaneous batch size per device = {args.per_device_train_batch_size}",
                 f"  Total train batch size (w. parallel, distributed & accumulation) = {total}",
                 f"  Gradient Accumulation steps = {args.gradient_accumulation_steps}",
                 f"  Total optimization steps = {max_train_steps}",
                 f"  LR schedule: {length} scheduler ticks, {int(length * args.warmup_ratio)} warmup, "
                 f"{accelerator.num_processes} tick(s) per optimizer step",
                 f"  reference: {'cached log-probs (one pass before step 1)' if cache else 'live model'}; "
                 f"loss {args.dpo_loss_type}, beta {args.dpo_beta}, label smoothing {args.dpo_label_smoothing}"):
        sft.log_main(accelerator, line)
    concatenated = getattr(args, "concatenated_forward", True)
    return DPORun(args, cache, accelerator, tokenizer, model, reference, optimizer, dataloader, scheduler,
                  max_train_steps, num_train_epochs, steps_per_epoch, len(train_dataset),
                  None, dpo.forward_function(concatenated),
                  dpo.uses_average_log_prob(args.dpo_loss_type))


def reference_logps(run: DPORun, batch, epoch: int, step: int):
    """Live: the reference model's forward under no_grad.  Cache: the stored pass, indexed [epoch][step]
    with the absolute epoch as upstream does."""
    import torch

    if run.ref_cache is not None:
        device = run.accelerator.device
        c, r = run.ref_cache[0][epoch][step].to(device), run.ref_cache[1][epoch][step].to(device)
    else:
        with torch.no_grad():
            c, r, _ = run.forward(run.reference, batch, average_log_prob=run.average_log_prob)
    shift = float(os.environ.get(BREAK_REFERENCE_ENV, "0") or 0) or (1.0 if faults.fault("reference_drift") else 0.0)
    return (c - shift, r) if shift else (c, r)


def train_loop(run: DPORun) -> None:
    import torch

    args, accelerator = run.args, run.accelerator
    checkpoint = sft.find_resume_checkpoint(args)
    if checkpoint:
        accelerator.print(f"Resumed from checkpoint: {checkpoint}")
        accelerator.load_state(checkpoint)
    point = sft.resume_point(checkpoint, run.steps_per_epoch, args.gradient_accumulation_steps)
    run.completed_steps = point.completed_steps
    run.metrics = MetricsWriter(args.output_dir, accelerator.is_main_process, point.completed_steps)
    accelerator.print(f"Starting from epoch {point.epoch} and step {point.completed_steps}.")
    if run.cache and dpo.needs_reference(args.dpo_loss_type):
        started = time.time()
        # DEVIATION: upstream skips resume_step batches in every cached epoch; the twin caches full epochs.
        run.ref_cache = dpo.cache_reference_logps(run.model, run.dataloader, run.average_log_prob, run.forward,
                                                  range(point.epoch, run.num_train_epochs))
        pairs = sum(len(t) for t in run.ref_cache[0][0]) if run.ref_cache[0] else 0
        sft.log_main(accelerator, f"cached reference log-probs: {pairs} pairs per process per epoch "
                                  f"in {time.time() - started:.2f}s")
    local = torch.zeros(20, device=accelerator.device)
    tokens = torch.zeros((), dtype=torch.int64, device=accelerator.device)
    clock = StepClock()
    lr_applied = None
    for epoch in range(point.epoch, run.num_train_epochs):
        run.model.train()
        run.dataloader.set_epoch(epoch)
        skip = point.skip_batches if epoch == point.epoch else 0
        batches = accelerator.skip_first_batches(run.dataloader, skip) if skip else run.dataloader
        for step, batch in enumerate(batches):
            run.episode += len(batch["chosen_input_ids"]) * accelerator.num_processes
            tokens += batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum()
            with accelerator.accumulate(run.model):
                pc, pr, _ = run.forward(run.model, batch, average_log_prob=run.average_log_prob)
                rc = rr = None
                if dpo.needs_reference(args.dpo_loss_type):
                    rc, rr = reference_logps(run, batch, epoch, step)
                losses = dpo.compute_losses(args.dpo_loss_type, pc, pr, rc, rr, args.dpo_beta,
                                            args.dpo_label_smoothing, args.dpo_gamma_beta_ratio, batch)
                loss = losses.mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    lr_applied = run.optimizer.param_groups[0]["lr"]
                    if args.clip_grad_norm > 0:
                        accelerator.clip_grad_norm_(run.model.parameters(), args.clip_grad_norm)
                run.optimizer.step()
                run.optimizer.zero_grad()
                run.scheduler.step()
                dpo.accumulate_metrics(local, loss, args.dpo_loss_type, args.dpo_beta, pc, pr, rc, rr)
            if not accelerator.sync_gradients:
                continue
            run.completed_steps += 1
            record, logged_loss = None, None
            if args.logging_steps and run.completed_steps % args.logging_steps == 0:
                global_mean = accelerator.reduce(local, reduction="mean")
                metrics = dpo.logged_metrics(global_mean, args.gradient_accumulation_steps, args.logging_steps,
                                             args.dpo_loss_type)
                step_tokens = int(accelerator.gather(tokens).sum().item())
                record = record_step(run, metrics, step_tokens, lr_applied, clock)
                logged_loss = float(metrics["train_loss"])  # all-reduced: every rank has it
                local.zero_()
                tokens.zero_()
            end_of_step(run.metrics, record, output_dir=args.output_dir, is_main=accelerator.is_main_process,
                        step=run.completed_steps, after=lambda: maybe_save_step(run, args), loss=logged_loss)
            if run.completed_steps >= run.max_train_steps:
                break
        if args.checkpointing_steps is not None and args.checkpointing_steps.lower() == "epoch":
            save_checkpoint(run, f"epoch_{epoch}")


def maybe_save_step(run: DPORun, args) -> None:
    steps = args.checkpointing_steps
    if steps is not None and steps.isdigit() and run.completed_steps % int(steps) == 0:
        save_checkpoint(run, f"step_{run.completed_steps}")


def record_step(run: DPORun, metrics: dict, step_tokens: int, lr_applied, clock) -> MetricRecord | None:
    """Upstream's stdout line and logged keys (in ``extra``), one MetricRecord per logged step, rank 0.
    ``tokens`` (non-pad chosen + rejected tokens of the step, all processes) is the twin's own figure:
    upstream's DPO logs no token count at this commit; it pins data, template and masking in the golden."""
    step_time, _ = clock.tick()
    lr = run.scheduler.get_last_lr()[0]
    if not run.accelerator.is_main_process:
        return None
    logger.info(f"  Step: {run.completed_steps}, LR: {lr}, Loss: {metrics['train_loss']}")
    extra = {k: float(v) for k, v in metrics.items() if k != "train_loss"}
    extra.update({"training_step": float(run.completed_steps), "epoch": run.episode / run.num_examples,
                  "num_processes": float(run.accelerator.num_processes)})
    if lr_applied is not None:
        extra["lr_applied"] = lr_applied
    return MetricRecord(step=run.completed_steps, loss=metrics["train_loss"], lr=lr,
                        tokens=float(step_tokens), step_time_s=step_time, extra=extra)


def save_checkpoint(run: DPORun, name: str) -> None:
    """accelerator.save_state + COMPLETED marker (after a barrier), keep-last-n (see the SFT trainer)."""
    folder = os.path.join(run.args.output_dir, name)
    run.accelerator.save_state(folder)
    run.accelerator.wait_for_everyone()
    if run.accelerator.is_main_process:
        ckpt.mark_completed(folder)
    if run.accelerator.is_local_main_process:
        sft.clean_last_n_checkpoints(run.args.output_dir, run.args.keep_last_n_checkpoints)
    run.accelerator.wait_for_everyone()


def finish_run(run: DPORun) -> None:
    """save_with_accelerate (model + tokenizer), then delete every checkpoint, as upstream."""
    accelerator = run.accelerator
    unwrapped = accelerator.unwrap_model(run.model)
    unwrapped.save_pretrained(run.args.output_dir, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save, state_dict=accelerator.get_state_dict(run.model))
    if accelerator.is_main_process:
        run.tokenizer.save_pretrained(run.args.output_dir)
    if accelerator.is_local_main_process:
        sft.clean_last_n_checkpoints(run.args.output_dir, keep_last_n_checkpoints=0)
    accelerator.wait_for_everyone()
    sft.log_main(accelerator, f"done: {run.completed_steps} optimizer steps, metrics in {run.metrics.path}")


def train(args: DPOArguments, inputs, cache: bool) -> int:
    from accelerate.utils import set_seed

    accelerator = sft.make_accelerator(args)
    run = None
    try:
        sft.log_process_count(accelerator)
        sft.log_offline_notices(args, accelerator)
        set_seed(args.seed)
        if accelerator.is_main_process:
            os.makedirs(args.output_dir, exist_ok=True)
        accelerator.wait_for_everyone()
        run = setup_run(args, inputs, accelerator, cache)
        train_loop(run)
        finish_run(run)
        return 0
    finally:
        objects = (run.model, run.reference, run.optimizer, run.dataloader, run.scheduler) if run else ()
        del run
        shutdown(accelerator, *objects)


def main(argv: list[str] | None = None, cache: bool = False) -> int:
    args = parse_args(argv, cache)
    inputs = sft.preflight(args)
    sft.configure_logging()
    return train(args, inputs, cache)


if __name__ == "__main__":
    sys.exit(run_main(PROG_LIVE, main))
