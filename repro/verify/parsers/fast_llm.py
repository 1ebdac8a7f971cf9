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
  processes and this one parse (``_lines.parse_file``), one process per usable core; records,
  line numbers and issues are those of a one-process parse (``REPRO_PARSE_PROCESSES=1``).

The fast path checks the labels of the fields it skips, not their content: a skipped field
that itself holds ``label: value`` (never printed by Fast-LLM) is not read as a metric there,
as it was not before.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Sequence
from itertools import compress, repeat
from operator import add, ge, getitem, itemgetter, mul, truediv
from pathlib import Path

from repro.base.metrics import CORE_FIELDS, MetricRecord
from repro.verify.parsers._common import ParseIssue, find_rank, first_token, put, snake, split_kv, to_float
from repro.verify.parsers._lines import (
    RECORD_FIELDS,
    Chunk,
    Extras,
    Same,
    column_part,
    columns_chunk,
    parse_file,
    scan_chunk,
    scan_lines,
)

DESCRIPTION = "Fast-LLM logs, v0.1-v0.4 ('Training @ iteration N/M | ...', 'training @ step N/M | ...')"
MARKER = " @ "

_HEAD = re.compile(r"(?:PhaseType\.)?([A-Za-z]+)(?:/(\S+))? @ (iteration|step)\s+(\d+)/\s*(\d+)")
_SNIFF = re.compile(r" @ (?:iteration|step)\s+\d+/\s*\d+ \| ")
_PHASES = {"training": "train", "validation": "eval", "test": "eval", "inference": "eval"}
_LOSS_LABELS = ("language model loss", "lm_head_loss")
#: The training line of every era, matched from the phase word. Possessive quantifiers (\S++,
#: [^|]*+) never backtrack; fields end at " | " as the label path splits them (hence the
#: ``(?<= )``); the tail after the loss is empty or more `` | label: value`` fields; a line
#: without its newline (cut at the end of a file) is left to the label path and its report.
#: Step time and the three throughputs are one group (the throughputs follow from the step
#: time, so the four repeat together), as are the skipped and nan iteration counts.
_TRAINING = re.compile(
    r"(?:PhaseType\.)?[Tt]raining(?:/\S+)? @ (iteration|step) ++(\d++)/ *+(\d++)"
    r"(?: \| consumed samples: ++(\S++))?"
    r" \| consumed tokens: ++(\S++)"
    r" \| batch size: ++(\S++)"
    r" \| (step time: \S++ ms \| throughput: \S++ tflop/s \(model\) \| \S++ tflop/s \(hardware\)"
    r" \| \S++ tokens/s/gpu)"
    r" \| Memory allocated [^|]*+(?<= )\| max allocated [^|]*+(?<= )\| reserved [^|]*+(?<= )"
    r"\| max reserved (\S++) MiB"
    r" \| global max reserved [^|]*+(?<= )"
    r"\| learning rate: (\S++)"
    r" \| loss scale: [^|]*+(?<= )"
    r"\| grad norm: (\S++)"
    r" \| (skipped iterations: ++\S++ \| nan iterations: ++\S++)"
    r" \| average step time [^|]*+(?<= )"
    r"(?:\| data wait: (\S++) ms \| data preprocessing: (\S++) ms )?"
    r"\| remaining [^|]*+(?<= )\| completion [^|]*+(?<= )"
    r"\| (?:language model loss|lm_head_loss): (\S++)"
    r"(?: \| run: \d++)?((?: \| .*)?)\n\Z"
)
_SPEED = re.compile(r"step time: (\S++) ms \| throughput: (\S++) tflop/s \(model\)"
                    r" \| (\S++) tflop/s \(hardware\) \| (\S++) tokens/s/gpu")
_ITERATIONS = re.compile(r"skipped iterations: ++(\S++) \| nan iterations: ++(\S++)")


