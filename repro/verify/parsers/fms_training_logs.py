"""fms-hf-tuning ``<output_dir>/training_logs.jsonl`` (``tuning/trackers/filelogging_tracker.py``).

One object per line: ``{"data": {"epoch": 0.5, "step": 10, "timestamp": "...", "value": 1.23},
"name": "training_loss"}``; eval lines use ``"name": "validation_loss"``. ``value`` is the HF
Trainer loss averaged since the previous log (rank-0 file, so there are no ranks to merge).
"""

from __future__ import annotations

import json
from pathlib import Path

from repro.base.metrics import MetricRecord
from repro.verify.parsers._common import ParseIssue, is_number, to_step
from repro.verify.parsers._files import parse_file
from repro.verify.parsers._lines import scan_lines

DESCRIPTION = "fms-hf-tuning training_logs.jsonl ({'name': 'training_loss', 'data': {...}})"
MARKER = ""  # every non-blank line must be a JSON object, so none may skip the parser

_LOSS_NAMES = {"training_loss": "train", "validation_loss": "eval"}


def sniff(name: str, head: str) -> int:
    hits = head.count('"training_loss"') + head.count('"validation_loss"')
    return 10 * hits if '"data"' in head else 0


def parse_line(line: str) -> MetricRecord | None:
    if not line.strip():
        return None
    obj = json.loads(line.strip())
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, dict) or "step" not in data or not is_number(data.get("value")):
        raise ValueError("expected {'name': ..., 'data': {'step': int, 'value': number, ...}}")
    name = str(obj.get("name"))
    rec = MetricRecord(step=to_step(data["step"]), phase=_LOSS_NAMES.get(name, "train"))
    if name in _LOSS_NAMES:
        rec.loss = float(data["value"])
    else:
        rec.extra[name] = float(data["value"])
    if is_number(data.get("epoch")):
        rec.extra["epoch"] = float(data["epoch"])
    return rec


def parse_lines(lines, source: str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return scan_lines(lines, source, MARKER, parse_line)


def parse(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return parse_file(path, MARKER, parse_line)
