"""Out of memory on a GPU: retry at half the per-device batch with twice the accumulation.

The effective batch stays exact, and the recipe's loss semantics decide whether the smaller
micro-batch is allowed: under a fixed per-device policy (open-instruct's sum loss) the retry would
change what is trained, so it is refused with the reason.
"""

from __future__ import annotations

from pathlib import Path

from repro.catalog.schema import Recipe, TwinGeometry
from repro.base.errors import ReproError

OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "out of memory")


def is_oom(log_path: Path) -> bool:
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.is_file() else ""
    return any(m in text for m in OOM_MARKERS)


def half(recipe: Recipe, per_device: int) -> int:
    """The per-device batch to retry with after an out-of-memory at `per_device`, or a one-line refusal.
    One rule for the twin and the full run."""
    if recipe.batch.per_device_policy == "fixed":
        raise ReproError(f"{recipe.id}: out of memory at per-device batch {per_device}, and the recipe fixes "
                         f"the per-device batch ({recipe.batch.loss_reduction} loss: a smaller micro-batch changes "
                         "the gradient); use a GPU with more memory", 1)
    if per_device == 1 or per_device % 2:
        raise ReproError(f"{recipe.id}: out of memory at per-device batch {per_device}, which cannot be halved "
                         "exactly; use a GPU with more memory", 1)
    return per_device // 2


def halved(recipe: Recipe, g: TwinGeometry) -> TwinGeometry:
    """The next twin geometry to try (same effective batch), or a one-line refusal."""
    smaller = half(recipe, g.per_device)
    return TwinGeometry(processes=g.processes, per_device=smaller, grad_accum=g.grad_accum * g.per_device // smaller)
