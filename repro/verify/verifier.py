"""Map every claim of a recipe's expected file to a check over parsed logs.

``verify`` is pure: it takes already-parsed :class:`~repro.metrics.MetricRecord` lists (one list
per run, e.g. per seed) and returns a :class:`VerifyResult`; parsing, printing and reports live
elsewhere. Each claim ends as exactly one of PASS / FAIL / NOT-MEASURED, and a claim the logs
cannot speak to is NOT-MEASURED, never PASS:

* ``kind: none`` (nothing was published) and claims without ``measure`` (evaluation scores,
  dataset sizes: not in a training log) are NOT-MEASURED with the reason;
* a ``measure`` whose keys no record carries is NOT-MEASURED naming the keys it looked for.

Claims with ``used_by_verdict: false`` (e.g. the Fast-LLM throughput figures that conflict with
the one the verdict uses) are still checked and reported, but cannot change the exit code.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from repro.verify.checks import (
    FAIL,
    MIN_STEADY_POINTS,
    NOT_MEASURED,
    PASS,
    CheckResult,
    allowed_deviation,
    check_curve,
    check_initial_value,
    check_scalar,
    check_seeds,
    check_throughput,
)
from repro.verify.claims import Claim, ExpectedFile, load_expected
from repro.base.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from repro.verify.flops import flops_per_token
from repro.verify.hardware import CPU, is_cpu, normalize_gpu
from repro.base.metrics import CORE_FIELDS, MetricRecord

Points = list[tuple[int, float]]


@dataclass(frozen=True)
class ReferenceCurve:
    """A reference loss curve (e.g. a golden run) with its provenance and comparison knobs."""

    steps: Sequence[int]
    values: Sequence[float]
    source: str
    env_key: str | None = None
    rtol: float = 0.05  # Megatron-LM's approximate lane for "lm loss"
    residual_tol: float | None = None
    metric: str = "loss"


@dataclass
class ClaimResult:
    claim_id: str
    kind: str
    metric: str
    units: str
    definition: str
    used_by_verdict: bool
    secondary: bool
    conflicts_with: list[str]
    tolerance_rationale: str
    check: CheckResult

    @property
    def status(self) -> str:
        return self.check.status

    def to_json(self) -> dict[str, Any]:
        out = self.check.to_json()
        out.pop("name", None)
        return {
            "id": self.claim_id,
            "kind": self.kind,
            "metric": self.metric,
            "units": self.units,
            "status": self.check.status,
            "measured": out["measured"],
            "expected": out["expected"],
            "tolerance": out["tolerance"],
            "tolerance_rationale": self.tolerance_rationale,
            "source": out["source"],
            "secondary": self.secondary,
            "used_by_verdict": self.used_by_verdict,
            "conflicts_with": self.conflicts_with,
            "message": out["message"],
            "warnings": out["warnings"],
            "definition": self.definition,
        }


@dataclass
class VerifyResult:
    recipe: str
    notes: str
    hardware: str | None
    env_key: str | None
    n_runs: int
    results: list[ClaimResult]
    warnings: list[str] = field(default_factory=list)
    #: per run, the loss series the report plots: {"label", "steps", "values"}
    curves: list[dict[str, Any]] = field(default_factory=list)
    reference: dict[str, Any] | None = None

    def verdict_results(self) -> list[ClaimResult]:
        return [r for r in self.results if r.used_by_verdict]

    def counts(self) -> dict[str, int]:
        out = {PASS: 0, FAIL: 0, NOT_MEASURED: 0}
        for r in self.verdict_results():
            out[r.status] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "hardware": self.hardware,
            "env_key": self.env_key,
            "runs": self.n_runs,
            "exit_code": exit_code(self),
            "summary": self.counts(),
            "warnings": self.warnings,
            "claims": [r.to_json() for r in self.results],
        }


def exit_code(result: VerifyResult) -> int:
    """0: every measured verdict claim passed; 1: one failed; 2: the logs spoke to no verdict claim.

    NOT-MEASURED never counts as a pass, so logs that measure nothing at all (the wrong recipe,
    the wrong files) are reported as unusable input rather than as a success.
    """
    counts = result.counts()
    if counts[FAIL]:
        return EXIT_FAILED
    if counts[PASS] == 0:
        return EXIT_BAD_INPUT
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Reading series out of records
# --------------------------------------------------------------------------------------------


def _record_value(rec: MetricRecord, key: str) -> float | None:
    if key in CORE_FIELDS:
        value = getattr(rec, key)
    else:
        value = rec.extra.get(key)
    return None if value is None else float(value)


def series(records: Sequence[MetricRecord], key: str, phase: str = "train") -> Points:
    """(step, value) for every record of ``phase`` carrying ``key``, one value per step.

    Several ranks may log the same step; rank 0 (or the rank-less record) wins, as upstream
    frameworks log metrics from rank 0.
    """
    chosen: dict[int, tuple[int, float]] = {}
    for rec in records:
        if rec.phase != phase:
            continue
        value = _record_value(rec, key)
        if value is None:
            continue
        priority = 0 if rec.rank in (None, 0) else 1
        if rec.step not in chosen or priority < chosen[rec.step][0]:
            chosen[rec.step] = (priority, value)
    return sorted((step, value) for step, (_, value) in chosen.items())


def _claim_flops_per_token(claim: Claim) -> float | None:
    cfg = claim.config
    if cfg.model is None or cfg.seq_len is None:
        return None
    return flops_per_token(cfg.model, cfg.seq_len, cfg.flops_formula or "dense", cfg.window_size)


def _tflops_from_tokens(records: Sequence[MetricRecord], claim: Claim, phase: str) -> Points:
    """Model TFLOP/s per device implied by the logged tokens/s and the claim's FLOPs model."""
    fpt = _claim_flops_per_token(claim)
    if fpt is None:
        return []
    return [(s, v * fpt / 1e12) for s, v in series(records, "tokens_per_s_per_device", phase)]


