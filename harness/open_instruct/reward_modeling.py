"""Reference reward-model trainer: open-instruct ``reward_modeling.py`` at commit 30d11b4, for twins.

Why a port: the upstream script needs DeepSpeed, W&B, the hub and (for ``--push_to_hub``) credentials,
and its pins do not install on CPU CI.  Kept semantics: the three argument classes (``Args``,
``DatasetConfig``, ``ModelConfig``) with upstream defaults; ``--dataset_mixer`` JSON through
``combine_dataset`` (no shuffle, value > 1 a count, else a fraction); prompt/chosen/rejected tokenised
with the chat template and NO truncation; the filter quirk (only the prompt length is checked when
``--max_prompt_token_length`` is set); the eval set cut to 100 rows; the ``[PAD]`` pad token (upstream's
Llama-3 check compares a list with a string and never fires) and ``--resize_token_embeddings`` to a
multiple of 8; ``AutoModelForSequenceClassification(num_labels=1)``, dropout off, ``layer_init`` of the
score head as it acts under the launch's ZeRO stage (a no-op under the published ZeRO-3: the head keeps
``from_pretrained``'s init); the data order of accelerate 0.31 (with several processes a fresh
``torch.Generator()``, not ``--seed``); the gradient clipped at 1.0 as the DeepSpeed engine accelerate
configures does; the Bradley-Terry loss per micro-batch; ``num_training_steps = total_episodes //
batch_size`` as the schedule length, the scheduler stepped once per GA micro-steps (it is not given to
accelerate); metric means over the GA window reduced with a mean over ranks, keyed by ``episode``;
evaluation every ``eval_freq`` micro-steps (``num_evals``) with rank-local eval metrics, as upstream.

Metrics: TensorBoard under ``OUTPUT_DIR/runs/<run_name>`` (DEVIATION: upstream writes ``runs/`` in the
working directory) with x = episode, and one ``repro.metrics.MetricRecord`` per optimizer step in
``OUTPUT_DIR/metrics.jsonl`` (``loss`` = train/rm/loss, upstream's keys in ``extra``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[2])  # run as a script path by the launchers

import json  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from harness.chat_templates import CHAT_TEMPLATES  # noqa: E402
from harness.open_instruct import finetune as sft  # noqa: E402
from harness.open_instruct import rm  # noqa: E402
from harness.runtime.cli import parse_dataclasses  # noqa: E402
from harness.runtime.dist import make_accelerator as runtime_accelerator  # noqa: E402
from harness.runtime.dist import shutdown  # noqa: E402
from harness.runtime.entry import run_main  # noqa: E402
from harness.runtime.hub import load_hub_map  # noqa: E402
from harness.runtime.metrics import MetricsWriter  # noqa: E402
from harness.runtime import faults  # noqa: E402
from harness.runtime.step import end_of_step  # noqa: E402
from repro.base.device import cuda_usable  # noqa: E402
from repro.base.errors import ReproError  # noqa: E402
from repro.base.metrics import MetricRecord  # noqa: E402

PROG = "reward_modeling"
logger = sft.logger
SANITY_CHECK_MAX_SAMPLES = 100


@dataclass
class Args:
    dataset_mixer: str | None = None
    dataset_train_splits: list[str] | None = None
    dataset_eval_mixer: str | None = None
    dataset_eval_splits: list[str] | None = None
    exp_name: str = PROG
    seed: int = 1
    run_name: str | None = None
    eps: float = 1e-5
    learning_rate: float = 2e-5
    lr_scheduler_type: str = field(default="linear", metadata={"choices": sft.LR_SCHEDULER_TYPES})
    warm_up_steps: int = 0
    num_train_epochs: int = 1
    gradient_accumulation_steps: int = 8
    per_device_train_batch_size: int = 1
    per_device_eval_batch_size: int = 1
    total_episodes: int | None = None
    num_evals: int = 1
    with_tracking: bool = False
    wandb_project_name: str = "open_instruct_internal"
    wandb_entity: str | None = None
    push_to_hub: bool = True
    hf_entity: str | None = None
    hf_repo_id: str | None = None
    hf_repo_revision: str | None = None
    output_dir: str | None = None
    resize_token_embeddings: bool = True


@dataclass
class DatasetConfig:
    chat_template: str = "simple_chat"
    preference_chosen_key: str = "chosen"
    preference_rejected_key: str = "rejected"
    sft_messages_key: str = "messages"
    ground_truths_key: str = "ground_truth"
    dataset_source_key: str = "dataset"
    max_token_length: int | None = None
    max_prompt_token_length: int | None = None
    sanity_check: bool = False
    sanity_check_max_samples: int = SANITY_CHECK_MAX_SAMPLES
    num_proc: int | None = None
    train_only_on_prompt: bool = False


@dataclass
class ModelConfig:
    model_name_or_path: str | None = None
    model_revision: str | None = None
    trust_remote_code: bool = False
    torch_dtype: str | None = None
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False
    use_peft: bool = False


CLASSES = (Args, DatasetConfig, ModelConfig)


def parse_args(argv: list[str] | None):
    """ArgumentParserPlus over the three classes (one flag namespace), plus upstream's checks."""
    args, dcfg, mcfg = parse_dataclasses(CLASSES, argv, PROG, __doc__.splitlines()[0])
    if args.dataset_mixer is None:
        raise ReproError("--dataset_mixer is required (a JSON object of dataset -> fraction or count)")
    for flag in ("dataset_mixer", "dataset_eval_mixer"):
        value = getattr(args, flag)
        if value is not None:
            try:
                parsed = json.loads(value)
            except ValueError as exc:
                raise ReproError(f"--{flag}: not JSON: {exc}") from None
            if not isinstance(parsed, dict):
                raise ReproError(f"--{flag}: must be a JSON object")
    if dcfg.chat_template not in CHAT_TEMPLATES:
        raise ReproError(f"chat_template must be one of {list(CHAT_TEMPLATES)}")
    if mcfg.model_name_or_path is None:
        raise ReproError("--model_name_or_path is required")
    if mcfg.use_peft:
        raise ReproError("--use_peft is not part of the Tulu 3 recipes and the twin does not implement it")
    if args.output_dir is None:
        raise ReproError("--output_dir is required (upstream saves with os.path.dirname(output_dir))")
    return args, dcfg, mcfg