class _Cache(dict):
    """Logged text -> its value, for the texts that repeat; ``cache[text]`` parses on a miss.

    Values with NaN/inf are returned but never stored, so a repeated NaN is a fresh float each
    time, as on the label path. Bounded: cleared when full, so a log whose values never repeat
    costs a lookup per value and no memory. A text that does not parse raises ValueError, and
    the line then takes the label path (which may still read it: ``to_float`` strips a "%").
    """

    LIMIT = 1 << 16

    def __init__(self, parse, bulk=None):
        super().__init__()
        self._parse = parse
        self.bulk = bulk  # texts -> what ``parse`` gives for each, faster; see _lookup

    def __missing__(self, text: str):
        value = self._parse(text)
        check = sum(value) if type(value) is tuple else value
        if check - check == 0.0:  # finite
            if len(self) >= self.LIMIT:
                self.clear()
            self[text] = value
        return value

    def learn(self, texts: tuple[str, ...], parts: int = 0):
        """``bulk(texts)`` - a list, or ``parts`` lists - and remember them all if all are finite."""
        values = self.bulk(texts)
        columns = values if parts else (values,)
        if all(total - total == 0.0 for total in map(sum, columns)):
            if len(self) + len(texts) > self.LIMIT:
                self.clear()
            self.update(zip(texts, zip(*columns) if parts else values))
        return values


def _number(text: str) -> float:
    """``to_float`` for text without spaces: commas dropped, anything else float() refuses raises."""
    return float(text.replace(",", "") if "," in text else text)


def _speed(text: str) -> tuple[float, float, float, float]:
    """"step time: .. | .. tokens/s/gpu" -> (step time s, model TFLOP/s, hardware TFLOP/s, tokens/s/gpu)."""
    step_ms, model, hardware, tps = map(_NUMBERS.__getitem__, _SPEED.fullmatch(text).groups())
    return step_ms / 1000.0, model, hardware, tps


def _iteration_counts(text: str) -> tuple[float, float]:
    """"skipped iterations: .. | nan iterations: .." -> (skipped, nan)."""
    skipped, nans = map(_NUMBERS.__getitem__, _ITERATIONS.fullmatch(text).groups())
    return skipped, nans


_NUMBERS = _Cache(_number)
_SPEEDS = _Cache(_speed)
_ITERATION_COUNTS = _Cache(_iteration_counts)
_GIB = _Cache(lambda text: _NUMBERS[text] / 1024.0)  # max reserved MiB -> GiB

_RANKS: dict[str, int] = {}  # "[Rank 000]" -> 0: the rank tag in front of a line, see _rank_before

#: label -> (record attribute or "extra.<key>", divisor to the unit of repro.metrics; dividing by
#: 1000 rather than multiplying by 1e-3 keeps 913.45 ms exactly 0.91345 s)
_KEYED = {
    "consumed samples": ("extra.consumed_samples", 1.0),
    "consumed tokens": ("extra.consumed_tokens", 1.0),
    "step time": ("step_time_s", 1000.0),
    "throughput": ("model_tflops_per_device", 1.0),
    "learning rate": ("lr", 1.0),
    "grad norm": ("grad_norm", 1.0),
    "skipped iterations": ("extra.skipped_iterations", 1.0),
    "nan iterations": ("extra.nan_iterations", 1.0),
    "data wait": ("extra.data_wait_ms", 1.0),
    "data preprocessing": ("extra.data_preprocessing_ms", 1.0),
}
_NOT_READ = frozenset({"loss scale", "run"})  # "run" is the run directory's index, not a metric

UNITS = {
    "step_time_s": "Fast-LLM 'step time' is in ms; converted to step_time_s in seconds",
    "memory_gib": "Fast-LLM memory is in MiB; 'max reserved' converted to memory_gib (GiB = MiB / 1024)",
}


def sniff(name: str, head: str) -> int:
    return len(_SNIFF.findall(head))


def parse_line(line: str) -> MetricRecord | None:
    parsed = parse_pair(line)
    return None if parsed is None else parsed[0]