def _fast_llm_tflops_ratio(records: Sequence[MetricRecord], claim: Claim, phase: str) -> Points:
    """Printed model TFLOP/s ÷ (printed tokens/s × Fast-LLM FLOPs/token): 1.0 for a consistent log."""
    implied = dict(_tflops_from_tokens(records, claim, phase))
    printed = series(records, "model_tflops_per_device", phase)
    return [(s, v / implied[s]) for s, v in printed if implied.get(s)]


#: Series computed from logged fields plus the claim's config, usable as ``measure.keys``.
COMPUTED_SERIES: dict[str, Callable[[Sequence[MetricRecord], Claim, str], Points]] = {
    "model_tflops_from_tokens": _tflops_from_tokens,
    "fast_llm_tflops_ratio": _fast_llm_tflops_ratio,
}


@dataclass(frozen=True)
class Run:
    """One run's evidence: its per-step records and its run-level values.

    Run-level values are numbers a log states once for the whole run rather than per step, e.g.
    HF Trainer's end-of-training ``train_loss`` (mean over the run) and ``train_tokens_per_second``,
    or MLPerf's ``global_batch_size``. Parsers keep them out of the step records on purpose (on
    the last step they would pass for that step's measurement); claims reach them by key.
    """

    records: Sequence[MetricRecord]
    values: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Evidence:
    key: str
    points: Points  # in the claim's window; empty for a run-level value
    run_value: float | None = None
    skipped: tuple[int, ...] = ()  # steps whose non-finite value was left out (a glitch, not divergence)


def drop_glitches(points: Points) -> tuple[Points, tuple[int, ...]]:
    """Leave out a NaN/inf that finite values follow (a logging glitch), and say which steps.

    Non-finite values at the end of the series stay: the run diverged and never recovered, and
    the claim must fail on it rather than be measured on what came before."""
    last_finite = max((i for i, (_, v) in enumerate(points) if math.isfinite(v)), default=-1)
    kept = [p for i, p in enumerate(points) if i > last_finite or math.isfinite(p[1])]
    skipped = tuple(s for i, (s, v) in enumerate(points) if i < last_finite and not math.isfinite(v))
    return kept, skipped


