"""Rescaling equivalence on the twin (TRL's invariant classes, per recipe): layouts of the same
effective batch that the recipe's loss semantics say must train identically, and a negative
control that must not — so the check is shown to be able to fail.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from repro.twin import runner as twin
from repro.errors import ReproError
from repro.twin.golden import curve
from repro.metrics import read_jsonl
from repro.catalog.schema import Recipe, TwinGeometry

#: Relative tolerances near float32 rounding: sum losses are O(100) where one ulp is ~1e-7 relative;
#: reduction order across processes costs a few ulps, a semantic change costs orders of magnitude more.
MAX_REL = 1e-5
MEAN_REL = 1e-6


@dataclass
class Layout:
    name: str
    geometry: TwinGeometry
    role: str  # "reference", "equivalent" or "negative control"
    why: str


def layouts(recipe: Recipe) -> list[Layout]:
    """1 process x GA N, 2 processes x N/2, 4 x N/4 (whatever divides), then the negative control."""
    twin.require_twin(recipe)
    g = recipe.twin.geometry
    total = g.processes * g.per_device * g.grad_accum
    pd = g.per_device
    out = []
    for p in (1, 2, 4):
        if total % (p * pd) == 0:
            role = "reference" if not out else "equivalent"
            out.append(Layout(f"{p}x{pd}x{total // (p * pd)}", TwinGeometry(processes=p, per_device=pd,
                              grad_accum=total // (p * pd)), role,
                              "same sequences per optimizer step, split over processes and accumulation"))
    if len(out) < 3:
        raise ReproError(f"{recipe.id}: its twin's effective batch {total} allows fewer than 3 layouts")
    bad_pd = next((d for d in (4, 2) if total % d == 0 and d != pd), None)
    if recipe.batch.per_device_policy == "fixed" and bad_pd:
        why = (f"per-device batch {bad_pd} under {recipe.batch.loss_reduction} loss: the rescaling the recipe "
               "forbids; it must NOT match")
    else:
        why = "a per-device batch change the loss semantics do not allow; it must NOT match"
    out.append(Layout(f"{1}x{bad_pd}x{total // bad_pd}", TwinGeometry(processes=1, per_device=bad_pd,
                      grad_accum=total // bad_pd), "negative control", why))
    return out


def compare(ref: list[float], other: list[float]) -> dict:
    if len(ref) != len(other) or not ref:
        return {"steps": len(other), "max_rel": math.inf, "mean_rel": math.inf, "worst_step": None}
    rel = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(ref, other)]
    worst = max(range(len(rel)), key=rel.__getitem__)
    drift = statistics.fmean(b - a for a, b in zip(ref, other)) / statistics.fmean(abs(a) for a in ref)
    return {"steps": len(ref), "max_abs": max(abs(a - b) for a, b in zip(ref, other)), "max_rel": max(rel),
            "mean_rel": abs(drift), "worst_step": worst + 1, "ref_at_worst": ref[worst], "run_at_worst": other[worst]}


def _batches(items: list[Layout], cores: int) -> list[list[Layout]]:
    """Group runs so that concurrently running processes never exceed the cores."""
    batches, current, used = [], [], 0
    for item in sorted(items, key=lambda x: x.geometry.processes):
        p = item.geometry.processes
        if current and used + p > cores:
            batches.append(current)
            current, used = [], 0
        current.append(item)
        used += p
    return batches + ([current] if current else [])


def run_equivalence(recipe: Recipe, out: Path) -> dict:
    plan = layouts(recipe)
    # Start-up (imports) dominates each run and results do not depend on timing, so oversubscribe
    # the cores; REPRO_EQUIVALENCE_SLOTS bounds the concurrent processes.
    cores = int(os.environ.get("REPRO_EQUIVALENCE_SLOTS", 4 * (os.cpu_count() or 1)))
    t0 = time.perf_counter()
    curves: dict[str, list[float]] = {}
    for batch in _batches(plan, cores):
        runs = [twin.prepare(recipe, out / lay.name, geometry=lay.geometry) for lay in batch]
        procs = []
        for r in runs:
            r.out_dir.mkdir(parents=True, exist_ok=True)
            log = open(r.out_dir / "train.log", "w", encoding="utf-8")
            procs.append((r, log, subprocess.Popen(r.argv, env=r.env, cwd=twin.ROOT, stdout=log,
                                                   stderr=subprocess.STDOUT)))
        for r, log, proc in procs:
            rc = proc.wait()
            log.close()
            if rc != 0:
                raise ReproError(f"{recipe.id}: equivalence run {r.out_dir.name} exited {rc}; see {r.out_dir / 'train.log'}")
            curves[r.out_dir.name] = curve(list(read_jsonl(twin.metrics_path(r))), "loss")[1]
    ref = plan[0]
    rows = []
    for lay in plan:
        stats = compare(curves[ref.name], curves[lay.name])
        within = stats["max_rel"] <= MAX_REL and stats["mean_rel"] <= MEAN_REL
        ok = within if lay.role != "negative control" else not within
        rows.append({"layout": lay.name, "role": lay.role, "why": lay.why, "passed": ok, **stats})
    result = {
        "recipe": recipe.id, "reference": ref.name, "tolerance": {"max_rel": MAX_REL, "mean_rel": MEAN_REL},
        "passed": all(r["passed"] for r in rows), "layouts": rows, "wall_s": round(time.perf_counter() - t0, 1),
        "env_key": twin.env_key(),
    }
    twin.write_json(out / "equivalence.json", result)
    return result