def broadcast_splits(splits: list[str] | None, mixer: dict, flag: str) -> list[str]:
    """One split given for several datasets is repeated, as upstream does."""
    if not splits:
        raise ReproError(f"--{flag} is required")
    if len(splits) != len(mixer) and len(splits) == 1:
        return splits * len(mixer)
    if len(splits) != len(mixer):
        raise ReproError(f"--{flag}: {len(splits)} splits for {len(mixer)} datasets")
    return splits


def combine_dataset(mixer: dict, splits: list[str], hub, columns: list[str]):
    """``utils.combine_dataset`` without shuffle.  DEVIATION: a bundled dataset has one file, so the split
    name is accepted as given and the file read whole."""
    from datasets import concatenate_datasets, load_dataset

    parts = []
    for (name, value), split in zip(mixer.items(), splits):
        if value < 0:
            raise ReproError("Dataset fractions / lengths cannot be negative.")
        path = hub.dataset(name)
        ds = load_dataset("json", data_files=path, split="train")
        n = int(value) if value > 1.0 else int(value * len(ds))
        if n > len(ds):
            raise ReproError(f"dataset {name!r}: asked for {n} rows, it has {len(ds)}")
        ds = ds.select(range(n))
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise ReproError(f"dataset {name!r} (split {split}) has no column(s) {missing}")
        ds = ds.remove_columns([c for c in ds.column_names if c not in columns])
        parts.append(ds)
    return concatenate_datasets(parts)


def tokenize_and_filter(dataset, tokenizer, dcfg: DatasetConfig):
    """PreferenceDatasetProcessor.tokenize (no truncation) then .filter (the quirk in rm.keep_row)."""
    def encode(row):
        chosen, rejected = row[dcfg.preference_chosen_key], row[dcfg.preference_rejected_key]
        prompt = tokenizer.apply_chat_template(chosen[:-1], add_generation_prompt=True, return_dict=False)
        return {"input_ids_prompt": prompt,
                "input_ids_chosen": tokenizer.apply_chat_template(chosen, return_dict=False),
                "input_ids_rejected": tokenizer.apply_chat_template(rejected, return_dict=False)}

    dataset = dataset.map(encode, load_from_cache_file=False)
    return dataset.filter(lambda r: rm.keep_row(len(r["input_ids_prompt"]), len(r["input_ids_chosen"]),
                                                len(r["input_ids_rejected"]), dcfg.max_token_length,
                                                dcfg.max_prompt_token_length), load_from_cache_file=False)