def claim_evidence(run: Run, claim: Claim) -> Evidence | None:
    """The first of the claim's measure keys the run speaks to: a computed series, a per-step
    series (in the claim's window) or a run-level value, in the order the claim lists its keys."""
    assert claim.measure is not None
    for key in claim.measure.keys:
        if key in COMPUTED_SERIES:
            points = COMPUTED_SERIES[key](run.records, claim, claim.measure.phase)
        else:
            points = series(run.records, key, claim.measure.phase)
        if points:
            kept, skipped = drop_glitches(_in_window(points, claim))
            return Evidence(key, kept, skipped=skipped)
        value = run.values.get(key)
        if value is not None and claim.window.steps is None:  # a whole-run number says nothing about step k
            return Evidence(key, [], float(value))
    return None


def _in_window(points: Points, claim: Claim) -> Points:
    window = claim.window
    if window.steps is not None:
        first, last = window.steps
        points = [(s, v) for s, v in points if s >= first and (last is None or s <= last)]
    if window.skip_first and claim.kind != "throughput":  # throughput skips inside its check
        points = [(s, v) for s, v in points if s > window.skip_first]
    return points


# --------------------------------------------------------------------------------------------
# Reducing a series to one number
# --------------------------------------------------------------------------------------------


def _all_finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def _peak_index(points: Points) -> int | None:
    """Index of the first maximum, once the series has stopped rising after it.

    A run still in warm-up has a strictly rising LR whose last point is its maximum: that is not
    the peak yet (None). After the peak the LR either falls or, printed to 4 significant digits
    early in a long cosine decay, stays flat; both show the maximum has been reached.
    """
    values = [v for _, v in points]
    if not values or not _all_finite(values):
        return None
    index = values.index(max(values))
    return index if index < len(values) - 1 else None


def reduce_points(points: Points, how: str) -> tuple[float | None, str]:
    """One number from a window of points, or (None, why not).

    A non-finite value in the window makes mean/median/min/max NaN so that a diverged run
    FAILs instead of being averaged away.
    """
    if not points:
        return None, "no logged value in the claim's window"
    values = [v for _, v in points]
    if how == "first":
        return values[0], f"step {points[0][0]}"
    if how == "final":
        return values[-1], f"step {points[-1][0]}"
    if how in ("mean", "median", "min", "max"):
        if not _all_finite(values):
            return math.nan, "window contains NaN/inf"
        fn = {"mean": statistics.fmean, "median": statistics.median, "min": min, "max": max}[how]
        return float(fn(values)), f"{how} of {len(values)} points, steps {points[0][0]}-{points[-1][0]}"
    if how in ("peak", "step_of_peak"):
        index = _peak_index(points)
        if index is None:
            return None, "the series is still rising at its last point (run ended before the peak)"
        step, value = points[index]
        return (value, f"peak at step {step}") if how == "peak" else (float(step), f"peak {value:g} at step {step}")
    if how == "linear_decay_end":
        return _linear_decay_end(points)
    raise ValueError(f"unknown reduce '{how}'")


def _linear_decay_end(points: Points) -> tuple[float | None, str]:
    """Where a linearly decaying series reaches zero: the total optimizer steps of a linear LR
    schedule, readable from any stretch of the decay, so a partial run can still speak to it."""
    index = _peak_index(points)
    if index is None:
        return None, "no decay after a peak in the window"
    tail = points[index + 1:]
    if len(tail) < 3:
        return None, f"{len(tail)} point(s) after the peak; need 3 to fit the decay"
    xs = [float(s) for s, _ in tail]
    ys = [v for _, v in tail]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    if slope >= 0:
        return None, "the series does not decrease after the peak"
    end = mx - my / slope
    return end, f"zero crossing of a line fitted to {len(tail)} points, steps {tail[0][0]}-{tail[-1][0]}"


# --------------------------------------------------------------------------------------------
# Claim -> check
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    hardware: str | None
    env_key: str | None


def _not_measured(claim: Claim, message: str) -> CheckResult:
    tol = claim.tolerance.describe() if claim.tolerance else "—"
    return CheckResult(claim.id, NOT_MEASURED, None, claim.value, tol, claim.source.cite(), message)


def _rate_claim(claim: Claim) -> bool:
    """Throughput claims and the sanity claims computed from a log's rates (tokens/s, TFLOP/s)."""
    keys = claim.measure.keys if claim.measure is not None else []
    return claim.kind == "throughput" or any("tflops" in k or "tokens_per_s" in k for k in keys)


