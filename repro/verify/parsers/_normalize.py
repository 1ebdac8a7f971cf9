"""From "every metric line in every file, in the order written" to one record per (phase, step).

Two rules, both reported rather than applied silently:
- ranks: when several ranks log the same step, the lowest rank speaks for it (rank 0 computes
  the logged averages in every framework here); the others are counted once per file;
- restarts: a step that comes back after later steps means the run was resumed from a
  checkpoint and replayed them; the LAST occurrence wins, because the resumed run is the one
  whose state continues, and the overwritten step range is reported.
"""

from __future__ import annotations

import operator

from repro.base.metrics import CORE_FIELDS, MetricRecord
from repro.verify.parsers._common import MAX_ISSUES_PER_KIND, ParseIssue, split_source

_FIELDS = CORE_FIELDS[1:]


#: No training run here takes a billion optimizer steps; a larger step number is a corrupt line.
MAX_STEP = 10**9
#: A step this many times both of its neighbours, between two that continue in order, is a corrupt line.
_SPIKE = 100


def normalize(records: list[MetricRecord]) -> tuple[list[MetricRecord], list[ParseIssue]]:
    """Records in the order they were written -> (sorted unique records, issues)."""
    issues: list[ParseIssue] = []
    records = _plausible_steps(records, issues)
    kept = _lowest_rank_only(records, issues)
    if _already_normal(kept):
        return list(kept), issues
    return _last_occurrence(kept, issues), issues


def _plausible_steps(records: list[MetricRecord], issues: list[ParseIssue]) -> list[MetricRecord]:
    """Drop lines whose step is negative, beyond MAX_STEP, or a lone spike between two steps that
    continue in order (a corrupted number): reported as bad lines, never taken for a restart."""
    steps = [rec.step for rec in records]
    if steps and min(steps) >= 0 and max(steps) <= MAX_STEP and all(map(operator.le, steps, steps[1:])):
        return records  # the common case: in order and in range, one pass in C
    bad = set()
    for i, rec in enumerate(records):
        if rec.step < 0 or rec.step > MAX_STEP:
            bad.add(i)
        elif 0 < i < len(records) - 1:
            before, after = records[i - 1].step, records[i + 1].step
            if before <= after and rec.step > _SPIKE * max(after, 1) and rec.step - after > 1000 \
                    and records[i - 1].phase == rec.phase == records[i + 1].phase:
                bad.add(i)
    for n, i in enumerate(sorted(bad)):
        if n >= MAX_ISSUES_PER_KIND:
            issues.append(ParseIssue(*split_source(records[i].source), "bad_step",
                                     f"{len(bad) - n} more lines with an implausible step not listed"))
            break
        rec = records[i]
        why = "negative" if rec.step < 0 else (f"beyond {MAX_STEP}" if rec.step > MAX_STEP else
                                               "a lone jump between steps that continue in order")
        issues.append(ParseIssue(*split_source(rec.source), "bad_step",
                                 f"step {rec.step} is {why}; the line is left out (a corrupt line, not a restart)"))
    return [rec for i, rec in enumerate(records) if i not in bad]


def _already_normal(records: list[MetricRecord]) -> bool:
    """One phase, steps strictly increasing: nothing to drop or sort. This is almost every log,
    and the check runs in C (map/all), so a million records skip the per-record bookkeeping."""
    if len({rec.phase for rec in records}) > 1:
        return False
    steps = [rec.step for rec in records]
    return all(map(operator.lt, steps, steps[1:]))


def _order(rec: MetricRecord) -> tuple[int, int, str]:
    return rec.step, rec.phase != "train", rec.phase


def _rank(rec: MetricRecord) -> int:
    """An unprefixed line is taken as rank 0: single-process runs and rank-0-only loggers."""
    return 0 if rec.rank is None else rec.rank


def _lowest_rank_only(records: list[MetricRecord], issues: list[ParseIssue]) -> list[MetricRecord]:
    if {rec.rank for rec in records} <= {None, 0}:
        return records  # the common case costs one pass and no dict
    lowest: dict[tuple[str, int], int] = {}
    for rec in records:
        key = (rec.phase, rec.step)
        rank = _rank(rec)
        if rank < lowest.get(key, rank + 1):
            lowest[key] = rank
    kept: list[MetricRecord] = []
    dropped: dict[str, tuple[int, set[int], int | None]] = {}
    for rec in records:
        if _rank(rec) == lowest[(rec.phase, rec.step)]:
            kept.append(rec)
            continue
        file, line = split_source(rec.source)
        count, ranks, first = dropped.get(file, (0, set(), line))
        ranks.add(_rank(rec))
        dropped[file] = (count + 1, ranks, first)
    for file, (count, ranks, first) in dropped.items():
        listed = ", ".join(str(r) for r in sorted(ranks))
        issues.append(ParseIssue(file, first, "ranks",
                                 f"{count} metric lines from rank(s) {listed} ignored; each step keeps its lowest rank"))
    return kept


