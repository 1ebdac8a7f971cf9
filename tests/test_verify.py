"""verify(): every claim ends PASS / FAIL / NOT-MEASURED; NOT-MEASURED never counts as a pass;
the command's contract (outputs, exit codes, report)."""

from __future__ import annotations

import argparse
import json
import math
import re
from types import SimpleNamespace

import pytest

from repro.verify.checks import FAIL, NOT_MEASURED, PASS
from repro.verify.claims import load_expected
from repro.base.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, ReproError
from repro.verify.flops import fast_llm_flops_per_token, get_model
from repro.base.metrics import MetricRecord
from repro.verify.verifier import ReferenceCurve, exit_code, reduce_points, verify

F_FULL = fast_llm_flops_per_token(get_model("mistral-7b"), 8192)
F_WINDOW = fast_llm_flops_per_token(get_model("mistral-7b"), 8192, window=4096)


def fast_llm_run(tokens_per_s=9100.0, flops=F_WINDOW, iterations=2000, warmup_tps=4000.0):
    """Records as Fast-LLM logs them for the pinned recipe (--window_size=4096): every 10
    iterations, LR warm-up to 1e-4 over 1000, then a cosine decay that prints as 1.000e-04 for
    thousands of iterations."""
    records = []
    for it in range(10, iterations + 10, 10):
        tps = warmup_tps if it <= 30 else tokens_per_s
        lr = 1e-4 * min(it / 1000, 1.0)
        records.append(MetricRecord(step=it, loss=2.0 + 8.0 / (1 + it / 100), lr=float(f"{lr:.3e}"), tokens=1048576,
                                    tokens_per_s_per_device=tps, model_tflops_per_device=round(tps * flops / 1e12, 2)))
    return records


def statuses(result):
    return {r.claim_id: r.status for r in result.results}


# --------------------------------------------------------------------------------------------
# Fast-LLM: throughput, conflicts, formula agreement
# --------------------------------------------------------------------------------------------


def test_fast_llm_run_passes_and_conflicting_claims_do_not_decide():
    result = verify("fastllm-mistral-7b-pretrain", [fast_llm_run()], hardware="NVIDIA H100 80GB HBM3")
    s = statuses(result)
    assert s["tokens-per-s-seed"] == PASS and s["model-tflops-seed"] == PASS
    assert s["tflops-formula-agreement"] == PASS
    assert s["peak-lr"] == PASS and s["warmup-steps"] == PASS and s["tokens-per-step"] == PASS
    assert s["tokens-per-s-index-head"] == FAIL  # 10,350 is 12% above 9,100: reported, not decisive
    assert s["no-published-loss"] == NOT_MEASURED
    assert exit_code(result) == EXIT_OK


def test_too_fast_run_fails_two_sided():
    result = verify("fastllm-mistral-7b-pretrain", [fast_llm_run(tokens_per_s=11000.0)], hardware="H100-SXM")
    seed = next(r for r in result.results if r.claim_id == "tokens-per-s-seed")
    assert seed.status == FAIL and "higher than published is flagged too" in seed.check.message
    assert exit_code(result) == EXIT_FAILED


def test_slow_run_fails():
    result = verify("fastllm-mistral-7b-pretrain", [fast_llm_run(tokens_per_s=7000.0)], hardware="H100-SXM")
    assert statuses(result)["tokens-per-s-seed"] == FAIL and exit_code(result) == EXIT_FAILED


def test_log_printed_without_the_recipes_window_fails_the_formula_agreement():
    result = verify("fastllm-mistral-7b-pretrain", [fast_llm_run(flops=F_FULL)], hardware="H100-SXM")
    agreement = next(r for r in result.results if r.claim_id == "tflops-formula-agreement")
    assert agreement.status == FAIL and agreement.check.measured == pytest.approx(F_FULL / F_WINDOW, abs=1e-3)
    assert statuses(result)["model-tflops-seed"] == PASS  # 9100 x 4.91e10 = 447 is still within 10% of 440


def test_other_gpu_is_checked_through_mfu_with_a_warning():
    # The 4xA100 row (4234.09 tok/s) on H100 SXM at equal MFU: 4234.09 * 989/312.
    rate = 4234.09 * 989 / 312
    result = verify("fastllm-mistral-7b-recompute-none", [fast_llm_run(tokens_per_s=rate)], hardware="H100")
    tps = next(r for r in result.results if r.claim_id == "tokens-per-s")
    assert tps.status == PASS
    assert any("hardware differs: claim measured on A100, run on H100-SXM" in w for w in tps.check.warnings)
    raw = verify("fastllm-mistral-7b-recompute-none", [fast_llm_run(tokens_per_s=4234.09)], hardware="H100")
    assert statuses(raw)["tokens-per-s"] == FAIL  # A100 speed on an H100 is a 68% MFU shortfall


