"""Twin of fms-hf-tuning PR #642 @80d25b93 ``tuning.sft_trainer`` with context parallelism (``--mcp``).

The entry point is the fms twin (harness/fms/sft_trainer.py: CLI, data, tokenizer, model, FSDP2 sharding,
file logger) with what PR #642 and the accelerate configs of its ablations add:

* the 80d25b93 flag set (``--mcp degree [mamba_impl [mamba_recompute]]``, positional like upstream's
  parsable dataclasses; ``--fast_moe`` is parsed as at 3.2.2);
* accelerate's ``use_parallelism_config`` (``PARALLELISM_CONFIG_CP_SIZE`` / ``_DP_SHARD_SIZE`` from the launcher):
  a ``(dp_shard, cp)`` mesh, cp x dp = world, FSDP2 over every rank (accelerate's flattened ``dp_shard_cp``);
* the transformers-Trainer CP batch path (shift labels and positions before sharding, contiguous chunks, the
  token count of the unsharded batch divided by cp, loss x num_processes) and the two halves of CP:
  ring attention (``parallelism_config_cp_size``) and Mamba state passing (``--mcp``, the mcp plugin),
  both from harness.granite_cp, on CPU and GPU alike;
* fms's default data format at that commit (``input``/``output`` rows, ``tokenize_and_apply_input_masking``:
  input + " " + output + eos, truncated to ``max_seq_length``, input tokens masked).

Upstream pins transformers <= 4.55.4, whose Trainer has no CP input path at all; the ablations must have run
a newer Trainer (>= 4.56), whose semantics are the ones reproduced here (DEVIATION, stated in the recipes).
``--twin_cp_attention local`` (stripped before the upstream parse; a twin-only switch) runs the negative
control: attention inside each rank's own chunk, which is what torch's ``context_parallel`` silently does on CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[2])
    from harness.runtime.entry import script_bootstrap

    script_bootstrap(__file__)

import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from harness.fms import cli, data, file_logger  # noqa: E402
from harness.fms import sft_trainer as fms  # noqa: E402
from harness.fms.optim import optimizer_and_scheduler  # noqa: E402
from harness.granite_cp.layout import IGNORE_INDEX, CPLayout, check_seq_len, make_layout, prepare_cp_batch  # noqa: E402
from harness.granite_cp.ring_attention import RING_CALLS  # noqa: E402
from harness.runtime import faults  # noqa: E402
from harness.runtime.entry import run_main  # noqa: E402
from harness.runtime.hub import load_hub_map  # noqa: E402
from repro.base.device import cuda_usable  # noqa: E402
from repro.base.errors import ReproError  # noqa: E402

PROG = "tuning.sft_trainer (fms-hf-tuning PR #642 @80d25b93 twin)"
SCHEMA_ID = "fms-hf-tuning@80d25b9:tuning.sft_trainer"
TWIN_ATTENTION_FLAG = "--twin_cp_attention"
log = fms.log


# ---------------------------------------------------------------------------------------------
# flags and launcher environment (pure)


@dataclass(frozen=True)
class MCP:
    degree: int
    mamba_impl: str = "allgather"
    mamba_recompute: bool = False


def split_twin_flags(argv: list[str]) -> tuple[list[str], str]:
    """Remove the twin-only ``--twin_cp_attention ring|local`` before the upstream parse sees it."""
    out, mode, i = [], "ring", 0
    while i < len(argv):
        word = argv[i]
        if word == TWIN_ATTENTION_FLAG or word.startswith(TWIN_ATTENTION_FLAG + "="):
            value = word.split("=", 1)[1] if "=" in word else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if "=" in word else 2
            if value not in ("ring", "local"):
                raise ReproError(f"{TWIN_ATTENTION_FLAG} {value!r}: expected ring or local")
            mode = value
            continue
        out.append(word)
        i += 1
    return out, mode


def parse_mcp(values: list[str] | None) -> MCP | None:
    """``--mcp degree [mamba_impl [mamba_recompute]]`` with the plugin's defaults (allgather, False)."""
    if not values:
        return None
    if len(values) > 3:
        raise ReproError(f"--mcp {' '.join(values)}: at most 3 positional values (degree, mamba_impl, mamba_recompute)")
    try:
        degree = int(values[0])
    except ValueError:
        raise ReproError(f"--mcp {values[0]!r}: the CP degree must be an integer") from None
    impl = values[1] if len(values) > 1 else "allgather"
    recompute = cli.string_to_bool(values[2]) if len(values) > 2 else False
    if degree == 1:
        raise ReproError("--mcp 1: CP degree can't be one (the mcp plugin refuses it)")
    if degree < 1:
        raise ReproError(f"--mcp {degree}: the CP degree must be positive")
    return MCP(degree, impl, recompute)


