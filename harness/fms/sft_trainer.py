"""Twin of fms-hf-tuning 3.2.2 ``tuning.sft_trainer`` (entry point of every fms recipe).

Why a re-implementation: 3.2.2 pins torch < 2.9 (CUDA wheels only) and transformers <= 4.55.4, so it
cannot be installed on CPU CI. This module keeps what the published flags mean there: the CLI parse
(harness.fms.cli: unknown flags dropped, prefixes resolved), the data paths and masking
(harness.fms.data), special tokens and the embedding resize, LoRA through peft, MXFP4 loading with
``Mxfp4Config(dequantize=...)``, and the HF Trainer (4.55) loop it runs: token-mean loss over the
accumulation window and all ranks (``num_items_in_batch``, ``average_tokens_across_devices``), AdamW,
the named scheduler with ``ceil(warmup_ratio x steps)`` warmup, clipping at ``max_grad_norm``, and the
logged ``loss`` (mean since the last log, averaged over ranks) written to ``training_logs.jsonl`` by
the file logger (harness.fms.file_logger). Differences are marked DEVIATION.

FSDP: under ``accelerate launch --config_file <FSDP yaml>`` accelerate exports ``ACCELERATE_USE_FSDP``.
On a GPU the twin lets accelerate wrap the model from that config and checks it really did. On a CPU
accelerate and the HF Trainer silently fall back to DDP (or to independent processes), so the twin
shards with torch FSDP2 ``fully_shard`` itself (per decoder layer, then the root, gloo), checks every
parameter is a DTensor, and says so; it never reports a DDP run as FSDP.

Run as upstream is run: ``python tuning/sft_trainer.py ...`` -> ``python -m harness.fms.sft_trainer ...``,
or ``accelerate launch --config_file X harness/fms/sft_trainer.py ...``. Hub ids resolve offline through
the twin asset map. Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[2])
    from harness.runtime.entry import script_bootstrap

    script_bootstrap(__file__)

import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from harness.fms import cli, data, file_logger  # noqa: E402
from harness.fms.measure import loaded_mxfp4, measured_lora, micro_items  # noqa: E402
from harness.fms.optim import optimizer_and_scheduler  # noqa: E402
from harness.runtime.dist import current_binding  # noqa: E402
from harness.runtime import faults  # noqa: E402
from harness.runtime.entry import run_main  # noqa: E402
from harness.runtime.hub import HubMap, load_hub_map  # noqa: E402
from repro.base.device import cuda_usable  # noqa: E402
from repro.base.errors import ReproError  # noqa: E402

PROG = "tuning.sft_trainer (fms-hf-tuning 3.2.2 twin)"


def log(msg: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[fms-twin] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# offline resolution


def resolve_data(name: str, hub: HubMap, what: str) -> str:
    """A bundled data set or an existing local JSON/JSONL file (one-line error naming the flag otherwise)."""
    try:
        return hub.dataset(name)
    except ReproError as exc:
        raise ReproError(f"{what}: {exc.message}") from None


# ---------------------------------------------------------------------------------------------
# distributed


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: Any
    fsdp: str | None  # None, "accelerate" (GPU, from the accelerate config) or "fsdp2-direct" (CPU)
    accelerate_type: str | None = None  # what accelerate itself would have run
    accelerator: Any = None


def fsdp_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def accelerate_fsdp_check(distributed_type: str, requested: bool) -> None:
    """The silent-drop guard: accelerate was asked for FSDP and chose something else."""
    if requested and distributed_type != "FSDP":
        raise ReproError(
            f"the accelerate config asks for FSDP but accelerate set up {distributed_type} (it silently drops FSDP "
            f"without a GPU); the twin will not report that run as FSDP")


def setup_dist() -> Dist:
    import torch
    import torch.distributed as tdist

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = cuda_usable()
    want_fsdp = fsdp_requested()
    impl = os.environ.get("REPRO_FMS_FSDP_IMPL", "auto")  # tests force "accelerate" to show the guard
    if want_fsdp and (cuda or impl == "accelerate"):
        if cuda:
            from accelerate import Accelerator

            acc = Accelerator()
        else:
            # upstream's own path: the HF Trainer builds the accelerator. On CPU it reports is_fsdp_enabled False
            # and MULTI_CPU (DDP) although ACCELERATE_USE_FSDP is set: the silent drop the guard must catch
            import tempfile

            from transformers import Trainer, TrainingArguments

            with tempfile.TemporaryDirectory() as tmp:
                probe = Trainer(model=torch.nn.Linear(1, 1), args=TrainingArguments(
                    output_dir=tmp, fsdp="full_shard", use_cpu=True, report_to=[]))
            acc = probe.accelerator
            if not probe.is_fsdp_enabled:
                accelerate_fsdp_check(acc.distributed_type.value, True)
        kind = acc.distributed_type.value if hasattr(acc.distributed_type, "value") else str(acc.distributed_type)
        accelerate_fsdp_check(kind, True)
        return Dist(acc.process_index, acc.num_processes, acc.local_process_index, acc.device, "accelerate", kind, acc)
    device = torch.device(current_binding().device)
    accelerate_type = None
    if want_fsdp:
        accelerate_type = "MULTI_CPU" if world > 1 else "NO"  # what accelerate picks here (measured, see docs)
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group(current_binding().backend, rank=rank, world_size=world)
    if want_fsdp and world == 1 and not tdist.is_initialized():
        # fully_shard needs a process group even for one rank
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        tdist.init_process_group("gloo", rank=0, world_size=1)
    return Dist(rank, world, local, device, "fsdp2-direct" if want_fsdp else None, accelerate_type)


def all_reduce_sum(value, dist: Dist):
    import torch
    import torch.distributed as tdist

    t = torch.as_tensor(value, dtype=torch.float64)
    if dist.world > 1:
        tdist.all_reduce(t)
    return t


# ---------------------------------------------------------------------------------------------
# model and tokenizer


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    cfg_file = Path(path) / "tokenizer_config.json"
    cls = type(tok).__name__
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        cls = cfg.get("fms_tokenizer_class") or cfg.get("tokenizer_class") or cls
    return tok, cls


def model_dtype(name: str | None):
    import torch

    table = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "auto": "auto"}
    if name not in table:
        raise ReproError(f"--torch_dtype {name!r}: expected one of {', '.join(table)}")
    return table[name]


def load_model(args: cli.Parsed, model_path: str, dist: Dist):
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": model_dtype(args["torch_dtype"])}
    if args["use_flash_attn"]:
        impl = args["flash_attn_implementation"]
        # DEVIATION: flash-attention kernels (flash_attention_2, kernels-community/vllm-flash-attn3) need a GPU
        # and the hub; on CPU the twin uses eager attention (same math, no fused kernel)
        kwargs["attn_implementation"] = impl if dist.device.type == "cuda" and impl == "sdpa" else "eager"
        log(f"--use_flash_attn True --flash_attn_implementation {impl}: eager attention in the twin")
    if args.mxfp4 is not None:
        from transformers import Mxfp4Config

        kwargs["quantization_config"] = Mxfp4Config(dequantize=args.mxfp4["dequantize"])
        if not args.mxfp4["dequantize"]:
            raise ReproError("--quantization_method mxfp4 --dequantize False trains MXFP4 weights natively, which needs "
                             "Hopper GPUs and Triton kernels; the twin only supports --dequantize True")
    model = AutoModelForCausalLM.from_pretrained(model_path, use_cache=False, **kwargs)
    return model


def add_special_tokens(args: cli.Parsed, tok, tok_class: str, model) -> dict:
    """setup_tokenizer + tokenizer_and_embedding_resize (mean of the old rows for the new ones)."""
    import torch

    tokens = {k: getattr(tok, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    add = data.special_tokens_to_add(args["tokenizer_name_or_path"], tok_class, tokens)
    if args["add_special_tokens"]:
        add["additional_special_tokens"] = list(args["add_special_tokens"])
    new = tok.add_special_tokens(add, replace_extra_special_tokens=False) if add else 0
    multiple = int(args["embedding_size_multiple_of"] or 1)
    size = int(multiple * math.ceil(len(tok) / multiple))
    new = new + size - len(tok)
    old_rows = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(size, mean_resizing=False)
    if new > 0:
        with torch.no_grad():
            for emb in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
                emb[-new:] = emb[:-new].mean(dim=0, keepdim=True)
    return {"num_new_tokens": int(new), "new_embedding_size": size, "old_embedding_size": int(old_rows),
            "added": {k: v for k, v in add.items()}}


def apply_lora(args: cli.Parsed, model, added_tokens: dict):
    from peft import LoraConfig, get_peft_model

    lora = args.lora
    modules_to_save = None
    tie_head = False
    target = lora["target_modules"]
    if added_tokens.get("num_new_tokens", 0) > 0:
        targets = target if isinstance(target, (list, tuple)) else [target or ""]
        if not any(m in targets for m in ("embed_tokens", "lm_head")):
            # DEVIATION: git d3c30a03 adds "embed_tokens"; the 3.2.2 wheel asks _get_embedding_module_names,
            # which the suite could not read - for Llama and GptOss both name the input embedding embed_tokens
            modules_to_save = ["embed_tokens"]
        # d3c30a03 (what `-m tuning.sft_trainer` from the checkout runs) also sets ensure_weight_tying=True, "ignored
        # if weights are not tied" says its comment; peft 0.19.1 does not check tie_word_embeddings, only the
        # class's _tied_weights_keys, so lm_head gets a trainable copy TIED to embed_tokens' copy even in an
        # untied model (gpt-oss): the output head becomes the input embedding. Measured on the real upstream
        # (lm_head.modules_to_save equals embed_tokens.modules_to_save; step-1 loss 6.9277 vs 6.9360 untied).
        # peft 0.21 checks the config and ties nothing, so the twin ties the copies itself.
        tie_head = modules_to_save is not None and bool(getattr(model, "_tied_weights_keys", None))
        if tie_head:
            modules_to_save = [*modules_to_save, "lm_head"]
    cfg = LoraConfig(r=lora["r"], lora_alpha=lora["lora_alpha"], lora_dropout=lora["lora_dropout"],
                     target_modules=target, exclude_modules=lora.get("exclude_modules"), bias=lora.get("bias", "none"),
                     init_lora_weights=lora.get("init_lora_weights", True), task_type="CAUSAL_LM",
                     modules_to_save=modules_to_save, target_parameters=lora.get("target_parameters"))
    peft_model = get_peft_model(model, cfg)
    if tie_head:
        inner = peft_model.get_base_model()
        inner.get_output_embeddings().modules_to_save["default"].weight = \
            inner.get_input_embeddings().modules_to_save["default"].weight
    targeted = sorted({n.rsplit(".lora_A", 1)[0].split(".")[-1] for n, _ in peft_model.named_parameters()
                       if ".lora_A" in n})
    return peft_model, {"lora_r": lora["r"], **measured_lora(peft_model), "lm_head_tied": int(tie_head),
                        "lora_targets": targeted, "modules_to_save": modules_to_save or []}


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class Prepared:
    rows: list[dict]  # input_ids (+ labels for pre-tokenized formats)
    template_ids: list[int] | None
    kind: str  # "completion_only" | "pretokenized"
    rows_without_template: int = 0


def prepare_data(args: cli.Parsed, tok, hub: HubMap, max_len: int) -> Prepared:
    if args["data_config_path"]:
        if args["training_data_path"] or args["validation_data_path"]:
            raise ReproError("Both training_data_path and validation_data_path must be None when using data_config")
        return _data_config_rows(args, tok, hub, max_len)
    if not isinstance(args["training_data_path"], str):
        raise ReproError("Training data path has to be set and str (tuning.sft_trainer: no --training_data_path and no "
                         "--data_config_path)")
    path = resolve_data(args["training_data_path"], hub, "--training_data_path")
    rows = data.load_rows(path)
    if args["instruction_template"] and args["response_template"]:
        raise ReproError("--instruction_template chat masking is not part of the fms twins")
    if not (args["data_formatter_template"] or args["dataset_text_field"]):
        raise ReproError("the input/output default data format (no --dataset_text_field or --data_formatter_template) "
                         "is not part of the fms twins")
    specials = {k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)}
    texts = data.single_sequence_texts(rows, dataset_text_field=args["dataset_text_field"],
                                       data_formatter_template=args["data_formatter_template"],
                                       response_template=args["response_template"], special_tokens=specials,
                                       eos_token=tok.eos_token, packing=bool(args["packing"]))
    if args["packing"]:
        raise ReproError("--packing is not part of the fms twins")
    ids = [list(tok(t).input_ids)[:max_len] for t in texts]  # TRL tokenizes (bos added) then truncates
    template_ids = data.response_template_ids(tok, args["response_template"])
    missing = data.check_template_matches(ids, template_ids, args["response_template"], path)
    if missing:
        log(f"--response_template found in {len(ids) - len(missing)} of {len(ids)} rows; the rest are trained on "
            f"nothing (upstream: 'Could not find response key' warnings)")
    return Prepared([{"input_ids": x} for x in ids], template_ids, "completion_only", len(missing))


def _data_config_rows(args: cli.Parsed, tok, hub: HubMap, max_len: int) -> Prepared:
    import random

    cfg_path = args["data_config_path"]
    cfg = data.load_data_config(cfg_path)
    if cfg.streaming:
        raise ReproError(f"--data_config_path {cfg_path}: streaming is not part of the fms twins")
    if cfg.chat_template:
        tok.chat_template = cfg.chat_template
    out: list[dict] = []
    for ds in cfg.datasets:
        rows: list[dict] = []
        for p in ds.data_paths:
            rows += data.load_rows(resolve_data(p, hub, f"--data_config_path {cfg_path}: data_paths"),
                                   f"--data_config_path {cfg_path}: data_paths")
        if ds.split and ds.split.get("train", 1.0) < 1.0:
            rng = random.Random(cfg.seed)  # DEVIATION: datasets' train_test_split permutation is not reproduced
            rng.shuffle(rows)
            rows = rows[: int(round(len(rows) * ds.split["train"]))]
        for h in ds.data_handlers:
            if h.name != "tokenize_and_apply_chat_template_with_masking":
                raise ReproError(f"--data_config_path {cfg_path}: handler {h.name!r} is not part of the fms twins")
            fn_kwargs = dict(h.arguments.get("fn_kwargs") or {})
            if tok.chat_template is None:
                raise ReproError("Tokenizer does not contain tokenizer.chat_template, please pass data_args.chat_template")
            rows = [data.chat_with_masking(tok, r, max_len, **fn_kwargs) for r in rows]
        if not all("input_ids" in r and "labels" in r for r in rows):
            raise ReproError(f"--data_config_path {cfg_path}: dataset {ds.name!r} is not tokenized after its handlers")
        out += [{"input_ids": r["input_ids"][:max_len], "labels": r["labels"][:max_len]} for r in rows]
    if not any(any(x != data.IGNORE_INDEX for x in r["labels"][1:]) for r in out):
        raise ReproError(f"--data_config_path {cfg_path}: every label is masked (no assistant tokens)")
    return Prepared(out, None, "pretokenized")


def collate(prep: Prepared, rows: list[dict], pad_id: int | None, side: str) -> dict:
    import torch

    if prep.kind == "completion_only":
        batch = data.completion_only_batch(rows, prep.template_ids, pad_id, side)
    else:
        batch = data.pretokenized_batch(rows, pad_id, side)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
# the HF Trainer loop


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """accelerate's SeedableRandomSampler: a fresh permutation per epoch from seed + epoch."""
    import torch

    g = torch.Generator()
    g.manual_seed(seed + epoch)
    return torch.randperm(n, generator=g).tolist()


