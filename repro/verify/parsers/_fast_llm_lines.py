"""Fast-LLM's log-line grammar, one line at a time (the format is described in fast_llm.py).

The regex fast path (``parse_pair``) and the label-by-label fallback (``parse_line_by_labels``)
live here; the column-by-column batch scanner is in _fast_llm_columns.py.
"""

from __future__ import annotations

import re

from repro.base.metrics import CORE_FIELDS, MetricRecord
from repro.verify.parsers._common import find_rank, first_token, put, snake, split_kv, to_float
from repro.verify.parsers._lines import RECORD_FIELDS

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


