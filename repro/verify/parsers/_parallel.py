"""A big line-oriented log parsed by worker processes, one per usable core (see _lines.py).

Line-aligned byte ranges are parsed in forked workers and here; chunks travel back as
columns (floats as ``array('d')``) and ``_lines._stitch`` joins them in file order, so the
result equals a one-process parse. Imported only when a file is big enough to need it.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import sys
import time
from array import array
from collections.abc import Iterator
from itertools import islice, pairwise
from operator import attrgetter
from pathlib import Path

from repro.verify.parsers._lines import (
    BATCH_LINES,
    PROCESSES_ENV,
    RECORD_FIELDS,
    _COLUMNAR,
    _EXTRA_AT,
    _RANGE_BYTES,
    Chunk,
    Extras,
    Same,
    _linenos,
    _stitch,
    scan_chunk,
)


def parallel_processes(path: Path | str, min_bytes: int) -> int:
    """How many processes (this one included) a parse of ``path`` should use; 1: this one alone."""
    setting = os.environ.get(PROCESSES_ENV, "").strip()
    if setting:
        try:
            wanted = int(setting)
        except ValueError:
            wanted = 1
    else:
        wanted = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if wanted < 2 or not _COLUMNAR or not sys.platform.startswith("linux"):
        return 1  # fork (no re-import per worker) is only dependable on Linux
    try:
        size = os.stat(path).st_size
    except OSError:
        return 1  # the serial path reports it
    if size < min_bytes:
        return 1
    return min(wanted, -(-size // _RANGE_BYTES))


def parse_parallel(path: Path, processes: int, how: tuple, units: dict[str, str] | None):
    """The file's line-aligned byte ranges are claimed one at a time, lowest first, by
    ``processes - 1`` workers and by this process, which also stitches them in file order.

    Every range numbers its lines from 1; ``_stitch`` adds the lines of the ranges before it.
    None if no worker process can be started (the caller then parses here).
    """
    source = str(path)
    ranges = _line_aligned_ranges(path)
    context = multiprocessing.get_context("fork")
    job = (path, source, ranges, how, context.Value("q", 0))
    try:
        pool = context.Pool(processes - 1, _start_worker, (job,))
    except (OSError, ValueError, AssertionError):  # no fork here, or this is a daemonic process
        return None
    with pool:
        results = pool.imap_unordered(_worker_scan, range(len(ranges)))
        try:
            return _stitch(_in_order(job, results, processes - 1), source, units)
        except _WorkerLost:
            return None


class _WorkerLost(Exception):
    """No range came back for _WORKER_TIMEOUT_S: a worker was killed (a pool never re-runs the
    task of a worker that died), so the parse starts over in this process."""


_WORKER_TIMEOUT_S = 120.0


#: Until measured: what a range parsed by a worker costs this process (unpickling and building
#: its records), as a fraction of what parsing it here costs (parsing and building them).
_REMOTE_COST = 0.3


def _in_order(job: tuple, results, workers: int) -> Iterator[tuple[Chunk, int]]:
    """(chunk, line offset) for every range in file order: the workers' as they arrive, and
    ranges parsed here while the next one in order is not back yet - but only as many as keep
    this process, which also builds every record, from finishing after the workers.

    With ``W`` what a range costs a worker, ``L`` what it costs here when parsed here and ``R``
    when parsed by a worker (measured as they go), finishing together means parsing
    ``n_here = n_workers * (W / workers - R) / L`` ranges here: on two cores about 0.55 for
    each one the worker parses.
    """
    path, source, ranges, how, _ = job
    done: dict[int, tuple] = {}  # range index -> (chunks, lines), or a worker's pickle of it
    here: set[int] = set()
    costs = {"here": [0, 0.0], "there": [0, 0.0], "worker": [0, 0.0]}  # [ranges, seconds]
    offset = 0
    for index in range(len(ranges)):
        while index not in done:
            try:
                _take(done, results.next(timeout=0), costs)
                continue
            except multiprocessing.TimeoutError:
                pass
            mine = _claim(job) if _may_parse_here(costs, workers) else None
            if mine is None:
                try:
                    _take(done, results.next(timeout=_WORKER_TIMEOUT_S), costs)
                except multiprocessing.TimeoutError:
                    raise _WorkerLost from None
            else:
                started = time.perf_counter()
                done[mine] = _scan_range(path, *ranges[mine], source, how)
                here.add(mine)
                costs["here"][1] += time.perf_counter() - started
        started = time.perf_counter()
        result = done.pop(index)
        chunks, lines = _unpack(result) if isinstance(result, bytes) else result
        for chunk in chunks:
            yield chunk, offset
        offset += lines
        cost = costs["here" if index in here else "there"]
        cost[0] += 1
        cost[1] += time.perf_counter() - started  # the records built from it included


def _may_parse_here(costs: dict[str, list], workers: int) -> bool:
    (here, here_seconds), (there, there_seconds), (worker, worker_seconds) = costs.values()
    if not here:
        return True  # nothing measured yet, and nothing else to do at the start
    local = max(here_seconds / here, 1e-9)
    remote = there_seconds / there if there else _REMOTE_COST * local
    per_worker = worker_seconds / worker if worker else local
    return here < (per_worker / workers - remote) / local * (worker + workers)


def _take(done: dict[int, tuple], result: tuple[int, bytes, float] | None, costs: dict[str, list]) -> None:
    if result is not None:  # None: the task found every range claimed already
        index, blob, seconds = result
        done[index] = blob
        costs["worker"][0] += 1
        costs["worker"][1] += seconds


def _claim(job: tuple) -> int | None:
    """The lowest range nobody has claimed yet, or None."""
    ranges, counter = job[2], job[4]
    with counter.get_lock():
        index = counter.value
        if index >= len(ranges):
            return None
        counter.value = index + 1
    return index


_JOB: tuple | None = None  # a worker's job, set when the pool forks it


def _start_worker(job: tuple) -> None:
    global _JOB
    _JOB = job


def _worker_scan(_task: int) -> tuple[int, bytes, float] | None:
    """In a worker: claim a range, parse it, send it back packed, with the seconds it took."""
    started = time.perf_counter()
    index = _claim(_JOB)
    if index is None:
        return None
    path, source, ranges, how, _ = _JOB
    return index, _pack(*_scan_range(path, *ranges[index], source, how)), time.perf_counter() - started


def _line_aligned_ranges(path: Path) -> list[tuple[int, int]]:
    """``[start, end)`` byte ranges of about _RANGE_BYTES, each ending just after a ``\\n`` (or at
    the end of the file), so that no line, ``\\r\\n`` pair or UTF-8 sequence is cut: decoding
    and splitting the ranges one by one gives the lines ``open_lines`` gives for the file."""
    size = path.stat().st_size
    bounds = [0]
    with open(path, "rb") as fh:
        while bounds[-1] + _RANGE_BYTES < size:
            fh.seek(bounds[-1] + _RANGE_BYTES - 1)
            fh.readline()  # up to and including the next b"\\n"
            end = fh.tell()
            if end >= size:
                break
            bounds.append(end)
    bounds.append(size)
    return list(pairwise(bounds))


class _ByteRange(io.RawIOBase):
    """``[start, end)`` of a file as a raw stream, so ``open_lines``' own text layer reads it."""

    def __init__(self, path: Path, start: int, end: int):
        super().__init__()
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self._file.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buffer)
        if len(view) > self._left:
            view = view[:self._left]
        got = self._file.readinto(view) or 0
        self._left = self._left - got if got else 0
        return got

    def close(self) -> None:
        self._file.close()
        super().close()