def test_throughput_without_steady_state_is_not_measured():
    short = fast_llm_run(iterations=30)  # every point is warm-up
    result = verify("fastllm-mistral-7b-pretrain", [short], hardware="H100-SXM")
    assert statuses(result)["tokens-per-s-seed"] == NOT_MEASURED


# --------------------------------------------------------------------------------------------
# NOT-MEASURED is never a pass
# --------------------------------------------------------------------------------------------


def test_logs_that_speak_to_nothing_are_not_a_pass():
    records = [MetricRecord(step=s, grad_norm=1.0) for s in range(1, 50)]
    result = verify("toolgen-llama3-8b-memorization", [records])
    assert all(r.status == NOT_MEASURED for r in result.results)
    assert result.counts()[PASS] == 0
    assert exit_code(result) == EXIT_BAD_INPUT


def test_none_and_unmeasurable_claims_stay_not_measured_even_with_rich_logs():
    result = verify("fastllm-mistral-7b-pretrain", [fast_llm_run()], hardware="H100-SXM")
    for claim_id in ("no-published-loss", "train-iters", "activation-memory"):
        r = next(x for x in result.results if x.claim_id == claim_id)
        assert r.status == NOT_MEASURED and r.check.measured is None


def test_evaluation_claims_are_not_measured_from_training_logs():
    records = [MetricRecord(step=s, loss=500.0 - s, lr=5e-6) for s in range(1, 100)]
    result = verify("tulu3-8b-sft", [records])
    evals = [r for r in result.results if r.kind == "evaluation"]
    assert evals and all(r.status == NOT_MEASURED for r in evals)


# --------------------------------------------------------------------------------------------
# LR-derived claims, sanity claims
# --------------------------------------------------------------------------------------------


def linear_schedule(peak, warmup, total, upto, **extra):
    records = []
    for s in range(1, upto + 1):
        lr = peak * s / warmup if s < warmup else peak * (total - s) / (total - warmup)
        records.append(MetricRecord(step=s, lr=lr, **extra))
    return records


def test_dpo_partial_run_speaks_to_lr_warmup_total_steps_and_ln2():
    records = linear_schedule(5e-7, 212, 2121, 600)
    records[0].loss = 0.69315
    records[0].extra["rewards/margin"] = 0.0
    result = verify("tulu3-8b-dpo", [records])
    s = statuses(result)
    assert s["peak-lr"] == PASS and s["warmup-steps"] == PASS and s["optimizer-steps"] == PASS
    assert s["dpo-loss-step1"] == PASS and s["reward-margin-step1"] == PASS
    assert s["effective-batch-script"] == NOT_MEASURED  # no batch size in these logs
    steps = next(r for r in result.results if r.claim_id == "optimizer-steps")
    assert steps.check.measured == pytest.approx(2121, abs=1)
    assert exit_code(result) == EXIT_OK


def test_run_level_mean_does_not_stand_in_for_a_step_value():
    records = linear_schedule(5e-7, 212, 2121, 600)  # no loss logged at all
    result = verify("tulu3-8b-dpo", [records], run_values=[{"train_loss": 0.6931}])
    assert statuses(result)["dpo-loss-step1"] == NOT_MEASURED


def test_dpo_wrong_batch_and_wrong_reference_fail():
    records = linear_schedule(5e-7, 53, 530, 300)  # effective batch 512: 4x fewer steps
    records[0].loss = 0.52  # reference model differs from the policy
    result = verify("tulu3-8b-dpo", [records])
    s = statuses(result)
    assert s["optimizer-steps"] == FAIL and s["warmup-steps"] == FAIL and s["dpo-loss-step1"] == FAIL
    assert exit_code(result) == EXIT_FAILED


def test_run_still_in_warmup_does_not_claim_a_peak():
    records = linear_schedule(5e-7, 212, 2121, 100)
    s = statuses(verify("tulu3-8b-dpo", [records]))
    assert s["peak-lr"] == NOT_MEASURED and s["warmup-steps"] == NOT_MEASURED and s["optimizer-steps"] == NOT_MEASURED


def test_rm_and_rlvr_start_of_training_sanity():
    rm = [MetricRecord(step=s, lr=3e-6 * (1 - s / 1060), extra={"train/rm/accuracy": 0.52 if s == 1 else 0.7})
          for s in range(1, 30)]
    assert statuses(verify("tulu3-8b-rm", [rm]))["rm-accuracy-start"] == PASS
    rm[0].extra["train/rm/accuracy"] = 0.85
    assert statuses(verify("tulu3-8b-rm", [rm]))["rm-accuracy-start"] == FAIL
    ppo = [MetricRecord(step=s, lr=3e-7, extra={"objective/kl": 0.0 if s == 1 else 2.0}) for s in range(1, 10)]
    assert statuses(verify("tulu3-8b-rlvr", [ppo]))["kl-start"] == PASS
    ppo[0].extra["objective/kl"] = 3.0
    assert statuses(verify("tulu3-8b-rlvr", [ppo]))["kl-start"] == FAIL


