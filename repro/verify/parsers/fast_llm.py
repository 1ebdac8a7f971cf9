"""Fast-LLM rank-0 logs (``logs_rank_000.txt`` / stdout) in all three schema eras.

v0.1-v0.3: ``Training @ iteration N/M | consumed samples: .. | consumed tokens: .. | batch size: ..
| step time: .. ms | throughput: X tflop/s (model) | Y tflop/s (hardware) | Z tokens/s/gpu | Memory
allocated .. MiB | .. | learning rate: .. | grad norm: .. | .. | language model loss: ..`` (the
loss label became ``lm_head_loss`` in April 2025; on Python >= 3.12 the 2024 code may print the
phase as ``PhaseType.training``). v0.4: ``training @ step N/M``, no consumed samples, and
``batch size`` is counted in TOKENS rather than samples.

Read: the step counter, tokens, step time, the three throughputs, peak reserved memory, lr,
grad norm, skipped/nan iteration counts, data wait (v0.4), the losses and any trailing
``key: value`` metrics. Not read: the other four memory figures, loss scale, the running
average step time and the remaining/completion forecasts - restating or forecasting, they cost
a third of the parse time of a line that has to parse in a few microseconds.

Units: step time ms -> s; max reserved MiB -> ``memory_gib`` (peak *reserved*, as torchtitan
reports it). TFLOP/s and tokens/s/gpu are per device already. ``tokens`` per step is exact in
every era: v0.4 prints it; older eras print samples, and consumed_tokens / consumed_samples is
exactly the sequence length there.

Speed: a million training lines (670 MB) must parse in under 5 s on two cores
(tests/benchmarks/bench_parse.py; it took 10.5 s when every line went through ``parse_line``).

- Which numbers are converted. Of the ~20 numbers on a training line, 15 are: the MetricRecord
  fields (step, loss, lr, tokens/s/gpu, model and hardware TFLOP/s, step time, grad norm, max
  reserved memory) and the extras the record keeps (total steps = train iters, consumed
  samples and tokens and batch size - they also give ``tokens`` -, skipped and nan iterations,
  data wait and preprocessing) - the tests check these extras, so none of them is deferred.
  Skipped: allocated, max allocated, reserved and global max reserved memory, loss scale,
  average step time, remaining and completion are matched by their labels only, never
  converted nor kept.
- One regex per training line (``_TRAINING``, every era), capturing only those fields; step
  time with the three throughputs, and the skipped and nan counts, are one group each, as they
  repeat together. Any other line with `` @ `` (validation, a layout this module does not
  know, a value ``float()`` refuses, trailing fields the label path reads into the record)
  takes the label-driven path (``parse_line_by_labels``), which gives the same record for
  the same line - the fast path only exists to give it sooner.
- Values printed at fixed precision (throughputs, step time, lr, grad norm, loss, memory,
  batch size, counts) repeat from line to line: their text is looked up in bounded caches
  (``_Cache``, finite values only) and converted once; the consumed counters, which never
  repeat, are parsed directly.
- NaN/inf are found from the converted values (a sum per record or per column), not by
  scanning the text: ``parse_pair`` hands that answer to the line loop with the record.
- Files are parsed ``_lines.BATCH_LINES`` lines at a time by ``scan_batch``: the same fast
  path, one C-level ``map`` per field over the batch instead of Python code per line, the
  records built from the columns (``_lines.columns_chunk``); lines it cannot take go through
  the line loop in their place.
- Files of ``PARALLEL_MIN_BYTES`` or more are cut into line-aligned byte ranges that worker
  processes and this one parse (``_files.parse_file``), one process per usable core; records,
  line numbers and issues are those of a one-process parse (``REPRO_PARSE_PROCESSES=1``).

The fast path checks the labels of the fields it skips, not their content: a skipped field
that itself holds ``label: value`` (never printed by Fast-LLM) is not read as a metric there,
as it was not before.
"""

from __future__ import annotations

from pathlib import Path

from repro.base.metrics import MetricRecord
from repro.verify.parsers._common import ParseIssue
from repro.verify.parsers._fast_llm_columns import scan_batch
from repro.verify.parsers._fast_llm_lines import (  # noqa: F401 - the format's public names
    _GIB, _ITERATION_COUNTS, _NUMBERS, _SPEEDS, DESCRIPTION, MARKER, UNITS, parse_line, parse_line_by_labels,
    parse_pair, sniff,
)
from repro.verify.parsers._files import parse_file
from repro.verify.parsers._lines import scan_lines


# The grammar of a line is in _fast_llm_lines.py, the column-by-column batch scanner in
# _fast_llm_columns.py, the worker processes in _parallel.py.

#: Files at least this large are parsed by worker processes (see _files.parse_file); below it,
#: starting them costs more than it saves.
PARALLEL_MIN_BYTES = 64 << 20


def parse_lines(lines, source: str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return scan_lines(lines, source, MARKER, parse_pair, UNITS, paired=True, batch=scan_batch)


def parse(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    try:
        return parse_file(path, MARKER, parse_pair, UNITS, paired=True, batch=scan_batch,
                          parallel_min_bytes=PARALLEL_MIN_BYTES)
    finally:
        for cache in (_NUMBERS, _SPEEDS, _ITERATION_COUNTS, _GIB):
            cache.clear()  # up to LIMIT entries each: not worth keeping between files
