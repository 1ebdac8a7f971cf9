"""Readers on REAL public logs (tests/data/logs, sources in SOURCES.md), and total optimizer steps
derived from evidence. Every pinned value below was read by eye from the sample file, not from
the parser; the hard cases (rank prefixes, token steps, truncation, a cosine run) each have a test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from repro.base.metrics import MetricRecord
from repro.verify.checks import FAIL, NOT_MEASURED, PASS
from repro.verify.parsers import parse_files
from repro.verify.schedule import MAX_RESIDUAL, schedule_end, stated_total_steps
from repro.verify.verifier import verify

LOGS = Path(__file__).parent / "data" / "logs"
LF_SFT = LOGS / "llamafactory_mistral7b_sft_trainer_log.jsonl"
LF_DPO = LOGS / "llamafactory_dpo_trainer_log.jsonl"
MLPERF = LOGS / "mlperf_llama2_70b_lora_asus_result_0.txt"


def by_step(result, phase="train"):
    return {r.step: r for r in result.records if r.phase == phase}


def test_every_sample_is_listed_with_its_source():
    listed = (LOGS / "SOURCES.md").read_text(encoding="utf-8")
    for sample in LOGS.iterdir():
        if sample.name != "SOURCES.md":
            assert f"| {sample.name} |" in listed, sample.name


# ------------------------------------------------------------------------------ LLaMA-Factory

def test_llamafactory_sft_values_from_the_real_log():
    result = parse_files([LF_SFT])
    assert result.format == {str(LF_SFT): "llamafactory"}
    train = by_step(result)
    assert len(train) == 33  # 34 lines, the last a summary without loss
    assert (train[10].loss, train[10].lr) == (2.4977, 5.773672055427253e-07)
    assert (train[870].loss, train[870].lr) == (0.5243, 4.999996750557592e-05)
    assert (train[8660].loss, train[8660].lr) == (0.1333, 0.0)
    assert train[8660].extra["epoch"] == 4.0 and train[8660].extra["elapsed_time_s"] == 5 * 3600 + 39 * 60 + 46
    assert "throughput" not in train[10].extra  # "0.00": token counting off, not a measured zero
    assert result.metadata["total_steps"] == 8660
    assert [i.kind for i in result.issues] == []


def test_llamafactory_dpo_lr_key_accuracy_and_a_run_cut_off():
    result = parse_files([LF_DPO])
    train = by_step(result)
    assert sorted(train) == list(range(1, 13))
    assert (train[1].loss, train[1].lr, train[1].extra["accuracy"]) == (0.6491, 9.803921568627451e-10, 1.0)
    assert train[12].loss == 0.4998
    assert train[1].extra["elapsed_time_s"] == 63.0
    (issue,) = result.issues
    assert issue.kind == "truncated" and "step 12 of 5100" in issue.message


def test_llamafactory_file_cut_mid_line(tmp_path):
    text = LF_DPO.read_text(encoding="utf-8")
    cut = tmp_path / "trainer_log.jsonl"
    cut.write_text(text[: text.index('{"current_steps": 12') + 40], encoding="utf-8")
    result = parse_files([cut])
    assert max(by_step(result)) == 11
    kinds = [i.kind for i in result.issues]
    assert kinds.count("truncated") == 2  # the half line, and the run stopping short of total_steps
    assert any("cut while being written" in i.message for i in result.issues)


# ------------------------------------------------------------------------------ MLPerf

MLPERF_EVAL = {192: 0.9376182556152344, 240: 0.9326839447021484, 288: 0.9304484724998474,
               336: 0.9277553558349609, 384: 0.9232596755027771}


def test_mlperf_real_result_one_step_axis_eval_and_time_to_train():
    result = parse_files([MLPERF])
    evals = {s: r.extra["eval_accuracy"] for s, r in by_step(result, "eval").items()}
    assert evals == MLPERF_EVAL  # samples_count 1536..3072 / global_batch_size 8
    train = by_step(result)
    assert sorted(train) == sorted(MLPERF_EVAL)  # throughput on the same axis (its 'step' is samples)
    assert train[192].extra["throughput"] == 1.9530199195379496
    md = result.metadata
    assert md["time_to_train_s"] == pytest.approx((1715850093688 - 1715848320425) / 1000)
    assert (md["submission_org"], md["submission_platform"], md["global_batch_size"]) == ("ASUSTeK", "1xESC_N8A-E12", 8)
    assert md["opt_learning_rate_training_steps"] == 1024 and md["run_stop_status"] == "success"


def srun_labelled(text: str, ranks: int = 128) -> str:
    """As ``srun --label`` writes it: every line of task 0 prefixed ``0: ``; the per-rank
    lines (cache_clear, init_start) from every rank, and one metric line echoed by rank 1."""
    out = []
    for line in text.splitlines(keepends=True):
        if '"cache_clear"' in line or '"init_start"' in line:
            out.extend(f"{r}: {line}" for r in range(ranks))
        else:
            out.append(f"0: {line}")
        if '"eval_accuracy"' in line and "1536" in line:
            out.append("1: " + line.replace("0.9376182556152344", "0.5"))
    return "".join(out)


def test_mlperf_srun_rank_prefixes_keep_every_valid_line_and_rank_zero(tmp_path):
    log = tmp_path / "slurm-1234.out"
    log.write_text(srun_labelled(MLPERF.read_text(encoding="utf-8")), encoding="utf-8")
    result = parse_files([log])
    evals = {s: r.extra["eval_accuracy"] for s, r in by_step(result, "eval").items()}
    assert evals == MLPERF_EVAL  # rank 1's echo did not win, nothing dropped as corrupt
    kinds = [i.kind for i in result.issues]
    assert "corrupt" not in kinds and "restart" not in kinds and "bad_step" not in kinds
    assert "ranks" in kinds
    assert result.metadata["time_to_train_s"] == pytest.approx(1773.263)


def test_mlperf_counts_in_tokens_become_optimizer_steps(tmp_path):
    """GPT-3-style logs count tokens: samples_count = steps x global batch x sequence length."""
    lines = []
    for line in MLPERF.read_text(encoding="utf-8").splitlines():
        event = json.loads(line.split(":::MLLOG ", 1)[1])
        meta = event["metadata"]
        if "samples_count" in meta:
            meta["samples_count"] *= 8192
        if "step" in meta:
            meta["step"] *= 8192
        lines.append(":::MLLOG " + json.dumps(event))
        if event["key"] == "global_batch_size":
            lines.append(":::MLLOG " + json.dumps({**event, "key": "max_sequence_length", "value": 8192}))
    log = tmp_path / "result_0.txt"
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = parse_files([log])
    assert sorted(by_step(result, "eval")) == sorted(MLPERF_EVAL)
    assert any("counts are tokens" in i.message for i in result.issues)


# ------------------------------------------------------------------------------ total optimizer steps

def lf_lr_points():
    return [(r.step, r.lr) for r in parse_files([LF_SFT]).records if r.lr is not None]


def test_total_steps_read_where_the_log_states_them():
    assert stated_total_steps({"total_steps": 8660.0}) == (8660.0, "read from the log (LLaMA-Factory total_steps = 8660)")
    assert stated_total_steps({"max_steps": 2354.0})[0] == 2354.0
    assert stated_total_steps({})[0] is None


def test_cosine_run_is_identified_not_fitted_with_a_line():
    """The issue's case: a straight line through this cosine decay put the end near 7,968."""
    end, how = schedule_end(lf_lr_points())
    assert end == pytest.approx(8660, rel=1e-3)
    assert how.startswith("cosine decay to zero identified")
    assert "linear residual" in how and "cosine residual" in how