def parallelism_from_env(env: dict[str, str], world: int) -> CPLayout:
    """accelerate's ParallelismConfig from the launcher's environment; cp 1 x dp world without one."""
    if env.get("ACCELERATE_USE_PARALLELISM_CONFIG", "false").lower() != "true":
        return make_layout(world, 1, world)
    try:
        cp = int(env.get("PARALLELISM_CONFIG_CP_SIZE", "1"))
        dp = int(env.get("PARALLELISM_CONFIG_DP_SHARD_SIZE", "1"))
        rep = int(env.get("PARALLELISM_CONFIG_DP_REPLICATE_SIZE", "1"))
        tp = int(env.get("PARALLELISM_CONFIG_TP_SIZE", "1"))
    except ValueError as exc:
        raise ReproError(f"accelerate parallelism config: {exc}") from None
    if rep != 1 or tp != 1:
        raise ReproError(f"accelerate parallelism config: dp_replicate {rep} / tp {tp} are not part of the PR #642 twins")
    return make_layout(world, cp, dp, where="accelerate parallelism_config_cp_size x parallelism_config_dp_shard_size")


def check_cp_flags(mcp: MCP | None, layout: CPLayout, has_mamba: bool, has_attention: bool, fsdp_version: str | None) -> None:
    """The document's rules (lines 326, 357, 427) as one-line errors, where upstream would run silently wrong."""
    if layout.cp > 1 and fsdp_version != "2":
        raise ReproError(f"context parallel (cp {layout.cp}) needs FSDP2: the accelerate config must set "
                         f"fsdp_version \"2\" (got {fsdp_version!r})")
    if mcp is not None and layout.cp == 1:
        raise ReproError(f"--mcp {mcp.degree} without parallelism_config_cp_size: the sequences are not sharded, so "
                         "every rank would pass Mamba state from a copy of the same sequence")
    if mcp is not None and mcp.degree != layout.cp:
        raise ReproError(f"--mcp {mcp.degree} and parallelism_config_cp_size {layout.cp} differ; a hybrid model needs "
                         "both with the same degree (docs/training.md line 326)")
    if layout.cp > 1 and has_mamba and mcp is None:
        raise ReproError(f"parallelism_config_cp_size {layout.cp} shards the sequences but --mcp is not set: the Mamba "
                         "layers would run on each chunk without the earlier chunks' state (docs/training.md line 326)")


# ---------------------------------------------------------------------------------------------
# data: fms's default input/output format at 80d25b93


def input_output_example(tok, row: dict, max_len: int, where: str) -> dict:
    """tokenize_and_apply_input_masking: input + (" " unless whitespace joins them) + output + eos."""
    if "input" not in row or "output" not in row:
        raise ReproError(f"{where}: Dataset should contain input and output field if no dataset_text_field or "
                         "data_formatter_template specified")
    inp, outp = str(row["input"]), str(row["output"])
    joiner = "" if inp.endswith((" ", "\n", "\t")) or outp.startswith((" ", "\n", "\t")) else " "
    ids = list(tok(inp + joiner + outp + tok.eos_token, max_length=max_len, truncation=True).input_ids)
    n_in = len(tok(inp, max_length=max_len, truncation=True).input_ids)
    labels = [IGNORE_INDEX] * n_in + ids[n_in:]
    return {"input_ids": ids, "labels": labels[: len(ids)]}


