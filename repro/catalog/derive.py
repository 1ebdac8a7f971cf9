"""Recompute a recipe's derived quantities (steps, warmup, tokens) from its inputs.

Pure arithmetic over the schema, so the numbers a verifier trusts never come from a doc's example.
"""

from __future__ import annotations

import math

from repro.catalog.schema import Recipe


def derive(recipe: Recipe) -> dict[str, int]:
    """What the recipe's inputs imply; keys match repro.catalog.schema.Derived output fields."""
    d, batch = recipe.derived, recipe.batch
    out: dict[str, int] = {}
    steps: int | None = None
    if d.dataset_rows is not None and d.epochs is not None:
        out["steps_per_epoch"] = math.ceil(d.dataset_rows / batch.effective)
        steps = out["steps_per_epoch"] * d.epochs
    if d.total_episodes is not None:
        steps = d.total_episodes // batch.effective
    if d.train_iters is not None:
        steps = d.train_iters
    if steps is not None:
        out["optimizer_steps"] = steps
        if d.warmup_ratio is not None:
            exact = steps * d.warmup_ratio
            out["warmup_steps"] = math.ceil(exact) if d.warmup_rounding == "ceil" else int(exact)
        elif d.warmup_iters is not None:
            out["warmup_steps"] = d.warmup_iters
    if batch.packed:
        out["tokens_per_step"] = batch.effective * batch.seq_len
        if steps is not None:
            out["total_tokens"] = out["tokens_per_step"] * steps
    return out


def mismatches(recipe: Recipe) -> list[tuple[str, int | None, int]]:
    """(field, stored, recomputed) for every stored derived value that disagrees or is missing."""
    stored = recipe.derived.model_dump()
    return [(k, stored.get(k), v) for k, v in derive(recipe).items() if stored.get(k) != v]
