"""A twin run's verdict: the twin block's checks over its records (verdict.json, written by
repro.twin.report.write_outputs; the orchestrator repro.twin.session calls both in one place).

Exit code of `repro run`: 0 when every check passes, 1 when one fails or cannot be measured.
"""

from __future__ import annotations

import math

from repro.base.curves import FAIL, PASS, CheckResult
from repro.twin import golden
from repro.twin.checks import run_check
from repro.twin.runner import TwinResult


def step_sequence(run: TwinResult) -> CheckResult:
    """Steps 1..N, each once: duplicates (two runs in one file) or gaps (lost steps) fail."""
    steps = [r.step for r in run.records if r.phase == "train"]
    dupes = sorted({s for s in steps if steps.count(s) > 1})
    missing = sorted(set(range(1, max(steps, default=0) + 1)) - set(steps))
    ok = bool(steps) and not dupes and not missing and steps == sorted(steps)
    msg = (f"steps 1..{len(steps)}, each once" if ok else
           f"{len(steps)} records; duplicate steps {dupes[:5]}, missing steps {missing[:5]}" if steps else
           "no step was recorded")
    return CheckResult("step sequence", PASS if ok else FAIL, len(dupes) + len(missing), 0, "exact",
                       "the run itself", msg)


def divergence(run: TwinResult) -> CheckResult:
    d = run.diverged
    if d is None:
        return CheckResult("no divergence", PASS, None, None, "-", "the run itself", "no NaN/inf loss or gradient norm")
    return CheckResult("no divergence", FAIL, None, None, "-", "the run itself",
                       f"training stopped at step {d['step']}: {d['metric']} = {d['value']}")


def evaluate(run: TwinResult, golden_ref: dict | None, key: str) -> list[CheckResult]:
    """The run's own integrity, then every check the twin block declares, in its order; `golden`
    expands to one check per metric."""
    out: list[CheckResult] = [step_sequence(run), divergence(run)]
    for c in run.recipe.twin.checks:
        if c.kind == "golden":
            # another declared layout of the same effective batch (--geometry) trains the same curve to
            # rounding, not bit for bit: it is held to the approximate lane only
            out += golden.compare(list(run.records), golden_ref, run.recipe.twin.golden, key, run.run.asset_keys,
                                  f"expected/golden/{run.recipe.id}",
                                  deterministic=run.run.geometry == run.recipe.twin.geometry)
        else:
            out.append(run_check(c, list(run.records)))
    if run.run.geometry == run.recipe.twin.geometry:  # the reference was run at the twin block's own geometry
        from repro.twin import upstream_ref as reference  # lazy: a later stage or a heavy import, only when this runs

        out += reference.compare(run.recipe, list(run.records), run.run.asset_keys)
    return out


def verdict(run: TwinResult, checks: list[CheckResult]) -> dict:
    return {
        "recipe": run.recipe.id,
        "scale": "twin",
        "passed": bool(checks) and all(c.status == PASS for c in checks),
        "checks": [
            {"name": c.name, "status": c.status, "passed": c.status == PASS, "measured": _num(c.measured),
             "expected": _num(c.expected), "tolerance": c.tolerance, "source": c.source, "message": c.message}
            for c in checks
        ],
    }


def _num(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v
