"""MLPerf ``:::MLLOG {json}`` lines (``mlperf_logging/mllog``).

As in the MLPerf compliance checker, everything before the token is dropped, so rank prefixes
and launcher timestamps do not matter. Metric keys become records; POINT_IN_TIME keys with a
scalar value that are not metrics (``global_batch_size``, ``opt_base_learning_rate``, ``seed``,
...) are hyperparameters and go to ``metadata``.

The x-axis: MLPerf counts ``samples_count`` (sequences, or tokens in some benchmarks), which
becomes an optimizer step by dividing by the logged ``global_batch_size`` (times the logged
sequence length when the counts are tokens); a ``unit`` issue says which. ``metadata.step``
(``tracked_stats``) is a step, except where every value of it is also a logged sample count (the
llama2_70b_lora reference logs samples there): then it is divided the same way, so throughput
and eval accuracy share one axis. Without a batch size the count itself is the x-axis, reported.

Statistics logged between ``eval_start`` and ``eval_stop`` (validation timings) are eval
records: merged into the train series they would replay its steps as false restarts.

The run's self-description goes to ``metadata``: submitter, platform, benchmark, division, the
global batch and sequence length, and ``time_to_train_s`` (run_stop - run_start, the MLPerf
score) with ``run_stop_status``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from repro.base.metrics import MetricRecord
from repro.verify.parsers._common import (
    IssueLog,
    NonFiniteTally,
    ParseIssue,
    is_number,
    put,
    to_step,
)
from repro.verify.parsers._lines import open_lines

DESCRIPTION = "MLPerf ':::MLLOG {json}' lines"
TOKEN = ":::MLLOG"

#: metric key -> (phase, record attribute or extra key)
_METRICS = {
    "train_loss": ("train", "loss"),
    "eval_loss": ("eval", "loss"),
    "eval_accuracy": ("eval", "extra.eval_accuracy"),
    "throughput": ("train", "extra.throughput"),
}
#: keys inside a ``tracked_stats`` value that map onto core fields
_TRACKED = {"loss": "loss", "lr": "lr", "learning_rate": "lr", "grad_norm": "grad_norm"}
#: keys that are neither metrics nor hyperparameters (interval markers, status)
_EVENTS = {"run_start", "run_stop", "init_start", "init_stop", "block_start", "block_stop",
           "epoch_start", "epoch_stop", "eval_start", "eval_stop", "cache_clear"}
#: keys that name the sequence length, in the spellings MLPerf benchmarks log
_SEQ_KEYS = ("max_sequence_length", "sequence_length", "seq_length", "max_seq_length")


def sniff(name: str, head: str) -> int:
    return head.count(TOKEN) * 10


def parse(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    records, issues, _ = parse_with_metadata(path)
    return records, issues


def parse_with_metadata(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue], dict[str, Any]]:
    with open_lines(path) as fh:
        return parse_lines(fh, str(path))


def parse_lines(lines, source: str) -> tuple[list[MetricRecord], list[ParseIssue], dict[str, Any]]:
    """Two passes over the parsed events: the batch size may be logged after the first metric."""
    issues = IssueLog(source)
    events = list(_events(lines, issues))
    metadata = _hyperparameters(events)
    seq = next((metadata[k] for k in _SEQ_KEYS if is_number(metadata.get(k))), None)
    divisor, how = _samples_per_step(events, metadata.get("global_batch_size"), seq)
    step_in_samples = _step_is_samples(events)
    records: list[MetricRecord] = []
    tally = NonFiniteTally()
    used_samples = False
    latest: dict[tuple[str, int], MetricRecord] = {}
    in_eval = False  # between eval_start and eval_stop, statistics are the validation's, not a train step's
    for lineno, event in events:
        key = event["key"]
        if key in ("eval_start", "eval_stop"):
            in_eval = key == "eval_start"
            continue
        try:
            rec = _record(event, divisor, source, lineno, step_in_samples)
        except ValueError as exc:
            issues.add(lineno, "corrupt", f"dropped: {exc}")
            continue
        if rec is None:
            continue
        if in_eval and rec.phase == "train":
            rec.phase = "eval"
        same = latest.get((rec.phase, rec.step))
        if same is not None and _fold(same, rec):
            continue  # another statistic of the same step (eval timing, then eval accuracy)
        used_samples = used_samples or "step" not in _meta(event) or step_in_samples
        tally.check(rec, lineno)
        records.append(rec)
        latest[(rec.phase, rec.step)] = rec
    tally.report(issues)
    if used_samples:
        issues.add(None, "unit", f"MLLOG metrics are counted in samples; step = {how}")
    if step_in_samples:
        issues.add(None, "unit", "tracked_stats 'step' values are sample counts (each one is also a logged "
                   "samples_count); divided like them")
    metadata.update(_run_times(events))
    return records, issues.done(), metadata


def _fold(into: MetricRecord, rec: MetricRecord) -> bool:
    """Merge ``rec`` into an earlier record of the same step when they share no value."""
    if rec.rank != into.rank or rec.loss is not None and into.loss is not None:
        return False
    if (rec.extra.keys() & into.extra.keys()) - {"samples_count", "epoch_num"}:
        return False
    if rec.loss is not None:
        into.loss = rec.loss
    into.extra.update(rec.extra)
    return True


def _run_times(events: list[tuple[int, dict]]) -> dict[str, Any]:
    """Time to train (the MLPerf score: run_stop - run_start) and how the run ended."""
    out: dict[str, Any] = {}
    times = {e["key"]: e.get("time_ms") for _, e in events if e["key"] in ("run_start", "run_stop")}
    start, stop = times.get("run_start"), times.get("run_stop")
    if is_number(start) and is_number(stop) and stop >= start:
        out["time_to_train_s"] = round((stop - start) / 1000.0, 3)
    status = next((_meta(e).get("status") for _, e in events if e["key"] == "run_stop"), None)
    if status is not None:
        out["run_stop_status"] = status
    return out


def _step_is_samples(events: list[tuple[int, dict]]) -> bool:
    """True when every ``metadata.step`` value is also a logged ``samples_count``: the writer put
    the sample count in the step field, and one x-axis per file needs it divided too."""
    counts = {_meta(e)["samples_count"] for _, e in events if is_number(_meta(e).get("samples_count"))}
    steps = {_meta(e)["step"] for _, e in events if is_number(_meta(e).get("step"))}
    return bool(steps) and bool(counts - {0}) and steps <= counts


def _events(lines, issues: IssueLog):
    """(line number, event dict) for every MLLOG line; bad JSON is reported with its line."""
    for lineno, line in enumerate(lines, 1):
        at = line.find(TOKEN)
        if at < 0:
            continue
        try:
            event = json.loads(line[at + len(TOKEN):].strip())
        except ValueError as exc:
            issues.add(lineno, "corrupt" if line.endswith("\n") else "truncated", f"dropped: {exc}")
            continue
        if not isinstance(event, dict) or not isinstance(event.get("key"), str):
            issues.add(lineno, "corrupt", "dropped: not an MLLOG event object (no string 'key')")
            continue
        rank = _srun_rank(line, at)
        if rank is not None:
            event["_rank"] = rank
        yield lineno, event


def _srun_rank(line: str, at: int) -> int | None:
    """``srun --label`` writes ``0: `` (padded: `` 0: ``, ``127: ``) before every line of a task."""
    head = line[:at].strip()
    if head.endswith(":") and head[:-1].strip().isdigit():
        return int(head[:-1])
    return None


def _meta(event: dict) -> dict:
    """The event's metadata, or {} when a writer left it out or wrote something else there."""
    meta = event.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _hyperparameters(events: list[tuple[int, dict]]) -> dict[str, Any]:
    """Scalar POINT_IN_TIME values that are not metrics: the run's self-description."""
    out: dict[str, Any] = {}
    for _, event in events:
        key = event.get("key")
        value = event.get("value")
        if (event.get("event_type", "POINT_IN_TIME") == "POINT_IN_TIME" and key not in _METRICS
                and key != "tracked_stats" and key not in _EVENTS
                and (is_number(value) or isinstance(value, (str, bool)))):
            out[key] = value
    return out