def zero_stage(accelerator) -> int | None:
    """The ZeRO stage upstream's code runs under: the engine's own under a DeepSpeed launch; on the CPU
    path (no DeepSpeed) the published launch's (rm.PUBLISHED_ZERO_STAGE), which the twin reproduces."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return int(accelerator.state.deepspeed_plugin.zero_stage)
    return rm.PUBLISHED_ZERO_STAGE


def clip_value(accelerator) -> float:
    """The norm the twin clips at itself: none under DeepSpeed (the engine clips inside its step); on the
    CPU path what accelerate's DeepSpeed plugin gives the published engine (rm.DEEPSPEED_PLUGIN_CLIP)."""
    from accelerate.utils import DistributedType

    if faults.fault("clip_dropped"):  # mutant only: the clip the published run applied is left out
        return -1.0
    return -1.0 if accelerator.distributed_type == DistributedType.DEEPSPEED else rm.DEEPSPEED_PLUGIN_CLIP


def train_loader(train_ds, args: Args, num_processes: int, collate):
    """Upstream's shuffling DataLoader, with the sampler generator accelerate 0.31 would give it."""
    from torch.utils.data import DataLoader

    loader = DataLoader(train_ds, batch_size=args.per_device_train_batch_size, shuffle=True, collate_fn=collate)
    # on the sampler only, as accelerate 0.31 sets it (the DataLoader's own generator, which draws the
    # worker base seed before the permutation, stays None)
    loader.sampler.generator = rm.sampler_generator(num_processes)
    return loader


def make_accelerator(args: Args):
    """Upstream: Accelerator(gradient_accumulation_steps) only (no seedable sampler); on CPU cpu=True."""
    return runtime_accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps)


def load_model_and_tokenizer(mcfg: ModelConfig, args: Args, dcfg: DatasetConfig, model_path: str, accelerator):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="right")
    pad = rm.choose_pad(config.architectures, config.bos_token_id)
    if isinstance(pad, int):
        tokenizer.pad_token_id = pad
    else:
        tokenizer.add_special_tokens({"pad_token": pad})
    tokenizer.chat_template = CHAT_TEMPLATES[dcfg.chat_template]
    on_gpu = accelerator.device.type == "cuda"
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=1, dtype=torch.bfloat16 if on_gpu else torch.float32)
    if args.resize_token_embeddings:
        # DEVIATION (library version): mean_resizing=False, as transformers 4.43 initialised new rows
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8, mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    if mcfg.gradient_checkpointing:
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    dropouts = rm.disable_dropout(model)
    stage = zero_stage(accelerator)
    drew = rm.layer_init(model.score, rm.score_init_std(model.config.hidden_size), stage)
    sft.log_main(accelerator, f"model: {type(model).__name__} num_labels=1, pad {tokenizer.pad_token!r} "
                              f"(id {tokenizer.pad_token_id}), tokenizer {len(tokenizer)}, embeddings "
                              f"{model.get_input_embeddings().weight.shape[0]}, dropout modules zeroed "
                              f"{dropouts}, ZeRO stage {stage}: score head "
                              + (f"~ N(0, {rm.score_init_std(model.config.hidden_size):.4f})" if drew else
                                 "keeps from_pretrained's init (layer_init sees a (0,)-shaped weight)"))
    return model, tokenizer


def evaluate(model, dataloader, pad_token_id: int) -> dict:
    """reward_modeling_eval.evaluate: per-batch means averaged over this process's batches."""
    import torch

    model.eval()
    sums, n = [0.0] * 5, 0
    with torch.no_grad():
        for data in dataloader:
            qr = torch.cat((data["input_ids_chosen"], data["input_ids_rejected"]), dim=0)
            _, reward, _ = model(qr, pad_token_id, 0)
            k = data["input_ids_chosen"].shape[0]
            c, r = reward[:k], reward[k:]
            loss, acc = rm.preference_loss(c, r)
            for i, v in enumerate((acc, loss, c.mean(), r.mean(), (c - r).mean())):
                sums[i] += v.item()
            n += 1
    model.train()
    keys = ("accuracy", "loss", "chosen_rewards", "rejected_rewards", "reward_margin")
    return {f"eval/rm/{k}": s / max(n, 1) for k, s in zip(keys, sums)}