def parse_pair(line: str) -> tuple[MetricRecord, bool] | None:
    """``(record, may_hold_non_finite)`` for a metric line, None for any other line.

    The flag is exact on the fast path (a sum of every converted value, which is NaN/inf iff
    one of them is, or overflows - then the check just finds nothing); records from the label
    path are always flagged, and the caller checks them field by field.
    """
    at = line.find(" @ ")
    if at < 0:
        return None
    start = line.rfind(" ", 0, at) + 1  # the phase word
    fast = _TRAINING.match(line, start)
    if fast is not None:
        try:
            parsed = _from_training_match(line, start, fast)
        except ValueError:
            parsed = None  # a value float() refuses: the label path decides (to_float or corrupt)
        if parsed is not None:
            return parsed
    rec = parse_line_by_labels(line)
    return None if rec is None else (rec, True)


def _from_training_match(line: str, start: int, m: re.Match) -> tuple[MetricRecord, bool] | None:
    """The fast path: the same fields ``parse_line_by_labels`` reads, straight from the groups.
    None when the trailing fields need the label path (a label it treats specially)."""
    (counter, step, total, samples, consumed, batch, speed, reserved, lr, grad, iterations, wait, prep, loss,
     tail) = m.groups()
    num = _NUMBERS
    consumed_tokens = float(consumed.replace(",", ""))
    batch_size = num[batch]
    loss_value, lr_value, grad_value = num[loss], num[lr], num[grad]
    step_s, model_value, hardware_value, tps_value = _SPEEDS[speed]
    skipped_value, nans_value = _ITERATION_COUNTS[iterations]
    memory = _GIB[reserved]
    check = (consumed_tokens + batch_size + loss_value + lr_value + grad_value + step_s + model_value
             + hardware_value + tps_value + memory + skipped_value + nans_value)
    extra = {"total_steps": num[total], "consumed_tokens": consumed_tokens,
             "skipped_iterations": skipped_value, "nan_iterations": nans_value}
    if samples is None:
        consumed_samples = None
    else:
        consumed_samples = extra["consumed_samples"] = float(samples.replace(",", ""))
        check += consumed_samples
    if counter == "step":
        tokens = batch_size  # v0.4 counts the batch in tokens
    else:
        extra["batch_size_samples"] = batch_size
        if consumed_samples:
            tokens = batch_size * consumed_tokens / consumed_samples
            check += tokens
        else:
            tokens = None
    if wait is not None:
        extra["data_wait_ms"] = wait_value = num[wait]
        extra["data_preprocessing_ms"] = prep_value = num[prep]
        check += wait_value + prep_value
    suspect = check - check != 0.0
    if tail:
        pairs = _tail_pairs(tail)
        if pairs is None:
            return None
        if _add_tail(extra, pairs):
            suspect = True
    rec = _record(int(step), loss_value, lr_value, tokens, tps_value, grad_value, step_s, model_value,
                  hardware_value, memory, "train", _rank_before(line, start), None, extra)
    return rec, suspect


#: MetricRecord's fields in ``__init__`` order, as the fast path passes them (positional
#: arguments cost half as much as keywords at a million records).
_RECORD_FIELDS = ("step", *CORE_FIELDS[1:], "phase", "rank", "source", "extra")
if RECORD_FIELDS[:len(_RECORD_FIELDS)] == _RECORD_FIELDS:
    _record = MetricRecord
else:  # the record changed shape: still correct, just slower
    def _record(*values) -> MetricRecord:
        return MetricRecord(**dict(zip(_RECORD_FIELDS, values)))


def _rank_before(line: str, end: int) -> int | None:
    """``find_rank(line, end)``, with the answer cached per rank tag (``[Rank 000]``).

    Every match of the rank pattern is a ``[...]`` ending at the first ``]`` after its ``[``, so
    when the first ``[...]`` of the prefix holds one it is the match ``find_rank`` finds first.
    """
    left = line.find("[", 0, end)
    if left < 0:
        return None
    right = line.find("]", left, end)
    if right < 0:
        return None
    rank = _tag_rank(line[left:right + 1])
    return find_rank(line, end) if rank is None else rank


