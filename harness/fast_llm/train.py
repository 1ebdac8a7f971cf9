"""Twin of ``fast_llm/tools/train.py gpt`` at Fast-LLM@1aa6040: the trainer loop, run the way the recipes run it.

    torchrun --nproc-per-node=2 harness/fast_llm/train.py gpt --pretrained_checkpoint_type=huggingface ...

What one iteration does (``Trainer._train`` / ``ScheduleRunner.run_step`` / ``Optimizer.step``):

1. ``sequential_micro_batches`` micro-batches of ``micro_batch_size`` samples per rank (Sampler order), each
   loss scaled by ``1 / sequential_micro_batches`` before backward.
2. Gradients averaged over the data-parallel ranks (Fast-LLM reduces its own gradient buffers - no DDP
   wrapper); the logged loss is the mean over ranks and micro-batches.
3. Optimizer step counter += 1; lr = schedule(step); grad norm over all gradients (logged *before*
   clipping); clip coefficient ``min(clip_grad / (norm + 1e-6), 1)``; AdamW with bias correction (apex
   ``multi_tensor_adam`` in adamw mode = ``torch.optim.AdamW``); weight decay on weights, not on norms
   (``weight_decay=False`` on normalization parameters).
4. Every ``log_interval`` iterations (offset ``log_offset``): the ``Training @ iteration`` line with
   losses averaged since the last line, time per iteration since the last line, tokens/s/GPU and TFLOP/s.
5. Validation every ``validation_interval`` iterations and at the end: ``validation_iters`` full batches
   from the validation split, their mean loss on a ``Validation @ iteration`` line.

``--zero_stage`` (None = 1): with several ranks the optimizer state is sharded by
``torch.distributed.optim.ZeroRedundancyOptimizer``. DEVIATION: Fast-LLM shards flat buffers of its own
(stage 2 also reduce-scatters gradients, stage 3 the weights); the twin shards whole parameters' optimizer
state at every stage and all-reduces full gradients. Sharding never changes the numbers, which is what the
twin can check; the memory it saves is not measured.

Outputs: Fast-LLM's log (stdout and ``{experiment_dir}/runs/{n}/logs/logs_rank_{r}.txt``) and one
``repro.metrics`` record per iteration in ``{experiment_dir}/metrics.jsonl`` (rank 0, the runtime's
MetricsWriter). ``$PRETRAINED_MISTRAL_PATH`` and ``$JSON_DATA_PATH`` resolve through the twin asset map.
Test hook: ``REPRO_TWIN_FAULT=stale_activation`` (see ``harness.fast_llm.mlp``).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[2])  # run as a script path by the launchers

import math  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from harness.fast_llm import cli, data  # noqa: E402
from harness.fast_llm.config import Settings, settings_from_namespace  # noqa: E402
from harness.fast_llm.logs import LOSS_NAME, FlopShape, LogWriter, format_metrics, get_tflops, log_file  # noqa: E402
from harness.fast_llm.logs import flops_per_iteration, memory_usage_mib, next_run_index  # noqa: E402
from harness.fast_llm.mlp import FAULTS  # noqa: E402
from harness.fast_llm.model import GPT, GPTShape, load_pretrained  # noqa: E402
from harness.fast_llm.schedule import lr_at  # noqa: E402
from harness.runtime.dist import init_distributed, launch_info, shutdown  # noqa: E402
from harness.runtime.entry import run_main  # noqa: E402
from harness.runtime.hub import load_hub_map  # noqa: E402
from harness.runtime.metrics import MetricsWriter  # noqa: E402
from harness.runtime import faults  # noqa: E402
from harness.runtime.step import end_of_step  # noqa: E402
from repro.base.errors import ReproError  # noqa: E402
from repro.base.metrics import MetricRecord  # noqa: E402

PROG = cli.PROG
#: mutant faults of the loss's label shift (``GPT.label_shift``): labels = the inputs themselves (no
#: shift) and labels two tokens ahead (shifted twice); the MLP faults are ``harness.fast_llm.mlp.FAULTS``
LABEL_FAULTS = ("labels_unshifted", "labels_shift_2")


def _shape_from_flags(ns) -> GPTShape:
    """Without a pretrained checkpoint the architecture comes from the flags (and their defaults)."""
    if ns.ffn_hidden_size is None:
        ffn = 4 * ns.hidden_size
    else:
        ffn = ns.ffn_hidden_size
    return GPTShape(vocab_size=ns.vocab_size, hidden_size=ns.hidden_size, num_layers=ns.num_layers,
                    num_attention_heads=ns.num_attention_heads, head_groups=ns.head_groups, ffn_hidden_size=ffn,
                    kv_channels=ns.kv_channels, gated=ns.gated, activation_type=ns.activation_type or "gelu",
                    layer_norm_eps=ns.layer_norm_eps, rope_theta=math.exp(-ns.rotary_embedding_scale),
                    tie_word_embeddings=ns.tie_word_embeddings)


def build_model(ns, settings: Settings) -> GPT:
    if settings.pretrained_checkpoint_path is not None and settings.load_pretrained_weights:
        return load_pretrained(settings.pretrained_checkpoint_path, window=settings.window_size,
                               recompute_level=settings.mlp_recompute_level,
                               max_sequence_length=settings.batch.sequence_length)
    if ns.normalization_type != "rms_norm" or not ns.use_rotary_embeddings:
        raise ReproError("without --pretrained_checkpoint_path the twin builds Mistral-style models only: "
                         "--normalization_type=rms_norm --use_rotary_embeddings=1")
    torch.manual_seed(settings.seed)
    return GPT(_shape_from_flags(ns), window=settings.window_size, recompute_level=settings.mlp_recompute_level,
               max_sequence_length=settings.batch.sequence_length)


def flop_shape(model: GPT, window: int | None) -> FlopShape:
    s = model.shape
    return FlopShape(num_layers=s.num_layers, hidden_size=s.hidden_size, num_attention_heads=s.num_attention_heads,
                     head_groups=s.head_groups, kv_channels=s.head_size, ffn_hidden_size=s.ffn_hidden_size,
                     gated=s.gated, vocab_size=s.vocab_size, window_size=window)


def load_samples(settings: Settings) -> dict[str, torch.Tensor]:
    entries = data.read_dataset_json(settings.data_path[0])
    if len(entries) != 1:
        # DEVIATION: upstream blends several datasets by weight; the twin's corpus is one dataset.
        raise ReproError(f"--data_path={settings.data_path[0]}: the twin reads one dataset, got {len(entries)}")
    dataset = data.read_mmap(entries[0][0])
    ranges = data.split_documents(len(dataset.sizes), list(settings.split))
    batch = settings.batch.batch_size
    needed = {"training": batch * settings.train_iters}
    if settings.validation_iters > 0 and settings.validation_interval:
        needed["validation"] = (settings.train_iters // settings.validation_interval + 1) * settings.validation_iters * batch
    data.check_split(ranges, needed, settings.split_text)
    out = {}
    for offset, (phase, count) in enumerate(needed.items()):
        begin, end = ranges[phase]
        samples = data.sample(dataset, begin, end, count, settings.batch.sequence_length, settings.seed + offset)
        out[phase] = torch.from_numpy(samples)
    return out


def make_optimizer(model: GPT, settings: Settings, world: int):
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=0.0, betas=(settings.adam_beta1, settings.adam_beta2), eps=settings.adam_eps)
    if world > 1:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        optimizer = ZeroRedundancyOptimizer(groups[0]["params"], optimizer_class=torch.optim.AdamW,
                                            weight_decay=settings.weight_decay, **kwargs)
        optimizer.add_param_group(groups[1])
        return optimizer
    return torch.optim.AdamW(groups, **kwargs)


def resolve_paths(ns) -> None:
    """``$PRETRAINED_MISTRAL_PATH`` / ``$JSON_DATA_PATH`` (the user's variables in the recipe) and hub ids
    resolve through the twin's asset map to the bundled model folder and dataset file; local paths pass."""
    hub = load_hub_map()
    if ns.pretrained_checkpoint_path is not None:
        ns.pretrained_checkpoint_path = hub.model(ns.pretrained_checkpoint_path, "--pretrained_checkpoint_path")
    if ns.data_path:
        ns.data_path = [hub.dataset(p, suffixes=(".json",)) for p in ns.data_path]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _, ns = cli.parse_train_args(argv)
    info = launch_info()
    rank, world = info.rank, info.world_size
    fault = faults.active_fault()  # refuses a name no trainer knows (harness/runtime/faults.py FAULTS)
    fault = fault if fault in FAULTS + LABEL_FAULTS else None  # others belong to the end-of-step hook
    settings_from_namespace(ns, world)  # flag errors first, before any path is looked up
    resolve_paths(ns)
    settings = settings_from_namespace(ns, world)
    init_distributed()
    try:
        code = _train(ns, settings, rank, world, fault)
        if dist.is_initialized():
            dist.barrier()  # every rank done before the group goes away (the clean gloo exit)
        return code
    finally:
        shutdown()


def _train(ns, settings: Settings, rank: int, world: int, fault: str | None) -> int:
    torch.manual_seed(settings.seed)
    samples = load_samples(settings)
    model = build_model(ns, settings)
    if fault in LABEL_FAULTS:
        model.label_shift = {"labels_unshifted": 0, "labels_shift_2": 2}[fault]
    else:
        model.set_fault(fault)
    optimizer = make_optimizer(model, settings, world)
    flops = flop_shape(model, settings.window_size)

    experiment = Path(settings.experiment_dir) if settings.experiment_dir else None
    run_index = 0
    if experiment is not None:
        run_index = next_run_index(experiment) if rank == 0 else 0
        if world > 1:
            box = torch.tensor([run_index])
            dist.broadcast(box, 0)
            run_index = int(box.item())
    log = LogWriter(log_file(experiment, run_index, rank, world) if experiment else None, rank, world,
                    settings.log_timestamps, stream=sys.stdout)
    if experiment is None:
        raise ReproError("--experiment_dir is required by the twin (its metrics.jsonl and logs go there)")
    recorder = MetricsWriter(experiment, is_main=rank == 0)
    if rank == 0:
        log.info(f"Command: fast_llm/tools/train.py gpt (twin of ServiceNow/Fast-LLM@1aa6040), world size {world}")
        log.info(f"Batch: {settings.batch}")
    try:
        _loop(model, optimizer, samples, settings, rank, world, log, recorder, flops, run_index)
    finally:
        log.close()
    return 0


def _reduce_mean(value: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(value)
        value /= world
    return value


def _batch_loss(model: GPT, samples: torch.Tensor, step: int, settings: Settings, rank: int, world: int,
                backward: bool) -> float:
    """One full batch (all micro-batches of this rank); returns the loss averaged over ranks and micro-batches."""
    layout = settings.batch
    total = torch.zeros(())
    for micro in range(layout.sequential_micro_batches):
        mb = data.micro_batch(samples, step, micro, rank, batch_size=layout.batch_size,
                              micro_batch_size=layout.micro_batch_size, data_parallel=world)
        loss = model.loss(mb)
        if backward:
            (loss / layout.sequential_micro_batches).backward()
        total += loss.detach()
    return _reduce_mean(total / layout.sequential_micro_batches, world).item()


def _validate(model, samples, settings, rank, world, begin_iter) -> tuple[float, float]:
    model.eval()
    start = time.perf_counter()
    losses = []
    with torch.no_grad():
        for it in range(settings.validation_iters):
            losses.append(_batch_loss(model, samples, begin_iter + it, settings, rank, world, backward=False))
    if world > 1:
        dist.barrier()
    model.train()
    return sum(losses) / len(losses), (time.perf_counter() - start) / settings.validation_iters


def _loop(model, optimizer, samples, settings: Settings, rank, world, log, recorder, flops, run_index):
    layout = settings.batch
    params = list(model.parameters())
    model_flops_per_token = flops_per_iteration(flops, layout.batch_size, layout.sequence_length)[0] / \
        layout.tokens_per_step
    model.train()
    completed = 0
    advanced = skipped = nan_iters = 0
    loss_sum = 0.0
    if world > 1:
        dist.barrier()
    start = last_time = time.perf_counter()
    last_iteration = 0
    valid_done = 0
    while completed < settings.train_iters:
        completed += 1
        step_start = time.perf_counter()
        loss = _batch_loss(model, samples["training"], completed - 1, settings, rank, world, backward=True)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            _reduce_mean(p.grad, world)
        grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
        clip = min(settings.clip_grad / (grad_norm + 1e-6), 1.0)
        for p in params:
            p.grad.mul_(clip)
        # the norm the optimizer actually receives, read back from the gradients (not computed from clip)
        applied_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
        lr = lr_at(list(settings.lr_stages), completed)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # bf16/fp32 use NoopGradScaler, whose update is always "successful": upstream steps even on a
        # NaN (skipped and nan iterations only count under fp16 loss scaling), and so does the twin
        optimizer.step()
        advanced += 1
        loss_sum += loss
        optimizer.zero_grad(set_to_none=False)
        step_time = time.perf_counter() - step_start
        record = MetricRecord(
            step=completed, loss=loss, lr=lr, tokens=float(layout.tokens_per_step), grad_norm=grad_norm,
            step_time_s=step_time, tokens_per_s_per_device=layout.tokens_per_step / world / step_time, rank=rank,
            extra={"consumed_samples": float(completed * layout.batch_size),
                   "consumed_tokens": float(completed * layout.tokens_per_step),
                   "micro_batch_size": float(layout.micro_batch_size),
                   "sequential_micro_batches": float(layout.sequential_micro_batches),
                   "clip_coefficient": clip, "clipped_grad_norm": applied_norm,
                   "flops_per_token": model_flops_per_token})
        is_logging = settings.log_interval and (completed - settings.log_offset) % settings.log_interval == 0
        if is_logging:
            if world > 1:
                dist.barrier()
            if rank == 0:
                now = time.perf_counter()
                per_iter = (now - last_time) / (completed - last_iteration)
                average = (now - start) / completed
                last_time, last_iteration = now, completed
                remaining = average * (settings.train_iters - completed)
                model_tf, hardware_tf = get_tflops(flops, layout.batch_size, layout.sequence_length, per_iter, world)
                # the logged interval's figures, unrounded (the line prints 2 decimals: 0.00 for a CPU twin)
                record.step_time_s = per_iter
                record.tokens_per_s_per_device = layout.tokens_per_step / world / per_iter
                record.model_tflops_per_device, record.hardware_tflops_per_device = model_tf, hardware_tf
                metrics = {
                    "train_iters": settings.train_iters, "batch_size": layout.batch_size, "iteration": completed,
                    LOSS_NAME: loss_sum / advanced if advanced else math.nan,
                    "consumed_samples": completed * layout.batch_size,
                    "consumed_tokens": completed * layout.tokens_per_step, "step_time_ms": per_iter * 1000,
                    "step_time_average_ms": average * 1000, "remaining_time": remaining,
                    "completion_time": time.time() + remaining,
                    "percent_done": 100 * completed / settings.train_iters, "skipped_iters": skipped,
                    "nan_iters": nan_iters, "model_tflops": model_tf, "hardware_tflops": hardware_tf,
                    "tokens_per_sec_per_gpu": layout.tokens_per_step / world / per_iter, "run": run_index,
                    "grad_norm": grad_norm, "learning_rate": lr, "loss_scale": 1.0, **memory_usage_mib()}
                log.info(format_metrics(metrics, "Training"))
            advanced = skipped = nan_iters = 0
            loss_sum = 0.0
        # DEVIATION: upstream (bf16/fp32, NoopGradScaler) keeps stepping on a NaN; the suite's end-of-step hook
        # stops every twin at a non-finite loss or gradient norm (the divergence stop the README promises)
        end_of_step(recorder, record, output_dir=str(recorder.path.parent), is_main=rank == 0,
                    loss=loss, grad_norm=grad_norm)
        done = completed >= settings.train_iters
        if "validation" in samples and (done or completed % settings.validation_interval == 0):
            valid_loss, per_iter = _validate(model, samples["validation"], settings, rank, world, valid_done)
            valid_done += settings.validation_iters
            if rank == 0:
                model_tf, hardware_tf = get_tflops(flops, layout.batch_size, layout.sequence_length, per_iter, world,
                                                   training=False)
                metrics = {"train_iters": settings.train_iters, "batch_size": layout.batch_size,
                           "iteration": completed, LOSS_NAME: valid_loss,
                           "consumed_samples": completed * layout.batch_size,
                           "consumed_tokens": completed * layout.tokens_per_step, "step_time_ms": per_iter * 1000,
                           "model_tflops": model_tf, "hardware_tflops": hardware_tf,
                           "tokens_per_sec_per_gpu": layout.tokens_per_step / world / per_iter,
                           **memory_usage_mib()}
                log.info(format_metrics(metrics, "Validation"))
                end_of_step(recorder, MetricRecord(step=completed, loss=valid_loss, phase="eval", rank=rank),
                            output_dir=str(recorder.path.parent), is_main=True, kill=False, loss=valid_loss)


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
