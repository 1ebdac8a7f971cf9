"""Rescaling equivalence on the twin (TRL's invariant classes, per recipe): the layouts the twin block
declares must train identically, and its negative control must not, so the check is shown to fail.
Pure: the layouts and the comparison; repro.twin.session.equivalence runs them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from repro.catalog.schema import Arg, Recipe, TwinGeometry
from repro.base.errors import EXIT_BAD_INPUT, ReproError
from repro.twin.command import require_twin


@dataclass
class Layout:
    name: str
    geometry: TwinGeometry
    role: str  # "reference", "equivalent" or "negative control"
    why: str
    extra: tuple[Arg, ...] = ()


def layouts(recipe: Recipe) -> list[Layout]:
    require_twin(recipe)
    spec = recipe.twin.equivalence
    if spec is None:
        raise ReproError(f"{recipe.id}: its twin block declares no equivalence set")
    out = [Layout(g.name, g, "reference" if i == 0 else "equivalent", spec.why) for i, g in enumerate(spec.layouts)]
    neg = spec.negative_control
    g = neg.geometry or spec.layouts[0]
    if g.effective != spec.layouts[0].effective:
        # fewer sequences per step over the same data is more steps: the curves would "differ" by their length
        # alone (compare gives inf) before any tolerance is used, so the control would prove nothing
        raise ReproError(f"{recipe.id}: twin.equivalence.negative_control.geometry {g.name} changes the effective "
                         f"batch ({spec.layouts[0].effective} -> {g.effective}) and so the step count: a control is "
                         "compared step for step; break a semantic at the same batch instead", EXIT_BAD_INPUT)
    name = "control-" + g.name + ("-" + "-".join(a.flag.lstrip("-") for a in neg.set) if neg.set else "")
    out.append(Layout(name, g, "negative control", neg.why, tuple(neg.set)))
    return out


def compare(ref: list[float], other: list[float]) -> dict:
    if len(ref) != len(other) or not ref:
        return {"steps": len(other), "max_rel": math.inf, "mean_rel": math.inf, "worst_step": None}
    rel = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(ref, other)]
    worst = max(range(len(rel)), key=rel.__getitem__)
    drift = statistics.fmean(b - a for a, b in zip(ref, other)) / max(statistics.fmean(abs(a) for a in ref), 1e-12)
    return {"steps": len(ref), "max_abs": max(abs(a - b) for a, b in zip(ref, other)), "max_rel": max(rel),
            "mean_rel": abs(drift), "worst_step": worst + 1, "ref_at_worst": ref[worst], "run_at_worst": other[worst]}


def same_length(recipe: Recipe, lay: Layout, ref_steps: int, steps: int) -> None:
    """A negative control that ran another number of steps is refused: it would fail to match for its length
    alone (compare returns inf), so it could not show that the tolerance bites."""
    if lay.role == "negative control" and steps != ref_steps:
        raise ReproError(f"{recipe.id}: the negative control {lay.name} ran {steps} steps, the reference "
                         f"{ref_steps}: a control must be compared step for step (same steps, one semantic "
                         "changed)", EXIT_BAD_INPUT)


def batches(items: list[Layout], slots: int) -> list[list[Layout]]:
    """Group runs so that concurrently running processes never exceed the slots."""
    out, current, used = [], [], 0
    for item in sorted(items, key=lambda x: x.geometry.processes):
        p = item.geometry.processes
        if current and used + p > slots:
            out.append(current)
            current, used = [], 0
        current.append(item)
        used += p
    return out + ([current] if current else [])
