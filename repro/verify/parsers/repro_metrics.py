"""The suite's own ``metrics.jsonl`` (one ``MetricRecord.to_json()`` per line, see repro.metrics).

Lenient where ``repro.metrics.read_jsonl`` is strict: a twin killed mid-write leaves a cut last
line, and a verifier must still read everything before it and say what it skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from repro.base.metrics import CORE_FIELDS, MetricRecord
from repro.verify.parsers._common import ParseIssue
from repro.verify.parsers._files import parse_file
from repro.verify.parsers._lines import scan_lines

DESCRIPTION = "repro's own metrics.jsonl (MetricRecord per line)"
MARKER = ""  # every non-blank line must be a record


def sniff(name: str, head: str) -> int:
    first = next((line for line in head.splitlines() if line.strip()), "")
    if not first.lstrip().startswith("{") or '"step"' not in first:
        return 0
    return 5 + sum(f'"{name}"' in first for name in CORE_FIELDS[1:])


def parse_line(line: str) -> MetricRecord | None:
    if not line.strip():
        return None
    obj = json.loads(line.strip())
    if not isinstance(obj, dict) or "step" not in obj:
        raise ValueError("expected a JSON object with a 'step'")
    try:
        return MetricRecord.from_json(obj)
    except (TypeError, KeyError, OverflowError) as exc:
        raise ValueError(f"not a MetricRecord: {exc}") from None


def parse_lines(lines, source: str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return scan_lines(lines, source, MARKER, parse_line)


def parse(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return parse_file(path, MARKER, parse_line)