def _tag_rank(tag: str) -> int | None:
    """The rank a ``[...]`` tag holds; None if it holds none (or rank -1, which means none)."""
    rank = _RANKS.get(tag)
    if rank is None:
        rank = find_rank(tag)
        if rank is None:
            return None
        if len(_RANKS) >= 1024:
            _RANKS.clear()
        _RANKS[tag] = rank
    return rank


#: Labels the label path reads into record fields: after the loss they would overwrite a value
#: the fast path already took, so a line repeating one is left to the label path.
_LABEL_PATH_ONLY = frozenset(_KEYED) | frozenset(_LOSS_LABELS) | {"batch size"}


def _tail_pairs(tail: str) -> dict[str, str] | None:
    """The ``label: value`` fields after the loss; None if the line needs the label path (a bare
    field, or a label it reads into a record field)."""
    pairs, bare = split_kv(tail)
    if bare or not _LABEL_PATH_ONLY.isdisjoint(pairs):
        return None
    return pairs


def _add_tail(extra: dict[str, float], pairs: dict[str, str]) -> bool:
    """Trailing metrics into ``extra``, as the label path adds them; True if one is NaN/inf."""
    suspect = False
    for label, value in pairs.items():
        if label not in _NOT_READ:
            parsed = _extra_number(extra, label, value)
            if parsed is not None and parsed - parsed != 0.0:
                suspect = True
    return suspect


# ------------------------------------------------------------------------- column by column


def scan_batch(lines: list[str], first: int, source: str) -> list[Chunk]:
    """``scan_chunk(lines, first, ...)`` with the fast path run column by column.

    Every training line ``_TRAINING`` matches is converted field by field with one ``map`` per
    field over the whole batch, which gives the values, ``extra`` (same keys, same order), rank
    and NaN/inf answer ``_from_training_match`` gives line by line. Lines it cannot take that
    way - no match (a line cut short included), a tail that needs the label path - go
    through ``scan_chunk`` one by one, in their place; a batch whose training lines disagree in
    layout, or holding a value float() refuses or a zero sample count, goes through it whole.
    """
    count = len(lines)
    ats = list(map(str.find, lines, repeat(MARKER)))
    missing = ats.count(-1)
    if missing == count:
        return []
    if missing:
        marked = list(compress(range(count), map(ge, ats, repeat(0))))
        texts = list(map(lines.__getitem__, marked))
        ats = list(map(ats.__getitem__, marked))
    else:
        marked, texts = range(count), lines
    starts = _phase_starts(texts, ats)
    matches = list(map(_TRAINING.match, texts, starts))
    fast = list(compress(range(len(texts)), matches))  # positions in `texts` taken column-wise
    taken = matches if len(fast) == len(texts) else map(matches.__getitem__, fast)
    groups = list(map(re.Match.groups, taken))
    columns = list(zip(*groups))
    tails: dict[int, dict[str, str]] = {}  # index in `fast` -> its trailing pairs
    if columns and columns[-1].count("") < len(fast):
        keep = []
        for index, tail in enumerate(columns[-1]):
            if tail:
                pairs = _tail_pairs(tail)
                if pairs is None:
                    continue  # to scan_chunk
                tails[len(keep)] = pairs
            keep.append(index)
        if len(keep) < len(fast):
            fast = list(map(fast.__getitem__, keep))
            columns = list(zip(*map(groups.__getitem__, keep)))
    built = None
    if fast:
        if len(fast) < len(texts):
            texts_fast, starts_fast = list(map(texts.__getitem__, fast)), list(map(starts.__getitem__, fast))
        else:
            texts_fast, starts_fast = texts, starts
        built = _training_columns(columns, texts_fast, starts_fast, tails)
    if built is None:
        return [scan_chunk(lines, first, source, MARKER, parse_pair, None, True)]
    fields, suspects = built
    if len(fast) == count:
        linenos = list(range(first, first + count))
    else:
        linenos = list(map(add, map(marked.__getitem__, fast), repeat(first)))
    if len(fast) == len(texts):
        return [columns_chunk(fields, linenos, [(index, linenos[index]) for index in suspects])]
    chunks = []
    low = 0
    for position in sorted(set(range(len(texts))).difference(fast)):
        high = bisect_left(fast, position, low)
        if high > low:
            chunks.append(_columns_part(fields, linenos, suspects, low, high))
        lineno = first + marked[position]
        chunks.append(scan_chunk((texts[position],), lineno, source, MARKER, parse_pair, None, True))
        low = high
    if low < len(fast):
        chunks.append(_columns_part(fields, linenos, suspects, low, len(fast)))
    return chunks