def _last_occurrence(records: list[MetricRecord], issues: list[ParseIssue]) -> list[MetricRecord]:
    """Keep the last record per (phase, step), in step order; report each replayed range once."""
    latest: dict[tuple[str, int], MetricRecord] = {}
    high: dict[str, int] = {}  # phase -> highest step seen so far
    previous: dict[str, MetricRecord] = {}  # phase -> the record before this one
    replay: dict[str, _Replay] = {}  # phase -> the restart being replayed now
    duplicates: dict[str, list] = {}  # file -> [count, first line]
    in_order = True  # no restart and one phase: the dict is already sorted, skip the sort
    for rec in records:
        phase, step = rec.phase, rec.step
        top = high.get(phase)
        if top is None or step > top:
            if replay and phase in replay:
                issues.append(replay.pop(phase).issue())
            high[phase] = step
        else:
            in_order = False
            if step == previous[phase].step and _same_values(rec, previous[phase]):
                _count_duplicate(duplicates, rec)
            else:
                current = replay.get(phase)
                if current is None or step <= current.last:  # a new restart (or one inside a replay)
                    if current is not None:
                        issues.append(current.issue())
                    current = replay[phase] = _Replay(rec, top)
                current.extend(step, latest.get((phase, step)))
        latest[(phase, step)] = rec
        previous[phase] = rec
    issues.extend(r.issue() for r in replay.values())
    _cap_restarts(issues)
    for file, (count, line) in duplicates.items():
        issues.append(ParseIssue(file, line, "duplicate",
                                 f"{count} step(s) logged twice in a row with identical values (a doubled log "
                                 "handler?); kept one"))
    kept = list(latest.values())
    if not in_order or len(high) > 1:
        kept.sort(key=_order)
    return kept


def _same_values(a: MetricRecord, b: MetricRecord) -> bool:
    """A repeated line (doubled log handler) rather than a resumed run re-logging its first step."""
    return all(getattr(a, name) == getattr(b, name) for name in _FIELDS) and a.extra == b.extra


def _count_duplicate(duplicates: dict[str, list], rec: MetricRecord) -> None:
    file, line = split_source(rec.source)
    entry = duplicates.setdefault(file, [0, line])
    entry[0] += 1


def _cap_restarts(issues: list[ParseIssue]) -> None:
    """Unprefixed output from several ranks looks like a restart at every step; list the first
    few per file and count the rest, as parsers do for corrupt lines."""
    seen: dict[str, int] = {}
    kept: list[ParseIssue] = []
    for issue in issues:
        if issue.kind == "restart":
            seen[issue.file] = seen.get(issue.file, 0) + 1
            if seen[issue.file] > MAX_ISSUES_PER_KIND:
                continue
        kept.append(issue)
    for file, count in seen.items():
        if count > MAX_ISSUES_PER_KIND:
            kept.append(ParseIssue(file, None, "restart", f"{count - MAX_ISSUES_PER_KIND} more restarts not listed "
                                   "(several ranks writing unprefixed lines?)"))
    issues[:] = kept


class _Replay:
    """One restart: where it was noticed and which earlier steps it overwrote."""

    def __init__(self, rec: MetricRecord, high_before: int):
        self.file, self.line = split_source(rec.source)
        self.first = rec.step
        self.last = rec.step
        self.high_before = high_before
        self.overwritten: list[int] = []
        self.earliest_source: str | None = None

    def extend(self, step: int, replaced: MetricRecord | None) -> None:
        self.last = step
        if replaced is not None:
            self.overwritten.append(step)
            if self.earliest_source is None:
                self.earliest_source = replaced.source

    def issue(self) -> ParseIssue:
        if self.overwritten:
            span = f"steps {min(self.overwritten)}..{max(self.overwritten)} ({len(self.overwritten)} logged)"
        else:
            span = "no logged step"
        where = f" (first overwritten value from {self.earliest_source})" if self.earliest_source else ""
        return ParseIssue(self.file, self.line, "restart",
                          f"step {self.first} logged again after step {self.high_before}: the run was resumed; "
                          f"kept the later values, overwrote {span}{where}")
