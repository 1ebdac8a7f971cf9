"""Helpers every format module shares, so a fix to number or prefix handling lands once.

Nothing here knows a log format. Parsers are hot loops (a million lines has to parse in a few
seconds), so the helpers avoid regexes where a ``str`` method does, and cache what repeats.
"""

from __future__ import annotations

import gc
import math
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from repro.base.metrics import CORE_FIELDS, MetricRecord

#: Issue kinds, so that callers can filter without parsing messages.
KINDS = (
    "restart",  # a step logged again later; the later value wins
    "duplicate",  # the same step twice in a row (doubled handler, unprefixed ranks)
    "ranks",  # lines from non-lowest ranks were ignored for per-step metrics
    "truncated",  # the last line has no newline (cut while writing)
    "corrupt",  # a line/row/entry that looks like metrics but does not parse
    "non_finite",  # NaN/inf kept as float nan/inf
    "unit",  # a value was converted to the unit repro.metrics documents
    "empty",  # an empty file
    "no_records",  # a non-empty file without any metric
    "skipped",  # data deliberately not used (another run, another x-axis, text column)
    "metadata_conflict",  # two files disagree on a hyperparameter
)

#: After this many issues of one kind in one file the rest are counted, not listed: a log
#: that is all garbage must not produce a million-line report.
MAX_ISSUES_PER_KIND = 50


@dataclass
class ParseIssue:
    file: str
    line: int | None
    kind: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.kind}: {self.message}"


class IssueLog:
    """Collects one file's issues and caps each kind, so a corrupt file stays readable."""

    def __init__(self, file: str):
        self.file = file
        self.issues: list[ParseIssue] = []
        self._counts: dict[str, int] = {}

    def add(self, line: int | None, kind: str, message: str) -> None:
        n = self._counts.get(kind, 0) + 1
        self._counts[kind] = n
        if n <= MAX_ISSUES_PER_KIND:
            self.issues.append(ParseIssue(self.file, line, kind, message))

    def done(self) -> list[ParseIssue]:
        """The issues plus one summary per kind that overflowed the cap."""
        out = list(self.issues)
        for kind, n in self._counts.items():
            if n > MAX_ISSUES_PER_KIND:
                out.append(
                    ParseIssue(self.file, None, kind, f"{n - MAX_ISSUES_PER_KIND} more '{kind}' issues not listed")
                )
        return out


# --------------------------------------------------------------------------------------- numbers


def to_float(text: str) -> float:
    """Parse a logged number; thousands separators and a trailing % are formatting, not data.

    ``float`` already accepts nan/inf in any case, so a diverged run's NaN survives as a float.
    Raises ValueError for anything else, which callers turn into a ``corrupt`` issue.
    """
    text = text.strip()
    if "," in text:
        text = text.replace(",", "")
    text = text.removesuffix("%")
    return float(text)


def to_step(text: str | float) -> int:
    """Steps are integers; a CSV or JSON export may spell them ``10.0``, which is still step 10."""
    value = float(text) if isinstance(text, str) else text
    if isinstance(value, bool) or not math.isfinite(value) or value != int(value):
        raise ValueError(f"step {text!r} is not an integer")
    return int(value)


def is_number(value: Any) -> bool:
    """JSON numbers only; ``bool`` is an ``int`` subclass but never a metric."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def float32_to_decimal(value: float) -> float:
    """The shortest decimal that round-trips to the same float32.

    TensorBoard stores scalars as float32, so a logged 2.3 comes back as 2.299999952316284; the
    shortest round-tripping decimal is the value the writer most plausibly logged, and it makes
    numbers in reports match the ones in the training log.
    """
    if not math.isfinite(value) or value == int(value):
        return value  # integers (byte counts, token counts) are exact in float32 already
    packed = struct.pack("<f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return value


# --------------------------------------------------------------------------------------- text

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RANK = re.compile(r"\[(?:rank|Rank|RANK|default)\s*(-?\d+)\]")


def strip_ansi(text: str) -> str:
    """Colour codes sit between labels and values (torchtitan) and would break every regex."""
    return _ANSI.sub("", text) if "\x1b" in text else text


def find_rank(line: str, end: int | None = None) -> int | None:
    """The rank a launcher or logger put in front of a line: ``[rank3]:`` (torchrun),
    ``[Rank 003]`` (Fast-LLM, DeepSpeed), ``[default3]:`` (older torchrun --tee).

    DeepSpeed prints ``[Rank -1]`` before the process group exists; that means "no rank".
    ``end`` bounds the search to the prefix, so a long metric line is not scanned twice.
    """
    if "[" not in line:
        return None
    m = _RANK.search(line, 0, len(line) if end is None else end)
    if m is None:
        return None
    rank = int(m.group(1))
    return rank if rank >= 0 else None


@lru_cache(maxsize=1024)
def snake(label: str) -> str:
    """``elapsed time per iteration (ms)`` -> ``elapsed_time_per_iteration_ms``: stable ``extra``
    keys across frameworks that print human labels. Cached because labels repeat every line."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", label).strip("_").lower()


