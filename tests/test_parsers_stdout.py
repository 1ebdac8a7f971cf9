"""Line-oriented stdout formats: open-instruct, Fast-LLM (all eras), Megatron, torchtitan, DeepSpeed.

Log lines are built from the upstream format strings (copied here as data), so a test fails
when the parser and the framework disagree on a single character.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from repro.verify.parsers import (
    deepspeed_stdout,
    fast_llm,
    megatron_stdout,
    open_instruct_stdout,
    parse_files,
    torchtitan_stdout,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def kinds(result) -> list[str]:
    return [i.kind for i in result.issues]


def by_step(result, phase: str = "train") -> dict:
    return {r.step: r for r in result.records if r.phase == phase}


# ------------------------------------------------------------------------------- open-instruct

OI_PREFIX = "11/20/2024 15:37:00 - INFO - __main__ -   "


def oi_line(step: int, lr: float, loss: float, tps: float, prefix: str = OI_PREFIX) -> str:
    # open_instruct/finetune.py @30d11b4: logger.info(f"  Step: {completed_steps}, LR: {lr}, Loss: {avg_loss}, TPS: {...}")
    return f"{prefix}  Step: {step}, LR: {lr}, Loss: {loss}, TPS: {tps}\n"


def test_open_instruct_values_and_global_tps(tmp_path):
    log = write(tmp_path, "train.log", "Loading model...\n" + oi_line(1, 2e-05, 812.5, 10234.56)
                + oi_line(2, 1.9999999999999998e-05, 640.25, 10300.0))
    result = parse_files([log])
    assert result.format == {str(log): "open_instruct_stdout"}
    first, second = result.records
    assert (first.step, first.lr, first.loss) == (1, 2e-05, 812.5)
    assert first.extra == {"tps_global": 10234.56}
    assert first.tokens_per_s_per_device is None  # needs the process count: never invented
    assert second.lr == 1.9999999999999998e-05
    assert first.source == f"{log}:2"
    assert result.issues == []


def test_open_instruct_dpo_lines_without_tps(tmp_path):
    """dpo_tune.py / dpo_tune_cache.py @30d11b4 log no TPS (and ' Aux Loss: a' with --load_balancing_loss); under
    accelerate the line follows tqdm's carriage-returned bar (measured in a real upstream run's log)."""
    bar = "  3%|\u258e         | 1/32 [00:00<00:17,  1.75it/s]"
    text = (f"{bar}INFO:__main__:  Step: 1, LR: 0.0003333333333333333, Loss: 0.6931471824645996\n"
            f"{OI_PREFIX}  Step: 2, LR: 0.0006666666666666666, Loss: 0.61 Aux Loss: 0.02\n")
    log = write(tmp_path, "train.log", text)
    result = parse_files([log])
    assert result.format == {str(log): "open_instruct_stdout"}
    first, second = result.records
    assert (first.step, first.lr, first.loss, first.extra) == (1, 0.0003333333333333333, 0.6931471824645996, {})
    assert (second.loss, second.extra) == (0.61, {"aux_loss": 0.02})
    assert result.issues == []


def test_open_instruct_rank_prefixes_keep_rank_zero(tmp_path):
    text = (oi_line(1, 2e-05, 1.5, 100.0, "[rank0]: " + OI_PREFIX) + oi_line(1, 2e-05, 9.9, 99.0, "[rank1]: " + OI_PREFIX)
            + oi_line(2, 1e-05, 1.25, 100.0, "[rank1]: " + OI_PREFIX) + oi_line(2, 1e-05, 1.0, 100.0, "[rank0]: " + OI_PREFIX))
    result = parse_files([write(tmp_path, "train.log", text)])
    assert [(r.step, r.loss, r.rank) for r in result.records] == [(1, 1.5, 0), (2, 1.0, 0)]
    ranks = [i for i in result.issues if i.kind == "ranks"]
    assert len(ranks) == 1 and "2 metric lines from rank(s) 1" in ranks[0].message


def test_open_instruct_corrupt_and_truncated_lines(tmp_path):
    text = (oi_line(1, 2e-05, 1.5, 100.0) + f"{OI_PREFIX}  Step: 2, LR: 2e-05, Loss: oops, TPS: 1\n"
            + oi_line(3, 2e-05, 1.25, 100.0) + f"{OI_PREFIX}  Step: 4, LR: 1e-05, Lo")
    log = write(tmp_path, "train.log", text)
    result = parse_files([log])
    assert [r.step for r in result.records] == [1, 3]
    corrupt = next(i for i in result.issues if i.kind == "corrupt")
    assert (corrupt.file, corrupt.line) == (str(log), 2)
    cut = next(i for i in result.issues if i.kind == "truncated")
    assert cut.line == 4 and "dropped" in cut.message


def test_open_instruct_nan_and_inf_are_kept(tmp_path):
    text = oi_line(1, 2e-05, 1.5, 100.0) + oi_line(2, 2e-05, float("nan"), 100.0) + oi_line(3, 2e-05, float("inf"), 100.0)
    result = parse_files([write(tmp_path, "train.log", text)])
    losses = [r.loss for r in result.records]
    assert losses[0] == 1.5 and math.isnan(losses[1]) and losses[2] == math.inf
    non_finite = [i for i in result.issues if i.kind == "non_finite"]
    assert len(non_finite) == 1 and "nan" in non_finite[0].message and "inf" in non_finite[0].message
    assert non_finite[0].line == 2


def test_open_instruct_restart_keeps_last_and_reports_range(tmp_path):
    text = "".join(oi_line(s, 1e-05, 2.0 - s / 10, 100.0) for s in range(1, 6))
    text += "Resuming from checkpoint step_3\n"
    text += "".join(oi_line(s, 1e-05, 1.0 - s / 100, 100.0) for s in range(4, 8))
    result = parse_files([write(tmp_path, "train.log", text)])
    assert [r.step for r in result.records] == [1, 2, 3, 4, 5, 6, 7]
    assert by_step(result)[4].loss == 0.96 and by_step(result)[3].loss == 1.7
    restart = next(i for i in result.issues if i.kind == "restart")
    assert restart.line == 7
    assert "step 4 logged again after step 5" in restart.message and "steps 4..5" in restart.message


# ------------------------------------------------------------------------------------ Fast-LLM

# fast_llm/logging.py @1aa6040 (v0.1-v0.3; v0.3 adds {dataset_name} after the phase)
FL_V02 = (
    "{phase} @ iteration {iteration:6.0f}/{train_iters:6.0f} | consumed samples: {consumed_samples:12,.0f}"
    " | consumed tokens: {consumed_tokens:16,.0f} | batch size: {batch_size:3.0f} | step time: {step_time_ms:.2f} ms"
    " | throughput: {model_tflops:.2f} tflop/s (model) | {hardware_tflops:.2f} tflop/s (hardware)"
    " | {tokens_per_sec_per_gpu:.2f} tokens/s/gpu | Memory allocated {allocated:,.2f} MiB"
    " | max allocated {max_allocated:,.2f} MiB | reserved {reserved:,.2f} MiB | max reserved {max_reserved:,.2f} MiB"
    " | global max reserved {global_max_reserved:,.2f} MiB"
)
FL_V02_TRAIN = FL_V02 + (
    " | learning rate: {learning_rate:.3e} | loss scale: {loss_scale:5.0f} | grad norm: {grad_norm:.4f}"
    " | skipped iterations: {skipped_iters:3.0f} | nan iterations: {nan_iters:3.0f}"
    " | average step time {step_time_average_ms:.2f} ms | remaining {remaining_time}  | completion {completion_time}"
    " ({percent_done:.2f} %)"
)
# fast_llm/logging.py @HEAD (v0.4)
FL_V04_TRAIN = (
    "{phase}{dataset_name} @ step {completed_steps:6.0f}/{total_steps:6.0f} | consumed tokens: {consumed_tokens:16,.0f}"
    " | batch size: {batch_size:3.0f} | step time: {step_time_ms:.2f} ms | throughput: {model_tflops:.2f} tflop/s (model)"
    " | {hardware_tflops:.2f} tflop/s (hardware) | {tokens_per_sec_per_gpu:.2f} tokens/s/gpu"
    " | Memory allocated {allocated:,.2f} MiB | max allocated {max_allocated:,.2f} MiB | reserved {reserved:,.2f} MiB"
    " | max reserved {max_reserved:,.2f} MiB | global max reserved {global_max_reserved:,.2f} MiB"
    " | learning rate: {learning_rate:.3e} | loss scale: {loss_scale:5.0f} | grad norm: {grad_norm:.4f}"
    " | skipped iterations: {skipped_iters:3.0f} | nan iterations: {nan_iters:3.0f}"
    " | average step time {step_time_average_ms:.2f} ms | data wait: {data_wait_time_ms:.2f} ms"
    " | data preprocessing: {data_preprocessing_time_ms:.2f} ms | remaining {remaining_time}  | completion"
    " {completion_time} ({percent_done:.2f} %)"
)
FL_PREFIX = "2025-04-01 17:18:22,486 [Rank 000] "

# Mistral-7B, 128 x 8192 tokens per step on 128 GPUs at 9000 tokens/s/GPU. Model FLOP/token at
# s=8192 with the 1aa6040 closed form (full causal attention): 4.2662363136e10 dense + 6.442450944e9
# attention = 4.9104814080e10; hardware adds 1/6 of the attention: 5.0178555904e10.
MISTRAL = {
    "phase": "Training", "iteration": 10, "train_iters": 500000, "consumed_samples": 1280,
    "consumed_tokens": 1280 * 8192, "batch_size": 128, "step_time_ms": 1e3 * 128 * 8192 / 128 / 9000,
    "model_tflops": 9000 * 4.9104814080e10 / 1e12, "hardware_tflops": 9000 * 5.0178555904e10 / 1e12,
    "tokens_per_sec_per_gpu": 9000.0, "allocated": 35123.45, "max_allocated": 60123.0, "reserved": 70000.0,
    "max_reserved": 71680.0, "global_max_reserved": 72000.0, "learning_rate": 1e-6, "loss_scale": 1,
    "grad_norm": 1.2345, "skipped_iters": 0, "nan_iters": 0, "step_time_average_ms": 915.0,
    "remaining_time": "5 days, 6:00:00", "completion_time": "2025-04-07 00:00:00", "percent_done": 0.0,
}


def fl_v02(loss: float = 10.12345, label: str = "language model loss", **override) -> str:
    values = {**MISTRAL, **override}
    return FL_PREFIX + FL_V02_TRAIN.format(**values) + f" | {label}: {loss:.5f} | run: 0\n"


def test_fast_llm_mistral_7b_line_consistent_at_seq_8192(tmp_path):
    log = write(tmp_path, "logs_rank_000.txt", fl_v02())
    assert "throughput: 441.94 tflop/s (model) | 451.61 tflop/s (hardware) | 9000.00 tokens/s/gpu" in log.read_text()
    (rec,) = parse_files([log]).records
    assert (rec.step, rec.rank, rec.phase) == (10, 0, "train")
    assert rec.model_tflops_per_device == 441.94
    assert rec.hardware_tflops_per_device == 451.61
    assert rec.tokens_per_s_per_device == 9000.0
    assert rec.step_time_s == pytest.approx(0.91022, abs=1e-12)
    assert rec.tokens == 128 * 8192
    assert rec.loss == 10.12345 and rec.lr == 1e-06 and rec.grad_norm == 1.2345
    assert rec.memory_gib == 70.0  # 71,680.00 MiB max reserved
    assert rec.extra == {"total_steps": 500000.0, "consumed_samples": 1280.0, "consumed_tokens": 10485760.0,
                         "batch_size_samples": 128.0, "skipped_iterations": 0.0, "nan_iterations": 0.0}
    # what the FLOP module will check: the printed numbers agree with each other
    assert rec.tokens / (rec.step_time_s * 128) == pytest.approx(9000.0, rel=1e-5)
    assert rec.model_tflops_per_device * 1e12 / rec.tokens_per_s_per_device == pytest.approx(4.9104814e10, rel=1e-5)


def test_fast_llm_units_are_reported_once(tmp_path):
    result = parse_files([write(tmp_path, "logs_rank_000.txt", fl_v02(iteration=10) + fl_v02(iteration=20))])
    units = [i for i in result.issues if i.kind == "unit"]
    assert len(units) == 2
    assert {("ms" in i.message, "MiB" in i.message) for i in units} == {(True, False), (False, True)}


def test_fast_llm_v03_label_phase_enum_and_dataset(tmp_path):
    line = FL_PREFIX + FL_V02_TRAIN.format(**{**MISTRAL, "phase": "PhaseType.training"}) + " | lm_head_loss: 2.50000\n"
    (rec,) = parse_files([write(tmp_path, "log.txt", line)]).records
    assert (rec.phase, rec.loss, rec.step) == ("train", 2.5, 10)


def test_fast_llm_v04_batch_in_tokens_and_data_wait(tmp_path):
    values = {**MISTRAL, "phase": "training", "dataset_name": "", "completed_steps": 7, "total_steps": 100,
              "batch_size": 262144, "data_wait_time_ms": 1.5, "data_preprocessing_time_ms": 0.25}
    line = FL_PREFIX + FL_V04_TRAIN.format(**values) + " | lm_head_loss: 3.25000 | num_documents: 12\n"
    (rec,) = parse_files([write(tmp_path, "log.txt", line)]).records
    assert (rec.step, rec.tokens, rec.loss) == (7, 262144.0, 3.25)
    assert rec.extra["data_wait_ms"] == 1.5 and rec.extra["data_preprocessing_ms"] == 0.25
    assert rec.extra["num_documents"] == 12.0
    assert "consumed_samples" not in rec.extra and "batch_size_samples" not in rec.extra


def test_fast_llm_validation_line_is_eval_phase(tmp_path):
    val = FL_PREFIX + FL_V02.format(**{**MISTRAL, "phase": "Validation"}) + " | language model loss: 2.10000\n"
    result = parse_files([write(tmp_path, "log.txt", fl_v02(loss=2.2) + val)])
    assert [(r.step, r.phase, r.loss) for r in result.records] == [(10, "train", 2.2), (10, "eval", 2.1)]
    assert result.records[1].lr is None


@pytest.mark.parametrize("line", [
    fl_v02(),
    fl_v02(label="lm_head_loss"),
    FL_PREFIX + FL_V04_TRAIN.format(**{**MISTRAL, "phase": "training", "dataset_name": "", "completed_steps": 7,
                                       "total_steps": 100, "batch_size": 262144, "data_wait_time_ms": 1.5,
                                       "data_preprocessing_time_ms": 0.25}) + " | lm_head_loss: 3.25000 | z_loss: 0.5\n",
])
def test_fast_llm_fast_path_equals_label_path(line):
    """The precompiled fast path must return exactly what the label-driven path returns."""
    assert fast_llm.parse_line(line) == fast_llm.parse_line_by_labels(line)


def test_fast_llm_nan_loss_and_truncated_line(tmp_path):
    text = fl_v02(iteration=10) + fl_v02(iteration=20, loss=float("nan"), nan_iters=2) + fl_v02(iteration=30)[:300]
    result = parse_files([write(tmp_path, "log.txt", text)])
    assert [r.step for r in result.records] == [10, 20]
    assert math.isnan(by_step(result)[20].loss) and by_step(result)[20].extra["nan_iterations"] == 2.0
    assert sorted(set(kinds(result))) == ["non_finite", "truncated", "unit"]


# ------------------------------------------------------------------------------------ Megatron

def megatron_line(it: int, loss: float | None, *, ms: float = 316.7, lr: float = 3e-5, nan_iters: int = 0) -> str:
    # megatron/training/training.py training_log()
    s = f" [2025-01-01 10:00:00.000000] iteration {it:8d}/{50:8d} |"
    s += f" consumed samples: {it * 256:12d} | elapsed time per iteration (ms): {ms:.1f} |"
    s += f" throughput per GPU (TFLOP/s/GPU): {380.2:.1f} | learning rate: {lr:.6E} | global batch size: {256:5d} |"
    if loss is not None and loss >= 0.0:
        s += f" lm loss: {loss:.6E} |"
    s += f" loss scale: {1.0:.1f} | grad norm: {1.234:.3f} | number of skipped iterations: {nan_iters:3d} |"
    return s + f" number of nan iterations: {nan_iters:3d} |\n"


def test_megatron_train_and_eval(tmp_path):
    text = megatron_line(1, 10.95937, ms=6038.1) + megatron_line(2, 10.95597)
    text += " validation loss at iteration 2 | lm loss value: 1.085000E+01 | lm loss PPL: 5.144000E+04 | \n"
    result = parse_files([write(tmp_path, "megatron.log", text)])
    first = by_step(result)[1]
    assert (first.loss, first.lr, first.step_time_s, first.model_tflops_per_device) == (10.95937, 3e-05, 6.0381, 380.2)
    assert first.extra["global_batch_size"] == 256.0 and first.extra["consumed_samples"] == 256.0
    assert first.extra["loss_scale"] == 1.0 and first.grad_norm == 1.234
    evaluation = by_step(result, "eval")[2]
    assert evaluation.loss == 10.85 and evaluation.extra == {"lm_loss_ppl": 51440.0}
    assert [i.kind for i in result.issues] == ["unit"]


def test_megatron_named_validation_and_test_sets_are_separate_phases(tmp_path):
    text = (megatron_line(100, 2.0)
            + " validation loss at iteration 100 on validation set | lm loss value: 2.100000E+00 | \n"
            + " validation-wiki loss at iteration 100 on validation set | lm loss value: 2.200000E+00 | \n"
            + " validation loss at iteration 100 on test set | lm loss value: 2.300000E+00 | \n")
    result = parse_files([write(tmp_path, "megatron.log", text)])
    assert [(r.phase, r.loss) for r in result.records] == [("train", 2.0), ("eval", 2.1), ("eval/test", 2.3),
                                                            ("eval/wiki", 2.2)]


def test_megatron_nan_loss_dropped_from_line_is_restored(tmp_path):
    text = megatron_line(1, 10.9) + megatron_line(2, float("nan"), nan_iters=1)
    result = parse_files([write(tmp_path, "megatron.log", text)])
    assert math.isnan(by_step(result)[2].loss)
    assert "non_finite" in kinds(result)


def test_megatron_cut_line_is_reported(tmp_path):
    result = parse_files([write(tmp_path, "megatron.log", megatron_line(1, 10.9) + megatron_line(2, 10.8)[:120])])
    assert [r.step for r in result.records] == [1]
    assert "truncated" in kinds(result)


# ---------------------------------------------------------------------------------- torchtitan

RED, GREEN, ORANGE, TURQ, BLUE, CYAN, MAGENTA, YELLOW, RESET = (
    "\033[31m", "\033[32m", "\033[38;2;180;60;0m", "\033[38;2;54;234;195m", "\033[34m", "\033[36m", "\033[35m",
    "\033[33m", "\033[39m")


def titan_line(step: int, loss: float, tps: float, rank: int = 0, mfu: str = "1.25%") -> str:
    # torchtitan/components/metrics.py MetricsProcessor.log(); logger format "[titan] %(asctime)s - ..."
    return (f"[rank{rank}]:[titan] 2025-07-01 10:00:01,000 - root - INFO - {RED}step: {step:2}  "
            f"{GREEN}loss: {loss:8.5f}  {ORANGE}grad_norm: {1.2345:7.4f}  {TURQ}memory: {10.23:5.2f}GiB({12.34:.2f}%)  "
            f"{BLUE}tps: {round(tps):,}  {CYAN}tflops: {12.34:,.2f}  {MAGENTA}mfu: {mfu}{RESET}\n")


def test_torchtitan_colours_ranks_and_units(tmp_path):
    text = (titan_line(1, 12.25, 12345) + titan_line(1, 12.25, 12000, rank=1) + titan_line(2, 11.5, 12400, mfu="N/A")
            + f"[rank0]:[titan] 2025-07-01 10:00:02,000 - root - INFO - {YELLOW}validate step:  2  {GREEN}loss:  7.1234  "
              f"{TURQ}memory: 10.23GiB(12.34%)  {BLUE}tps: 5,000{RESET}\n")
    result = parse_files([write(tmp_path, "titan.log", text)])
    first = by_step(result)[1]
    assert (first.loss, first.grad_norm, first.tokens_per_s_per_device, first.model_tflops_per_device) == (
        12.25, 1.2345, 12345.0, 12.34)
    assert first.memory_gib == 10.23 and first.extra == {"memory_pct": 12.34, "mfu_pct": 1.25}
    assert "mfu_pct" not in by_step(result)[2].extra  # N/A under FP8: not computed, not corrupt
    assert by_step(result, "eval")[2].loss == 7.1234
    assert kinds(result) == ["ranks"]


def test_torchtitan_nan_loss(tmp_path):
    result = parse_files([write(tmp_path, "titan.log", titan_line(1, float("nan"), 100))])
    assert math.isnan(result.records[0].loss) and kinds(result) == ["non_finite"]


# ----------------------------------------------------------------------------------- DeepSpeed

DS = "[2024-05-01 10:00:00,000] [INFO] "


def test_deepspeed_step_and_throughput_lines_merge(tmp_path):
    text = (f"{DS}[logging.py:96:log_dist] [Rank 0] step=10, skipped=0, lr=[1e-05, 1e-05], mom=[(0.9, 0.999), (0.9, 0.999)]\n"
            f"{DS}[timer.py:260:stop] epoch=0/micro_step=40/global_step=10, RunningAvgSamplesPerSec=12.5, "
            "CurrSamplesPerSec=13.25, MemAllocated=3.2GB, MaxMemAllocated=5.75GB\n"
            f"{DS}[logging.py:96:log_dist] [Rank 0] step=20, skipped=1, lr=[2e-05, 1e-05], mom=[(0.9, 0.999), (0.9, 0.999)]\n"
            f"{DS}[timer.py:181:stop] 0/80, SamplesPerSec=11.5, MemAllocated=3.2GB, MaxMemAllocated=5.5GB\n")
    result = parse_files([write(tmp_path, "ds.log", text)])
    ten, twenty = result.records
    assert (ten.step, ten.lr, ten.memory_gib, ten.rank) == (10, 1e-05, 5.75, 0)
    assert ten.extra == {"skipped_steps": 0.0, "samples_per_s": 13.25, "samples_per_s_running_avg": 12.5,
                         "memory_allocated_gib": 3.2}
    assert (twenty.lr, twenty.extra["lr_group_1"], twenty.extra["samples_per_s_running_avg"]) == (2e-05, 1e-05, 11.5)
    assert kinds(result) == ["unit"]


def test_deepspeed_throughput_line_without_any_step_is_corrupt(tmp_path):
    text = (f"{DS}[timer.py:181:stop] 0/80, SamplesPerSec=11.5, MemAllocated=3.2GB, MaxMemAllocated=5.5GB\n"
            f"{DS}[logging.py:96:log_dist] [Rank 0] step=10, skipped=0, lr=[1e-05], mom=[(0.9, 0.999)]\n")
    result = parse_files([write(tmp_path, "ds.log", text)])
    assert [r.step for r in result.records] == [10] and kinds(result) == ["corrupt"]


# ---------------------------------------------------------------------- never crash on garbage

@pytest.mark.parametrize("module", [open_instruct_stdout, fast_llm, megatron_stdout, torchtitan_stdout])
def test_line_parsers_only_return_or_raise_value_error(module):
    """The driver turns ValueError into an issue; anything else would be a crash."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    marker_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=80).map(
        lambda s: s + " Step: 1, LR: x @ iteration 1/2 | step:  1  loss: nan | iteration 3/ 4 | " + s)

    @hypothesis.given(marker_text)
    @hypothesis.settings(max_examples=200, deadline=None)
    def check(line):
        try:
            module.parse_line(line)
        except ValueError:
            pass

    check()


def test_deepspeed_parser_only_returns_or_raises_value_error():
    parse_line = deepspeed_stdout.make_line_parser()
    for line in ["step=1, skipped=x, lr=[]", "SamplesPerSec=", "global_step=, SamplesPerSec=1",
                 "step=3, skipped=0, lr=[a, b]", "0/1, SamplesPerSec=nan"]:
        try:
            parse_line(line)
        except ValueError:
            pass
