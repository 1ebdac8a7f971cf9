"""Rescaling equivalence on the twin (TRL's invariant classes, per recipe): the layouts the twin block
declares must train identically, and its negative control must not, so the check is shown to fail.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from repro.catalog.schema import Arg, Recipe, TwinGeometry
from repro.errors import EXIT_BAD_INPUT, ReproError
from repro.metrics import read_jsonl
from repro.twin import launch, progress
from repro.twin import runner as twin
from repro.twin.golden import curve


@dataclass
class Layout:
    name: str
    geometry: TwinGeometry
    role: str  # "reference", "equivalent" or "negative control"
    why: str
    extra: tuple[Arg, ...] = ()


def layouts(recipe: Recipe) -> list[Layout]:
    twin.require_twin(recipe)
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


def run_equivalence(recipe: Recipe, out: Path, quiet: bool = True) -> dict:
    plan = layouts(recipe)
    spec = recipe.twin.equivalence
    # Start-up (imports) dominates each run and results do not depend on timing, so oversubscribe
    # the cores; REPRO_EQUIVALENCE_SLOTS bounds the concurrent processes.
    slots = int(os.environ.get("REPRO_EQUIVALENCE_SLOTS", 4 * (os.cpu_count() or 1)))
    t0 = time.perf_counter()
    curves: dict[str, list[float]] = {}
    for group in batches(plan, slots):
        runs = [twin.prepare(recipe, out / lay.name, geometry=lay.geometry, extra=list(lay.extra), fresh=True)
                for lay in group]
        names = {lay.name: out / lay.name for lay in group}
        with launch.supervised(), progress.tracking(f"{recipe.id} equivalence", names,
                                                    progress.expected_steps(recipe.id), quiet=quiet):
            started = [(r, launch.start(r.argv, r.env, r.out_dir / "train.log", pipe=False, cwd=r.cwd)) for r in runs]
            codes = [(r, launch.stream(handle, echo=False)) for r, handle in started]
        for r, rc in codes:
            if rc != 0:
                raise ReproError(f"{recipe.id}: equivalence run {r.out_dir.name} exited {rc}; "
                                 f"see {r.out_dir / 'train.log'}")
            curves[r.out_dir.name] = curve(list(read_jsonl(twin.metrics_path(r))), spec.metric)[1]
    ref = plan[0]
    rows = []
    for lay in plan:
        same_length(recipe, lay, len(curves[ref.name]), len(curves[lay.name]))
        stats = compare(curves[ref.name], curves[lay.name])
        within = stats["max_rel"] <= spec.max_rel and stats["mean_rel"] <= spec.mean_rel
        ok = within if lay.role != "negative control" else not within
        rows.append({"layout": lay.name, "role": lay.role, "why": lay.why, "passed": ok, **stats})
    result = {
        "recipe": recipe.id, "metric": spec.metric, "reference": ref.name,
        "tolerance": {"max_rel": spec.max_rel, "mean_rel": spec.mean_rel},
        "passed": all(r["passed"] for r in rows), "layouts": rows, "wall_s": round(time.perf_counter() - t0, 1),
        "env_key": twin.env_key(),
    }
    twin.write_json(out / "equivalence.json", result)
    return result
