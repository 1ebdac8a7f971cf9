"""The checks a twin block declares, as small pure functions over the run's metric records.

A metric is a MetricRecord field ("loss", "grad_norm") or "extra.<key>" for what a trainer logs in
extra. Every check can fail: a missing metric fails, never passes by default.
"""

from __future__ import annotations

import math
import statistics

from repro.catalog.schema import TwinCheck
from repro.base.metrics import MetricRecord
from repro.base.curves import FAIL, PASS, CheckResult


def series(records: list[MetricRecord], metric: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric over the train records that have it."""
    pairs = []
    for r in records:
        if r.phase != "train":
            continue
        value = r.extra.get(metric[6:]) if metric.startswith("extra.") else getattr(r, metric, None)
        if value is not None:
            pairs.append((r.step, float(value)))
    return [s for s, _ in pairs], [v for _, v in pairs]


def _result(c: TwinCheck, ok: bool, measured: float | None, expected: float | None, tol: str, msg: str):
    name = f"{c.kind} {c.metric}" + (f" @ step {c.step}" if c.step else "")
    return CheckResult(name, PASS if ok else FAIL, measured, expected, tol, f"twin block: {c.why}", msg)


def run_check(c: TwinCheck, records: list[MetricRecord]) -> CheckResult:
    steps, values = series(records, c.metric)
    if not values:
        return _result(c, False, None, c.value, "-", f"the run logged no {c.metric}")
    if c.kind == "finite":
        bad = [s for s, v in zip(steps, values) if not math.isfinite(v)]
        return _result(c, not bad, len(bad), 0, "none allowed",
                       f"{len(values)} values, all finite" if not bad else f"non-finite {c.metric} at step {bad[0]}")
    if c.kind == "value_at_step":
        got = dict(zip(steps, values)).get(c.step)
        ok = got is not None and abs(got - c.value) <= c.tol
        return _result(c, ok, got, c.value, f"±{c.tol:g}",
                       f"{c.metric} at step {c.step} = {got!r}, expected {c.value:g} ± {c.tol:g}")
    if c.kind in ("max_at_most", "min_at_least"):
        worst = max(values) if c.kind == "max_at_most" else min(values)
        at = steps[values.index(worst)]
        ok = worst <= c.value + c.tol if c.kind == "max_at_most" else worst >= c.value - c.tol
        word = "max" if c.kind == "max_at_most" else "min"
        return _result(c, ok, worst, c.value, f"±{c.tol:g}",
                       f"{word} {c.metric} = {worst:.6g} at step {at} (bound {c.value:g})")
    window = values[-c.window:]
    final = statistics.fmean(window)
    if c.kind in ("final_above", "final_below"):
        ok = final > c.value if c.kind == "final_above" else final < c.value
        return _result(c, ok, final, c.value, f"mean of last {len(window)}",
                       f"mean {c.metric} over the last {len(window)} steps = {final:.6g} "
                       f"({'>' if c.kind == 'final_above' else '<'} {c.value:g} required)")
    first = statistics.fmean(values[: c.window])
    if len(values) < 2 * c.window:
        return _result(c, False, None, None, "-", f"only {len(values)} values; {c.kind} needs {2 * c.window}")
    delta = final - first
    ok = delta > c.tol if c.kind == "rises" else -delta > c.tol
    return _result(c, ok, delta, c.tol, f"window {c.window}",
                   f"{c.metric}: first {c.window} steps mean {first:.6g}, last {c.window} mean {final:.6g} "
                   f"({'+' if delta >= 0 else ''}{delta:.6g}; must {'rise' if c.kind == 'rises' else 'fall'} "
                   f"by more than {c.tol:g})")
