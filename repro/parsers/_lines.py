"""The loop every line-oriented stdout format shares: prefilter, parse, report, merge.

Each stdout module only supplies ``parse_line(line) -> MetricRecord | None`` (None: not a
metric line; ValueError: a metric line that does not parse). Keeping the loop here means the
robustness rules (truncated last line, corrupt lines, NaN/inf, unit notes) are written once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from repro.metrics import CORE_FIELDS, MetricRecord
from repro.parsers._common import IssueLog, NonFiniteTally, ParseIssue, may_hold_non_finite, note_unit

LineParser = Callable[[str], "MetricRecord | None"]
Hint = Callable[[str], bool]

_VALUE_FIELDS = CORE_FIELDS[1:]


def open_lines(path: Path | str):
    """Text lines of a log; undecodable bytes become U+FFFD so one bad byte cannot stop a parse.

    Universal newlines also split on a bare ``\\r``, which is how progress bars overwrite a line.
    """
    return open(path, encoding="utf-8", errors="replace")


def scan_lines(
    lines: Iterable[str],
    source: str,
    marker: str,
    parse_line: LineParser,
    units: dict[str, str] | None = None,
    hint: Hint = may_hold_non_finite,
) -> tuple[list[MetricRecord], list[ParseIssue]]:
    """Run ``parse_line`` over every line that contains ``marker``.

    The substring test is the prefilter that keeps a million-line log fast: most lines of a
    training log (config dumps, warnings, progress bars) never reach a regex. ``hint(line)``
    is the cheap test for "may spell NaN/inf"; only then is the record checked field by field.
    ``units`` maps a field to the conversion message recorded once if that field was filled.
    """
    records: list[MetricRecord] = []
    append = records.append
    issues = IssueLog(source)
    tally = NonFiniteTally()
    previous: MetricRecord | None = None
    for lineno, line in enumerate(lines, 1):
        if marker not in line:
            continue
        try:
            rec = parse_line(line)
        except ValueError as exc:
            kind = "corrupt" if line.endswith("\n") else "truncated"
            issues.add(lineno, kind, f"dropped: {exc}: {_excerpt(line)}")
            continue
        if rec is None:
            continue
        rec.source = f"{source}:{lineno}"
        if line[-1:] != "\n":
            issues.add(lineno, "truncated", "last line has no newline; kept, but its last value may be cut")
        if hint(line):
            tally.check(rec, lineno)
        if previous is not None and rec.step == previous.step and _merge_continuation(previous, rec):
            continue
        append(rec)
        previous = rec
    tally.report(issues)
    for field, message in (units or {}).items():
        note_unit(issues, records, field, message)
    return records, issues.done()


def parse_file(
    path: Path | str,
    marker: str,
    parse_line: LineParser,
    units: dict[str, str] | None = None,
    hint: Hint = may_hold_non_finite,
) -> tuple[list[MetricRecord], list[ParseIssue]]:
    """``scan_lines`` over a file, with issues naming the file as the user passed it."""
    with open_lines(path) as fh:
        return scan_lines(fh, str(path), marker, parse_line, units, hint)


def _merge_continuation(prev: MetricRecord, rec: MetricRecord) -> bool:
    """Fold a second line about the same step into the first when they share no field.

    DeepSpeed prints ``step=N, lr=...`` and then a separate throughput line for the same step;
    both belong in one record. Overlapping fields mean a repeat (rank or restart), not a
    continuation, and are left to the normaliser to report.
    """
    if rec.step != prev.step or rec.phase != prev.phase:
        return False
    if rec.rank is not None and prev.rank is not None and rec.rank != prev.rank:
        return False
    for name in _VALUE_FIELDS:
        if getattr(rec, name) is not None and getattr(prev, name) is not None:
            return False
    if rec.extra.keys() & prev.extra.keys():
        return False
    for name in _VALUE_FIELDS:
        value = getattr(rec, name)
        if value is not None:
            setattr(prev, name, value)
    prev.extra.update(rec.extra)
    if prev.rank is None:
        prev.rank = rec.rank
    return True


def _excerpt(line: str, limit: int = 160) -> str:
    line = line.rstrip("\n")
    return repr(line if len(line) <= limit else line[:limit] + "...")