def train(args: Args, dcfg: DatasetConfig, mcfg: ModelConfig, model_path: str, hub) -> int:
    import random

    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.tensorboard import SummaryWriter
    from transformers import AutoTokenizer, get_scheduler

    accelerator = make_accelerator(args)
    model = optimizer = dataloader = None
    try:
        sft.log_process_count(accelerator)
        world = accelerator.num_processes
        sizes = rm.runtime_batch(args.per_device_train_batch_size, args.gradient_accumulation_steps, world)
        args.run_name = f"{args.exp_name}__{args.seed}__{int(time.time())}"
        if args.push_to_hub:
            sft.log_main(accelerator, "--push_to_hub: ignored, the twin never pushes")
        if args.with_tracking:
            sft.log_main(accelerator, "--with_tracking: W&B disabled (twin runs offline); TensorBoard kept")
        local_seed = args.seed + accelerator.process_index
        random.seed(local_seed)
        np.random.seed(local_seed)
        torch.manual_seed(local_seed)
        model, tokenizer = load_model_and_tokenizer(mcfg, args, dcfg, model_path, accelerator)
        mixer = json.loads(args.dataset_mixer)
        splits = broadcast_splits(args.dataset_train_splits, mixer, "dataset_train_splits")
        columns = [dcfg.preference_chosen_key, dcfg.preference_rejected_key]
        train_ds = combine_dataset(mixer, splits, hub, columns)
        if dcfg.sanity_check:
            train_ds = train_ds.select(range(min(len(train_ds), dcfg.sanity_check_max_samples)))
        with accelerator.main_process_first():
            before = len(train_ds)
            train_ds = tokenize_and_filter(train_ds, tokenizer, dcfg)
        sft.log_main(accelerator, f"pairs: {len(train_ds)} kept, {before - len(train_ds)} filtered "
                                  f"(max_prompt_token_length {dcfg.max_prompt_token_length}, max_token_length "
                                  f"{dcfg.max_token_length}; longest chosen kept "
                                  f"{max(len(x) for x in train_ds['input_ids_chosen'])} tokens)")
        eval_ds = None
        if args.dataset_eval_mixer is not None:
            emixer = json.loads(args.dataset_eval_mixer)
            esplits = broadcast_splits(args.dataset_eval_splits, emixer, "dataset_eval_splits")
            eval_ds = combine_dataset(emixer, esplits, hub, columns)
            eval_ds = eval_ds.select(range(min(len(eval_ds), dcfg.sanity_check_max_samples)))
            with accelerator.main_process_first():
                eval_ds = tokenize_and_filter(eval_ds, tokenizer, dcfg)
        total_episodes, num_training_steps = rm.num_training_steps(
            args.total_episodes, args.num_train_epochs, len(train_ds), sizes["batch_size"])
        eval_freq = max(1, total_episodes // sizes["micro_batch_size"] // args.num_evals)
        sft.log_main(accelerator, f"batch: world {world}, local {sizes['local_batch_size']}, micro "
                                  f"{sizes['micro_batch_size']}, batch {sizes['batch_size']}; total_episodes "
                                  f"{total_episodes}, num_training_steps {num_training_steps}, eval_freq {eval_freq}")
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, eps=args.eps)
        scheduler = get_scheduler(args.lr_scheduler_type, optimizer=optimizer, num_warmup_steps=args.warm_up_steps,
                                  num_training_steps=num_training_steps * args.num_train_epochs)
        keep = ["input_ids_chosen", "input_ids_rejected"]
        train_ds = train_ds.remove_columns([c for c in train_ds.column_names if c not in keep])
        collate = lambda b: rm.collate_right(b, tokenizer.pad_token_id)  # noqa: E731
        dataloader = train_loader(train_ds, args, world, collate)
        eval_loader = None
        if eval_ds is not None:
            eval_ds = eval_ds.remove_columns([c for c in eval_ds.column_names if c not in keep])
            eval_loader = DataLoader(eval_ds, batch_size=args.per_device_eval_batch_size, shuffle=False,
                                     collate_fn=collate)
        torch.manual_seed(args.seed)  # upstream's sync; under accelerate 0.31 it does not reach the sampler
        model, optimizer, dataloader = accelerator.prepare(rm.RewardForward(model), optimizer, dataloader)
        if eval_loader is not None:
            eval_loader = accelerator.prepare(eval_loader)
        torch.manual_seed(local_seed)
        loop(args, accelerator, model, optimizer, scheduler, dataloader, eval_loader, tokenizer, sizes,
             len(train_ds), eval_freq, SummaryWriter if accelerator.is_main_process else None)
        os.makedirs(os.path.dirname(os.path.abspath(args.output_dir)), exist_ok=True)
        original = AutoTokenizer.from_pretrained(model_path)
        unwrapped = accelerator.unwrap_model(model).model
        unwrapped.save_pretrained(args.output_dir, is_main_process=accelerator.is_main_process,
                                  save_function=accelerator.save, state_dict=unwrapped.state_dict())
        if accelerator.is_main_process:
            original.save_pretrained(args.output_dir)  # the ORIGINAL tokenizer (no [PAD]), as upstream
        accelerator.wait_for_everyone()
        return 0
    finally:
        shutdown(accelerator, *(o for o in (model, optimizer, dataloader) if o is not None))