def _scan_range(path: Path, start: int, end: int, source: str, how: tuple) -> tuple[list[Chunk], int]:
    """One byte range -> (its chunks, lines numbered from 1; the number of lines in it)."""
    marker, parse_line, hint, paired, batch = how
    with io.BufferedReader(_ByteRange(path, start, end), 1 << 16) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace")  # open_lines, from `start`
        if batch is None:
            block = text.readlines()
            return [scan_chunk(block, 1, source, marker, parse_line, hint, paired)], len(block)
        chunks: list[Chunk] = []
        lines = 0
        while block := list(islice(text, BATCH_LINES)):
            chunks.extend(batch(block, lines + 1, source))
            lines += len(block)
        return chunks, lines


def _pack(chunks: list[Chunk], lines: int) -> bytes:
    """Chunks as columns, each as compact as it pickles: ``Same`` as it is, consecutive line
    numbers as a range, floats or ints as an array (one bytes copy each way, ``array.tolist``
    in C), anything else as a list."""
    return pickle.dumps(([_packed(chunk) for chunk in chunks], lines), pickle.HIGHEST_PROTOCOL)


def _packed(chunk: Chunk) -> Chunk:
    if chunk.columns is None:
        columns = tuple(None if name == "source" else list(map(attrgetter(name), chunk.records))
                        for name in RECORD_FIELDS)
        chunk = chunk._replace(records=None, columns=columns, linenos=_linenos(chunk.records))
    columns = list(map(_array, chunk.columns))
    extras = columns[_EXTRA_AT]
    if type(extras) is Extras:
        columns[_EXTRA_AT] = extras._replace(values=tuple(map(_array, extras.values)))
    linenos = chunk.linenos
    if linenos and type(linenos) is not range and linenos[-1] - linenos[0] == len(linenos) - 1:
        linenos = range(linenos[0], linenos[-1] + 1)  # increasing, so consecutive
    return chunk._replace(columns=tuple(columns), linenos=linenos)


def _array(column):
    if not column or type(column) in (Same, Extras):
        return column
    kinds = set(map(type, column))
    if kinds == {float}:
        return array("d", column)
    if kinds == {int}:
        try:
            return array("q", column)
        except OverflowError:
            pass
    return column


def _unpack(blob: bytes) -> tuple[list[Chunk], int]:
    chunks, lines = pickle.loads(blob)
    return [chunk._replace(columns=tuple(map(_unarray, chunk.columns))) for chunk in chunks], lines


def _unarray(column):
    if type(column) is array:
        return column.tolist()
    if type(column) is Extras:
        return column._replace(values=tuple(map(_unarray, column.values)))
    return column