def prepare_data(args: cli.Parsed, tok, hub, max_len: int) -> fms.Prepared:
    if args["data_config_path"] or args["dataset_text_field"] or args["data_formatter_template"]:
        return fms.prepare_data(args, tok, hub, max_len)
    if not isinstance(args["training_data_path"], str):
        raise ReproError("Training data path has to be set and str (tuning.sft_trainer: no --training_data_path)")
    path = fms.resolve_data(args["training_data_path"], hub, "--training_data_path")
    rows = [input_output_example(tok, r, max_len, path) for r in data.load_rows(path)]
    if not any(any(x != IGNORE_INDEX for x in r["labels"][1:]) for r in rows):
        raise ReproError(f"--training_data_path {path}: every label is masked (outputs truncated away?)")
    return fms.Prepared(rows, None, "pretokenized")


# ---------------------------------------------------------------------------------------------
# distributed


def setup(layout_env: dict[str, str]):
    """Process group, FSDP request and the CP mesh. DEVIATION: on a GPU too the twin shards with FSDP2 and
    applies CP itself (not accelerate's prepare), so CPU and GPU run the same code behind one switch."""
    import torch
    import torch.distributed as tdist

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    layout = parallelism_from_env(layout_env, world)
    cuda = cuda_usable()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    want_fsdp = fms.fsdp_requested()
    if not tdist.is_initialized() and (world > 1 or want_fsdp):
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        tdist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    d = fms.Dist(rank, world, local, device, "fsdp2-direct" if want_fsdp else None,
                 ("MULTI_CPU" if world > 1 else "NO") if want_fsdp and not cuda else None)
    cp_group = None
    if world > 1:
        for ranks in layout.cp_groups():  # every rank creates every group, in the same order
            group = tdist.new_group(ranks)
            if rank in ranks:
                cp_group = group
    return d, layout, cp_group


# ---------------------------------------------------------------------------------------------
# the HF Trainer loop with the CP batch path


def ce_sum(model, batch: dict):
    import torch
    import torch.nn.functional as F

    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                position_ids=batch["position_ids"])
    logits = out.logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["shift_labels"].reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum").to(torch.float32)


def train(run: fms.Run, writer, layout: CPLayout, d_conv: int | None) -> dict:
    import torch

    args, dist, model = run.args, run.dist, run.model
    seed = int(args["seed"])
    data_seed = int(args["data_seed"]) if args["data_seed"] is not None else seed
    dp_rank, cp_rank = layout.dp_rank(dist.rank), layout.cp_rank(dist.rank)
    sched = fms.plan_steps(args, len(run.prep.rows), layout.dp)  # the data is split over dp ranks only
    params = [p for p in model.parameters() if p.requires_grad]
    opt, scheduler = optimizer_and_scheduler(model, args, sched.warmup_steps, sched.max_steps)
    ga, per_device = int(args["gradient_accumulation_steps"]), int(args["per_device_train_batch_size"])
    across = bool(args["average_tokens_across_devices"])
    pad_id, side = run.tok.pad_token_id, run.tok.padding_side
    logger = file_logger.LossLogger(args["logging_strategy"], float(args["logging_steps"]), sched.max_steps)
    out_dir = Path(args["output_dir"])
    step, epoch = 0, 0
    model.train()
    log(f"steps: {sched.max_steps} ({sched.steps_per_epoch}/epoch), warmup {sched.warmup_steps}, world {dist.world} = "
        f"cp {layout.cp} x dp {layout.dp}, per-device {per_device} x accumulation {ga}, fsdp {dist.fsdp}")
    t_start = time.perf_counter()
    while step < sched.max_steps:
        order = fms.epoch_order(len(run.prep.rows), data_seed, epoch)
        micro = fms.rank_microbatches(order, per_device, layout.dp, dp_rank)
        windows = fms.epoch_windows(micro, ga)
        for k, window in enumerate(windows):
            t0 = time.perf_counter()
            batches = [fms.collate(run.prep, [run.prep.rows[i] for i in mb], pad_id, side) for mb in window]
            for b in batches:
                check_seq_len(int(b["input_ids"].shape[1]), layout.cp, d_conv, where=f"step {step + 1} batch")
            # counted on the unsharded batch (context_parallel shards in place); every CP rank holds the same batch
            local_items = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
            global_items = float(fms.all_reduce_sum(local_items, dist)) / layout.cp
            if global_items == 0:
                raise ReproError(f"step {step + 1}: every label in the batch is masked (nothing to train on)")
            items, scale = (global_items, dist.world) if across else (max(local_items, 1) / layout.cp, 1)
            tr_loss, chunk_tokens = 0.0, 0
            for b in batches:
                shard = prepare_cp_batch(b, layout.cp, cp_rank, d_conv)
                shard = {kk: v.to(dist.device) for kk, v in shard.items()}
                chunk_tokens += int(shard["input_ids"].numel())
                loss = ce_sum(model, shard) / items * scale
                loss.backward()
                tr_loss += float(loss.detach())
            if dist.fsdp is None and dist.world > 1:
                for p in params:  # DDP's mean of gradients (PR #642 runs are FSDP2)
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= dist.world
            grad_norm = torch.nn.utils.clip_grad_norm_(params, float(args["max_grad_norm"]))
            lr = scheduler.get_last_lr()[0]
            opt.step()
            scheduler.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            mean_loss = float(fms.all_reduce_sum(tr_loss, dist)) / dist.world
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
                seconds = time.perf_counter() - t0
                writer(step=step, loss=mean_loss, lr=lr, tokens=int(global_items), grad_norm=float(full() if full else grad_norm),
                       seconds=seconds, epoch=ep, logged=event is not None,
                       tps=chunk_tokens / seconds if seconds > 0 else 0.0)
            if step >= sched.max_steps:
                break
        epoch += 1
    return {"steps": step, "seconds": time.perf_counter() - t_start}


