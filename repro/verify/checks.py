"""Pure check functions: numbers in, a :class:`CheckResult` out. No I/O, no claim loading.

Every check can say three things and only three: PASS, FAIL, or NOT-MEASURED. NOT-MEASURED
means the evidence cannot speak to the claim (no such metric logged, too few steady-state
points, too few seeds to show equivalence); it is never a pass, and callers must not count it
as one.

The comparisons follow the anchors the research names:

* scalars use numpy-``isclose`` semantics, ``|m - e| <= abs + rel*|e|``, two-sided unless the
  claim says otherwise (an unexpectedly good number is flagged as well as a bad one, as
  Megatron-Bridge's performance check does);
* throughput uses the median of a steady-state window that skips warm-up (Megatron-LM's
  iteration-time check) and, when the run's GPU differs from the claim's, compares MFU (the
  published rate scaled by the ratio of dense peaks) instead of raw tokens/s, with a warning;
* curves use Megatron-LM's two lanes (exact where the environment key matches, approximate with
  a budget of ``min(max(n//100, 1), 50)`` failing steps otherwise) plus TRL's mean-residual test
  for systematic drift;
* several seeds use a statistical test (TOST equivalence by default, or a one-sample t-test)
  instead of comparing one number with one number.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Literal, Sequence

from repro.base.curves import (  # noqa: F401  (re-exported: verify's checks and the twin's share them)
    DETERMINISTIC_DECIMALS, FAIL, NOT_MEASURED, PASS, CheckResult, Status, _finite, _fmt, _worst, approximate_budget,
    check_curve)
from repro.verify.claims import Tolerance
from repro.verify.hardware import normalize_gpu, peak_flops


#: When the run's GPU differs from the claim's and the claim gives no ``mfu_band``: the same
#: software reaches a different fraction of peak on a different chip (memory bandwidth,
#: interconnect, kernel tuning differ), so the band is much wider than a same-GPU tolerance.
DEFAULT_MFU_BAND = 0.25
#: Fewer steady-state points than this and a median says little about steady state.
MIN_STEADY_POINTS = 3


# --------------------------------------------------------------------------------------------
# Scalars
# --------------------------------------------------------------------------------------------


def allowed_deviation(expected: float, tol: Tolerance) -> float:
    """The half-width of the acceptance band around ``expected``."""
    return (tol.abs or 0.0) + (tol.rel or 0.0) * abs(expected)


def within(measured: float, expected: float, tol: Tolerance) -> bool:
    """True when ``measured`` is inside the band; a NaN is never inside anything."""
    if not math.isfinite(measured):
        return False
    diff = measured - expected
    allowed = allowed_deviation(expected, tol)
    if tol.two_sided:
        return abs(diff) <= allowed
    if tol.bound == "upper":
        return diff <= allowed
    return diff >= -allowed


def check_scalar(
    name: str,
    measured: float | None,
    expected: float,
    tol: Tolerance,
    source: str,
    *,
    units: str = "",
    context: str = "",
    warnings: Sequence[str] = (),
) -> CheckResult:
    """One number against one number. ``measured=None`` is NOT-MEASURED, NaN/inf is a FAIL."""
    described = tol.describe()
    if measured is None:
        return CheckResult(name, NOT_MEASURED, None, expected, described, source,
                           context or "the logs carry no value for this metric", tuple(warnings))
    unit = f" {units}" if units and units != "1" else ""  # "1" marks a dimensionless number
    if not math.isfinite(measured):
        return CheckResult(name, FAIL, measured, expected, described, source,
                           f"measured {measured} is not a finite number", tuple(warnings))
    ok = within(measured, expected, tol)
    gap = measured - expected
    rel = f" ({gap / abs(expected):+.2%})" if expected else ""
    band = allowed_deviation(expected, tol)
    verdict = "within" if ok else "outside"
    side = "" if tol.two_sided else f" ({tol.bound} bound)"
    msg = (f"measured {_fmt(measured)}{unit} vs expected {_fmt(expected)}{unit}{rel}: "
           f"{verdict} ±{_fmt(band)}{side}")
    if not ok and tol.two_sided and gap > 0:
        msg += "; higher than published is flagged too (two-sided)"
    if context:
        msg = f"{msg}; {context}"
    lower = expected - band if tol.two_sided or tol.bound == "lower" else None
    upper = expected + band if tol.two_sided or tol.bound == "upper" else None
    return CheckResult(name, PASS if ok else FAIL, measured, expected, described, source, msg, tuple(warnings),
                       {"band": band, "lower": lower, "upper": upper})


def check_initial_value(
    name: str,
    steps: Sequence[int],
    values: Sequence[float],
    expected: float,
    tol: Tolerance,
    source: str,
    *,
    first_n: int = 1,
    units: str = "",
) -> CheckResult:
    """A quantity fixed by construction at the start of training, before any update.

    Used for the sanity claims that hold for *any* correct run, whatever the hardware:
    DPO loss = ln 2 at step 1 (policy == reference, so every log-ratio is 0), reward-model
    accuracy ≈ 0.5 (an untrained scalar head ranks pairs at chance), RLVR KL ≈ 0 (policy and
    reference are the same checkpoint until the first update). Averages the first ``first_n``
    logged values.
    """
    pairs = sorted(zip(steps, values))[: max(first_n, 1)]
    if not pairs:
        return check_scalar(name, None, expected, tol, source, context="no value logged at the start of training")
    vals = [v for _, v in pairs]
    measured = statistics.fmean(vals) if all(_finite(v) for v in vals) else float("nan")
    first, last = pairs[0][0], pairs[-1][0]
    where = f"step {first}" if first == last else f"steps {first}-{last}"
    return check_scalar(name, measured, expected, tol, source, units=units,
                        context=f"value at the start of training ({where})")


# --------------------------------------------------------------------------------------------
# Throughput
# --------------------------------------------------------------------------------------------


def steady_window(steps: Sequence[int], values: Sequence[float], skip_first: int) -> list[tuple[int, float]]:
    """Points after the warm-up: steps numbered ``> skip_first``, finite values only.

    Step numbers, not positions, decide: Fast-LLM logs every 10 iterations, so "skip the first
    30 steps" must drop iterations 10, 20, 30 and not the first 30 log lines.
    """
    return [(s, v) for s, v in zip(steps, values) if s > skip_first and _finite(v)]


def check_throughput(
    name: str,
    steps: Sequence[int],
    values: Sequence[float],
    *,
    expected: float,
    tol: Tolerance,
    source: str,
    skip_first: int,
    claim_gpu: str | None,
    run_gpu: str | None,
    flops_per_unit: float | None = None,
    units: str = "tokens/s/device",
    min_points: int = MIN_STEADY_POINTS,
) -> CheckResult:
    """Steady-state median of a per-device rate against a published rate, two-sided.

    ``flops_per_unit`` converts one unit of the rate into FLOPs (FLOPs/token for tokens/s, 1e12
    for TFLOP/s); it is only needed to *report* MFU, because when the GPUs differ the check
    compares ``measured / peak_run`` with ``expected / peak_claim`` and the FLOPs cancel.
    ``min_points`` is 1 for a claim whose published figure is itself a whole-run average.
    """
    window = steady_window(steps, values, skip_first)
    described = tol.describe()
    if len(window) < max(min_points, 1):
        return CheckResult(
            name, NOT_MEASURED, None, expected, described, source,
            f"{len(window)} point(s) after skipping steps <= {skip_first}; need {max(min_points, 1)}",
        )
    median = statistics.median(v for _, v in window)
    span = (f"median of {len(window)} points, steps {window[0][0]}-{window[-1][0]}" if len(window) > 1
            else f"one value (step {window[0][0]})")
    claim_key, run_key = normalize_gpu(claim_gpu), normalize_gpu(run_gpu)
    warnings: list[str] = []
    if claim_key is None or run_key is None or claim_key == run_key:
        if claim_key is None:
            warnings.append("the publication does not say which GPU it measured on; compared raw rates")
        elif run_key is None:
            warnings.append(f"run hardware unknown (pass --hardware); compared raw rates as if on {claim_key}")
        return check_scalar(name, median, expected, tol, source, units=units, context=span, warnings=warnings)

    # Different GPU: the claim's rate scaled to the run's GPU at equal MFU, with the MFU band.
    scale = peak_flops(run_key) / peak_flops(claim_key)
    band = tol.mfu_band if tol.mfu_band is not None else DEFAULT_MFU_BAND
    mfu_tol = Tolerance(rel=band, two_sided=True, rationale="MFU band used across GPU types")
    warnings.append(f"hardware differs: claim measured on {claim_key}, run on {run_key}; "
                    f"compared MFU (±{band:.0%}) instead of raw rates")
    details: dict[str, Any] = {"published": expected, "peak_ratio": scale}
    mfu_text = ""
    if flops_per_unit:
        mfu_run = median * flops_per_unit / peak_flops(run_key)
        mfu_claim = expected * flops_per_unit / peak_flops(claim_key)
        details.update(mfu_run=mfu_run, mfu_claim=mfu_claim)
        mfu_text = f"; MFU {mfu_run:.1%} vs published {mfu_claim:.1%}"
    result = check_scalar(
        name, median, expected * scale, mfu_tol, source, units=units,
        context=f"{span}; published {_fmt(expected)} on {claim_key} x peak ratio {scale:.3f}{mfu_text}",
        warnings=warnings,
    )
    return CheckResult(result.name, result.status, result.measured, result.expected,
                       f"MFU ±{band:.0%}, two-sided (cross-hardware)", result.source,
                       result.message, result.warnings, {**result.details, **details})


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------



# --------------------------------------------------------------------------------------------
# Several seeds
# --------------------------------------------------------------------------------------------


def check_seeds(
    name: str,
    finals: Sequence[float | None],
    expected: float,
    *,
    margin: float,
    source: str,
    method: Literal["tost", "ttest"] = "tost",
    alpha: float = 0.05,
) -> CheckResult:
    """Several runs' values (e.g. final losses over seeds) against one published value.

    * ``tost`` (default): two one-sided t-tests that the true mean lies within ``±margin`` of
      ``expected``. PASS when equivalence is shown at ``alpha``. If the sample mean lies outside
      the margin it is a FAIL; if it lies inside but the runs are too few or too noisy to show
      equivalence, the honest answer is NOT-MEASURED (inconclusive), not a pass.
    * ``ttest``: two-sided one-sample t-test (modded-nanogpt's acceptance rule uses the
      one-sample test); PASS when there is no significant difference at ``alpha`` *and* the mean
      is within the margin.
    """
    from scipy import stats

    vals = [v for v in finals if v is not None]
    tol_text = f"{method.upper()} ±{_fmt(margin)}, α={alpha:g}"
    if len(vals) < 2:
        return CheckResult(name, NOT_MEASURED, vals[0] if vals else None, expected, tol_text, source,
                           f"{len(vals)} run(s) measured; a statistical test needs at least 2")
    if not all(math.isfinite(v) for v in vals):
        return CheckResult(name, FAIL, float("nan"), expected, tol_text, source,
                           "a run's value is not finite (NaN/inf)")
    n = len(vals)
    mean = statistics.fmean(vals)
    sd = statistics.stdev(vals)
    inside = abs(mean - expected) <= margin
    summary = f"{n} runs: mean {_fmt(mean)} ± sd {_fmt(sd)} vs expected {_fmt(expected)}"
    details: dict[str, Any] = {"n": n, "mean": mean, "sd": sd, "method": method}

    if sd == 0:  # identical runs: the tests are undefined, the answer is not
        status = PASS if inside else FAIL
        return CheckResult(name, status, mean, expected, tol_text, source,
                           f"{summary}; identical values, {'inside' if inside else 'outside'} ±{_fmt(margin)}",
                           details=details)
    if method == "tost":
        p_lower = stats.ttest_1samp(vals, expected - margin, alternative="greater").pvalue
        p_upper = stats.ttest_1samp(vals, expected + margin, alternative="less").pvalue
        p = float(max(p_lower, p_upper))
        details["p"] = p
        if p < alpha:
            return CheckResult(name, PASS, mean, expected, tol_text, source,
                               f"{summary}; equivalent within ±{_fmt(margin)} (TOST p={p:.3g})", details=details)
        if not inside:
            return CheckResult(name, FAIL, mean, expected, tol_text, source,
                               f"{summary}; mean outside ±{_fmt(margin)} (TOST p={p:.3g})", details=details)
        return CheckResult(name, NOT_MEASURED, mean, expected, tol_text, source,
                           f"{summary}; inconclusive: mean inside ±{_fmt(margin)} but equivalence not shown "
                           f"(TOST p={p:.3g} ≥ {alpha:g}); add seeds", details=details)
    p = float(stats.ttest_1samp(vals, expected).pvalue)
    details["p"] = p
    ok = p >= alpha and inside
    reason = "no significant difference" if p >= alpha else "significantly different"
    return CheckResult(name, PASS if ok else FAIL, mean, expected, tol_text, source,
                       f"{summary}; {reason} (t-test p={p:.3g}); mean {'inside' if inside else 'outside'} "
                       f"±{_fmt(margin)}", details=details)
