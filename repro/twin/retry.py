"""Out of memory on a GPU: retry at half the per-device batch with twice the accumulation.

The effective batch stays exact, and the recipe's loss semantics decide whether the smaller
micro-batch is allowed: under a fixed per-device policy (open-instruct's sum loss) the retry would
change what is trained, so it is refused with the reason.
"""

from __future__ import annotations

from pathlib import Path

from repro.catalog.schema import Recipe, TwinGeometry
from repro.errors import ReproError

OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "out of memory")


def is_oom(log_path: Path) -> bool:
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.is_file() else ""
    return any(m in text for m in OOM_MARKERS)


def halved(recipe: Recipe, g: TwinGeometry) -> TwinGeometry:
    """The next geometry to try, or a one-line refusal."""
    if recipe.batch.per_device_policy == "fixed":
        raise ReproError(f"{recipe.id}: out of memory at per-device batch {g.per_device}, and the recipe fixes "
                         f"the per-device batch ({recipe.batch.loss_reduction} loss: a smaller micro-batch changes "
                         "the gradient); use a GPU with more memory", 1)
    if g.per_device == 1 or g.per_device % 2:
        raise ReproError(f"{recipe.id}: out of memory at per-device batch {g.per_device}, which cannot be halved "
                         "exactly; use a GPU with more memory", 1)
    return TwinGeometry(processes=g.processes, per_device=g.per_device // 2, grad_accum=g.grad_accum * 2)
