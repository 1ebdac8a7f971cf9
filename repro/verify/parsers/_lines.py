"""The loop every line-oriented stdout format shares: prefilter, parse, report, merge.

Each stdout module only supplies ``parse_line(line) -> MetricRecord | None`` (None: not a
metric line; ValueError: a metric line that does not parse). Keeping the loop here means the
robustness rules (truncated last line, corrupt lines, NaN/inf, unit notes) are written once.

The loop has two halves, so that a log can be parsed in pieces and give the same result as one
pass: ``scan_chunk`` turns consecutive lines into a ``Chunk`` (records in line order, those that
may hold NaN/inf, the issues met), and ``_stitch`` joins chunks in file order (continuation
lines merged, NaN/inf tallied, issues capped per kind, unit notes). The pieces are

- batches of ``BATCH_LINES`` lines for a format with a batch scanner (``batch=``): it parses a
  list of lines column by column - one C-level ``map`` per field instead of Python code per
  line - and hands the lines it does not recognise to ``scan_chunk``; small batches keep the
  temporaries in cache;
- line-aligned byte ranges of a big file, parsed by worker processes and by this one, one
  process per usable core (``parse_file(..., parallel_min_bytes=)``; ``REPRO_PARSE_PROCESSES``
  caps them, 1 turns it off). A range numbers its lines from 1; chunks come back as columns,
  floats as ``array('d')`` (records would pickle three times slower), and ``_stitch`` adds the
  line offset of the range, known by then, and builds the records.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields
from itertools import islice, repeat
from operator import add, attrgetter, eq, setitem
from pathlib import Path
from typing import NamedTuple

from repro.base.metrics import CORE_FIELDS, MetricRecord
from repro.verify.parsers._common import (
    MAX_ISSUES_PER_KIND,
    IssueLog,
    NonFiniteTally,
    ParseIssue,
    may_hold_non_finite,
    note_unit,
)

LineParser = Callable[[str], "MetricRecord | None"]
Hint = Callable[[str], bool]

_VALUE_FIELDS = CORE_FIELDS[1:]

#: Lines per call of a batch scanner: enough to amortise its per-call cost, few enough that its
#: column lists stay in the CPU cache (16k-line batches parse 50% slower than 1k-line ones).
BATCH_LINES = 1024
#: ``REPRO_PARSE_PROCESSES=1`` keeps every parse in this process; N caps the worker processes
#: (default: the cores this process may use).
PROCESSES_ENV = "REPRO_PARSE_PROCESSES"
_RANGE_BYTES = 16 << 20  # one worker task: ~25k Fast-LLM lines


class Chunk(NamedTuple):
    """Consecutive lines, parsed: ``records`` (sources set) or ``columns`` (one per field of
    ``RECORD_FIELDS``, see ``columns_chunk``; ``_stitch`` writes the sources from ``linenos``)."""

    records: list[MetricRecord] | None
    columns: tuple[list, ...] | None
    linenos: list[int] | range | None  # the line of each record in ``columns``
    suspects: list[tuple[int, int]]  # (index, line) of the records that may hold NaN/inf
    issues: list[ParseIssue]  # listed, at most MAX_ISSUES_PER_KIND per kind
    counts: dict[str, int]  # issues per kind, listed or not


class Same(NamedTuple):
    """A column holding one object for every record of its chunk: ``[value] * size`` once the
    records are built. A batch scanner gives one for a field that did not change (batch size,
    counts, memory, rank...), so that it costs neither a float per record nor pickling."""

    value: object
    size: int

    def part(self, low: int, high: int) -> Same:
        return Same(self.value, len(range(low, min(high, self.size))))


def column_list(column) -> list:
    """A chunk column as a list."""
    return [column.value] * column.size if type(column) is Same else column


def column_part(column, low: int, high: int):
    """``column[low:high]`` for any chunk column."""
    return column.part(low, high) if type(column) in (Same, Extras) else column[low:high]


class Extras(NamedTuple):
    """The ``extra`` dicts of a chunk's records as columns: ``keys`` in this order for every
    record, then ``more[index]`` added to some (its trailing metrics). Built when the records
    are, so a worker sends floats, not a dict per record."""

    keys: tuple[str, ...]
    values: tuple[list[float], ...]
    more: dict[int, dict[str, float]]

    def dicts(self) -> list[dict[str, float]]:
        first = self.values[0] if self.values else ()
        size = first.size if type(first) is Same else len(first)
        extras = list(map(dict.copy, repeat(dict.fromkeys(self.keys), size)))  # the keys in order
        for key, values in zip(self.keys, self.values):
            values = repeat(values.value, values.size) if type(values) is Same else values
            deque(map(setitem, extras, repeat(key), values), 0)
        for index, items in self.more.items():
            extras[index].update(items)
        return extras

    def part(self, low: int, high: int) -> Extras:
        return Extras(self.keys, tuple(column_part(values, low, high) for values in self.values),
                      {index - low: items for index, items in self.more.items() if low <= index < high})


#: A batch scanner: (lines, number of the first, source) -> chunks covering them in order.
BatchScanner = Callable[[list[str], int, str], "list[Chunk]"]

#: MetricRecord's fields in ``__init__`` order: ``MetricRecord(*columns)`` rebuilds a record.
RECORD_FIELDS = tuple(f.name for f in fields(MetricRecord) if f.init and not f.kw_only)
_COLUMNAR = len(RECORD_FIELDS) == len(fields(MetricRecord))  # else records travel as records
_SOURCE_AT = RECORD_FIELDS.index("source")
_STEP_AT = RECORD_FIELDS.index("step")
_EXTRA_AT = RECORD_FIELDS.index("extra")


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
    *,
    paired: bool = False,
    batch: BatchScanner | None = None,
) -> tuple[list[MetricRecord], list[ParseIssue]]:
    """Run ``parse_line`` over every line that contains ``marker``.

    The substring test is the prefilter that keeps a million-line log fast: most lines of a
    training log (config dumps, warnings, progress bars) never reach a regex. ``hint(line)``
    is the cheap test for "may spell NaN/inf"; only then is the record checked field by field.
    With ``paired=True`` the parser answers that itself, returning ``(record, may_hold_non_finite)``
    (it has the numbers at hand; re-reading the line would cost more), and ``hint`` is unused.
    ``batch`` parses ``BATCH_LINES`` lines per call instead (and must give the same result).
    ``units`` maps a field to the conversion message recorded once if that field was filled.
    """
    if batch is None or not _COLUMNAR:
        return _stitch([(scan_chunk(lines, 1, source, marker, parse_line, hint, paired), 0)], source, units)
    return _stitch(((chunk, 0) for chunk in _batches(lines, 1, source, batch)), source, units)


# ------------------------------------------------------------------------------------- chunks


class _Issues(IssueLog):
    """IssueLog that chunks hand over: the listed issues and every kind's full count."""

    def export(self) -> tuple[list[ParseIssue], dict[str, int]]:
        return self.issues, dict(self._counts)

    def replay(self, listed: list[ParseIssue], counts: dict[str, int], offset: int) -> None:
        """Add a later chunk's issues as if its lines had been read here, cap included: the
        chunk listed at most MAX_ISSUES_PER_KIND per kind, the rest are only counted."""
        for issue in listed:
            self.add(issue.line + offset if issue.line is not None else None, issue.kind, issue.message)
        for kind, count in counts.items():
            unlisted = count - min(count, MAX_ISSUES_PER_KIND)
            if unlisted:
                self._counts[kind] = self._counts.get(kind, 0) + unlisted