def _phase_starts(texts: list[str], ats: list[int]) -> list[int]:
    """Where each line's phase word starts: after the last space before its first " @ " (the
    position ``parse_pair`` matches from). Lines whose prefix has a fixed width - timestamped
    log lines - share the word and its position, checked with one slice per line."""
    at = ats[0]
    if ats.count(at) == len(ats):
        start = texts[0].rfind(" ", 0, at) + 1
        if len(set(map(getitem, texts, repeat(slice(max(start - 1, 0), at))))) == 1:
            return [start] * len(texts)  # the same space (or none) and the same word before " @ "
    return list(map(add, map(str.rfind, texts, repeat(" "), repeat(0), ats), repeat(1)))


def _training_columns(columns: list[tuple], texts: list[str], starts: list[int],
                      tails: dict[int, dict[str, str]]) -> tuple[dict[str, list], list[int]] | None:
    """``_from_training_match`` for many lines at once: record fields as columns, and the
    indices of the records with a NaN/inf value. None if the batch must go line by line."""
    (counter, step, total, samples, consumed, batch, speed, reserved, lr, grad, iterations, wait, prep, loss,
     _) = columns
    size = len(step)
    if (counter.count(counter[0]) != size or samples.count(None) not in (0, size)
            or wait.count(None) not in (0, size)):
        return None  # eras mixed in one batch: not worth a column path of their own
    try:
        steps = list(map(int, step))
        consumed_tokens = _counters(consumed)
        batch_sizes, losses = _lookup(_NUMBERS, batch), _lookup(_NUMBERS, loss)
        lrs, grads = _lookup(_NUMBERS, lr), _lookup(_NUMBERS, grad)
        step_s, models, hardwares, throughputs = _lookup(_SPEEDS, speed, 4)
        skipped_values, nans_values = _lookup(_ITERATION_COUNTS, iterations, 2)
        memory = _lookup(_GIB, reserved)
        checked = [consumed_tokens, batch_sizes, losses, lrs, grads, step_s, models, hardwares, throughputs,
                   memory, skipped_values, nans_values]
        keys = ["total_steps", "consumed_tokens", "skipped_iterations", "nan_iterations"]
        values = [_lookup(_NUMBERS, total), consumed_tokens, skipped_values, nans_values]
        consumed_samples = None
        if samples[0] is not None:
            consumed_samples = _counters(samples)
            keys.append("consumed_samples")
            values.append(consumed_samples)
            checked.append(consumed_samples)
        if counter[0] == "step":
            tokens = batch_sizes  # v0.4 counts the batch in tokens
        else:
            keys.append("batch_size_samples")
            values.append(batch_sizes)
            if consumed_samples is None:
                tokens = [None] * size
            else:  # a zero sample count (tokens None on that line) raises: line by line then
                batch_each = repeat(batch_sizes.value) if type(batch_sizes) is Same else batch_sizes
                tokens = list(map(truediv, map(mul, batch_each, consumed_tokens), consumed_samples))
                checked.append(tokens)
        if wait[0] is not None:
            waits, preps = _lookup(_NUMBERS, wait), _lookup(_NUMBERS, prep)
            keys += ("data_wait_ms", "data_preprocessing_ms")
            values += (waits, preps)
            checked += (waits, preps)
    except (ValueError, ZeroDivisionError):
        return None
    suspects: set[int] = set()
    for column in checked:
        if type(column) is Same:
            continue  # finite: see _lookup
        total_value = sum(column)
        if total_value - total_value != 0.0:  # some value is NaN/inf (or the sum overflowed)
            suspects.update(compress(range(size), map(_non_finite, column)))
    more: dict[int, dict[str, float]] = {}
    for index, pairs in tails.items():
        more[index] = {}
        if _add_tail(more[index], pairs):
            suspects.add(index)
    fields = {
        "step": steps, "loss": losses, "lr": lrs, "tokens": tokens, "tokens_per_s_per_device": throughputs,
        "grad_norm": grads, "step_time_s": step_s, "model_tflops_per_device": models,
        "hardware_tflops_per_device": hardwares, "memory_gib": memory, "phase": Same("train", size),
        "rank": _ranks(texts, starts), "extra": Extras(tuple(keys), tuple(values), more),
    }
    return fields, sorted(suspects)