def linear(peak, warmup, total, upto):
    return [(s, peak * (s / warmup if s <= warmup else (total - s) / (total - warmup))) for s in range(10, upto, 10)]


def test_linear_run_is_identified_as_linear():
    end, how = schedule_end(linear(5e-7, 212, 2354, 2000))
    assert end == pytest.approx(2354, rel=1e-3) and how.startswith("linear decay")


def test_unknown_or_constant_schedule_is_not_measured_with_the_reason():
    step_decay = [(s, 1e-4 if s < 500 else 1e-5 if s < 1500 else 1e-6) for s in range(10, 2000, 10)]
    end, how = schedule_end([(0, 5e-5)] + step_decay)
    assert end is None and "matches no known schedule" in how
    end, how = schedule_end([(s, 1e-4) for s in range(10, 500, 10)])
    assert end is None and "constant" in how


def test_verifier_uses_the_stated_total_and_says_so():
    records = [MetricRecord(step=s, lr=v) for s, v in linear(5e-7, 212, 2121, 600)]
    # the lr curve would say 2121 (PASS); the log's own statement of 4242 steps must win and FAIL
    result = verify("tulu3-8b-dpo", [records], run_values=[{"max_steps": 4242.0}])
    steps = next(r for r in result.results if r.claim_id == "optimizer-steps")
    assert steps.check.status == FAIL and steps.check.measured == 4242.0
    result = verify("tulu3-8b-dpo", [records])
    steps = next(r for r in result.results if r.claim_id == "optimizer-steps")
    assert steps.check.status == PASS and "linear decay to zero identified" in steps.check.message