def test_reduce_points_guards():
    assert reduce_points([], "final") == (None, "no logged value in the claim's window")
    value, _ = reduce_points([(1, 1.0), (2, math.nan)], "mean")
    assert math.isnan(value)
    assert reduce_points([(1, 1.0), (2, 2.0), (3, 2.0)], "step_of_peak")[0] == 2.0
    assert reduce_points([(1, 1.0), (2, 2.0)], "peak")[0] is None


# --------------------------------------------------------------------------------------------
# granite: run-level values, undisclosed hardware, seeds
# --------------------------------------------------------------------------------------------

GRANITE = "fms-granite4-h-tiny-cp8-ebs4-s8192-gas1"


def test_granite_run_level_values_and_undisclosed_hardware():
    records = [MetricRecord(step=s, loss=0.9 - s * 0.001) for s in range(1, 50)]
    result = verify(GRANITE, [records], hardware="H100-SXM",
                    run_values=[{"train_loss": 0.806, "train_tokens_per_second": 1000.0}])
    s = statuses(result)
    assert s["loss"] == PASS and s["tokens-per-s"] == PASS
    tps = next(r for r in result.results if r.claim_id == "tokens-per-s")
    assert any("does not say which GPU" in w for w in tps.check.warnings)
    diverged = verify(GRANITE, [[MetricRecord(step=1, loss=0.8), MetricRecord(step=2, loss=math.nan)]])
    assert statuses(diverged)["loss"] == FAIL


def test_granite_seeds_use_an_equivalence_test():
    runs = [[MetricRecord(step=s, loss=v) for s in range(1, 20)] for v in (0.8061, 0.8057, 0.8060, 0.8058)]
    result = verify(GRANITE, runs)
    loss = next(r for r in result.results if r.claim_id == "loss")
    assert loss.status == PASS and "TOST" in loss.check.message
    far = [[MetricRecord(step=s, loss=v) for s in range(1, 20)] for v in (0.85, 0.86, 0.855)]
    assert statuses(verify(GRANITE, far))["loss"] == FAIL


# --------------------------------------------------------------------------------------------
# reference curve
# --------------------------------------------------------------------------------------------


def test_reference_curve_lanes_and_worst_step():
    run = fast_llm_run()
    steps = [r.step for r in run]
    ref = ReferenceCurve(steps=steps, values=[r.loss for r in run], source="golden/mistral.jsonl", env_key="e1")
    same = verify("fastllm-mistral-7b-pretrain", [run], hardware="H100-SXM", env_key="e1", reference=ref)
    curve = next(r for r in same.results if r.claim_id == "loss-curve")
    assert curve.status == PASS and curve.check.details["lanes"] == ["deterministic", "approximate"]
    bad = ReferenceCurve(steps=steps, values=[r.loss * (1.2 if r.step == 500 else 1.0) for r in run],
                         source="golden/mistral.jsonl", env_key="e1")
    failed = verify("fastllm-mistral-7b-pretrain", [run], hardware="H100-SXM", env_key="e1", reference=bad)
    curve = next(r for r in failed.results if r.claim_id == "loss-curve")
    assert curve.status == FAIL and "worst step 500" in curve.check.message
    assert exit_code(failed) == EXIT_FAILED


def test_json_has_the_contract_fields():
    data = verify("fastllm-mistral-7b-pretrain", [fast_llm_run()], hardware="H100-SXM").to_json()
    assert data["exit_code"] == EXIT_OK
    for claim in data["claims"]:
        for key in ("id", "status", "measured", "expected", "tolerance", "source", "used_by_verdict"):
            assert key in claim
        assert claim["status"] in (PASS, FAIL, NOT_MEASURED)
    json.dumps(data)


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def _args(*argv):
    from repro.commands import verify as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command, parser.parse_args(list(argv))


@pytest.fixture
def fake_parser(monkeypatch):
    """parse_files stand-in: each path name picks a canned run, so the command is tested alone."""
    import repro.verify.parsers as parsers

    runs = {"good.log": fast_llm_run(), "fast.log": fast_llm_run(tokens_per_s=12000.0),
            "empty.log": [MetricRecord(step=1, grad_norm=1.0)]}

    def parse_files(paths, fmt=None):
        records = [r for p in paths for r in runs[str(p).rsplit("/", 1)[-1]]]
        return SimpleNamespace(records=records, issues=[], format={}, metadata={"gpu": "NVIDIA H100 80GB HBM3"})

    monkeypatch.setattr(parsers, "parse_files", parse_files)
    return runs