def sampler_seed(seed: int, data_seed: int | None, rank: int) -> int:
    """The seed of this rank's SeedableRandomSampler under fms 3.2.2. accelerate seeds it with --data_seed when given,
    else with torch.initial_seed() at the moment the sampler is built; fms's sft_trainer.py (d3c30a03 line 506, the
    3.2.2 wheel line 573) has just called accelerate's set_seed(seed, device_specific=True), i.e. seed + process
    index. So without --data_seed each rank draws its OWN permutation and takes every world-th batch of it: an epoch
    is not a partition of the data (rows repeat, others are skipped). Measured on the real upstream (2 ranks: rank 1
    seeded 43, its first batch rows 33 and 24 where a shared permutation gives 48 and 63)."""
    return data_seed if data_seed is not None else seed + rank


def rank_microbatches(order: list[int], per_device: int, world: int, rank: int) -> list[list[int]]:
    """BatchSamplerShard(even_batches=True): batches of per_device, batch i to rank i % world, wrapped to even."""
    batches = [order[i:i + per_device] for i in range(0, len(order), per_device)]
    if batches and len(batches[-1]) < per_device:
        batches[-1] = (batches[-1] + order)[:per_device]
    while len(batches) % world:
        k = len(batches) % len(order) if order else 0
        batches.append([order[(k * per_device + j) % len(order)] for j in range(per_device)])
    return [b for i, b in enumerate(batches) if i % world == rank]