def loop(args, accelerator, model, optimizer, scheduler, dataloader, eval_loader, tokenizer, sizes, n_train,
         eval_freq, writer_cls) -> None:
    import torch

    ga = args.gradient_accumulation_steps
    device = accelerator.device
    clip = clip_value(accelerator)
    grad_norm = applied_norm = None
    window = {k: torch.zeros(ga, device=device) for k in ("loss", "acc", "chosen", "rejected", "margin")}
    local = torch.zeros(5, device=device)
    tokens = torch.zeros((), dtype=torch.int64, device=device)
    records = MetricsWriter(args.output_dir, accelerator.is_main_process)
    writer = writer_cls(str(Path(args.output_dir) / "runs" / args.run_name)) if writer_cls else None
    training_step = idx = episode = optimizer_step = 0
    pending_eval: dict = {}
    last = time.time()
    model.train()
    for _ in range(args.num_train_epochs):
        for data in dataloader:
            episode += sizes["micro_batch_size"]
            training_step += 1
            qr = torch.cat((data["input_ids_chosen"], data["input_ids_rejected"]), dim=0)
            tokens += (qr != tokenizer.pad_token_id).sum()
            with accelerator.accumulate(model):
                _, reward, _ = model(qr, tokenizer.pad_token_id, 0)
                k = data["input_ids_chosen"].shape[0]
                chosen, rejected = reward[:k], reward[k:]
                loss, accuracy = rm.preference_loss(chosen, rejected)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm, applied_norm = sft.gradient_norm(accelerator, model, clip)
                lr_applied = optimizer.param_groups[0]["lr"]
                optimizer.step()
                optimizer.zero_grad()
            with torch.no_grad():
                for key, value in (("loss", loss), ("acc", accuracy), ("chosen", chosen.mean()),
                                   ("rejected", rejected.mean()), ("margin", (chosen - rejected).mean())):
                    window[key][idx] = value
                idx = (idx + 1) % ga
            if args.num_evals > 0 and training_step > 1 and training_step % eval_freq == 0 and eval_loader:
                pending_eval = evaluate(model, eval_loader, tokenizer.pad_token_id)
                if writer:
                    for key, value in pending_eval.items():
                        writer.add_scalar(key, value, episode)
            if training_step % ga:
                continue
            scheduler.step()
            optimizer_step += 1
            for i, key in enumerate(("acc", "loss", "chosen", "rejected", "margin")):
                local[i] = window[key].mean()
            g = accelerator.reduce(local, reduction="mean").tolist()
            step_tokens = int(accelerator.gather(tokens).sum().item())  # the twin's own figure (see DPO)
            tokens.zero_()
            metrics = {"episode": episode, "epoch": episode / n_train, "train/rm/accuracy": g[0],
                       "train/rm/loss": g[1], "train/rm/chosen_rewards": g[2], "train/rm/rejected_rewards": g[3],
                       "train/rm/reward_margin": g[4], "train/rm/lr": scheduler.get_last_lr()[0]}
            now = time.time()
            record = None
            if writer:
                for key, value in metrics.items():
                    writer.add_scalar(key, value, episode)
                logger.info("  " + " ".join(f"{k}={v:.6g}" for k, v in metrics.items()))
                extra = {k: float(v) for k, v in metrics.items()}
                extra.update({k: float(v) for k, v in pending_eval.items()})
                extra.update({"lr_applied": lr_applied, "num_processes": float(accelerator.num_processes)})
                extra.update({k: v for k, v in (("grad_norm", grad_norm), ("grad_norm_after_clip", applied_norm))
                              if v is not None})
                record = MetricRecord(step=optimizer_step, loss=g[1], lr=metrics["train/rm/lr"],
                                      tokens=float(step_tokens), step_time_s=now - last, extra=extra)
            end_of_step(records, record, output_dir=args.output_dir, is_main=accelerator.is_main_process,
                        step=optimizer_step, loss=g[1])
            pending_eval = {}
            last = now
    if writer:
        writer.close()


def main(argv: list[str] | None = None) -> int:
    args, dcfg, mcfg = parse_args(argv)
    hub = load_hub_map()
    model_path = hub.model(mcfg.model_name_or_path, "model")
    for flag in ("dataset_mixer", "dataset_eval_mixer"):
        for name in json.loads(getattr(args, flag) or "{}"):
            hub.dataset(name)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and not cuda_usable():
        raise ReproError("DeepSpeed launch needs CUDA; on CPU use 'accelerate launch --multi_gpu --num_processes N'")
    sft.configure_logging()
    return train(args, dcfg, mcfg, model_path, hub)


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
