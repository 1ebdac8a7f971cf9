"""Total optimizer steps from evidence: read where the log states it, else from an identified LR schedule.

A straight line through a cosine decay lands far from the end (7,968.5 for a run whose LR reaches
0 at 8,660), so no shape is assumed: the log's own statement wins (``total_steps``, ``max_steps``,
...); failing that, the decay after the peak is fitted as linear-to-zero and as cosine-to-zero,
and a family counts as identified only if its residual is below ``MAX_RESIDUAL`` of the peak LR.
Otherwise the answer is None with the reason. Every answer says how it was obtained.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

Points = Sequence[tuple[int, float]]

#: Run-level keys that state the planned optimizer steps, in the order they are trusted.
STATED_KEYS = (
    ("total_steps", "LLaMA-Factory total_steps"),
    ("max_steps", "HF Trainer max_steps"),
    ("opt_learning_rate_training_steps", "MLPerf opt_learning_rate_training_steps"),
    ("train_iters", "Megatron train_iters"),
    ("num_training_steps", "num_training_steps"),
)
#: A schedule family is identified when its RMS residual is below this fraction of the peak LR.
MAX_RESIDUAL = 0.01
#: Points this close to the peak or to zero carry no information on where the decay ends.
_EDGE = 0.02


def stated_total_steps(values: Mapping[str, float]) -> tuple[float | None, str]:
    for key, label in STATED_KEYS:
        value = values.get(key)
        if value is not None and value > 0:
            return float(value), f"read from the log ({label} = {value:g})"
    return None, "the log states no total step count"


def schedule_end(points: Points) -> tuple[float | None, str]:
    """Where the LR decay reaches zero, if the points identify a linear or cosine decay."""
    if not points:
        return None, "no LR values logged"
    values = [v for _, v in points]
    if not all(math.isfinite(v) for v in values):
        return None, "the LR series holds NaN/inf"
    peak_index = values.index(max(values))
    peak_step, peak = points[peak_index]
    tail = [(float(s), v) for s, v in points[peak_index + 1:]]
    if peak <= 0 or len(tail) < 3:
        return None, f"{len(tail)} LR point(s) after the peak; need 3 to identify the schedule"
    if max(abs(v - peak) for _, v in tail) <= 1e-3 * peak:
        return None, "the LR stays constant after warm-up: a constant schedule does not reveal the step count"
    fits = {"linear": _fit_linear(tail, peak), "cosine": _fit_cosine(tail, peak, float(peak_step))}
    ok = {name: fit for name, fit in fits.items() if fit is not None and fit[1] <= MAX_RESIDUAL}
    described = ", ".join(f"{name} residual {fit[1]:.3%} of peak" if fit else f"{name}: no fit"
                          for name, fit in fits.items())
    if not ok:
        return None, (f"the LR decay after step {peak_step} matches no known schedule ({described}; identified "
                      f"means under {MAX_RESIDUAL:.0%}); state the total steps in the log or the expected file")
    name = min(ok, key=lambda n: ok[n][1])
    end, residual = ok[name]
    span = f"steps {int(tail[0][0])}-{int(tail[-1][0])}"
    return end, (f"{name} decay to zero identified from {len(tail)} LR points ({span}; {described})")


def _usable(tail: list[tuple[float, float]], peak: float) -> list[tuple[float, float]]:
    return [(s, v) for s, v in tail if _EDGE * peak < v < (1 - _EDGE) * peak] or tail


def _line(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx


def _rms(pairs: list[tuple[float, float]], model, peak: float) -> float:
    return math.sqrt(statistics.fmean((v - model(s)) ** 2 for s, v in pairs)) / peak


def _fit_linear(tail: list[tuple[float, float]], peak: float) -> tuple[float, float] | None:
    pts = _usable(tail, peak)
    if len(pts) < 2:
        return None
    fit = _line([s for s, _ in pts], [v for _, v in pts])
    if fit is None or fit[0] >= 0:
        return None
    slope, icept = fit
    end = -icept / slope
    return end, _rms(tail, lambda s: max(0.0, slope * s + icept), peak)


def _fit_cosine(tail: list[tuple[float, float]], peak: float, start: float) -> tuple[float, float] | None:
    """lr = peak/2 (1 + cos(pi p)), p = (s - start)/(end - start): p is linear in s, so invert and fit a line."""
    pts = _usable(tail, peak)
    if len(pts) < 2:
        return None
    progress = [math.acos(max(-1.0, min(1.0, 2 * v / peak - 1))) / math.pi for _, v in pts]
    fit = _line([s for s, _ in pts], progress)
    if fit is None or fit[0] <= 0:
        return None
    slope, icept = fit
    end = (1 - icept) / slope
    return end, _rms(tail, lambda s: peak / 2 * (1 + math.cos(math.pi * min(1.0, max(0.0, slope * s + icept)))), peak)