def _evaluate(claim: Claim, runs: Sequence[Run], ctx: _Context) -> CheckResult:
    """The claim's check, with a warning naming every non-finite value that was left out."""
    result = _evaluate_claim(claim, runs, ctx)
    if claim.measure is None or claim.kind == "none":
        return result
    notes = []
    for i, run in enumerate(runs, 1):
        evidence = claim_evidence(run, claim)
        if evidence is not None and evidence.skipped:
            steps = ", ".join(map(str, evidence.skipped[:5])) + (" ..." if len(evidence.skipped) > 5 else "")
            notes.append(f"{evidence.key}: {len(evidence.skipped)} non-finite value(s) left out (step(s) {steps})"
                         + (f" in run {i}" if len(runs) > 1 else "") + "; measured on the rest")
    if not notes:
        return result
    return replace(result, warnings=tuple(result.warnings) + tuple(notes))


def _evaluate_claim(claim: Claim, runs: Sequence[Run], ctx: _Context) -> CheckResult:
    if claim.kind == "none":
        return _not_measured(claim, f"nothing to check: {claim.definition}")
    if claim.measure is None:
        return _not_measured(claim, "training logs cannot measure this claim (no `measure` in the expected file)")
    assert claim.value is not None and claim.tolerance is not None
    if ctx.hardware == CPU and _rate_claim(claim):
        return _not_measured(claim, f"not comparable: the run is on a CPU and the claim on "
                                    f"{claim.hardware.gpu or 'GPUs'}; a CPU rate says nothing about it")
    if claim.kind == "throughput":
        return _evaluate_throughput(claim, runs, ctx)

    measured: list[float] = []
    reasons: list[str] = []
    first_points: Points = []
    for run in runs:
        evidence = claim_evidence(run, claim)
        if evidence is None:
            reasons.append(f"no record or run-level value carries any of {claim.measure.keys}")
            continue
        if evidence.run_value is not None:
            value, why = evidence.run_value, "run-level value"
        else:
            value, why = reduce_points(evidence.points, claim.measure.reduce)
            first_points = first_points or evidence.points
        reasons.append(f"{evidence.key}: {why}")
        if value is not None:
            measured.append(value)
    source = claim.source.cite()
    if not measured:
        return _not_measured(claim, "; ".join(dict.fromkeys(reasons)))

    if claim.kind == "sanity" and claim.measure.reduce == "first" and len(runs) == 1 and first_points:
        steps, values = zip(*first_points)
        return check_initial_value(claim.id, steps, values, claim.value, claim.tolerance, source, units=claim.units)
    if len(measured) >= 2 and claim.kind in ("loss", "evaluation"):
        return check_seeds(claim.id, measured, claim.value,
                           margin=allowed_deviation(claim.value, claim.tolerance), source=source)
    value = measured[0] if len(measured) == 1 else statistics.median(measured)
    context = reasons[0] if len(measured) == 1 else f"median over {len(measured)} runs"
    return check_scalar(claim.id, value, claim.value, claim.tolerance, source, units=claim.units, context=context)


def _evaluate_throughput(claim: Claim, runs: Sequence[Run], ctx: _Context) -> CheckResult:
    """Pool every run's window; a run-level rate (HF's train_tokens_per_second) is one point."""
    assert claim.measure is not None and claim.value is not None and claim.tolerance is not None
    steps: list[int] = []
    values: list[float] = []
    used_key = None
    for run in runs:
        evidence = claim_evidence(run, claim)
        if evidence is None:
            continue
        used_key = used_key or evidence.key
        if evidence.run_value is not None:
            last = max((r.step for r in run.records), default=1)
            steps.append(max(last, claim.window.skip_first + 1))
            values.append(evidence.run_value)
        else:
            steps.extend(s for s, _ in evidence.points)
            values.extend(v for _, v in evidence.points)
    if used_key is None:
        return _not_measured(claim, f"no record or run-level value carries any of {claim.measure.keys}")
    if "tflops" in used_key:
        flops_per_unit: float | None = 1e12
    else:
        flops_per_unit = _claim_flops_per_token(claim)
    return check_throughput(
        claim.id, steps, values, expected=claim.value, tol=claim.tolerance, source=claim.source.cite(),
        skip_first=claim.window.skip_first, claim_gpu=claim.hardware.gpu, run_gpu=ctx.hardware,
        flops_per_unit=flops_per_unit, units=claim.units,
        min_points=MIN_STEADY_POINTS if claim.window.steady_state else 1,
    )