def split_kv(text: str, sep: str = " | ", kv: str = ": ") -> tuple[dict[str, str], list[str]]:
    """Split ``key: value | key: value`` into a dict, and return fields without ``kv`` separately.

    Megatron and Fast-LLM both print their metrics this way, but both also print a few bare
    fields (``449.9 tflop/s (hardware)``), which only the caller knows how to read.
    """
    pairs: dict[str, str] = {}
    bare: list[str] = []
    for field in text.split(sep):
        key, found, value = field.partition(kv)
        if found:
            pairs[key.strip()] = value.strip()
        elif field.strip():
            bare.append(field.strip())
    return pairs, bare


def first_token(value: str) -> str:
    """``913.45 ms`` -> ``913.45``: the number is always the first word of a value with a unit."""
    head, _, _ = value.partition(" ")
    return head


def split_source(source: str | None) -> tuple[str, int | None]:
    """Invert ``f"{file}:{line}"``; a source without a numeric line keeps the whole string."""
    if not source:
        return "?", None
    file, _, line = source.rpartition(":")
    if file and line.isdigit():
        return file, int(line)
    return source, None


# --------------------------------------------------------------------------------------- records

_NUMERIC_FIELDS = CORE_FIELDS[1:]
_isfinite = math.isfinite


def non_finite_fields(rec: MetricRecord) -> list[str]:
    """Names of fields holding NaN/inf: they are kept (the verifier must see a NaN loss) but reported."""
    bad = [name for name in _NUMERIC_FIELDS if (value := getattr(rec, name)) is not None and not _isfinite(value)]
    bad.extend(f"extra.{name}" for name, value in rec.extra.items() if not _isfinite(value))
    return bad


_UPPER_INF = re.compile(r"INF(?!O)")


def may_hold_non_finite(text: str) -> bool:
    """Cheap pre-check: only text that spells nan/inf can produce a non-finite float.

    Upper-case INF needs a closer look because nearly every log line says INFO.
    """
    if "nan" in text or "inf" in text or "NaN" in text or "Inf" in text or "NAN" in text:
        return True
    return "INF" in text and _UPPER_INF.search(text) is not None


class NonFiniteTally:
    """Folds NaN/inf findings into one issue per field per file: a diverged run has NaN at every
    later step, and one line saying where it started is more useful than ten thousand."""

    def __init__(self) -> None:
        self._seen: dict[str, list] = {}  # field -> [count, first_line, first_step, last_step, kinds]

    def check(self, rec: MetricRecord, line: int | None) -> None:
        for name in non_finite_fields(rec):
            value = getattr(rec, name) if not name.startswith("extra.") else rec.extra[name[6:]]
            entry = self._seen.get(name)
            if entry is None:
                self._seen[name] = [1, line, rec.step, rec.step, {repr(value)}]
            else:
                entry[0] += 1
                entry[3] = rec.step
                entry[4].add(repr(value))

    def report(self, issues: IssueLog) -> None:
        for name, (count, line, first, last, values) in self._seen.items():
            where = f"step {first}" if count == 1 else f"{count} records, steps {first}..{last}"
            issues.add(line, "non_finite", f"{name} is {'/'.join(sorted(values))} at {where}; kept as float")


def note_unit(issues: IssueLog, records: list[MetricRecord], field: str, message: str) -> None:
    """Record a unit conversion once per file, at the first record that used it."""
    for rec in records:
        if (getattr(rec, field) if not field.startswith("extra.") else rec.extra.get(field[6:])) is not None:
            issues.add(split_source(rec.source)[1], "unit", message)
            return


def put(rec: MetricRecord, target: str, value: float) -> None:
    """Route a value to a record attribute or to ``extra.<key>``: one label->target table per
    format can then send a label anywhere without a branch per field."""
    if target.startswith("extra."):
        rec.extra[target[6:]] = value
    else:
        setattr(rec, target, value)


def has(rec: MetricRecord, target: str) -> bool:
    """Whether ``put`` already filled ``target`` (a second value means another occurrence)."""
    if target.startswith("extra."):
        return target[6:] in rec.extra
    return getattr(rec, target) is not None


@contextmanager
def gc_paused() -> Iterator[None]:
    """Parsed records hold no reference cycles, yet every few thousand allocations the cyclic
    collector re-walks the whole growing heap: with a million records that was a third of the
    parse time, for nothing to collect."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