def make_writer(out_dir: Path, dist: fms.Dist, info: dict):
    from harness.runtime.step import end_of_step  # lazy: as the writer below
    from harness.runtime.metrics import MetricsWriter  # lazy: the training stack loads only when a run starts, not for --help or a refusal
    from repro.base.metrics import MetricRecord  # lazy: the training stack loads only when a run starts, not for --help or a refusal

    w = MetricsWriter(out_dir, dist.rank == 0, 0)

    def write(**f):
        rec = MetricRecord(step=f["step"], loss=f["loss"], lr=f["lr"], tokens=f["tokens"])
        rec.extra.update({"grad_norm": f["grad_norm"], "epoch": f["epoch"], "logged": int(f["logged"]),
                          "tokens_per_second_per_device": f["tps"], **info})
        if info.get("cp", 1) > 1:
            rec.extra["cp_ring_attention"] = int(RING_CALLS[0] > 0)  # the ring ran on this rank so far
        end_of_step(w, rec, output_dir=str(out_dir), is_main=dist.rank == 0, loss=f["loss"], grad_norm=f["grad_norm"])
    return write


# ---------------------------------------------------------------------------------------------


def run_from_argv(argv: list[str]) -> int:
    import torch

    from harness.granite_cp.model import apply_context_parallel  # lazy: the training stack loads only when a run starts, not for --help or a refusal

    argv, attention_mode = split_twin_flags(argv)
    args = cli.parse(argv, SCHEMA_ID)
    if args.remaining:
        log("fms-hf-tuning @80d25b93 silently ignores: " + " ".join(repr(w) for w in args.remaining))
    if not isinstance(args["model_name_or_path"], str) or not args["model_name_or_path"]:
        raise ReproError("model_name_or_path has to be a string containing a valid HuggingFace Hub model name or the "
                         "path to a checkpoint folder")
    if int(args["gradient_accumulation_steps"]) <= 0:
        raise ReproError("gradient_accumulation_steps has to be an integer >= 1")
    if args["peft_method"] is not None:
        raise ReproError(f"--peft_method {args['peft_method']}: the PR #642 twins are full fine-tunes")
    if args["packing"]:
        raise ReproError("--packing: padding-free / packing is not supported with mamba context parallel (PR #642)")
    mcp = parse_mcp(args["mcp"])
    if args["output_dir"] is None:
        args.values["output_dir"] = "trainer_output"
    hub = load_hub_map()
    torch.manual_seed(int(args["seed"]))
    dist, layout, cp_group = setup(dict(os.environ))
    model_path = hub.model(args["model_name_or_path"], "--model_name_or_path")
    tok_path = hub.model(args["tokenizer_name_or_path"] or args["model_name_or_path"], "--tokenizer_name_or_path")
    out_dir = Path(args["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok, tok_class = fms.load_tokenizer(tok_path)
    if args["use_flash_attn"] and layout.cp > 1:
        raise ReproError("--use_flash_attn True: flash attention is not supported with mamba context parallel "
                         "(PR #642 known limitations); pass --use_flash_attn False")
    model = fms.load_model(args, model_path, dist)
    if not args["use_flash_attn"]:
        model.config._attn_implementation = "sdpa"  # transformers' default: what torch context_parallel hooks
    added = fms.add_special_tokens(args, tok, tok_class, model)
    layers = getattr(getattr(model, "model", None), "layers", [])
    has_mamba = any(getattr(x, "mamba", None) is not None for x in layers)
    has_attention = any(getattr(x, "self_attn", None) is not None for x in layers)
    check_cp_flags(mcp, layout, has_mamba, has_attention, os.environ.get("FSDP_VERSION") if dist.fsdp else None)
    info: dict[str, Any] = {"world": dist.world, "cp": layout.cp, "dp": layout.dp, "fsdp": dist.fsdp or "none",
                            "num_new_tokens": added["num_new_tokens"]}
    if args["fast_moe"]:
        # DEVIATION: --fast_moe (ScatterMoE expert parallel, fms-acceleration-moe) is parsed and recorded, but the
        # experts run as ordinary FSDP-sharded weights: expert parallelism changes where expert math runs, not what
        # it computes; the twin cannot show its dispatch
        info["fast_moe_ep_degree"] = int(args["fast_moe"][0]) if str(args["fast_moe"][0]).isdigit() else 0
        log(f"--fast_moe {' '.join(args['fast_moe'])}: expert parallelism not reproduced; experts are FSDP-sharded")
    d_conv = int(model.config.mamba_d_conv) if has_mamba else None
    model.to(dist.device)
    if layout.cp > 1:
        apply_context_parallel(model, cp_group, attention_mode=attention_mode if has_attention else None,
                               mamba_impl=mcp.mamba_impl if has_mamba else None,
                               mamba_recompute=mcp.mamba_recompute if has_mamba else False)
        # measured, not echoed: the Mamba layers really swapped (they carry the CP spec); cp_ring_attention is
        # read per step from the ring's own counter (make_writer)
        info["mamba_cp_layers"] = sum(getattr(getattr(x, "mamba", None), "repro_cp", None) is not None for x in layers)
        log(f"context parallel {layout.cp}: attention {attention_mode if has_attention else '-'}, Mamba "
            f"{mcp.mamba_impl if has_mamba else '-'} over CP groups {layout.cp_groups()}")
    if os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() == "true" and dist.fsdp:
        # fsdp_activation_checkpointing: each decoder layer recomputed in the backward (non-reentrant)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        info["activation_checkpointing"] = 1
    max_len = min(int(args["max_seq_length"]), int(tok.model_max_length))
    prep = prepare_data(args, tok, hub, max_len)
    if dist.fsdp == "fsdp2-direct" and not faults.fault("fsdp_dropped"):
        wrapped = fms.shard_fsdp2(model, dist)
        sharded, total = fms.count_dtensor_params(model)
        if sharded != total:
            raise ReproError(f"FSDP2 left {total - sharded} of {total} parameters unsharded; refusing to call it FSDP")
        log(f"FSDP2: sharded {wrapped} decoder layers + root with torch fully_shard over {dist.world} rank(s)")
        info.update({"fsdp_sharded_params": sharded, "fsdp_wrapped_layers": wrapped})
    writer = make_writer(out_dir, dist, info)
    result = train(fms.Run(args, dist, model, tok, prep, info), writer, layout, d_conv)
    log(f"done: {result['steps']} steps in {result['seconds']:.1f} s; loss lines in {out_dir / file_logger.FILENAME}")
    from harness.runtime.dist import shutdown  # lazy: the training stack loads only when a run starts, not for --help or a refusal

    shutdown(None, model)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_from_argv(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
