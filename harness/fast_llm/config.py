"""The parsed flat namespace -> the settings the twin trainer runs with, checked as upstream checks them.

Upstream builds ``GPTTrainerConfig.from_namespace`` and ``validate()``s it; the fields the Mistral recipes
touch are turned into one frozen ``Settings`` here, each failure a one-line ``ReproError`` (exit 2) naming
the flag. What the twin does not implement is refused rather than ignored (tensor/pipeline parallelism,
FIM, ``--lr_schedule``, remote configs), so a command cannot silently mean less than it says.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from repro.base.errors import ReproError

from harness.fast_llm.data import parse_split
from harness.fast_llm.mlp import LEVELS
from harness.fast_llm.schedule import BatchLayout, Stage, build_lr_stages, derive_batch

#: fast_llm/engine/distributed/config.py DataType names accepted for --training_dtype (checked after parsing).
DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class Settings:
    batch: BatchLayout
    lr_stages: tuple[Stage, ...]
    train_iters: int
    validation_iters: int
    validation_interval: int | None
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    adam_eps: float
    clip_grad: float
    window_size: int | None
    mlp_recompute_level: str
    zero_stage: int  # None on the command line behaves as 1 (multi_stage config)
    training_dtype: str
    pretrained_checkpoint_path: str | None
    pretrained_checkpoint_type: str
    load_pretrained_weights: bool
    dataset_source: str
    data_path: tuple[str, ...]
    split: tuple[float, float, float]
    split_text: str
    experiment_dir: str | None
    log_interval: int
    log_offset: int
    log_timestamps: bool
    checkpoint_interval: int | None
    max_checkpoints: int | None
    seed: int
    num_workers: int
    world_size: int


def settings_from_namespace(ns: argparse.Namespace, world_size: int) -> Settings:
    """Validate the namespace for a data-parallel world of ``world_size`` processes."""
    if ns.tensor_parallel != 1 or ns.pipeline_parallel != 1 or ns.sequence_data_parallel != 1:
        raise ReproError("--tensor_parallel/--pipeline_parallel/--sequence_data_parallel > 1: the twin implements "
                         "data parallelism only")
    if ns.lr_schedule is not None:
        raise ReproError(f"--lr_schedule={ns.lr_schedule}: the twin implements the warmup + decay flags only")
    if ns.fim_rate:
        raise ReproError(f"--fim_rate={ns.fim_rate}: fill-in-the-middle is not part of the twin")
    if ns.training_dtype not in DTYPES:
        raise ReproError(f"--training_dtype={ns.training_dtype}: not one of {', '.join(DTYPES)}")
    if ns.mlp_recompute_level not in LEVELS:  # argparse already checked the choices; belt and braces
        raise ReproError(f"--mlp_recompute_level={ns.mlp_recompute_level}: not one of {', '.join(LEVELS)}")
    zero = 1 if ns.zero_stage is None else ns.zero_stage
    if zero not in (1, 2, 3):
        raise ReproError(f"--zero_stage={ns.zero_stage}: must be 1, 2 or 3")
    batch = derive_batch(data_parallel=world_size, sequence_length=ns.sequence_length, batch_size=ns.batch_size,
                         micro_batch_size=ns.micro_batch_size, depth_first_micro_batches=ns.depth_first_micro_batches,
                         breadth_first_micro_batches=ns.breadth_first_micro_batches,
                         sequential_micro_batches=ns.sequential_micro_batches)
    if ns.window_size is not None and ns.window_size <= 0:
        raise ReproError(f"--window_size={ns.window_size}: must be > 0")
    if ns.window_size is not None and ns.window_size > ns.sequence_length:
        # DEVIATION: upstream accepts it and runs plain causal attention (flash-attn's window then covers
        # every key); for a twin that means the scaled-down window was lost, so it is refused.
        raise ReproError(f"--window_size={ns.window_size} is larger than --sequence_length={ns.sequence_length}: "
                         "the window would have no effect")
    if ns.train_iters <= 0:
        raise ReproError(f"--train_iters={ns.train_iters}: must be > 0 for training")
    if ns.validation_iters < 0 or (ns.validation_interval is not None and ns.validation_interval <= 0):
        raise ReproError(f"--validation_iters={ns.validation_iters} / --validation_interval={ns.validation_interval}: "
                         "must be >= 0 / > 0")
    if ns.log_interval is not None and ns.log_interval < 0:
        raise ReproError(f"--log_interval={ns.log_interval}: must be >= 0")
    for name in ("weight_decay", "adam_eps", "clip_grad"):
        if getattr(ns, name) < 0 or (name != "weight_decay" and getattr(ns, name) == 0):
            raise ReproError(f"--{name}={getattr(ns, name)}: out of range")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(ns, name) <= 1:
            raise ReproError(f"--{name}={getattr(ns, name)}: must be in [0, 1]")
    stages = build_lr_stages(lr=ns.lr, lr_decay_style=ns.lr_decay_style, lr_decay_iters=ns.lr_decay_iters,
                             lr_decay_power=ns.lr_decay_power, lr_warmup_iters=ns.lr_warmup_iters, min_lr=ns.min_lr)
    if ns.dataset_source != "file":
        raise ReproError(f"--dataset_source={ns.dataset_source}: the twin reads --dataset_source=file datasets")
    if not ns.data_path or len(ns.data_path) != 1:
        raise ReproError("--data_path: --dataset_source=file takes exactly one JSON file")
    split = parse_split(ns.split)
    if ns.pretrained_checkpoint_path is not None and ns.pretrained_checkpoint_type != "huggingface":
        raise ReproError(f"--pretrained_checkpoint_type={ns.pretrained_checkpoint_type}: the twin imports "
                         "huggingface checkpoints only")
    return Settings(
        batch=batch, lr_stages=tuple(stages), train_iters=ns.train_iters, validation_iters=ns.validation_iters,
        validation_interval=ns.validation_interval, weight_decay=ns.weight_decay, adam_beta1=ns.adam_beta1,
        adam_beta2=ns.adam_beta2, adam_eps=ns.adam_eps, clip_grad=ns.clip_grad, window_size=ns.window_size,
        mlp_recompute_level=ns.mlp_recompute_level, zero_stage=zero, training_dtype=DTYPES[ns.training_dtype],
        pretrained_checkpoint_path=ns.pretrained_checkpoint_path,
        pretrained_checkpoint_type=ns.pretrained_checkpoint_type, load_pretrained_weights=ns.load_pretrained_weights,
        dataset_source=ns.dataset_source, data_path=tuple(ns.data_path), split=tuple(split),
        split_text=str(ns.split), experiment_dir=ns.experiment_dir, log_interval=ns.log_interval or 0,
        log_offset=ns.log_offset, log_timestamps=bool(ns.log_timestamps), checkpoint_interval=ns.checkpoint_interval,
        max_checkpoints=ns.max_checkpoints, seed=ns.seed, num_workers=ns.num_workers, world_size=world_size)
