"""A log file parsed line by line: in this process, or by worker processes for a big file (_parallel).

Its own module so the line scanner (_lines) and the worker pool (_parallel, which builds on _lines) import one
way: this module is the only one that knows both."""

from __future__ import annotations

from pathlib import Path

from repro.base.metrics import MetricRecord
from repro.verify.parsers._lines import (BatchScanner, Hint, LineParser, ParseIssue, may_hold_non_finite,
                                         open_lines, scan_lines)


def parse_file(
    path: Path | str,
    marker: str,
    parse_line: LineParser,
    units: dict[str, str] | None = None,
    hint: Hint = may_hold_non_finite,
    *,
    paired: bool = False,
    batch: BatchScanner | None = None,
    parallel_min_bytes: int | None = None,
) -> tuple[list[MetricRecord], list[ParseIssue]]:
    """``scan_lines`` over a file, with issues naming the file as the user passed it.

    A file of ``parallel_min_bytes`` or more is cut into line-aligned byte ranges that worker
    processes and this one parse (``parse_line``, ``hint`` and ``batch`` must then be
    module-level functions); records, line numbers and issues are the same as from one pass.
    Only on Linux (workers are forked), with more than one usable core and
    ``REPRO_PARSE_PROCESSES`` not 1; a pool that cannot start, or a worker that dies, means a
    parse in this process alone.
    """
    if parallel_min_bytes is not None:
        from repro.verify.parsers._parallel import parallel_processes, parse_parallel  # forks: only when big

        processes = parallel_processes(path, parallel_min_bytes)
        if processes > 1:
            result = parse_parallel(Path(path), processes, (marker, parse_line, hint, paired, batch), units)
            if result is not None:
                return result
    with open_lines(path) as fh:
        return scan_lines(fh, str(path), marker, parse_line, units, hint, paired=paired, batch=batch)
