"""MLPerf ``:::MLLOG {json}`` lines (``mlperf_logging/mllog``).

As in the MLPerf compliance checker, everything before the token is dropped, so rank prefixes
and launcher timestamps do not matter. Metric keys become records; POINT_IN_TIME keys with a
scalar value that are not metrics (``global_batch_size``, ``opt_base_learning_rate``, ``seed``,
...) are hyperparameters and go to ``metadata``.

The x-axis: ``metadata.step`` when present (``tracked_stats``); otherwise MLPerf counts
``samples_count``, which becomes a step by dividing by the logged ``global_batch_size`` (a
``unit`` issue says so). Without a batch size the sample count itself is the step, also reported.
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
           "epoch_start", "epoch_stop", "eval_start", "eval_stop", "cache_clear", "submission_benchmark",
           "submission_org", "submission_division", "submission_status", "submission_platform"}


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
    divisor, how = _samples_per_step(events, metadata.get("global_batch_size"))
    records: list[MetricRecord] = []
    tally = NonFiniteTally()
    used_samples = False
    for lineno, event in events:
        try:
            rec = _record(event, divisor, source, lineno)
        except ValueError as exc:
            issues.add(lineno, "corrupt", f"dropped: {exc}")
            continue
        if rec is None:
            continue
        used_samples = used_samples or "step" not in _meta(event)
        tally.check(rec, lineno)
        records.append(rec)
    tally.report(issues)
    if used_samples:
        issues.add(None, "unit", f"MLLOG metrics are counted in samples; step = {how}")
    status = next((_meta(e).get("status") for _, e in events if e["key"] == "run_stop"), None)
    if status is not None:
        metadata["run_stop_status"] = status
    return records, issues.done(), metadata


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
        yield lineno, event


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


def _samples_per_step(events: list[tuple[int, dict]], batch: Any) -> tuple[int, str]:
    """Divide sample counts by the batch only if every count divides evenly: one x-axis per file."""
    counts = [_meta(e)["samples_count"] for _, e in events if is_number(_meta(e).get("samples_count"))]
    if is_number(batch) and batch > 0 and all(c % batch == 0 for c in counts):
        return int(batch), f"samples_count / global_batch_size ({batch})"
    if is_number(batch) and batch > 0:
        return 1, f"samples_count (not all counts are multiples of global_batch_size {batch})"
    return 1, "samples_count (no global_batch_size logged)"


def _record(event: dict, divisor: int, source: str, lineno: int) -> MetricRecord | None:
    key = event["key"]
    meta = _meta(event)
    value = event.get("value")
    if key == "tracked_stats" and isinstance(value, dict):
        phase = "train"
    elif key in _METRICS and (is_number(value) or _is_nonfinite_text(value)):
        phase = _METRICS[key][0]
    else:
        return None
    step = _step(meta, divisor)
    if step is None:
        return None
    rec = MetricRecord(step=step, phase=phase, source=f"{source}:{lineno}")
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


def _step(meta: dict, divisor: int) -> int | None:
    if "step" in meta:
        return to_step(meta["step"])
    samples = meta.get("samples_count")
    if not is_number(samples):
        return None
    return to_step(samples) // divisor


def _is_nonfinite_text(value: Any) -> bool:
    return isinstance(value, str) and value.lower() in {"nan", "inf", "-inf", "infinity", "-infinity"}

