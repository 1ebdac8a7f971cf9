"""HF Trainer stdout/stderr: the ``{'loss': 0.6931, 'grad_norm': ..., 'learning_rate': ..., 'epoch': 0.0}``
dicts ``Trainer.log`` prints between tqdm bars (TRL's DPO/SFT/reward trainers print the same, with
``rewards/...`` keys).

A dict carries no step: the optimizer step is the tqdm counter ``N/M`` printed just before it
(the bar advances once per optimizer step; carriage returns split the bar updates into lines).
Without a bar the k-th dict is logging event k, reported as such. The header's
``Total optimization steps = N`` goes to ``metadata["max_steps"]``; the closing
``{'train_runtime': .., 'train_samples_per_second': .., 'train_loss': ..}`` to
``metadata["trainer_summary"]`` (run-level values, never a step's). ``eval_*`` dicts are eval records.
Values are read with a small pattern, never evaluated.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from repro.base.metrics import MetricRecord
from repro.verify.parsers._common import IssueLog, NonFiniteTally, ParseIssue, to_float
from repro.verify.parsers._lines import open_lines

DESCRIPTION = "HF Trainer stdout dicts \"{'loss': .., 'learning_rate': .., 'epoch': ..}\" between tqdm bars"

_PAIR = re.compile(r"'([^']+)': ('[^']*'|[^,}]+)")
_BAR = re.compile(r"\|\s*(\d+)/(\d+) \[")
_TOTAL = re.compile(r"Total optimization steps = ([\d,]+)")
_FIELDS = {"loss": "loss", "eval_loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm"}
_SUMMARY = "train_runtime"


def sniff(name: str, head: str) -> int:
    return 10 * (head.count("{'loss': ") + head.count("{'train_runtime': ") + head.count("{'eval_loss': "))


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
    bar_step: int | None = None
    events = 0
    for lineno, line in enumerate(lines, 1):
        if "{'" not in line:
            if "/" in line and "[" in line:
                found = _BAR.search(line)
                if found:
                    bar_step = int(found.group(1))
            elif "Total optimization steps" in line:
                found = _TOTAL.search(line)
                if found:
                    metadata["max_steps"] = int(found.group(1).replace(",", ""))
            continue
        start = line.index("{'")
        pairs = dict(_PAIR.findall(line[start:]))
        if not pairs:
            continue
        try:
            values = {k: to_float(v) for k, v in pairs.items() if not v.startswith("'")}
        except ValueError as exc:
            issues.add(lineno, "corrupt", f"dropped: {exc}")
            continue
        if _SUMMARY in values:
            metadata["trainer_summary"] = values
            continue
        if "loss" not in values and "eval_loss" not in values:
            continue
        events += 1
        step = bar_step if bar_step is not None else events
        rec = MetricRecord(step=step, phase="eval" if "eval_loss" in values else "train", source=f"{source}:{lineno}")
        for key, value in values.items():
            target = _FIELDS.get(key)
            if target is not None:
                setattr(rec, target, value)
            else:
                rec.extra[key] = value
        tally.check(rec, lineno)
        records.append(rec)
    tally.report(issues)
    if records and bar_step is None:
        issues.add(None, "unit", "no tqdm step counter in the log: each logged dict is numbered as one step "
                   "(logging events, not optimizer steps, unless logging_steps is 1)")
    return records, issues.done(), metadata