def _result(claim: Claim, check: CheckResult) -> ClaimResult:
    return ClaimResult(
        claim_id=claim.id, kind=claim.kind, metric=claim.metric, units=claim.units,
        definition=claim.definition, used_by_verdict=claim.used_by_verdict, secondary=claim.secondary,
        conflicts_with=list(claim.conflicts_with),
        tolerance_rationale=claim.tolerance.rationale if claim.tolerance else "",
        check=check,
    )


def _curve_results(runs: Sequence[Run], reference: ReferenceCurve, env_key: str | None) -> list[ClaimResult]:
    out = []
    for i, run in enumerate(runs, 1):
        points = series(run.records, reference.metric)
        steps = [s for s, _ in points]
        values = [v for _, v in points]
        name = f"{reference.metric}-curve" + (f"-run{i}" if len(runs) > 1 else "")
        check = check_curve(name, steps, values, reference.steps, reference.values, rtol=reference.rtol,
                            source=reference.source, env_key=env_key, ref_env_key=reference.env_key,
                            residual_tol=reference.residual_tol)
        out.append(ClaimResult(
            claim_id=name, kind="loss", metric=reference.metric, units="",
            definition=f"the run's {reference.metric} curve against the supplied reference curve",
            used_by_verdict=True, secondary=False, conflicts_with=[],
            tolerance_rationale="Megatron-LM lanes: exact when the environment key matches, otherwise "
                                "rtol with a budget of min(max(n//100,1),50) failing steps",
            check=check,
        ))
    return out


def verify_expected(
    expected: ExpectedFile,
    records_by_run: Sequence[Sequence[MetricRecord]],
    hardware: str | None = None,
    env_key: str | None = None,
    reference: ReferenceCurve | None = None,
    run_values: Sequence[Mapping[str, float]] | None = None,
) -> VerifyResult:
    """Like :func:`verify` but with an already-loaded expected file (tests, other callers)."""
    hw = (CPU if is_cpu(hardware) else normalize_gpu(hardware)) if hardware else None
    warnings: list[str] = []
    if hardware and hw is None:
        warnings.append(f"GPU '{hardware}' is not in the peak table; cross-hardware MFU checks are off")
    ctx = _Context(hardware=hw, env_key=env_key)
    values = list(run_values) if run_values is not None else []
    runs = [Run(list(r), values[i] if i < len(values) else {}) for i, r in enumerate(records_by_run)]
    results = [_result(claim, _evaluate(claim, runs, ctx)) for claim in expected.claims]
    if reference is not None:
        results.extend(_curve_results(runs, reference, env_key))
    curves = []
    for i, run in enumerate(runs, 1):
        points = series(run.records, "loss")
        if points:
            curves.append({"label": f"run {i}", "steps": [s for s, _ in points], "values": [v for _, v in points]})
    ref_json = None
    if reference is not None:
        ref_json = {"steps": list(reference.steps), "values": list(reference.values), "source": reference.source}
    return VerifyResult(
        recipe=expected.recipe, notes=expected.notes, hardware=hw, env_key=env_key, n_runs=len(runs),
        results=results, warnings=warnings, curves=curves, reference=ref_json,
    )


def verify(
    recipe_id: str,
    records_by_run: Sequence[Sequence[MetricRecord]],
    hardware: str | None = None,
    env_key: str | None = None,
    reference: ReferenceCurve | None = None,
    run_values: Sequence[Mapping[str, float]] | None = None,
) -> VerifyResult:
    """Check parsed logs (one record list per run) against ``expected/<recipe_id>.yaml``.

    ``run_values`` optionally gives, per run, the run-level numbers its log states once (see
    :class:`Run`); ``hardware`` is the run's GPU (any spelling :func:`repro.verify.hardware.normalize_gpu`
    knows); ``env_key`` names the software environment for the deterministic curve lane.
    """
    return verify_expected(load_expected(recipe_id), records_by_run, hardware, env_key, reference, run_values)
