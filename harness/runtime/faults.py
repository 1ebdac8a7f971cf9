"""Failure modes of real training, handled the same way by every trainer.

Divergence: a non-finite loss or gradient norm stops the run at that step, on every rank at once
(the values checked are the all-reduced ones every rank has), with a marker the CLI turns into a
failed check naming the step and the value. Out of memory: a test hook injects CUDA's OOM so the
CLI's retry-at-half-batch logic can be exercised on a CPU.
"""

from __future__ import annotations

import json
import math
import os

from repro.base.contract import DIVERGED_FILE, INJECT_OOM_ENV
from repro.base.errors import EXIT_FAILED, ReproError


class Diverged(ReproError):
    def __init__(self, step: int, name: str, value: float):
        super().__init__(f"training diverged at step {step}: {name} = {value}; stopped", EXIT_FAILED)
        self.step, self.name, self.value = step, name, value


def check_finite(output_dir: str, is_main: bool, step: int, **values: float | None) -> None:
    """Raise Diverged (after rank 0 wrote the marker) when any given value is NaN or infinite."""
    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            if is_main:
                os.makedirs(output_dir, exist_ok=True)
                with open(os.path.join(output_dir, DIVERGED_FILE), "w", encoding="utf-8") as fh:
                    json.dump({"step": step, "metric": name, "value": str(value)}, fh)
            raise Diverged(step, name, value)


def maybe_inject_oom(per_device_batch: int) -> None:
    limit = os.environ.get(INJECT_OOM_ENV)
    if limit is not None and per_device_batch > int(limit):
        import torch

        raise torch.OutOfMemoryError(f"CUDA out of memory (injected by {INJECT_OOM_ENV}={limit}: per-device "
                                     f"batch {per_device_batch})")
