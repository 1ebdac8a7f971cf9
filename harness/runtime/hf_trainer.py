"""HF-Trainer-based entry points (ToolGen, AceRAG, fms-hf-tuning): the normalized record per step.

The Trainer logs a dict every `logging_steps`; this callback turns each optimizer step's log into one
repro.metrics.MetricRecord on rank 0, so goldens and checks read every family the same way.
"""

from __future__ import annotations

import time

from harness.runtime.metrics import MetricsWriter
from harness.runtime.step import end_of_step
from repro.base.metrics import MetricRecord

try:
    from transformers import TrainerCallback
except ImportError:  # the twin extra is not installed: HF-Trainer twins cannot run anyway
    TrainerCallback = object  # type: ignore[misc,assignment]

CORE_KEYS = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm"}


def record_from_log(step: int, logs: dict, step_time: float | None) -> MetricRecord:
    """Pure: a Trainer log dict -> MetricRecord (core keys mapped, other numbers kept in extra)."""
    core = {CORE_KEYS[k]: float(v) for k, v in logs.items() if k in CORE_KEYS and v is not None}
    extra = {k: float(v) for k, v in logs.items()
             if k not in CORE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return MetricRecord(step=step, step_time_s=step_time, extra=extra, **core)


class MetricsCallback(TrainerCallback):
    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir
        self.writer: MetricsWriter | None = None
        self.last = time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.writer = MetricsWriter(self.output_dir, state.is_world_process_zero, state.global_step)
        self.last = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or self.writer is None:
            return
        now = time.time()
        record = record_from_log(state.global_step, logs, now - self.last)
        # the Trainer's logged loss is gathered over ranks, so every rank checks the same value; the HF
        # Trainer checkpoints after its log, so the kill hook of the resume tests is not used here
        end_of_step(self.writer, record, output_dir=self.output_dir, is_main=state.is_world_process_zero,
                    kill=False)
        self.last = now
