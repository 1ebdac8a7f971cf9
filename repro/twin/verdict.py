"""A twin run's verdict: the twin block's checks over its records (verdict.json).

Exit code of `repro run`: 0 when every check passes, 1 when one fails or cannot be measured.
"""

from __future__ import annotations

import math

from repro.verify.checks import PASS, CheckResult
from repro.twin import golden
from repro.twin.checks import run_check
from repro.twin.runner import TwinRun


def evaluate(run: TwinRun, golden_ref: dict | None, key: str) -> list[CheckResult]:
    """Every check the twin block declares, in its order; `golden` expands to one check per metric."""
    out: list[CheckResult] = []
    for c in run.recipe.twin.checks:
        if c.kind == "golden":
            out += golden.compare(run.records, golden_ref, run.recipe.twin.golden, key, run.asset_keys,
                                  f"expected/golden/{run.recipe.id}")
        else:
            out.append(run_check(c, run.records))
    return out


def verdict(run: TwinRun, checks: list[CheckResult]) -> dict:
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
