"""Batch layout and learning-rate schedule as Fast-LLM@1aa6040 derives them.

Batch (``fast_llm/engine/schedule/config.py::BatchConfig._validate``): ``--batch_size`` counts samples of
``--sequence_length`` tokens over all data-parallel ranks. Given both batch size and micro-batch, the
sequential micro-batches (gradient accumulation) are ``batch_size / (micro_batch_size x dp)``; given only
the batch size, the *micro-batch* grows instead (``batch_size / (sequential x dp)``, sequential defaulting
to 1) - which is why the 16-node command needs exactly 128 GPUs to keep one 8192-token sample per GPU.
A quotient that is not whole fails (``fast_llm.utils.div``: ``ValueError("x%y!=0")``).

Learning rate (``fast_llm/engine/optimizer/learning_rate.py::create_schedule_from_config``): a linear
stage from 0 to ``lr`` over ``[0, lr_warmup_iters]``, then the decay stage over
``[lr_warmup_iters, lr_decay_iters]`` - ``lr_decay_iters`` is the stage's *end step*, not its length -,
then a constant stage at the last value. The optimizer increments its step before asking, so the first
update uses ``lr(1)``. Cosine: ``lr + 0.5 (1 - cos(pi c^p)) (min_lr - lr)``, c the fraction of the stage.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

from repro.base.errors import ReproError


def div(x: int, y: int, what: str) -> int:
    """``fast_llm.utils.div`` with the quantity named (upstream raises a bare ``x%y!=0``)."""
    if y <= 0 or x % y != 0:
        raise ReproError(f"{what}: {x} is not divisible by {y} ({x}%{y}!=0, fast_llm.utils.div)")
    return x // y


@dataclass(frozen=True)
class BatchLayout:
    batch_size: int  # samples per optimizer step, all ranks
    micro_batch_size: int  # samples per micro-batch per rank
    sequential_micro_batches: int  # micro-batches per rank per step (= depth-first x breadth-first)
    depth_first_micro_batches: int
    breadth_first_micro_batches: int
    data_parallel: int
    sequence_length: int

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.sequence_length


def derive_batch(*, data_parallel: int, sequence_length: int, batch_size: int | None = None,
                 micro_batch_size: int | None = None, depth_first_micro_batches: int | None = None,
                 breadth_first_micro_batches: int | None = None, sequential_micro_batches: int | None = None,
                 pipeline_parallel: int = 1) -> BatchLayout:
    """BatchConfig._validate at 1aa6040, for a data-parallel world of ``data_parallel`` ranks.

    ``sequential_micro_batches`` given on the command line is overwritten by the derivation, as upstream
    does (it is recomputed from depth/breadth or from the batch), so it is accepted and ignored.
    """
    for name, value in (("batch_size", batch_size), ("micro_batch_size", micro_batch_size),
                        ("depth_first_micro_batches", depth_first_micro_batches),
                        ("breadth_first_micro_batches", breadth_first_micro_batches),
                        ("sequence_length", sequence_length)):
        if value is not None and value <= 0:
            raise ReproError(f"--{name}={value}: must be > 0")
    depth, breadth = depth_first_micro_batches, breadth_first_micro_batches
    if batch_size is None or micro_batch_size is None:
        depth = 1 if depth is None else depth
        breadth = 1 if breadth is None else breadth
        sequential = depth * breadth
        if batch_size is None:
            micro_batch_size = 1 if micro_batch_size is None else micro_batch_size
            batch_size = micro_batch_size * sequential * data_parallel
        else:
            micro_batch_size = div(batch_size, sequential * data_parallel,
                                   "--batch_size / (sequential micro-batches x data-parallel ranks)")
    else:
        sequential = div(batch_size, micro_batch_size * data_parallel,
                         "--batch_size / (--micro_batch_size x data-parallel ranks)")
        if depth is None and breadth is None:
            depth, breadth = (1, sequential) if pipeline_parallel > 1 else (sequential, 1)
        elif depth is None:
            depth = div(sequential, breadth, "sequential micro-batches / --breadth_first_micro_batches")
        elif breadth is None:
            breadth = div(sequential, depth, "sequential micro-batches / --depth_first_micro_batches")
        elif depth * breadth != sequential:
            raise ReproError(f"sequential micro-batches {sequential} != --depth_first_micro_batches {depth} x "
                             f"--breadth_first_micro_batches {breadth}")
    return BatchLayout(batch_size, micro_batch_size, sequential, depth, breadth, data_parallel, sequence_length)


# --------------------------------------------------------------------------------------------
# learning rate


@dataclass(frozen=True)
class Stage:
    kind: str  # constant | linear | power | cosine
    begin: int
    end: int | None
    lr: float
    end_lr: float | None = None
    power: float = 1.0

    def __call__(self, step: int) -> float:
        if step < self.begin or (self.end is not None and step > self.end):
            raise ReproError(f"learning-rate stage [{self.begin}, {self.end}] asked for step {step}")
        if self.kind == "constant":
            return self.lr
        coeff = (step - self.begin) / (self.end - self.begin)
        if self.kind == "cosine":
            shape = 0.5 * (1.0 - math.cos(math.pi * coeff ** self.power))
        else:  # linear and power are one PowerLRStage upstream
            shape = coeff ** self.power
        return self.lr + shape * (self.end_lr - self.lr)


DECAY_STYLES = ("constant", "linear", "power", "cosine")


def build_lr_stages(*, lr: float, lr_decay_style: str = "constant", lr_decay_iters: int | None = None,
                    lr_decay_power: float = 1.0, lr_warmup_iters: int = 0, min_lr: float = 0.0) -> list[Stage]:
    """create_schedule_from_config without ``--lr_schedule`` (the recipes do not use it)."""
    if lr_decay_style not in DECAY_STYLES:
        raise ReproError(f"--lr_decay_style={lr_decay_style}: not one of {', '.join(DECAY_STYLES)}")
    stages: list[Stage] = []
    if lr_warmup_iters > 0:
        stages.append(Stage("linear", 0, lr_warmup_iters, 0.0, float(lr)))
    if lr_decay_style == "constant":
        stages.append(Stage("constant", lr_warmup_iters, lr_decay_iters, float(lr)))
    else:
        if lr_decay_iters is None:
            # upstream: InterpolateLRStage asserts end_step is not None (a bare AssertionError)
            raise ReproError(f"--lr_decay_style={lr_decay_style} needs --lr_decay_iters")
        if lr_decay_iters <= lr_warmup_iters:
            raise ReproError(f"--lr_decay_iters={lr_decay_iters} must exceed --lr_warmup_iters={lr_warmup_iters} "
                             "(it is the decay's end step)")
        if lr_decay_power <= 0:
            raise ReproError(f"--lr_decay_power={lr_decay_power}: must be > 0")
        stages.append(Stage(lr_decay_style, lr_warmup_iters, lr_decay_iters, float(lr), float(min_lr),
                            lr_decay_power))
    if stages[-1].end is not None:
        stages.append(Stage("constant", stages[-1].end, None, stages[-1](stages[-1].end)))
    return stages


def lr_at(stages: list[Stage], step: int) -> float:
    """LearningRateSchedule.__call__: the stage whose end is the first one > step (searchsorted right)."""
    ends = [stage.end for stage in stages[:-1]]
    return stages[bisect_right(ends, step)](step)
