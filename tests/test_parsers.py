"""The parser registry, format detection, normalisation rules, error contract and `repro parse`."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from repro.commands import parse as parse_command
from repro.base.errors import EXIT_BAD_INPUT, ReproError
from repro.base.metrics import MetricRecord
from repro.verify.parsers import FORMATS, KINDS, ParseResult, detect_format, parse_files
from repro.verify.parsers._normalize import normalize

OI = "11/20/2024 15:37:00 - INFO - __main__ -   Step: {step}, LR: 1e-05, Loss: {loss}, TPS: 1000.0\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def oi(*steps_losses: tuple[int, float]) -> str:
    return "".join(OI.format(step=s, loss=v) for s, v in steps_losses)


# ------------------------------------------------------------------------------------ registry

def test_registry_lists_every_format_with_the_module_api():
    assert list(FORMATS) == [
        "open_instruct_stdout", "wandb_csv", "hf_trainer_state", "fms_training_logs", "fast_llm", "megatron_stdout",
        "torchtitan_stdout", "deepspeed_stdout", "mllog", "tensorboard", "repro_metrics"]
    for name, module in FORMATS.items():
        assert callable(module.parse) and callable(module.sniff), name
        assert module.DESCRIPTION and "\n" not in module.DESCRIPTION, name


SAMPLES = {
    "open_instruct_stdout": ("train.log", OI.format(step=1, loss=0.5)),
    "wandb_csv": ("export.csv", "Step,run - train_loss\n1,0.5\n"),
    "hf_trainer_state": ("state.json", '{\n  "log_history": [\n    {"loss": 0.5, "step": 1}\n  ]\n}\n'),
    "fms_training_logs": ("train.jsonl", ('{"data": {"epoch": 0.1, "step": 1, "timestamp": "t", "value": 0.5}, '
                                          '"name": "training_loss"}\n')),
    "fast_llm": ("train.log", ("2025-01-01 00:00:00,000 Training @ iteration      1/     2 | consumed samples: 1"
                               " | language model loss: 0.50000\n")),
    "megatron_stdout": ("train.log", (" [2025-01-01] iteration        1/       2 | consumed samples:          8 |"
                                      " lm loss: 5.000000E-01 |\n")),
    "torchtitan_stdout": ("train.log", ("[titan] 2025 - root - INFO - step:  1  loss:  0.5000  grad_norm:  1.0000"
                                        "  memory:  1.00GiB(1.00%)  tps: 1  tflops: 0.00  mfu: 0.00%\n")),
    "deepspeed_stdout": ("train.log", "[Rank 0] step=1, skipped=0, lr=[1e-05], mom=[(0.9, 0.999)]\n"),
    "mllog": ("train.log", ':::MLLOG {"key": "train_loss", "value": 0.5, "metadata": {"step": 1}}\n'),
    "repro_metrics": ("train.jsonl", '{"loss": 0.5, "lr": 1e-05, "step": 1}\n'),
}


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_detect_format_reads_content_not_extension(tmp_path, fmt):
    name, text = SAMPLES[fmt]
    path = write(tmp_path, name, text)
    assert detect_format(path) == fmt
    (rec,) = parse_files([path]).records
    assert (rec.step, rec.lr if fmt == "deepspeed_stdout" else rec.loss) == (1, 1e-05 if fmt == "deepspeed_stdout" else 0.5)


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_parsers_survive_every_cut_of_every_sample(tmp_path, fmt):
    """A file cut anywhere (or holding another format) is parsed or reported, never a crash."""
    module = FORMATS[fmt]
    path = tmp_path / "cut.log"
    for _, text in SAMPLES.values():
        doubled = text + text.replace("1", "2")
        for end in range(len(doubled) + 1):
            path.write_text(doubled[:end], encoding="utf-8")
            records, _issues = module.parse(path)
            assert all(isinstance(r, MetricRecord) for r in records)


def test_detect_format_reads_past_a_long_preamble(tmp_path):
    preamble = "".join(f"  config_key_{i} ............ {i}\n" for i in range(60000))  # > 1 MiB
    path = write(tmp_path, "train.log", preamble + OI.format(step=1, loss=0.5))
    assert path.stat().st_size > 1 << 20
    assert detect_format(path) == "open_instruct_stdout"


def test_framework_lines_outweigh_the_deepspeed_lines_inside_them(tmp_path):
    ds = "[Rank 0] step={s}, skipped=0, lr=[1e-05], mom=[(0.9, 0.999)]\n[Rank 0] epoch=0/micro_step={s}/global_step={s}, " \
         "RunningAvgSamplesPerSec=1.0, CurrSamplesPerSec=1.0, MemAllocated=1.0GB, MaxMemAllocated=1.0GB\n"
    text = "".join(OI.format(step=s, loss=0.5) + ds.format(s=s) for s in range(1, 4))
    assert detect_format(write(tmp_path, "train.log", text)) == "open_instruct_stdout"


def test_tensorboard_detected_by_file_name(tmp_path):
    assert detect_format(write(tmp_path, "events.out.tfevents.123.host", "x")) == "tensorboard"


# ------------------------------------------------------------------------------ error contract

def test_unknown_format_names_the_file_and_the_fix(tmp_path):
    path = write(tmp_path, "notes.txt", "hello\nworld\n")
    with pytest.raises(ReproError) as err:
        parse_files([path])
    assert str(path) in err.value.message and "--format" in err.value.message and "fast_llm" in err.value.message
    assert err.value.exit_code == EXIT_BAD_INPUT and "\n" not in err.value.message


def test_missing_file_and_unknown_format_name(tmp_path):
    with pytest.raises(ReproError, match="missing.log"):
        parse_files([tmp_path / "missing.log"])
    with pytest.raises(ReproError, match="unknown format 'nope'"):
        parse_files([write(tmp_path, "a.log", OI.format(step=1, loss=1.0))], fmt="nope")


def test_empty_file_is_an_issue_unless_nothing_parsed(tmp_path):
    empty = write(tmp_path, "empty.log", "")
    with pytest.raises(ReproError, match="no metric records"):
        parse_files([empty])
    result = parse_files([empty, write(tmp_path, "a.log", oi((1, 1.0)))])
    assert [r.step for r in result.records] == [1]
    assert [(i.file, i.kind) for i in result.issues] == [(str(empty), "empty")]
    assert result.format[str(empty)] == "unknown"


def test_forced_format_without_records_is_reported(tmp_path):
    other = write(tmp_path, "other.log", "nothing here\n")
    result = parse_files([other, write(tmp_path, "a.log", oi((1, 1.0)))], fmt="open_instruct_stdout")
    assert [(i.file, i.kind) for i in result.issues] == [(str(other), "no_records")]
    with pytest.raises(ReproError, match="no metric records"):
        parse_files([other], fmt="open_instruct_stdout")


def test_wrong_forced_format_is_bad_input(tmp_path):
    with pytest.raises(ReproError, match=r"a.log \(repro_metrics\)"):
        parse_files([write(tmp_path, "a.log", oi((1, 1.0)))], fmt="repro_metrics")


def test_a_parser_bug_becomes_an_issue_not_a_traceback(tmp_path, monkeypatch):
    def broken(path):
        raise RuntimeError("boom")

    monkeypatch.setattr(FORMATS["repro_metrics"], "parse", broken)
    bad = write(tmp_path, "m.jsonl", '{"step": 1, "loss": 1.0}\n')
    result = parse_files([bad, write(tmp_path, "a.log", oi((1, 1.0)))])
    assert [(i.file, i.kind) for i in result.issues][:1] == [(str(bad), "corrupt")]
    assert "RuntimeError: boom" in result.issues[0].message


# ------------------------------------------------------------------------------- normalisation

def rec(step: int, loss: float, rank: int | None = None, phase: str = "train", line: int = 0) -> MetricRecord:
    return MetricRecord(step=step, loss=loss, rank=rank, phase=phase, source=f"log.txt:{line or step}")


def test_restart_keeps_last_occurrence_and_reports_overwritten_range():
    written = [rec(s, 1.0) for s in range(1, 11)] + [rec(s, 2.0, line=100 + s) for s in range(8, 13)]
    records, issues = normalize(written)
    assert [(r.step, r.loss) for r in records][6:] == [(7, 1.0), (8, 2.0), (9, 2.0), (10, 2.0), (11, 2.0), (12, 2.0)]
    (issue,) = issues
    assert (issue.kind, issue.file, issue.line) == ("restart", "log.txt", 108)
    assert "step 8 logged again after step 10" in issue.message and "steps 8..10 (3 logged)" in issue.message
    assert "log.txt:8" in issue.message


def test_restart_that_dies_before_catching_up_keeps_the_old_tail():
    written = [rec(s, 1.0) for s in range(1, 11)] + [rec(5, 2.0, line=50), rec(6, 2.0, line=51)]
    records, issues = normalize(written)
    assert [r.loss for r in records] == [1.0] * 4 + [2.0, 2.0] + [1.0] * 4
    assert "steps 5..6 (2 logged)" in issues[0].message


def test_two_restarts_are_two_issues():
    written = [rec(s, 1.0) for s in range(1, 6)] + [rec(s, 2.0) for s in (3, 4)] + [rec(s, 3.0) for s in (2, 3, 4, 5, 6)]
    records, issues = normalize(written)
    assert [i.kind for i in issues] == ["restart", "restart"]
    assert [r.loss for r in records] == [1.0, 3.0, 3.0, 3.0, 3.0, 3.0]


def test_sparse_logging_restart_is_detected():
    written = [rec(s, 1.0) for s in (10, 20, 30)] + [rec(s, 2.0) for s in (30, 40)]
    records, issues = normalize(written)
    assert [(r.step, r.loss) for r in records] == [(10, 1.0), (20, 1.0), (30, 2.0), (40, 2.0)]
    assert [i.kind for i in issues] == ["restart"]


def test_identical_repeated_line_is_a_duplicate():
    records, issues = normalize([rec(1, 1.0), rec(2, 1.0), rec(2, 1.0), rec(3, 1.0)])
    assert [r.step for r in records] == [1, 2, 3]
    assert [i.kind for i in issues] == ["duplicate"]


def test_restart_issues_are_capped_per_file():
    written = [rec(s, float(k)) for s in range(1, 201) for k in (1, 2)]  # two unprefixed ranks, different values
    records, issues = normalize(written)
    assert len(records) == 200 and all(r.loss == 2.0 for r in records)
    assert len(issues) == 51 and "150 more restarts" in issues[-1].message


def test_interleaved_ranks_keep_the_lowest_rank_per_step():
    written = [rec(1, 1.0, 0), rec(1, 9.0, 1), rec(1, 9.0, 2), rec(2, 8.0, 3), rec(2, 2.0, 1), rec(3, 3.0, 2)]
    records, issues = normalize(written)
    assert [(r.step, r.loss, r.rank) for r in records] == [(1, 1.0, 0), (2, 2.0, 1), (3, 3.0, 2)]
    (issue,) = issues
    assert issue.kind == "ranks" and "3 metric lines from rank(s) 1, 2, 3" in issue.message


def test_phases_are_deduplicated_separately_and_sorted():
    written = [rec(10, 1.0), rec(10, 0.9, phase="eval"), rec(5, 1.1), rec(20, 0.8), rec(20, 0.7, phase="eval")]
    records, issues = normalize(written)
    assert [(r.step, r.phase) for r in records] == [(5, "train"), (10, "train"), (10, "eval"), (20, "train"),
                                                     (20, "eval")]
    assert [i.kind for i in issues] == ["restart"]


def test_restart_across_files_in_argument_order(tmp_path):
    first = write(tmp_path, "run1.log", oi((1, 3.0), (2, 2.5), (3, 2.0)))
    second = write(tmp_path, "run2.log", oi((3, 1.9), (4, 1.8)))
    result = parse_files([first, second])
    assert [(r.step, r.loss) for r in result.records] == [(1, 3.0), (2, 2.5), (3, 1.9), (4, 1.8)]
    (restart,) = [i for i in result.issues if i.kind == "restart"]
    assert restart.file == str(second) and restart.line == 1


def test_metadata_conflict_between_files(tmp_path):
    line = ':::MLLOG {{"key": "{k}", "value": {v}, "event_type": "POINT_IN_TIME", "metadata": {{"step": {s}}}}}\n'
    a = write(tmp_path, "a.log", line.format(k="seed", v=1, s=0) + line.format(k="train_loss", v=1.0, s=1))
    b = write(tmp_path, "b.log", line.format(k="seed", v=2, s=0) + line.format(k="train_loss", v=0.9, s=2))
    result = parse_files([a, b])
    assert result.metadata == {"seed": 1}
    assert [(i.file, i.kind) for i in result.issues] == [(str(b), "metadata_conflict")]


def test_every_reported_kind_is_documented(tmp_path):
    text = oi((1, 1.0), (2, float("nan")), (1, 0.5)) + "Step: 9, LR: x\n" + "Step: 3, LR: 1, Lo"
    result = parse_files([write(tmp_path, "a.log", text), write(tmp_path, "e.log", "")])
    assert {i.kind for i in result.issues} <= set(KINDS)


# ---------------------------------------------------------------------------------------- JSON

def test_result_json_is_valid_json_with_nan_spelled_out(tmp_path):
    result = parse_files([write(tmp_path, "a.log", oi((1, float("nan"))))])
    payload = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert set(payload) == {"records", "issues", "formats", "metadata"}
    assert payload["records"][0]["loss"] == "nan"
    assert payload["issues"][0]["kind"] == "non_finite"


# ----------------------------------------------------------------------------------------- CLI

def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="repro parse")
    parse_command.add_arguments(parser)
    return parse_command.run(parser.parse_args(argv))


def test_cli_json(tmp_path, capsys):
    path = write(tmp_path, "a.log", oi((1, 1.5), (2, 1.25)))
    assert cli([str(path), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [r["loss"] for r in payload["records"]] == [1.5, 1.25]
    assert payload["formats"] == {str(path): "open_instruct_stdout"} and payload["metadata"] == {}


def test_cli_table_and_forced_format(tmp_path, capsys):
    path = write(tmp_path, "a.txt", oi(*[(s, 1.0 / s) for s in range(1, 60)]) + "Step: 99, LR: bad\n")
    assert cli([str(path), "--format", "open_instruct_stdout"]) == 0
    out = capsys.readouterr().out
    assert "59 records (steps 1..59)" in out and "..." in out and "corrupt" in out


def test_cli_bad_input_raises_repro_error_for_exit_code_2(tmp_path):
    with pytest.raises(ReproError) as err:
        cli([str(write(tmp_path, "x.txt", "nothing\n"))])
    assert err.value.exit_code == 2


def test_cli_format_choices_come_from_the_registry():
    parser = argparse.ArgumentParser()
    parse_command.add_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "fmt")
    assert list(action.choices) == list(FORMATS)
    assert parse_command.HELP


def test_parse_result_defaults():
    result = ParseResult(records=[], issues=[], format={})
    assert result.metadata == {} and math.isfinite(len(result.to_json()["records"]) + 0.0)
