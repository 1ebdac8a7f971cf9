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
import math
from pathlib import Path
from typing import Any

from repro.base.metrics import MetricRecord
from repro.verify.parsers._common import IssueLog, NonFiniteTally, ParseIssue, is_number, to_step
from repro.verify.parsers._lines import open_lines

DESCRIPTION = "LLaMA-Factory trainer_log.jsonl ({'current_steps', 'total_steps', 'loss', ...})"



def sniff(name: str, head: str) -> int:
    return 10 * head.count('"current_steps"') if '"total_steps"' in head else 0


def parse(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    records, issues, _ = parse_with_metadata(path)
    return records, issues


def parse_with_metadata(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue], dict[str, Any]]:
    with open_lines(path) as fh:
        return parse_lines(fh, str(path))


def parse_lines(lines, source: str) -> tuple[list[MetricRecord], list[ParseIssue], dict[str, Any]]:
    """All lines decoded in one ``json.loads`` call when the file is clean (the common case, and
    several times faster than a call per line); any bad line sends the file down the per-line
    path, which names the line."""
    lines = list(lines)
    issues = IssueLog(source)
    try:
        objs = json.loads("[" + ",".join(line for line in lines if line.strip()) + "]")
        if not all(type(o) is dict and _NUMBER(o.get("current_steps")) for o in objs):
            raise ValueError("not every line is a log object")
        numbered = zip(_nonblank_numbers(lines), objs)
    except ValueError:
        numbered = _per_line(lines, issues)
    tally = NonFiniteTally()
    records: list[MetricRecord] = []
    metadata: dict[str, Any] = {}
    summary_seen = False
    prefix = f"{source}:"
    for lineno, obj in numbered:
        total = obj.get("total_steps")
        if "total_steps" not in metadata and _NUMBER(total):
            metadata["total_steps"] = int(total)
        rec = _record(obj, to_step(obj["current_steps"]), prefix + str(lineno))
        if rec is None:
            summary_seen = True  # the closing line: progress only
            elapsed = _seconds(obj.get("elapsed_time"))
            if elapsed is not None:
                metadata["elapsed_time_s"] = elapsed
            continue
        if tally_needed(rec):
            tally.check(rec, lineno)
        records.append(rec)
    if records and "elapsed_time_s" not in metadata and "elapsed_time_s" in records[-1].extra:
        metadata["elapsed_time_s"] = records[-1].extra["elapsed_time_s"]
    tally.report(issues)
    total = metadata.get("total_steps")
    last = max((r.step for r in records if r.phase == "train"), default=None)
    if not summary_seen and total is not None and last is not None and last < total:
        last_line = lines[-1] if lines else ""
        cut = "; the last line was cut while being written" if last_line and not last_line.endswith("\n") else ""
        issues.add(None, "truncated", f"the log stops at step {last} of {total} planned (no closing line): the run "
                   f"did not finish, or the file is a copy taken mid-run{cut}")
    return records, issues.done(), metadata


def _NUMBER(value: Any) -> bool:
    return type(value) is int or type(value) is float


def tally_needed(rec: MetricRecord) -> bool:
    """Only a NaN/inf fails ``x == x`` or is infinite; most records skip the field-by-field check."""
    for value in (rec.loss, rec.lr):
        if value is not None and (value != value or value in (math.inf, -math.inf)):
            return True
    return any(v != v or v in (math.inf, -math.inf) for v in rec.extra.values())


def _nonblank_numbers(lines: list[str]):
    return (n for n, line in enumerate(lines, 1) if line.strip())


def _per_line(lines: list[str], issues: IssueLog):
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or not is_number(obj.get("current_steps")):
                raise ValueError("no numeric 'current_steps'")
            to_step(obj["current_steps"])
        except ValueError as exc:
            issues.add(lineno, "truncated" if not line.endswith("\n") else "corrupt", f"dropped: {exc}")
            continue
        yield lineno, obj


#: keys read by name below; the rest of the numbers go to ``extra`` under their own names
_KNOWN = frozenset({"current_steps", "total_steps", "percentage", "elapsed_time", "remaining_time", "loss",
                    "learning_rate", "lr", "grad_norm", "epoch", "throughput", "eval_loss"})


def _record(obj: dict, step: int, source: str) -> MetricRecord | None:
    """One step's measurements, or None for a line that only reports progress (the summary)."""
    loss, eval_loss = obj.get("loss"), obj.get("eval_loss")
    rest = obj.keys() - _KNOWN
    evals = [k for k in rest if k.startswith("eval_")]
    if not _NUMBER(loss) and not _NUMBER(eval_loss) and not evals:
        return None
    rec = MetricRecord(step=step, phase="eval" if _NUMBER(eval_loss) or evals else "train", source=source)
    rec.loss = float(eval_loss) if _NUMBER(eval_loss) else float(loss) if _NUMBER(loss) else None
    lr = obj.get("learning_rate", obj.get("lr"))
    if _NUMBER(lr):
        rec.lr = float(lr)
    grad = obj.get("grad_norm")
    if _NUMBER(grad):
        rec.grad_norm = float(grad)
    extra = rec.extra
    epoch = obj.get("epoch")
    if _NUMBER(epoch):
        extra["epoch"] = float(epoch)
    throughput = obj.get("throughput")
    if type(throughput) is str:
        throughput = _number(throughput)
    if throughput:  # "0.00": token counting was off; not a measured zero
        extra["throughput"] = float(throughput)
    for key in rest:
        value = obj[key]
        if _NUMBER(value):
            extra[key] = float(value)
    elapsed = _seconds(obj.get("elapsed_time"))
    if elapsed is not None:
        extra["elapsed_time_s"] = elapsed
    return rec


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _seconds(text: Any) -> float | None:
    """``"5:39:46"`` or ``"3 days, 17:51:32"`` (Python's timedelta str) -> seconds."""
    if type(text) is not str:
        return None
    days = 0
    if "day" in text:
        head, _, text = text.partition(",")
        try:
            days = int(head.split()[0])
        except (ValueError, IndexError):
            return None
    parts = text.split(":")
    if len(parts) != 3:
        return None
    try:
        return days * 86400 + int(parts[0]) * 3600 + int(parts[1]) * 60 + float(parts[2])
    except ValueError:
        return None