def _samples_per_step(events: list[tuple[int, dict]], batch: Any, seq: Any = None) -> tuple[int, str]:
    """Divide counts by the batch only if every count divides evenly: one x-axis per file. Counts
    in tokens (GPT-3 style) divide by batch x sequence length; that is tried first, because token
    counts also divide by the batch alone and would give steps thousands of times too large."""
    counts = [_meta(e)["samples_count"] for _, e in events if is_number(_meta(e).get("samples_count"))]
    if (is_number(batch) and batch > 0 and is_number(seq) and seq > 1 and any(counts)
            and all(c % (batch * seq) == 0 for c in counts)):
        return int(batch * seq), f"samples_count / (global_batch_size {batch} x sequence length {seq}): counts are tokens"
    if is_number(batch) and batch > 0 and all(c % batch == 0 for c in counts):
        return int(batch), f"samples_count / global_batch_size ({batch})"
    if is_number(batch) and batch > 0:
        return 1, f"samples_count (not all counts are multiples of global_batch_size {batch})"
    return 1, "samples_count (no global_batch_size logged)"


def _record(event: dict, divisor: int, source: str, lineno: int, step_in_samples: bool = False) -> MetricRecord | None:
    key = event["key"]
    meta = _meta(event)
    value = event.get("value")
    if key == "tracked_stats" and isinstance(value, dict):
        phase = "train"
    elif key in _METRICS and (is_number(value) or _is_nonfinite_text(value)):
        phase = _METRICS[key][0]
    else:
        return None
    step = _step(meta, divisor, step_in_samples)
    if step is None:
        return None
    rec = MetricRecord(step=step, phase=phase, rank=event.get("_rank"), source=f"{source}:{lineno}")
    if "samples_count" in meta and is_number(meta["samples_count"]):
        rec.extra["samples_count"] = float(meta["samples_count"])
    if "epoch_num" in meta and is_number(meta["epoch_num"]):
        rec.extra["epoch_num"] = float(meta["epoch_num"])
    if key == "tracked_stats":
        for name, stat in value.items():
            if is_number(stat):
                put(rec, _TRACKED.get(name, f"extra.{name}"), float(stat))
    else:
        put(rec, _METRICS[key][1], float(value))
    return rec


def _step(meta: dict, divisor: int, step_in_samples: bool = False) -> int | None:
    if "step" in meta:
        return to_step(meta["step"]) // (divisor if step_in_samples else 1)
    samples = meta.get("samples_count")
    if not is_number(samples):
        return None
    return to_step(samples) // divisor


def _is_nonfinite_text(value: Any) -> bool:
    return isinstance(value, str) and value.lower() in {"nan", "inf", "-inf", "infinity", "-infinity"}