def test_verifier_cosine_without_statement_is_right_or_not_measured():
    cosine = [(s, 5e-7 * (s / 212 if s <= 212 else 0.5 * (1 + math.cos(math.pi * (s - 212) / (2121 - 212)))))
              for s in range(10, 1500, 10)]
    result = verify("tulu3-8b-dpo", [[MetricRecord(step=s, lr=v) for s, v in cosine]])
    steps = next(r for r in result.results if r.claim_id == "optimizer-steps")
    assert steps.check.status == PASS and steps.check.measured == pytest.approx(2121, rel=1e-3)
    noisy = [(s, v * (1.2 if (s // 10) % 2 else 0.8)) for s, v in cosine]
    result = verify("tulu3-8b-dpo", [[MetricRecord(step=s, lr=v) for s, v in noisy]])
    steps = next(r for r in result.results if r.claim_id == "optimizer-steps")
    assert steps.check.status == NOT_MEASURED and f"under {MAX_RESIDUAL:.0%}" in steps.check.message


# ------------------------------------------------------------------------------ crashes, unknown files

CRASH = LOGS / "megatron_crash_constructed.log"


def test_a_traceback_ends_the_run_and_says_after_which_step():
    result = parse_files([CRASH])
    assert [r.step for r in result.records] == [1, 2, 3]
    (crash,) = [i for i in result.issues if i.kind == "crashed"]
    assert crash.line == 5 and "after step 3" in crash.message
    assert "torch.OutOfMemoryError: CUDA out of memory" in crash.message
    assert result.metadata["crashed_after_step"] == 3


def test_torchtitan_crash_mid_run_with_rank_prefixes(tmp_path):
    step = "[rank0]:[titan] 2025-06-04 08:51:{s:02d},074 - root - INFO - step: {n:2d}  loss: {l}  memory: 27.34GiB(28.78%)  tps: 375  tflops: 21.73  mfu: 2.20%\n"
    text = (step.format(s=48, n=1, l="12.2254") + step.format(s=58, n=10, l="9.8112")
            + "[rank1]:[E604 08:52:03 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught collective operation timeout\n"
            + "[rank0]: Traceback (most recent call last):\n[rank0]:   File \"train.py\", line 1, in <module>\n"
            + "[rank0]: RuntimeError: NCCL communicator was aborted on rank 0.\n")
    log = tmp_path / "train.log"
    log.write_text(text, encoding="utf-8")
    (crash,) = [i for i in parse_files([log]).issues if i.kind == "crashed"]
    assert "after step 10" in crash.message and "RuntimeError: NCCL communicator was aborted" in crash.message


def test_a_healthy_log_has_no_crash():
    assert not [i for i in parse_files([LF_SFT]).issues if i.kind == "crashed"]


def test_unrecognised_file_says_what_was_tried_in_one_line(tmp_path):
    from repro.base.errors import ReproError

    bars = tmp_path / "stderr.txt"
    bars.write_text("  3%|3         | 30/1000 [00:30<16:10,  1.00it/s]\r  4%|4         | 40/1000 [00:40<16:00,  1.00it/s]\r",
                    encoding="utf-8")
    with pytest.raises(ReproError) as err:
        parse_files([bars])
    message = err.value.message
    assert "\n" not in message and "progress bars (tqdm)" in message
    assert "llamafactory: no LLaMA-Factory" in message and "mllog: no MLPerf" in message


# ------------------------------------------------------------------------------ DeepSpeed-Chat, two engines

DS_CHAT = LOGS / "deepspeed_chat_step3_actor_critic.log"


def test_deepspeed_chat_actor_and_critic_are_two_series_not_restarts():
    result = parse_files([DS_CHAT])
    actor, critic = by_step(result), by_step(result, "train/critic")
    assert {s: actor[s].lr for s in (10, 20, 30)} == {10: 5.79e-07, 20: 1.4475000000000001e-06, 30: 2.4125e-06}
    assert {s: r.lr for s, r in critic.items()} == {10: 3.5000000000000004e-07, 20: 8.500000000000001e-07, 30: 1.3e-06}
    kinds = [i.kind for i in result.issues]
    assert "restart" not in kinds and "corrupt" not in kinds
    (engines,) = [i for i in result.issues if i.kind == "skipped"]
    assert "the actor" in engines.message and "train/critic" in engines.message


def test_deepspeed_chat_losses_and_samples_per_second_are_read():
    train = by_step(parse_files([DS_CHAT]))
    # 'epoch: 0|step: 0|...' is PPO step 0 = engine step 1
    assert (train[1].loss, train[1].extra["critic_loss"]) == (0.2099609375, 0.12042236328125)
    assert train[1].extra["samples_per_s_e2e"] == 8.01 and train[2].extra["samples_per_s_e2e"] == 17.17
    assert train[10].loss == 0.2998046875 and train[10].extra["samples_per_s"] == 78.87912870644737
    assert train[10].extra["samples_per_s_e2e"] == 16.50 and train[11].loss == -0.219482421875


def test_deepspeed_repeated_step_line_is_not_a_second_engine(tmp_path):
    line = "[2023-04-18 08:48:36,035] [INFO] [logging.py:96:log_dist] [Rank 0] step=10, skipped=4, lr=[5.79e-07], mom=[(0.9, 0.95)]\n"
    log = tmp_path / "train.log"
    log.write_text(line + line, encoding="utf-8")
    result = parse_files([log])
    assert {r.phase for r in result.records} == {"train"}


# ------------------------------------------------------------------------------ run identity

TITAN = ("[rank0]:[titan] 2025-06-04 08:51:40,001 - root - INFO - CUDA capacity: NVIDIA H100 80GB HBM3 with 79.10GiB memory\n"
         "[rank0]:[titan] 2025-06-04 08:51:41,001 - root - INFO - Building qwen3 14B with Qwen3ModelArgs(dim=5120)\n"
         + "".join(f"[rank0]:[titan] 2025-06-04 08:52:{s:02d},074 - root - INFO - step: {s:2d}  loss: {9 - s / 10:.4f}  "
                   f"memory: 60.34GiB(76.30%)  tps: 1,210  tflops: 120.73  mfu: 12.20%\n" for s in range(1, 60)))


def test_identity_is_read_and_another_model_is_refused_for_flops_claims(tmp_path):
    log = tmp_path / "titan.log"
    log.write_text(TITAN, encoding="utf-8")
    result = parse_files([log])
    assert result.identity == {"framework": "torchtitan", "model": "qwen3 14B", "gpu": "NVIDIA H100 80GB HBM3"}
    checked = verify("fastllm-mistral-7b-pretrain", [result.records], hardware="H100-SXM",
                     run_identity=[result.identity])
    refused = [r for r in checked.results if "not comparable: the log is of qwen3 14B (torchtitan)" in r.check.message]
    assert refused and all(r.check.status == NOT_MEASURED for r in refused)
    assert {r.claim_id for r in refused} >= {"tokens-per-s-seed", "model-tflops-seed"}
    # the same records without an identity are checked (and fail): the refusal is what changed
    unchecked = verify("fastllm-mistral-7b-pretrain", [result.records], hardware="H100-SXM")
    assert next(r for r in unchecked.results if r.claim_id == "model-tflops-seed").check.status == FAIL


# ------------------------------------------------------------------------------ effective batch

def test_effective_batch_from_samples_per_second_runtime_and_steps():
    from repro.verify.derived import effective_batch

    # HF summary of a 2,121-step run at batch 128: 271,488 samples in 10,000 s
    value, how = effective_batch({"train_samples_per_second": 27.149, "train_runtime": 10000.0, "max_steps": 2121.0})
    assert value == 128.0 and "27.149 samples/s x 10000 s runtime / 2121 optimizer steps" in how
    assert effective_batch({"global_batch_size": 8.0})[0] == 8.0
    value, how = effective_batch({"train_runtime": 10.0})
    assert value is None and "samples/s" in how and "step count" in how
    records = [MetricRecord(step=s, lr=v) for s, v in linear(5e-7, 212, 2121, 600)]
    result = verify("tulu3-8b-dpo", [records], run_values=[{"train_samples_per_second": 27.149,
                                                            "train_runtime": 10000.0, "max_steps": 2121.0}])
    batch = next(r for r in result.results if r.claim_id == "effective-batch")
    assert batch.check.status == PASS and "derived:" in batch.check.message
    result = verify("tulu3-8b-dpo", [records], run_values=[{"train_samples_per_second": 108.596,
                                                            "train_runtime": 10000.0, "max_steps": 2121.0}])
    assert next(r for r in result.results if r.claim_id == "effective-batch").check.status == FAIL  # 512, 4x


def test_mlperf_validation_timings_are_not_train_restarts(tmp_path):
    """A tracked_stats line inside eval_start..eval_stop (validation timing) belongs to the eval."""
    out = []
    for line in MLPERF.read_text(encoding="utf-8").splitlines(keepends=True):
        out.append(line)
        if '"eval_start"' in line:
            samples = json.loads(line.split(":::MLLOG ", 1)[1])["metadata"]["samples_count"]
            out.append(':::MLLOG {"namespace": "", "time_ms": 1, "event_type": "POINT_IN_TIME", "key": "tracked_stats", '
                       f'"value": {{"validation_step_timing": 0.25}}, "metadata": {{"step": {samples}}}}}\n')
    log = tmp_path / "result_0.txt"
    log.write_text("".join(out), encoding="utf-8")
    result = parse_files([log])
    assert "restart" not in [i.kind for i in result.issues]
    assert sorted(by_step(result)) == sorted(MLPERF_EVAL)
    assert by_step(result, "eval")[192].extra["validation_step_timing"] == 0.25


# ------------------------------------------------------------------------------ HF Trainer stdout (TRL DPO)

# CONSTRUCTED (no public log with its source was found in time): the layout of transformers'
# Trainer output to a terminal - the '***** Running training *****' header, tqdm bars split by
# carriage returns, and Trainer.log's dict lines - with a DPO step-1 loss of ln 2 in bf16.
HF_DPO = ("***** Running training *****\n  Num examples = 43,802\n  Num Epochs = 1\n"
          "  Total train batch size (w. parallel, distributed & accumulation) = 128\n"
          "  Gradient Accumulation steps = 2\n  Total optimization steps = 2,354\n"
          "  0%|          | 0/2354 [00:00<?, ?it/s]\r  0%|          | 1/2354 [00:07<4:36:00,  7.03s/it]\r"
          "{'loss': 0.693359375, 'grad_norm': 5.435215950012207, 'learning_rate': 2.1186440677966102e-09, "
          "'rewards/chosen': 0.0, 'rewards/rejected': 0.0, 'rewards/accuracies': 0.0, 'rewards/margins': 0.0, "
          "'logits/rejected': nan, 'epoch': 0.0}\n"
          "  0%|          | 2/2354 [00:14<4:36:00,  7.03s/it]\r"
          "{'loss': 0.6914, 'grad_norm': 5.1, 'learning_rate': 4.2372881355932204e-09, 'rewards/margins': 0.0031, "
          "'epoch': 0.0}\n"
          "{'train_runtime': 16551.2, 'train_samples_per_second': 18.203, 'train_steps_per_second': 0.142, "
          "'train_loss': 0.5123, 'epoch': 1.0}\n")


def test_hf_trainer_stdout_reads_the_dpo_step_one_loss_and_the_stated_steps(tmp_path):
    log = tmp_path / "stderr.log"
    log.write_text(HF_DPO, encoding="utf-8")
    result = parse_files([log])
    assert result.format == {str(log): "hf_trainer_stdout"}
    train = by_step(result)
    assert train[1].loss == 0.693359375 and train[2].loss == 0.6914  # steps from the tqdm counter
    assert train[1].extra["rewards/margins"] == 0.0 and math.isnan(train[1].extra["logits/rejected"])
    assert result.metadata["max_steps"] == 2354  # 4,708 micro-batches at GA 2, stated by the header
    assert result.metadata["trainer_summary"]["train_samples_per_second"] == 18.203
    checked = verify("tulu3-8b-dpo", [result.records], run_values=[{"max_steps": 2354.0, "train_runtime": 16551.2,
                                                                    "train_samples_per_second": 18.203}])
    status = {r.claim_id: r for r in checked.results}
    assert status["dpo-loss-step1"].check.status == PASS  # ln 2 within its tolerance
    steps = status["optimizer-steps"].check
    assert steps.measured == 2354.0 and "read from the log" in steps.message  # never a fit's 2,157.6
    assert "derived:" in status["effective-batch"].check.message
