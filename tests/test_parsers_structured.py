"""Structured formats: W&B CSV, trainer_state.json, fms-hf-tuning JSONL, MLLOG, TensorBoard, metrics.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from repro.base.metrics import MetricRecord, write_jsonl
from repro.verify.parsers import parse_files


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def kinds(result) -> list[str]:
    return sorted(i.kind for i in result.issues)


def by_step(result, phase: str = "train") -> dict:
    return {r.step: r for r in result.records if r.phase == phase}


# ----------------------------------------------------------------------------------- W&B CSV

def test_wandb_chart_export_first_run_only_and_envelope_ignored(tmp_path):
    text = ('"Step","tulu3-sft - train_loss","tulu3-sft - train_loss__MIN","tulu3-sft - train_loss__MAX",'
            '"tulu3-sft - learning_rate","tulu3-sft - per_device_tps","other - train_loss"\n'
            "1,0.95,0.9,1.0,2e-05,1500.5,1.1\n"
            "2,NaN,,,1.9e-05,1510,1.0\n")
    log = write(tmp_path, "export.csv", text)
    result = parse_files([log])
    assert result.format == {str(log): "wandb_csv"}
    one, two = result.records
    assert (one.step, one.loss, one.lr, one.tokens_per_s_per_device, one.extra) == (1, 0.95, 2e-05, 1500.5, {})
    assert math.isnan(two.loss)
    assert kinds(result) == ["non_finite", "skipped"]
    assert "ignored other" in next(i.message for i in result.issues if i.kind == "skipped")


def test_wandb_history_export_dpo_rm_ppo_names_and_eval(tmp_path):
    text = ("_step,_runtime,_timestamp,train_loss,learning_rate,logps/chosen,rewards/accuracy,train/rm/loss,"
            "objective/kl,lr,eval/loss,total_tokens\n"
            "1,10.5,1700000000,0.69,5e-07,-120.5,0.5,,0.01,,,100000\n"
            "2,20.5,1700000010,0.6,4e-07,-118.25,0.75,,0.02,,0.65,200000\n")
    result = parse_files([write(tmp_path, "history.csv", text)])
    train = by_step(result)
    assert (train[1].loss, train[1].lr) == (0.69, 5e-07)
    assert train[1].extra == {"logps/chosen": -120.5, "rewards/accuracy": 0.5, "objective/kl": 0.01,
                              "total_tokens": 100000.0}
    assert by_step(result, "eval") == {2: by_step(result, "eval")[2]} and by_step(result, "eval")[2].loss == 0.65
    assert result.issues == []


def test_wandb_step_column_chosen_by_priority_not_position(tmp_path):
    result = parse_files([write(tmp_path, "dpo.csv", "training_step,_step,train_loss\n40,10,0.6\n")])
    (rec,) = result.records
    assert (rec.step, rec.loss, rec.extra) == (10, 0.6, {"training_step": 40.0})


def test_wandb_export_with_byte_order_mark(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffStep,run - train_loss\n5,0.25\n".encode())
    (rec,) = parse_files([path]).records
    assert (rec.step, rec.loss) == (5, 0.25)


def test_wandb_rm_names_map_to_core(tmp_path):
    result = parse_files([write(tmp_path, "rm.csv", "Step,train/rm/loss,train/rm/lr,train/rm/accuracy\n3,0.45,3e-06,0.8\n")])
    (rec,) = result.records
    assert (rec.step, rec.loss, rec.lr, rec.extra) == (3, 0.45, 3e-06, {"train/rm/accuracy": 0.8})


def test_wandb_corrupt_truncated_and_text_cells(tmp_path):
    text = "_step,train_loss,learning_rate,state\n1,0.9,1e-05,running\nx,0.8,1e-05,running\n2,0.7,1e-05,running\n3,0.6"
    log = write(tmp_path, "history.csv", text)
    result = parse_files([log])
    assert [r.step for r in result.records] == [1, 2]
    assert kinds(result) == ["corrupt", "skipped", "truncated"]
    assert next(i for i in result.issues if i.kind == "corrupt").line == 3
    assert next(i for i in result.issues if i.kind == "truncated").line == 5


# ------------------------------------------------------------------------- trainer_state.json

TRAINER_STATE = {
    "best_metric": None,
    "epoch": 1.0,
    "global_step": 4,
    "log_history": [
        {"epoch": 0.25, "grad_norm": 1.5, "learning_rate": 2e-05, "loss": 1.25, "num_input_tokens_seen": 4096,
         "step": 1},
        {"epoch": 0.5, "grad_norm": float("nan"), "learning_rate": 1.5e-05, "loss": 1.0, "step": 2},
        {"epoch": 0.5, "eval_loss": 0.9, "eval_runtime": 1.5, "eval_samples_per_second": 20.0, "step": 2},
        {"epoch": 1.0, "step": 4, "total_flos": 12345.0, "train_loss": 1.1, "train_runtime": 100.0,
         "train_samples_per_second": 3.2, "train_tokens_per_second": 512.0},
    ],
    "logging_steps": 1,
    "max_steps": 4,
    "train_batch_size": 8,
}


def trainer_state_text() -> str:
    # transformers TrainerState.save_to_json: json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"
    return json.dumps(TRAINER_STATE, indent=2, sort_keys=True) + "\n"


def test_trainer_state_records_eval_and_summary_metadata(tmp_path):
    result = parse_files([write(tmp_path, "trainer_state.json", trainer_state_text())])
    train, evaluation = by_step(result), by_step(result, "eval")
    assert (train[1].loss, train[1].lr, train[1].grad_norm) == (1.25, 2e-05, 1.5)
    assert train[1].extra == {"epoch": 0.25, "num_input_tokens_seen": 4096.0}
    assert math.isnan(train[2].grad_norm)
    assert evaluation[2].loss == 0.9 and evaluation[2].extra["eval_runtime"] == 1.5
    assert 4 not in train  # the summary is not a step
    assert result.metadata["trainer_summary"]["train_tokens_per_second"] == 512.0
    assert result.metadata["trainer_state"]["max_steps"] == 4
    assert kinds(result) == ["non_finite"]
    assert train[1].source.endswith(":6")  # the line of the entry's opening brace


def test_trainer_state_cut_while_writing_keeps_complete_entries(tmp_path):
    text = trainer_state_text()
    cut = text[: text.index('"eval_loss"')]
    result = parse_files([write(tmp_path, "trainer_state.json", cut)])
    assert [r.step for r in result.records] == [1, 2]
    assert "truncated" in kinds(result)


# -------------------------------------------------------------------- fms training_logs.jsonl

def fms_line(name: str, step: int, value: float, epoch: float) -> str:
    # tuning/trackers/filelogging_tracker.py: json.dumps(log_obj, sort_keys=True)
    data = {"epoch": round(epoch, 2), "step": step, "timestamp": "2025-01-01T00:00:00.000000", "value": value}
    return json.dumps({"data": data, "name": name}, sort_keys=True) + "\n"


def test_fms_training_logs(tmp_path):
    text = (fms_line("training_loss", 10, 1.2345, 0.5) + fms_line("validation_loss", 10, 1.5, 0.5) + "garbage\n"
            + fms_line("training_loss", 20, float("nan"), 1.0) + fms_line("training_loss", 30, 0.9, 1.5)[:40])
    log = write(tmp_path, "training_logs.jsonl", text)
    result = parse_files([log])
    assert result.format == {str(log): "fms_training_logs"}
    assert [(r.step, r.phase) for r in result.records] == [(10, "train"), (10, "eval"), (20, "train")]
    assert by_step(result)[10].loss == 1.2345 and by_step(result)[10].extra == {"epoch": 0.5}
    assert by_step(result, "eval")[10].loss == 1.5 and math.isnan(by_step(result)[20].loss)
    assert kinds(result) == ["corrupt", "non_finite", "truncated"]
    assert next(i for i in result.issues if i.kind == "corrupt").line == 3


# ------------------------------------------------------------------------------------ MLLOG

def mllog(key: str, value, event_type: str = "POINT_IN_TIME", **metadata) -> str:
    # mlperf_logging/mllog: ':::MLLOG {json}' with keys in this order
    meta = {"file": "train.py", "lineno": 1, **metadata}
    event = {"namespace": "", "time_ms": 1, "event_type": event_type, "key": key, "value": value, "metadata": meta}
    return ":::MLLOG " + json.dumps(event) + "\n"


def test_mllog_metrics_hyperparameters_and_samples_axis(tmp_path):
    text = (mllog("global_batch_size", 256) + mllog("opt_base_learning_rate", 0.0002) + mllog("seed", 1)
            + "[1,0]<stdout>: 2024-01-01 " + mllog("run_start", None, "INTERVAL_START")
            + mllog("train_loss", 1.5, samples_count=2560)
            + "0: " + mllog("eval_accuracy", 0.71875, samples_count=4608, epoch_num=1)
            + mllog("run_stop", None, "INTERVAL_END", samples_count=4608, status="success")
            + ':::MLLOG {"broken\n')
    result = parse_files([write(tmp_path, "result_0.txt", text)])
    assert result.metadata == {"global_batch_size": 256, "opt_base_learning_rate": 0.0002, "seed": 1,
                               "run_stop_status": "success"}
    assert by_step(result)[10].loss == 1.5 and by_step(result)[10].extra == {"samples_count": 2560.0}
    assert by_step(result, "eval")[18].extra == {"samples_count": 4608.0, "epoch_num": 1.0, "eval_accuracy": 0.71875}
    assert kinds(result) == ["corrupt", "unit"]
    assert "samples_count / global_batch_size (256)" in next(i.message for i in result.issues if i.kind == "unit")


def test_mllog_tracked_stats_use_their_step(tmp_path):
    text = mllog("tracked_stats", {"loss": 1.25, "lr": 1e-4, "throughput": 5000.5}, step=20) + mllog(
        "train_loss", float("nan"), step=30)
    result = parse_files([write(tmp_path, "mllog.out", text)])
    rec = by_step(result)[20]
    assert (rec.loss, rec.lr, rec.extra) == (1.25, 1e-4, {"throughput": 5000.5})
    assert math.isnan(by_step(result)[30].loss)
    assert kinds(result) == ["non_finite"]


# ------------------------------------------------------------------------------- TensorBoard

def test_tensorboard_tags_float32_restart_and_truncation(tmp_path):
    torch_tb = pytest.importorskip("torch.utils.tensorboard")
    pytest.importorskip("tensorboard")
    writer = torch_tb.SummaryWriter(str(tmp_path / "run"))
    for step in range(1, 6):
        writer.add_scalar("train/loss", 2.3 - step / 10, step)
        writer.add_scalar("learning_rate", 1e-4 * step, step)
        writer.add_scalar("lm loss vs samples", 2.3, step * 256)  # Megatron's second x-axis
    writer.add_scalar("eval/loss", 1.9, 5)
    writer.add_scalar("train/loss", float("nan"), 6)
    for step in range(4, 8):  # resumed from step 3
        writer.add_scalar("train/loss", 1.5 - step / 100, step)
    writer.add_scalar("mem-max-allocated-bytes", 3 * 2**30, 7)
    writer.add_scalar("iteration-time", 0.3167, 7)
    writer.close()

    result = parse_files([tmp_path / "run"])  # a directory: its event files
    (event_file,) = result.format
    assert result.format[event_file] == "tensorboard"
    train = by_step(result)
    assert [r.step for r in result.records if r.phase == "train"] == [1, 2, 3, 4, 5, 6, 7]
    assert (train[1].loss, train[1].lr) == (2.2, 0.0001)  # shortest float32 decimals, not 2.200000047...
    assert (train[4].loss, train[4].lr) == (1.46, None)  # the resumed run's record replaced the first one
    assert (train[7].memory_gib, train[7].step_time_s) == (3.0, 0.3167)
    assert by_step(result, "eval")[5].loss == 1.9
    assert kinds(result) == ["non_finite", "restart", "skipped", "unit"]  # the NaN at 6 was overwritten, still reported
    restart = next(i for i in result.issues if i.kind == "restart")
    assert "steps 4..6" in restart.message

    cut = tmp_path / "events.out.tfevents.cut"
    data = Path(event_file).read_bytes()
    cut.write_bytes(data[:-7])
    cut_result = parse_files([cut])
    assert "truncated" in kinds(cut_result)
    assert len(cut_result.records) == len(result.records)  # only the last event (iteration-time) was cut
    assert by_step(cut_result)[7].step_time_s is None


# ---------------------------------------------------------------------------- metrics.jsonl

def test_repro_metrics_roundtrip_nan_and_cut_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [MetricRecord(step=1, loss=2.5, lr=1e-4, tokens=4096.0, extra={"z": 1.0}),
               MetricRecord(step=2, loss=float("nan"), lr=1e-4, grad_norm=float("inf"))]
    write_jsonl(path, records)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"step": 3, "loss": 2.')
    result = parse_files([path])
    assert result.format == {str(path): "repro_metrics"}
    one, two = result.records
    assert (one.loss, one.lr, one.tokens, one.extra) == (2.5, 1e-4, 4096.0, {"z": 1.0})
    assert math.isnan(two.loss) and two.grad_norm == math.inf
    assert kinds(result) == ["non_finite", "non_finite", "truncated"]