def _lookup(cache: _Cache, texts: tuple[str, ...], parts: int = 0):
    """``cache[text]`` for every text: a ``Same`` when all texts are the same and the value is
    finite (one lookup, one float for the whole batch), else a list; with ``parts``, the cache
    gives tuples and this gives one such column per part.

    Texts seen before cost a lookup each; new ones are parsed and remembered, one by one
    (``__missing__``) or, when a sample says most texts are new (a loss printed to 5 decimals,
    early in training), all at once in C (``_Cache.learn``).
    """
    size = len(texts)
    first = texts[0]
    if texts.count(first) == size:
        value = cache[first]
        check = sum(value) if parts else value
        if check - check == 0.0:
            return tuple(Same(part, size) for part in value) if parts else Same(value, size)
    sample = texts[::64]
    if cache.bulk is not None and sum(map(cache.__contains__, sample)) * 2 < len(sample):
        return cache.learn(texts, parts)  # mostly new texts: parse them in C
    values = list(map(cache.__getitem__, texts))
    return tuple(zip(*values)) if parts else values


def _numbers_in_bulk(texts: Sequence[str]) -> list[float]:
    return list(map(float, map(str.replace, texts, repeat(","), repeat(""))))


def _speeds_in_bulk(texts: Sequence[str]) -> tuple[list[float], ...]:
    """``_speed`` of every text: its values are words 2, 6, 10 and 14 (the group's layout is
    fixed: single spaces, values without any)."""
    words = list(map(str.split, texts, repeat(" ")))
    step_ms, model, hardware, tps = (_numbers_in_bulk(list(map(itemgetter(at), words)))
                                     for at in (2, 6, 10, 14))
    return list(map(truediv, step_ms, repeat(1000.0))), model, hardware, tps


_NUMBERS.bulk = _numbers_in_bulk
_GIB.bulk = lambda texts: list(map(truediv, _numbers_in_bulk(texts), repeat(1024.0)))
_SPEEDS.bulk = _speeds_in_bulk


def _counters(texts: tuple[str, ...]) -> list[float]:
    """``float(text.replace(",", ""))`` of consumed samples/tokens, which never repeat: parsed as
    int then converted (exactly: int -> float rounds as float() does), a third faster. A value
    int() refuses raises ValueError, so the batch goes line by line; a zero is parsed again as
    float, which keeps the sign of "-0"."""
    digits = list(map(str.replace, texts, repeat(","), repeat("")))
    values = list(map(float, map(int, digits)))
    return list(map(float, digits)) if 0.0 in values else values


def _non_finite(value: float) -> bool:
    return value - value != 0.0


def _ranks(texts: list[str], starts: list[int]) -> list[int | None] | Same:
    """``_rank_before`` of every line; one tag lookup when all lines carry the same rank tag at
    the same place (a rank-0 log), which is the usual case."""
    lefts = list(map(str.find, texts, repeat("[")))  # first "[" of the line; in the prefix if < start
    left = lefts[0]
    if lefts.count(left) == len(lefts) and starts.count(starts[0]) == len(starts):
        if left < 0 or left >= starts[0]:
            return Same(None, len(texts))  # no "[" before the phase word
        rights = list(map(str.find, texts, repeat("]")))
        right = rights[0]
        if left < right < starts[0] and rights.count(right) == len(rights):
            tags = set(map(getitem, texts, repeat(slice(left, right + 1))))
            if len(tags) == 1:
                rank = _tag_rank(tags.pop())
                if rank is not None:
                    return Same(rank, len(texts))
    return list(map(_rank_before, texts, starts))


