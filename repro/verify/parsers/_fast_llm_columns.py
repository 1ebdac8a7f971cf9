"""Fast-LLM lines parsed column by column, a batch at a time: the fast path of big logs.

Gives exactly what ``scan_chunk`` over ``parse_pair`` gives (see fast_llm.py for the format).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Sequence
from itertools import compress, repeat
from operator import add, ge, getitem, itemgetter, mul, truediv

from repro.verify.parsers._fast_llm_lines import (  # the grammar's names the scanner shares
    _GIB,
    _ITERATION_COUNTS,
    _NUMBERS,
    _SPEEDS,
    _TRAINING,
    MARKER,
    _add_tail,
    _Cache,
    _rank_before,
    _tag_rank,
    _tail_pairs,
    parse_pair,
)
from repro.verify.parsers._lines import Chunk, Extras, Same, column_part, columns_chunk, scan_chunk


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