@dataclass
class Schedule:
    steps_per_epoch: int
    max_steps: int
    warmup_steps: int
    micro_per_epoch: int


def epoch_windows(micro: list, ga: int) -> list[list]:
    """An epoch's accumulation windows as transformers 4.55 runs them: full windows of ga micro-batches, then the
    leftover ones as a short window that still steps; max_steps counts only the full windows (len_dataloader // ga)."""
    return [micro[i:i + ga] for i in range(0, len(micro), ga)]


def plan_steps(args: cli.Parsed, n_rows: int, world: int) -> Schedule:
    per_device, ga = int(args["per_device_train_batch_size"]), int(args["gradient_accumulation_steps"])
    micro = len(rank_microbatches(list(range(n_rows)), per_device, world, 0))
    per_epoch = max(micro // ga, 1)
    max_steps = int(args["max_steps"]) if int(args["max_steps"]) > 0 else math.ceil(float(args["num_train_epochs"]) * per_epoch)
    warm = int(args["warmup_steps"]) if int(args["warmup_steps"] or 0) > 0 else math.ceil(max_steps * float(args["warmup_ratio"]))
    return Schedule(per_epoch, max_steps, warm, micro)


def shard_fsdp2(model, dist: Dist):
    """fully_shard each decoder layer (TRANSFORMER_BASED_WRAP: the model's _no_split_modules), then the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(dist.device.type, (dist.world,))
    names = set(getattr(getattr(model, "base_model", model), "_no_split_modules", None) or [])
    inner = model
    while hasattr(inner, "model") and not names:
        inner = inner.model
        names = set(getattr(inner, "_no_split_modules", None) or [])
    wrapped = 0
    for module in model.modules():
        if type(module).__name__ in names:
            fully_shard(module, mesh=mesh)
            wrapped += 1
    fully_shard(model, mesh=mesh)
    return wrapped


def count_dtensor_params(model) -> tuple[int, int]:
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    return sum(isinstance(p, DTensor) for p in params), len(params)


@dataclass
class Run:
    args: cli.Parsed
    dist: Dist
    model: Any
    tok: Any
    prep: Prepared
    info: dict = field(default_factory=dict)


def token_ce_sum(model, batch: dict):
    """Summed next-token cross-entropy in fp32 over labels != -100 (transformers ForCausalLMLoss, sum part)."""
    import torch
    import torch.nn.functional as F

    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits.float()
    labels = batch["labels"]
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=data.IGNORE_INDEX, reduction="sum").to(torch.float32)


def train(run: Run, writer) -> dict:
    import torch

    args, dist, model = run.args, run.dist, run.model
    seed = int(args["seed"])
    data_seed = sampler_seed(seed, int(args["data_seed"]) if args["data_seed"] is not None else None, dist.rank)
    sched = plan_steps(args, len(run.prep.rows), dist.world)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, scheduler = optimizer_and_scheduler(model, args, sched.warmup_steps, sched.max_steps)
    ga, per_device = int(args["gradient_accumulation_steps"]), int(args["per_device_train_batch_size"])
    across = bool(args["average_tokens_across_devices"])
    pad_id, side = run.tok.pad_token_id, run.tok.padding_side
    logger = file_logger.LossLogger(args["logging_strategy"], float(args["logging_steps"]), sched.max_steps)
    out_dir = Path(args["output_dir"])
    step, epoch = 0, 0
    model.train()
    log(f"steps: {sched.max_steps} ({sched.steps_per_epoch}/epoch), warmup {sched.warmup_steps}, world {dist.world}, "
        f"per-device {per_device} x accumulation {ga}, fsdp {dist.fsdp}")
    t_start = time.perf_counter()
    while step < sched.max_steps:
        micro = rank_microbatches(epoch_order(len(run.prep.rows), data_seed, epoch), per_device, dist.world, dist.rank)
        windows = epoch_windows(micro, ga)
        for k, window in enumerate(windows):
            t0 = time.perf_counter()
            batches = [collate(run.prep, [run.prep.rows[i] for i in mb], pad_id, side) for mb in window]
            local_items = sum(int((b["labels"][:, 1:] != data.IGNORE_INDEX).sum()) for b in batches)
            global_items = float(all_reduce_sum(local_items, dist))
            if global_items == 0:
                raise ReproError(f"step {step + 1}: every label in the batch is masked (nothing to train on)")
            # HF 4.55: num_items_in_batch is gathered over ranks and the loss multiplied by num_processes
            # when average_tokens_across_devices (default True); otherwise each rank divides by its own count
            items, scale = (global_items, dist.world) if across else (max(local_items, 1), 1)
            tr_loss = 0.0
            for b in batches:
                b = {kk: v.to(dist.device) for kk, v in b.items()}
                ce = token_ce_sum(model, b)
                loss = ce / items * scale if not faults.fault("loss_per_micro_batch") else ce / micro_items(b, len(batches))
                if dist.accelerator is not None:
                    dist.accelerator.backward(loss)
                else:
                    loss.backward()
                tr_loss += float(loss.detach())
            if dist.fsdp is None and dist.world > 1:
                for p in params:  # DDP's mean of gradients (the fms twins are FSDP or one process)
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= dist.world
            if dist.accelerator is not None:  # FSDP1 shards gradients: accelerate computes the global norm
                grad_norm = dist.accelerator.clip_grad_norm_(params, float(args["max_grad_norm"]))
            else:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, float(args["max_grad_norm"]))
            lr = scheduler.get_last_lr()[0]
            opt.step()
            scheduler.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            mean_loss = float(all_reduce_sum(tr_loss, dist)) / dist.world  # nested_gather(...).mean()
            ep = epoch + (k * ga + len(window)) / sched.micro_per_epoch
            logger.add(mean_loss)
            event = logger.on_step_end(step, ep)
            if event is None and k == len(windows) - 1:
                event = logger.on_epoch_end(step, ep)
            if event and dist.rank == 0:
                file_logger.append(out_dir, file_logger.log_line("training_loss", event[1], event[0], event[2]),
                                   args["training_logs_filename"] or file_logger.FILENAME)
            if writer is not None:
                full = getattr(grad_norm, "full_tensor", None)
                gn = float(full() if full else grad_norm)
                writer(step=step, loss=mean_loss, lr=lr, tokens=int(global_items), grad_norm=gn,
                       seconds=time.perf_counter() - t0, epoch=ep, logged=event is not None)
            if step >= sched.max_steps:
                break
        epoch += 1
    return {"steps": step, "seconds": time.perf_counter() - t_start, "log_events": logger.events}


# ---------------------------------------------------------------------------------------------
# metrics (the twin runtime's per-step record; a JSONL fallback until it is importable)


def make_writer(out_dir: Path, dist: Dist, info: dict):
    from harness.runtime.step import end_of_step  # lazy: as the writer below
    from harness.runtime.metrics import MetricsWriter  # lazy: the training stack loads only when a run starts, not for --help or a refusal
    from repro.base.metrics import MetricRecord  # lazy: the training stack loads only when a run starts, not for --help or a refusal

    w = MetricsWriter(out_dir, dist.rank == 0, 0)

    def write(**f):
        rec = MetricRecord(step=f["step"], loss=f["loss"], lr=f["lr"], tokens=f["tokens"])
        rec.extra.update({"grad_norm": f["grad_norm"], "epoch": f["epoch"], "logged": int(f["logged"]), **info})
        end_of_step(w, rec, output_dir=str(out_dir), is_main=dist.rank == 0, loss=f["loss"], grad_norm=f["grad_norm"])
    return write


# ---------------------------------------------------------------------------------------------


def run_from_argv(argv: list[str]) -> int:
    import torch

    args = cli.parse(argv)
    if args.remaining:
        log("fms-hf-tuning 3.2.2 silently ignores: " + " ".join(repr(w) for w in args.remaining))
    if not isinstance(args["model_name_or_path"], str) or not args["model_name_or_path"]:
        raise ReproError("model_name_or_path has to be a string containing a valid HuggingFace Hub model name or the "
                         "path to a checkpoint folder")
    if float(args["num_train_epochs"]) <= 0:
        raise ReproError("num_train_epochs has to be an integer/float >= 1")
    if int(args["gradient_accumulation_steps"]) <= 0:
        raise ReproError("gradient_accumulation_steps has to be an integer >= 1")
    if args["output_dir"] is None:
        args.values["output_dir"] = "trainer_output"  # transformers 4.55 default
    if args["peft_method"] not in (None, "lora"):
        raise ReproError(f"--peft_method {args['peft_method']} is not part of the fms twins (lora or none)")
    if args["enable_reduce_loss_sum"]:
        raise ReproError("--enable_reduce_loss_sum (experimental SumLossSFTTrainer) is not part of the fms twins")
    hub = load_hub_map()
    for name in args["trackers"] or []:
        if name != "file_logger":
            log(f"--trackers {name}: not available offline; the loss still goes to training_logs.jsonl (file_logger)")
    torch.manual_seed(int(args["seed"]))
    dist = setup_dist()
    model_path = hub.model(args["model_name_or_path"], "--model_name_or_path")
    tok_path = hub.model(args["tokenizer_name_or_path"] or args["model_name_or_path"], "--tokenizer_name_or_path")
    out_dir = Path(args["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok, tok_class = load_tokenizer(tok_path)
    if args["chat_template"]:
        tok.chat_template = args["chat_template"]
    model = load_model(args, model_path, dist)
    added = add_special_tokens(args, tok, tok_class, model)
    info: dict[str, Any] = {"world": dist.world, "fsdp": dist.fsdp or "none", "num_new_tokens": added["num_new_tokens"],
                            "embedding_rows": added["new_embedding_size"]}
    if args.lora is not None:
        model, lora_info = apply_lora(args, model, added)
        info.update({k: v for k, v in lora_info.items() if isinstance(v, (int, float))})
        log(f"LoRA r {lora_info['lora_r']} alpha {lora_info['lora_alpha']} on {', '.join(lora_info['lora_targets'])}"
            + (f"; modules_to_save {lora_info['modules_to_save']}" if lora_info["modules_to_save"] else ""))
    if args.mxfp4 is not None:
        info["mxfp4_dequantized"] = loaded_mxfp4(model)
    if args["gradient_checkpointing"]:
        # DEVIATION: non-reentrant checkpointing (same gradients; the reentrant form needs input grads under LoRA)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    max_len = min(int(args["max_seq_length"]), int(tok.model_max_length))
    prep = prepare_data(args, tok, hub, max_len)
    if prep.kind == "completion_only" and tok.pad_token_id is None:
        # upstream only fails when the first batch is padded; say it before any work is lost
        data.pad_batch([{"input_ids": [0]}, {"input_ids": [0, 0]}], None)
    info["rows_without_template"] = prep.rows_without_template
    model.to(dist.device)
    if dist.fsdp == "fsdp2-direct" and not faults.fault("fsdp_dropped"):
        wrapped = shard_fsdp2(model, dist)
        sharded, total = count_dtensor_params(model)
        if sharded != total:
            raise ReproError(f"FSDP2 left {total - sharded} of {total} parameters unsharded; refusing to call it FSDP")
        log(f"FSDP on CPU: accelerate would have run {dist.accelerate_type} (it drops FSDP without a GPU); sharded "
            f"{wrapped} decoder layers + root with torch fully_shard over {dist.world} gloo rank(s)")
        info.update({"fsdp_sharded_params": sharded, "fsdp_wrapped_layers": wrapped})
    elif dist.fsdp == "accelerate":
        model = dist.accelerator.prepare(model)
        log(f"FSDP from the accelerate config: {type(model).__name__}")
    writer = make_writer(out_dir, dist, info)
    result = train(Run(args, dist, model, tok, prep, info), writer)
    log(f"done: {result['steps']} steps in {result['seconds']:.1f} s; loss lines in {out_dir / file_logger.FILENAME}")
    from harness.runtime.dist import shutdown  # lazy: the training stack loads only when a run starts, not for --help or a refusal

    shutdown(dist.accelerator, model)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_from_argv(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
