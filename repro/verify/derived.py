"""Run-level numbers a claim needs that the log implies but does not print, each with how it was derived.

The effective batch (sequences per optimizer step) is rarely printed by HF-Trainer-based
frameworks, but their end-of-training summary states samples/s and the runtime, and the state
file the step count: samples/s x runtime / steps is the batch. HF rounds samples/s to three
decimals and the runtime to four, so the quotient is rounded to the nearest integer when it lies
within 0.5% of one, and the answer says both numbers.
"""

from __future__ import annotations

from collections.abc import Mapping

#: keys under which a log states the effective batch itself
BATCH_KEYS = ("effective_batch_size", "global_batch_size")
_STEP_KEYS = ("global_step", "max_steps", "total_steps")
_CLOSE = 0.005


def effective_batch(values: Mapping[str, float]) -> tuple[float | None, str]:
    for key in BATCH_KEYS:
        if values.get(key):
            return float(values[key]), f"read from the log ({key} = {values[key]:g})"
    rate, runtime = values.get("train_samples_per_second"), values.get("train_runtime")
    steps_key = next((k for k in _STEP_KEYS if values.get(k)), None)
    if not rate or not runtime or steps_key is None:
        missing = [k for k, v in (("samples/s", rate), ("runtime", runtime), ("step count", steps_key)) if not v]
        return None, f"the log states no batch size, and lacks the {', '.join(missing)} to derive it"
    steps = values[steps_key]
    batch = rate * runtime / steps
    how = f"derived: {rate:g} samples/s x {runtime:g} s runtime / {steps:g} optimizer steps ({steps_key}) = {batch:.2f}"
    nearest = round(batch)
    if nearest and abs(batch - nearest) <= _CLOSE * nearest:
        return float(nearest), f"{how}, rounded to {nearest} (the log rounds samples/s and runtime)"
    return batch, how
