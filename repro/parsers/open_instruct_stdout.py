"""open-instruct ``finetune.py`` stdout: ``Step: N, LR: x, Loss: y, TPS: z``.

At the Tulu 3 commit (30d11b4) TPS is ``total_tokens / elapsed`` over ALL processes and since
the start of the loop; the per-device figure needs the process count, which the line does not
carry, so TPS is kept as ``extra["tps_global"]`` and ``tokens_per_s_per_device`` stays empty
rather than being invented.
"""

from __future__ import annotations

import re
from pathlib import Path

from repro.metrics import MetricRecord
from repro.parsers._common import ParseIssue, find_rank, to_float
from repro.parsers._lines import parse_file, scan_lines

DESCRIPTION = "open-instruct stdout 'Step: N, LR: x, Loss: y, TPS: z'"
MARKER = "Step: "

_HEAD = re.compile(r"Step: (\d+), LR: ")
_TAIL = re.compile(r"([^,\s]+), Loss: ([^,\s]+), TPS: ([^,\s]+)")
_SNIFF = re.compile(r"Step: \d+, LR: \S+, Loss: ")


def sniff(name: str, head: str) -> int:
    """Metric lines found in the head of the file (the registry picks the best-scoring format)."""
    return len(_SNIFF.findall(head))


def parse_line(line: str) -> MetricRecord | None:
    """Why two regexes: ``Step: N, LR:`` decides whether this is a metric line at all; a line
    that has it but not the rest is cut or corrupt and must be reported, not ignored."""
    head = _HEAD.search(line)
    if head is None:
        return None
    tail = _TAIL.match(line, head.end())
    if tail is None:
        raise ValueError("expected 'LR: x, Loss: y, TPS: z'")
    lr, loss, tps = tail.groups()
    return MetricRecord(
        step=int(head.group(1)),
        loss=to_float(loss),
        lr=to_float(lr),
        rank=find_rank(line),
        extra={"tps_global": to_float(tps)},
    )


def parse_lines(lines, source: str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return scan_lines(lines, source, MARKER, parse_line)


def parse(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return parse_file(path, MARKER, parse_line)
