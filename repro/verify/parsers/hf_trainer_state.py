"""HF Trainer ``trainer_state.json`` (``checkpoint-*/trainer_state.json``).

``log_history`` holds three kinds of entries:
- train logs ``{"loss", "learning_rate", "grad_norm", "epoch", "step", ...}`` -> train records;
- eval logs ``{"eval_loss", "eval_runtime", ..., "epoch", "step"}`` -> eval records;
- the end-of-training summary ``{"train_runtime", "train_loss", "train_samples_per_second",
  "train_tokens_per_second"?, "total_flos", "step"}``.

The summary goes to ``metadata["trainer_summary"]``, NOT into the last step's record: its
``train_loss`` is the mean over the whole run and ``train_tokens_per_second`` is HF's per-device
*estimate* (padded first-batch numel x steps / runtime); attached to the last step they would be
mistaken for that step's measurements. Scalar top-level fields (``global_step``, ``max_steps``,
``logging_steps``, ``train_batch_size``, ...) go to ``metadata["trainer_state"]``.

Entries are decoded one by one, so each record knows its line, and a file cut while being
written still yields every complete entry before the cut.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from repro.base.metrics import MetricRecord
from repro.verify.parsers._common import IssueLog, NonFiniteTally, ParseIssue, is_number, to_step

DESCRIPTION = "HF Trainer trainer_state.json (log_history)"

_CORE = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm"}
_HISTORY = re.compile(r'"log_history"\s*:\s*\[')
_DECODER = json.JSONDecoder()


def sniff(name: str, head: str) -> int:
    return 20 if head.lstrip().startswith("{") and '"log_history"' in head else 0


def parse(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    records, issues, _ = parse_with_metadata(path)
    return records, issues


def parse_with_metadata(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue], dict[str, Any]]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return parse_text(fh.read(), str(path))


def parse_text(text: str, source: str) -> tuple[list[MetricRecord], list[ParseIssue], dict[str, Any]]:
    issues = IssueLog(source)
    metadata = _top_level(text, issues)
    records: list[MetricRecord] = []
    tally = NonFiniteTally()
    for lineno, entry in _history_entries(text, issues):
        if not isinstance(entry, dict) or not is_number(entry.get("step")):
            issues.add(lineno, "corrupt", "log_history entry without a numeric 'step'; dropped")
            continue
        if "train_runtime" in entry:
            metadata["trainer_summary"] = {k: v for k, v in entry.items() if is_number(v)}
            continue
        try:
            rec = _entry_record(entry)
        except ValueError as exc:
            issues.add(lineno, "corrupt", f"dropped: {exc}")
            continue
        rec.source = f"{source}:{lineno}"
        tally.check(rec, lineno)
        records.append(rec)
    tally.report(issues)
    return records, issues.done(), metadata


def _top_level(text: str, issues: IssueLog) -> dict[str, Any]:
    """The run's scalar settings; a file that does not decode is reported here, once."""
    try:
        state = json.loads(text)
    except ValueError as exc:
        cut = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated")
        issues.add(exc.lineno, "truncated" if cut else "corrupt",
                   f"trainer_state.json does not decode ({exc.msg}); reading the complete log_history entries")
        return {}
    if not isinstance(state, dict):
        return {}
    scalars = {k: v for k, v in state.items() if is_number(v) or isinstance(v, (str, bool))}
    return {"trainer_state": scalars} if scalars else {}


def _history_entries(text: str, issues: IssueLog) -> Iterator[tuple[int, Any]]:
    """(line, entry) for each complete ``log_history`` element, decoded incrementally."""
    found = _HISTORY.search(text)
    if found is None:
        issues.add(None, "no_records", "no 'log_history' array")
        return
    pos, line, counted = found.end(), 1, 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            entry, pos = _DECODER.raw_decode(text, pos)
        except ValueError:
            return  # the cut (already reported by _top_level) or garbage after the last entry
        yield line, entry


def _entry_record(entry: dict[str, Any]) -> MetricRecord:
    """Eval entries are recognised by their ``eval_`` keys; everything numeric is kept."""
    is_eval = any(k.startswith("eval_") for k in entry)
    rec = MetricRecord(step=to_step(entry["step"]), phase="eval" if is_eval else "train")
    for key, value in entry.items():
        if key == "step" or not is_number(value):
            continue
        if is_eval and key == "eval_loss":
            rec.loss = float(value)
        elif not is_eval and key in _CORE:
            setattr(rec, _CORE[key], float(value))
        else:
            rec.extra[key] = float(value)
    return rec