def _logs(tmp_path, *names):
    paths = []
    for name in names:
        (tmp_path / name).write_text("x\n")
        paths.append(str(tmp_path / name))
    return paths


def test_command_exit_codes_and_json(fake_parser, tmp_path, capsys):
    command, args = _args("fastllm-mistral-7b-pretrain", *_logs(tmp_path, "good.log"), "--json")
    assert command.run(args) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["hardware"] == "H100-SXM"  # taken from the parser's metadata
    seed = next(c for c in data["claims"] if c["id"] == "tokens-per-s-seed")
    assert seed["status"] == PASS and seed["source"].startswith("ServiceNow/Fast-LLM/docs/tutorial/prepare_training.md@1aa6040")
    command, args = _args("fastllm-mistral-7b-pretrain", *_logs(tmp_path, "fast.log"))
    assert command.run(args) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "FAIL" in out and "tokens-per-s-seed" in out and "exit 1" in out
    command, args = _args("fastllm-mistral-7b-pretrain", *_logs(tmp_path, "empty.log"))
    assert command.run(args) == EXIT_BAD_INPUT
    assert "speak to none of the verdict claims" in capsys.readouterr().err


def test_command_bad_input(fake_parser, tmp_path):
    command, args = _args("no-such-recipe", *_logs(tmp_path, "good.log"))
    with pytest.raises(ReproError, match=r"unknown recipe 'no-such-recipe' \('repro list' shows every id\)") as info:
        command.run(args)
    assert info.value.exit_code == EXIT_BAD_INPUT
    command, args = _args("fastllm-mistral-7b-pretrain", *_logs(tmp_path, "good.log"), "--hardware", "Z9000")
    with pytest.raises(ReproError, match="--hardware: unknown GPU 'Z9000'"):
        command.run(args)
    command, args = _args("fastllm-mistral-7b-pretrain", str(tmp_path / "missing.log"))
    with pytest.raises(ReproError, match="missing.log: no such file"):
        command.run(args)


def test_command_seeds_and_report(fake_parser, tmp_path):
    command, args = _args("fastllm-mistral-7b-pretrain", *_logs(tmp_path, "good.log", "good.log"), "--seeds",
                          "--report", str(tmp_path / "rep"))
    assert command.run(args) == EXIT_OK
    md = (tmp_path / "rep" / "report.md").read_text()
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "tokens-per-s-seed" in md and "conflicts with" in md and "2" in md
    assert page.count("<svg") >= 2  # loss curve and throughput chart, inline
    assert not re.search(r"<script|<link|<img|src=|@import|url\((?!#)", page)  # self-contained (url(#id) is internal)


def test_cli_end_to_end_with_the_real_parser(tmp_path, capsys):
    """Through `repro verify` and the repository's Fast-LLM parser, when both are importable."""
    fast_llm = pytest.importorskip("repro.verify.parsers.fast_llm")
    from repro.cli import main

    lines = []
    for rec in fast_llm_run():
        lines.append(
            f"2024-09-18 10:00:00,000 [Rank 000] Training @ iteration {rec.step:6.0f}/500000 | consumed samples: "
            f"{rec.step * 128:12,.0f} | consumed tokens: {rec.step * 1048576:16,.0f} | batch size: 128 | "
            f"step time: 932.10 ms | throughput: {rec.model_tflops_per_device:.2f} tflop/s (model) | "
            f"{rec.model_tflops_per_device * 1.02:.2f} tflop/s (hardware) | {rec.tokens_per_s_per_device:.2f} "
            f"tokens/s/gpu | Memory allocated 40,000.00 MiB | learning rate: {rec.lr:.3e} | "
            f"language model loss: {rec.loss:.5f}")
    log = tmp_path / "logs_rank_000.txt"
    log.write_text("\n".join(lines) + "\n")
    assert fast_llm.sniff(log.name, log.read_text()[:4096]) > 0
    code = main(["verify", "fastllm-mistral-7b-pretrain", str(log), "--hardware", "H100-SXM", "--json"])
    data = json.loads(capsys.readouterr().out)
    got = {c["id"]: c["status"] for c in data["claims"]}
    assert got["tokens-per-s-seed"] == PASS and got["tflops-formula-agreement"] == PASS
    assert code == EXIT_OK


def test_expected_files_all_verify_without_error():
    """Every expected file can be evaluated against an empty-ish run without crashing."""
    from repro.verify.claims import list_expected

    for recipe in list_expected():
        result = verify(recipe, [[MetricRecord(step=1)]])
        assert len(result.results) == len(load_expected(recipe).claims)
        assert exit_code(result) == EXIT_BAD_INPUT
