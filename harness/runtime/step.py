"""The one end-of-step hook every twin trainer calls after each optimizer step, so that every family
handles the end of a step the same way (README: "the divergence stop, for every twin"):

1. the fault hook: a `repro mutate` fault that lives here (nan_loss) breaks the step's values;
2. the record: the core MetricRecord fields (step, and step_time_s from the trainer's clock where the
   trainer does not time the step itself), written by rank 0;
3. the divergence stop: faults.check_finite on the values given (the all-reduced ones every rank has),
   after the record, so the verdict names the step and the check sees the value;
4. `after` (the trainer's checkpointing of this step), then the kill hook of the resume tests.

It changes no number: it orders what each trainer already did. tests/test_step_hook.py holds every
trainer under harness/ to it (no trainer writes a record any other way).
"""

from __future__ import annotations

import math
from typing import Callable

from harness.runtime import checkpoint as ckpt
from harness.runtime import faults
from harness.runtime.clock import StepClock
from harness.runtime.metrics import MetricsWriter
from repro.base.metrics import MetricRecord

#: the step at which the nan_loss fault turns the loss into NaN (late enough that a first step passes)
NAN_STEP = 3


def end_of_step(writer: MetricsWriter | None, record: MetricRecord | None, *, output_dir: str, is_main: bool,
                step: int | None = None, clock: StepClock | None = None, after: Callable[[], None] | None = None,
                kill: bool = True, **finite: float | None) -> MetricRecord | None:
    """Fault hook, record (rank 0), finite check (every rank that calls it), `after`, kill hook.
    `finite` names the values to check (default: the record's loss and grad_norm); `step` defaults to the
    record's step (ranks without a record pass it)."""
    if step is None:
        if record is None:
            raise ValueError("end_of_step needs the record or the step")
        step = record.step
    if not finite and record is not None:
        finite = {"loss": record.loss, "grad_norm": record.grad_norm}
    if faults.fault("nan_loss") and step == NAN_STEP and (record is None or record.phase == "train"):
        finite = {**finite, "loss": math.nan}
        if record is not None:
            record.loss = math.nan
    if record is not None:
        if record.step != step:
            raise ValueError(f"end_of_step: record of step {record.step} at step {step}")
        if record.step_time_s is None and clock is not None:
            record.step_time_s = clock.tick()[0]
        if writer is not None and is_main:
            writer.write(record)
    faults.check_finite(output_dir, is_main, step, **finite)
    if after is not None:
        after()
    if kill:
        ckpt.maybe_die_for_test(step)
    return record
