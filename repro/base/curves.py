"""The curve-check primitives: the one result type every check returns and the comparison of a run's
curve with a reference (goldens, upstream curves, verified claims). Pure: numbers in, a result out.

Every check says PASS, FAIL or NOT-MEASURED; NOT-MEASURED is never a pass.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

PASS = "PASS"
FAIL = "FAIL"
NOT_MEASURED = "NOT-MEASURED"
Status = Literal["PASS", "FAIL", "NOT-MEASURED"]

#: Megatron-LM rounds golden values to 5 decimals before its deterministic comparison.
DETERMINISTIC_DECIMALS = 5


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    measured: float | None
    expected: float | None
    tolerance: str
    source: str
    message: str
    warnings: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["warnings"] = list(self.warnings)
        for key in ("measured", "expected"):
            value = out[key]
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = str(value)
        return out


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.4g}"
    return f"{value:.6g}"


def approximate_budget(n_steps: int) -> int:
    """Megatron-LM's allowance of failing steps: 1% of them, at least 1, at most 50."""
    return min(max(n_steps // 100, 1), 50)


def _worst(pairs: list[tuple[int, float, float]]) -> tuple[int, float, float]:
    def badness(p: tuple[int, float, float]) -> float:
        _, a, b = p
        if not math.isfinite(a):
            return math.inf
        return abs(a - b) / abs(b) if b else abs(a - b)

    return max(pairs, key=badness)


def check_curve(
    name: str,
    steps: Sequence[int],
    values: Sequence[float],
    ref_steps: Sequence[int],
    ref_values: Sequence[float],
    *,
    rtol: float,
    source: str,
    env_key: str | None = None,
    ref_env_key: str | None = None,
    budget: int | None = None,
    residual_tol: float | None = None,
) -> CheckResult:
    """A run's curve against a reference curve on the steps both have.

    Lanes (each that applies must pass):
      * deterministic: only when both environment keys are given and equal; values rounded to
        5 decimals must be identical at every common step;
      * approximate: ``|run - ref| <= rtol*|ref|`` at each step, with at most ``budget`` failures
        (default :func:`approximate_budget`); a NaN in the run is a failure;
      * residual (when ``residual_tol`` is given): ``|mean(run - ref)| <= residual_tol``; this is
        what catches a small one-sided shift (e.g. a dropped gradient-accumulation step) that
        stays inside the point-wise band.
    A failure names the worst step with both values.
    """
    run = {s: v for s, v in zip(steps, values)}
    ref = {s: v for s, v in zip(ref_steps, ref_values) if _finite(v)}
    common = sorted(set(run) & set(ref))
    tol_text = f"rtol {rtol:g}" + (f", residual ≤ {residual_tol:g}" if residual_tol is not None else "")
    if not common:
        return CheckResult(name, NOT_MEASURED, None, None, tol_text, source,
                           "the run and the reference share no step")
    pairs = [(s, run[s], ref[s]) for s in common]
    n = len(pairs)
    worst_step, worst_run, worst_ref = _worst(pairs)
    worst_text = f"worst step {worst_step}: run {_fmt(worst_run)} vs reference {_fmt(worst_ref)}"
    failures: list[str] = []
    lanes: list[str] = []

    if env_key and ref_env_key and env_key == ref_env_key:
        lanes.append("deterministic")
        differing = [p for p in pairs
                     if not math.isfinite(p[1])
                     or round(p[1], DETERMINISTIC_DECIMALS) != round(p[2], DETERMINISTIC_DECIMALS)]
        if differing:
            s, a, b = _worst(differing)
            failures.append(f"deterministic lane (environment '{env_key}' matches the reference): "
                            f"{len(differing)} of {n} steps differ at 5 decimals; "
                            f"worst step {s}: run {_fmt(a)} vs reference {_fmt(b)}")

    lanes.append("approximate")
    allowed = approximate_budget(n) if budget is None else budget
    outside = [p for p in pairs if not (math.isfinite(p[1]) and abs(p[1] - p[2]) <= rtol * abs(p[2]))]
    if len(outside) > allowed:
        s, a, b = _worst(outside)
        failures.append(f"approximate lane: {len(outside)} of {n} steps outside rtol {rtol:g} "
                        f"(budget {allowed}); worst step {s}: run {_fmt(a)} vs reference {_fmt(b)}")

    mean_residual = None
    if residual_tol is not None:
        lanes.append("residual")
        finite = [a - b for _, a, b in pairs if math.isfinite(a)]
        mean_residual = statistics.fmean(finite) if len(finite) == n else math.nan
        if not (math.isfinite(mean_residual) and abs(mean_residual) <= residual_tol):
            direction = "above" if mean_residual > 0 else "below"
            failures.append(f"residual lane: mean(run - reference) = {_fmt(mean_residual)} "
                            f"(run systematically {direction} the reference; limit {residual_tol:g})")

    details = {"lanes": lanes, "steps_compared": n, "outside": len(outside), "budget": allowed,
               "worst_step": worst_step, "mean_residual": mean_residual}
    final_run = pairs[-1][1]
    final_ref = pairs[-1][2]
    if failures:
        return CheckResult(name, FAIL, final_run, final_ref, tol_text, source,
                           "; ".join(failures), details=details)
    return CheckResult(name, PASS, final_run, final_ref, tol_text, source,
                       f"{n} steps compared ({', '.join(lanes)} lanes); {len(outside)} outside rtol "
                       f"(budget {allowed}); {worst_text}", details=details)
