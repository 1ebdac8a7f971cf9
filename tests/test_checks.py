"""Each check can PASS, can FAIL, and says NOT-MEASURED when the evidence cannot speak."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from repro.verify.checks import (
    DEFAULT_MFU_BAND,
    FAIL,
    NOT_MEASURED,
    PASS,
    approximate_budget,
    check_curve,
    check_initial_value,
    check_scalar,
    check_seeds,
    check_throughput,
    within,
)
from repro.verify.claims import Tolerance

TEN = Tolerance(rel=0.10, rationale="ten percent either way")
UPPER = Tolerance(rel=0.10, two_sided=False, bound="upper", rationale="at most ten percent above")
ABS = Tolerance(abs=0.01, rationale="one hundredth absolute")


# --------------------------------------------------------------------------------------------
# scalar
# --------------------------------------------------------------------------------------------


def test_scalar_pass_fail_and_two_sided():
    assert check_scalar("x", 105, 100, TEN, "src").status == PASS
    low = check_scalar("x", 85, 100, TEN, "src")
    high = check_scalar("x", 115, 100, TEN, "src")
    assert (low.status, high.status) == (FAIL, FAIL)
    assert "higher than published is flagged too" in high.message
    assert "-15.00%" in low.message and "outside" in low.message


def test_scalar_one_sided_bounds():
    assert check_scalar("x", 50, 100, UPPER, "src").status == PASS  # far below an upper bound is fine
    assert check_scalar("x", 111, 100, UPPER, "src").status == FAIL
    lower = Tolerance(rel=0.1, two_sided=False, bound="lower", rationale="at least ninety percent")
    assert check_scalar("x", 500, 100, lower, "src").status == PASS
    assert check_scalar("x", 89, 100, lower, "src").status == FAIL


def test_scalar_not_measured_and_nan():
    missing = check_scalar("x", None, 100, TEN, "src")
    assert missing.status == NOT_MEASURED and not missing.passed
    assert check_scalar("x", math.nan, 100, TEN, "src").status == FAIL
    assert check_scalar("x", math.inf, 100, TEN, "src").status == FAIL


@given(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6), st.floats(0, 2))
def test_within_is_symmetric_for_two_sided(measured, expected, rel):
    tol = Tolerance(rel=rel, rationale="property-based band")
    mirrored = 2 * expected - measured
    assert within(measured, expected, tol) == within(mirrored, expected, tol) or math.isclose(
        abs(measured - expected), rel * abs(expected), rel_tol=1e-9)


# --------------------------------------------------------------------------------------------
# sanity: values fixed at the start of training
# --------------------------------------------------------------------------------------------


def test_dpo_loss_is_ln2_at_step_one():
    ok = check_initial_value("dpo", [1, 2, 3], [0.6932, 0.69, 0.65], math.log(2), ABS, "src")
    assert ok.status == PASS and "step 1" in ok.message
    wrong_reference = check_initial_value("dpo", [1, 2], [0.52, 0.5], math.log(2), ABS, "src")
    assert wrong_reference.status == FAIL


def test_rm_accuracy_half_and_rlvr_kl_zero_at_start():
    band = Tolerance(abs=0.1, rationale="three binomial sd")
    assert check_initial_value("rm", [1], [0.53], 0.5, band, "src").status == PASS
    assert check_initial_value("rm", [1], [0.81], 0.5, band, "src").status == FAIL  # a trained head, not a fresh one
    assert check_initial_value("kl", [5, 10], [0.0, 0.4], 0.0, band, "src").status == PASS
    assert check_initial_value("kl", [5, 10], [0.7, 0.4], 0.0, band, "src").status == FAIL
    assert check_initial_value("kl", [], [], 0.0, band, "src").status == NOT_MEASURED


# --------------------------------------------------------------------------------------------
# throughput
# --------------------------------------------------------------------------------------------


def _rates(steady: float, warmup: float = 1000.0, n: int = 50, skip: int = 5):
    steps = list(range(1, n + 1))
    return steps, [warmup if s <= skip else steady for s in steps]


def test_throughput_same_gpu_uses_steady_state_median():
    steps, rates = _rates(9100.0)
    result = check_throughput("t", steps, rates, expected=9000, tol=TEN, source="src", skip_first=5,
                              claim_gpu="H100-SXM", run_gpu="NVIDIA H100 80GB HBM3")
    assert result.status == PASS and result.measured == 9100.0
    # without skipping warm-up the slow first steps would not matter for the median here, but a
    # window that is mostly warm-up would: skip_first is by step number
    assert "steps 6-50" in result.message


def test_throughput_too_slow_and_too_fast_both_fail():
    for steady in (7000.0, 11000.0):
        steps, rates = _rates(steady)
        result = check_throughput("t", steps, rates, expected=9000, tol=TEN, source="src", skip_first=5,
                                  claim_gpu="H100-SXM", run_gpu="H100-SXM")
        assert result.status == FAIL, steady
    steps, rates = _rates(11000.0)
    fast = check_throughput("t", steps, rates, expected=9000, tol=TEN, source="src", skip_first=5,
                            claim_gpu="H100-SXM", run_gpu="H100-SXM")
    assert "higher than published is flagged too" in fast.message


def test_throughput_other_gpu_compares_mfu_with_a_warning():
    # 9000 tok/s on H100 SXM (989 TF) is the same MFU as 9000 * 312/989 = 2839 tok/s on A100.
    steps, rates = _rates(2900.0)
    result = check_throughput("t", steps, rates, expected=9000, tol=TEN, source="src", skip_first=5,
                              claim_gpu="H100-SXM", run_gpu="A100", flops_per_unit=4.91e10)
    assert result.status == PASS
    assert any("hardware differs" in w for w in result.warnings)
    assert result.expected == pytest.approx(9000 * 312 / 989)
    assert result.details["mfu_claim"] == pytest.approx(9000 * 4.91e10 / 989e12)
    assert "MFU" in result.tolerance
    # a raw-rate comparison would have failed by 68%; the same A100 rate at H100 speed fails the MFU band
    steps, rates = _rates(9000.0)
    too_fast = check_throughput("t", steps, rates, expected=9000, tol=TEN, source="src", skip_first=5,
                                claim_gpu="H100-SXM", run_gpu="A100")
    assert too_fast.status == FAIL
    steps, rates = _rates(2839.0 * (1 - DEFAULT_MFU_BAND) * 0.9)
    assert check_throughput("t", steps, rates, expected=9000, tol=TEN, source="src", skip_first=5,
                            claim_gpu="H100-SXM", run_gpu="A100").status == FAIL


def test_throughput_not_measured_without_steady_points_and_warns_on_unknown_hardware():
    result = check_throughput("t", [1, 2, 3], [9000.0] * 3, expected=9000, tol=TEN, source="src", skip_first=5,
                              claim_gpu="H100-SXM", run_gpu=None)
    assert result.status == NOT_MEASURED and not result.passed
    steps, rates = _rates(9000.0)
    unknown = check_throughput("t", steps, rates, expected=9000, tol=TEN, source="src", skip_first=5,
                               claim_gpu="H100-SXM", run_gpu=None)
    assert unknown.status == PASS and any("run hardware unknown" in w for w in unknown.warnings)
    undisclosed = check_throughput("t", steps, rates, expected=9000, tol=TEN, source="src", skip_first=5,
                                   claim_gpu=None, run_gpu="A100")
    assert any("does not say which GPU" in w for w in undisclosed.warnings)


# --------------------------------------------------------------------------------------------
# curves
# --------------------------------------------------------------------------------------------


def _curve(n=300, scale=1.0):
    steps = list(range(1, n + 1))
    return steps, [scale * (2.0 + 8.0 / (1 + 0.05 * s)) for s in steps]


def test_budget_is_megatrons():
    assert [approximate_budget(n) for n in (1, 50, 100, 250, 5000, 10**6)] == [1, 1, 1, 2, 50, 50]


def test_curve_approximate_lane_pass_and_budget():
    steps, ref = _curve()
    run = list(ref)
    run[10] *= 1.5  # 1 outlier of 300: budget is 3
    run[20] *= 1.5
    result = check_curve("c", steps, run, steps, ref, rtol=0.05, source="golden")
    assert result.status == PASS and "2 outside" in result.message
    run[30] *= 1.5
    run[40] *= 1.8  # the worst of four outliers, at step 41
    failed = check_curve("c", steps, run, steps, ref, rtol=0.05, source="golden")
    assert failed.status == FAIL and "4 of 300 steps outside" in failed.message
    assert f"worst step 41: run {run[40]:.6g} vs reference {ref[40]:.6g}" in failed.message


def test_curve_deterministic_lane_only_when_env_key_matches():
    steps, ref = _curve()
    run = [v + 1e-4 for v in ref]  # inside rtol, not bit-identical
    same_env = check_curve("c", steps, run, steps, ref, rtol=0.05, source="g", env_key="cu124-h100", ref_env_key="cu124-h100")
    other_env = check_curve("c", steps, run, steps, ref, rtol=0.05, source="g", env_key="cu121-a100", ref_env_key="cu124-h100")
    assert same_env.status == FAIL and "deterministic lane" in same_env.message and "worst step" in same_env.message
    assert other_env.status == PASS and other_env.details["lanes"] == ["approximate"]
    exact = check_curve("c", steps, list(ref), steps, ref, rtol=0.05, source="g", env_key="k", ref_env_key="k")
    assert exact.status == PASS and exact.details["lanes"] == ["deterministic", "approximate"]


def test_curve_residual_lane_catches_systematic_drift():
    steps, ref = _curve()
    shifted = [v * 1.01 for v in ref]  # inside rtol everywhere, but one-sided
    assert check_curve("c", steps, shifted, steps, ref, rtol=0.05, source="g").status == PASS
    drift = check_curve("c", steps, shifted, steps, ref, rtol=0.05, source="g", residual_tol=1e-3)
    assert drift.status == FAIL and "systematically above" in drift.message


def test_curve_nan_and_no_overlap():
    steps, ref = _curve(50)
    run = list(ref)
    run[-1] = math.nan
    result = check_curve("c", steps, run, steps, ref, rtol=0.05, source="g", budget=0)
    assert result.status == FAIL and "worst step 50: run nan" in result.message
    assert check_curve("c", [1000, 1001], [1.0, 1.0], steps, ref, rtol=0.05, source="g").status == NOT_MEASURED


# --------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------


def test_seeds_tost_pass_fail_inconclusive():
    close = [2.001, 1.999, 2.0005, 1.9995, 2.0]
    assert check_seeds("s", close, 2.0, margin=0.02, source="src").status == PASS
    off = [2.10, 2.11, 2.09, 2.10]
    far = check_seeds("s", off, 2.0, margin=0.02, source="src")
    assert far.status == FAIL and "outside" in far.message
    noisy = [1.95, 2.06, 1.99]
    inconclusive = check_seeds("s", noisy, 2.0, margin=0.02, source="src")
    assert inconclusive.status == NOT_MEASURED and "inconclusive" in inconclusive.message


def test_seeds_ttest_and_edge_cases():
    assert check_seeds("s", [2.0, 2.01, 1.99], 2.0, margin=0.05, source="src", method="ttest").status == PASS
    assert check_seeds("s", [2.3, 2.31, 2.29], 2.0, margin=0.05, source="src", method="ttest").status == FAIL
    assert check_seeds("s", [2.0], 2.0, margin=0.05, source="src").status == NOT_MEASURED
    assert check_seeds("s", [2.0, math.nan], 2.0, margin=0.05, source="src").status == FAIL
    assert check_seeds("s", [2.0, 2.0, 2.0], 2.0, margin=0.05, source="src").status == PASS
    assert check_seeds("s", [3.0, 3.0], 2.0, margin=0.05, source="src").status == FAIL