def _columns_part(fields: dict[str, list], linenos: list[int], suspects: list[int], low: int,
                  high: int) -> Chunk:
    part = {name: column_part(values, low, high) for name, values in fields.items()}
    return columns_chunk(part, linenos[low:high],
                         [(index - low, linenos[index]) for index in suspects if low <= index < high])


def parse_line_by_labels(line: str) -> MetricRecord | None:
    """Fields located by label, not position: validation lines and unknown layouts."""
    head = _HEAD.search(line)
    if head is None or head.group(1).lower() not in _PHASES:
        return None
    phase_word, dataset, counter, step, total = head.groups()
    rec = MetricRecord(step=int(step), phase=_phase(phase_word, dataset), rank=find_rank(line, head.start()))
    extra = rec.extra
    extra["total_steps"] = float(total)
    pairs, bare = split_kv(line[head.end():].rstrip("\n"))
    loss_seen = False
    for label, value in pairs.items():
        target = _KEYED.get(label)
        if target is not None:
            put(rec, target[0], to_float(first_token(value)) / target[1])
        elif label in _LOSS_LABELS and not loss_seen:
            rec.loss = to_float(value)
            loss_seen = True
        elif label == "batch size":
            _batch_size(rec, to_float(value), counter)
        elif label not in _NOT_READ:
            _extra_number(extra, label, value)
    for field in bare:
        _bare_field(rec, field)
    if not loss_seen:
        raise ValueError("no loss field ('language model loss' / 'lm_head_loss')")
    return rec


def _phase(word: str, dataset: str | None) -> str:
    """Several validation datasets (v0.3+) log at the same step; keep them apart by name."""
    phase = _PHASES[word.lower()]
    if phase == "eval" and dataset and dataset != "validation":
        return f"eval/{dataset}"
    return phase


def _batch_size(rec: MetricRecord, value: float, counter: str) -> None:
    if counter != "step":
        rec.extra["batch_size_samples"] = value
    rec.tokens = _tokens_per_step(counter, value, rec.extra.get("consumed_tokens"), rec.extra.get("consumed_samples"))


def _tokens_per_step(counter: str, batch: float, consumed_tokens: float | None,
                     consumed_samples: float | None) -> float | None:
    """v0.4 (``@ step``) counts the batch in tokens; earlier eras count samples, and tokens per
    step = samples x sequence length = samples x consumed_tokens / consumed_samples."""
    if counter == "step":
        return batch
    if consumed_samples and consumed_tokens is not None:
        return batch * consumed_tokens / consumed_samples
    return None


def _bare_field(rec: MetricRecord, field: str) -> None:
    """The fields printed without ``label:``, recognised by their unit."""
    if field.endswith("tokens/s/gpu"):
        rec.tokens_per_s_per_device = to_float(first_token(field))
    elif field.endswith("(hardware)"):
        rec.hardware_tflops_per_device = to_float(first_token(field))
    elif field.startswith("max reserved ") and field.endswith(" MiB"):
        rec.memory_gib = to_float(field[13:-4]) / 1024.0
    # other memory figures, the average step time and the forecasts are not read (see module doc)


def _extra_number(extra: dict[str, float], label: str, value: str) -> float | None:
    """Trailing metrics keep their label (``z_loss`` -> ``z_loss``); a unit stays in the key."""
    number, _, unit = value.partition(" ")
    try:
        parsed = to_float(number)
    except ValueError:
        return None  # text-valued extras (a run name) carry no metric
    key = snake(label)
    extra[f"{key}_{snake(unit)}" if unit else key] = parsed
    return parsed


#: Files at least this large are parsed by worker processes (see _lines.parse_file); below it,
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