def scan_chunk(
    lines: Iterable[str], first: int, source: str, marker: str, parse_line, hint: Hint | None, paired: bool
) -> Chunk:
    """The per-line loop over consecutive lines, the first numbered ``first``."""
    records: list[MetricRecord] = []
    append = records.append
    suspects: list[tuple[int, int]] = []
    issues = _Issues(source)
    for lineno, line in enumerate(lines, first):
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
        if paired:
            rec, suspect = rec
        else:
            suspect = hint(line)
        rec.source = f"{source}:{lineno}"
        if line[-1:] != "\n":
            issues.add(lineno, "truncated", "last line has no newline; kept, but its last value may be cut")
        if suspect:
            suspects.append((len(records), lineno))
        append(rec)
    return Chunk(records, None, None, suspects, *issues.export())


def columns_chunk(columns: dict[str, list], linenos: list[int], suspects: list[tuple[int, int]]) -> Chunk:
    """A batch scanner's records as one list per field (every field but ``source``; any may be a
    ``Same``, ``extra`` an ``Extras``), in line order; ``suspects`` as for ``scan_chunk``. The
    lists are taken, not copied."""
    return Chunk(None, tuple(None if name == "source" else columns[name] for name in RECORD_FIELDS),
                 linenos, suspects, [], {})


def _batches(lines: Iterable[str], first: int, source: str, batch: BatchScanner) -> Iterator[Chunk]:
    lines = iter(lines)
    while block := list(islice(lines, BATCH_LINES)):
        yield from batch(block, first, source)
        first += len(block)


def _stitch(chunks: Iterable[tuple[Chunk, int]], source: str,
            units: dict[str, str] | None) -> tuple[list[MetricRecord], list[ParseIssue]]:
    """(chunk, line offset) pairs in file order -> (records, issues), exactly as one pass over
    all lines would give them."""
    records: list[MetricRecord] = []
    issues = _Issues(source)
    tally = NonFiniteTally()
    prefix = f"{source}:"
    previous: MetricRecord | None = None
    for chunk, offset in chunks:
        if chunk.issues or chunk.counts:
            issues.replay(chunk.issues, chunk.counts, offset)
        if chunk.columns is not None:
            linenos = list(map(add, chunk.linenos, repeat(offset))) if offset else chunk.linenos
            columns = list(map(column_list, chunk.columns))
            columns[_SOURCE_AT] = [f"{prefix}{lineno}" for lineno in linenos]
            if type(columns[_EXTRA_AT]) is Extras:
                columns[_EXTRA_AT] = columns[_EXTRA_AT].dicts()
            part = list(map(MetricRecord, *columns))
            steps = columns[_STEP_AT]
        else:
            part = chunk.records
            steps = list(map(_step, part))
            if offset:  # parsed with lines numbered from the start of its byte range
                for rec, lineno in zip(part, _linenos(part)):
                    rec.source = f"{prefix}{lineno + offset}"
        for index, lineno in chunk.suspects:
            tally.check(part[index], lineno + offset)
        if not part:
            continue
        if any(map(eq, steps, islice(steps, 1, None))):
            for rec in part:
                if previous is not None and rec.step == previous.step and _merge_continuation(previous, rec):
                    continue
                records.append(rec)
                previous = rec
            continue
        # no two records of this chunk share a step: only its first can continue the one before
        if previous is not None and steps[0] == previous.step and _merge_continuation(previous, part[0]):
            part = part[1:]
        records.extend(part)
        previous = records[-1]
    tally.report(issues)
    for field, message in (units or {}).items():
        note_unit(issues, records, field, message)
    return records, issues.done()


_step = attrgetter("step")


def _linenos(records: list[MetricRecord]) -> list[int]:
    """The line numbers ``scan_chunk`` wrote into the sources."""
    return [int(rec.source.rpartition(":")[2]) for rec in records]


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
