"""LLaMA-Factory ``<output_dir>/trainer_log.jsonl`` (its ``LogCallback`` writes one object per log).

One object per line: ``{"current_steps": 10, "total_steps": 8660, "loss": 2.4977,
"learning_rate": 5.7e-07, "epoch": 0.0046, "percentage": 0.12, "elapsed_time": "0:00:24",
"remaining_time": "5:58:33", ...}``. Versions spell the LR ``learning_rate`` or ``lr``; preference
stages add ``accuracy`` (and reward fields); newer ones add ``throughput`` and ``total_tokens``
(``throughput`` may be the string ``"0.00"`` when token counting is off: that is "not measured",
not zero). The last line of a finished run repeats the last step without ``loss``: a summary,
kept out of the per-step records. ``eval_loss`` lines are eval records.

``total_steps`` is the run's planned optimizer steps, stated by the trainer: it goes to
``metadata["total_steps"]`` so that derived quantities never need to fit the LR curve.
A file cut off mid-run has no summary line and a last step below ``total_steps``: reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from repro.metrics import MetricRecord
from repro.verify.parsers._common import IssueLog, NonFiniteTally, ParseIssue, is_number, to_step
from repro.verify.parsers._lines import open_lines

DESCRIPTION = "LLaMA-Factory trainer_log.jsonl ({'current_steps', 'total_steps', 'loss', ...})"

#: log key -> record attribute or extra key (the rest of the numbers go to extra under their name)
_FIELDS = {"loss": "loss", "learning_rate": "lr", "lr": "lr", "grad_norm": "grad_norm"}
#: keys that describe progress, not the step's measurements
_PROGRESS = {"current_steps", "total_steps", "percentage", "elapsed_time", "remaining_time"}


def sniff(name: str, head: str) -> int:
    return 10 * head.count('"current_steps"') if '"total_steps"' in head else 0


def parse(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    records, issues, _ = parse_with_metadata(path)
    return records, issues


def parse_with_metadata(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue], dict[str, Any]]:
    with open_lines(path) as fh:
        return parse_lines(fh, str(path))


def parse_lines(lines, source: str) -> tuple[list[MetricRecord], list[ParseIssue], dict[str, Any]]:
    issues = IssueLog(source)
    tally = NonFiniteTally()
    records: list[MetricRecord] = []
    metadata: dict[str, Any] = {}
    summary_seen = False
    last_line = ""
    for lineno, line in enumerate(lines, 1):
        last_line = line
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or not is_number(obj.get("current_steps")):
                raise ValueError("no numeric 'current_steps'")
            step = to_step(obj["current_steps"])
        except ValueError as exc:
            kind = "truncated" if not line.endswith("\n") else "corrupt"
            issues.add(lineno, kind, f"dropped: {exc}")
            continue
        if is_number(obj.get("total_steps")):
            metadata.setdefault("total_steps", int(obj["total_steps"]))
        elapsed = _seconds(obj.get("elapsed_time"))
        if elapsed is not None:
            metadata["elapsed_time_s"] = elapsed
        rec = _record(obj, step, f"{source}:{lineno}")
        if rec is None:
            summary_seen = True  # the closing line: progress only
            continue
        if elapsed is not None:
            rec.extra["elapsed_time_s"] = elapsed
        tally.check(rec, lineno)
        records.append(rec)
    tally.report(issues)
    total = metadata.get("total_steps")
    last = max((r.step for r in records if r.phase == "train"), default=None)
    if not summary_seen and total is not None and last is not None and last < total:
        cut = "; the last line was cut while being written" if last_line and not last_line.endswith("\n") else ""
        issues.add(None, "truncated", f"the log stops at step {last} of {total} planned (no closing line): the run "
                   f"did not finish, or the file is a copy taken mid-run{cut}")
    return records, issues.done(), metadata


def _record(obj: dict, step: int, source: str) -> MetricRecord | None:
    """One step's measurements, or None for a line that only reports progress (the summary)."""
    phase = "eval" if any(k.startswith("eval_") for k in obj) else "train"
    rec = MetricRecord(step=step, phase=phase, source=source)
    measured = False
    for key, value in obj.items():
        if key in _PROGRESS:
            continue
        if key == "throughput" and isinstance(value, str):
            value = _number(value)
            if not value:  # "0.00": token counting was off; not a measured zero
                continue
        if not is_number(value):
            continue
        if key == "epoch":
            rec.extra["epoch"] = float(value)
            continue
        if key == "eval_loss":
            rec.loss = float(value)
        elif key in _FIELDS:
            setattr(rec, _FIELDS[key], float(value))
        else:
            rec.extra[key] = float(value)
        if key in ("loss", "eval_loss") or key.startswith("eval_"):
            measured = True
    return rec if measured or rec.loss is not None else None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _seconds(text: Any) -> float | None:
    """``"5:39:46"`` or ``"3 days, 17:51:32"`` (Python's timedelta str) -> seconds."""
    if not isinstance(text, str):
        return None
    days = 0
    if "day" in text:
        head, _, text = text.partition(",")
        try:
            days = int(head.split()[0])
        except (ValueError, IndexError):
            return None
    parts = text.strip().split(":")
    try:
        h, m, s = (float(p) for p in parts) if len(parts) == 3 else (None, None, None)
    except ValueError:
        return None
    if h is None:
        return None
    return days * 86400 + h * 3600 + m * 60 + s
