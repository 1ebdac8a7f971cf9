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

Speed: the training line of every era is matched by one precompiled regex (``_TRAINING``); any
other line with `` @ `` (validation, a layout this module does not know) takes the label-driven
path, which returns the same record for the same line and is slower.
"""

from __future__ import annotations

import re
from pathlib import Path

from repro.metrics import MetricRecord
from repro.parsers._common import ParseIssue, find_rank, first_token, put, snake, split_kv, to_float
from repro.parsers._lines import parse_file, scan_lines

DESCRIPTION = "Fast-LLM logs, v0.1-v0.4 ('Training @ iteration N/M | ...', 'training @ step N/M | ...')"
MARKER = " @ "

_HEAD = re.compile(r"(?:PhaseType\.)?([A-Za-z]+)(?:/(\S+))? @ (iteration|step)\s+(\d+)/\s*(\d+)")
_SNIFF = re.compile(r" @ (?:iteration|step)\s+\d+/\s*\d+ \| ")
_PHASES = {"training": "train", "validation": "eval", "test": "eval", "inference": "eval"}
_LOSS_LABELS = ("language model loss", "lm_head_loss")
_V = r"(\S+)"  # one value
_TRAINING = re.compile(
    r"(?:PhaseType\.)?[Tt]raining(?:/\S*)? @ (iteration|step) +(\d+)/ *(\d+)"
    r"(?: \| consumed samples: +" + _V + ")?"
    r" \| consumed tokens: +" + _V +
    r" \| batch size: +" + _V +
    r" \| step time: " + _V + r" ms"
    r" \| throughput: " + _V + r" tflop/s \(model\)"
    r" \| " + _V + r" tflop/s \(hardware\)"
    r" \| " + _V + r" tokens/s/gpu"
    r" \| Memory allocated [^|]*\| max allocated [^|]*\| reserved [^|]*\| max reserved " + _V + r" MiB"
    r" \| global max reserved [^|]*"
    r"\| learning rate: " + _V +
    r" \| loss scale: [^|]*"
    r"\| grad norm: " + _V +
    r" \| skipped iterations: +" + _V +
    r" \| nan iterations: +" + _V +
    r" \| average step time [^|]*"
    r"(?:\| data wait: " + _V + r" ms \| data preprocessing: " + _V + r" ms )?"
    r"\| remaining [^|]*\| completion [^|]*"
    r"\| (?:language model loss|lm_head_loss): (\S+)"
    r"(?: \| run: \d+)?(.*)"
)

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
    at = line.find(" @ ")
    if at < 0:
        return None
    start = line.rfind(" ", 0, at) + 1  # the phase word
    fast = _TRAINING.match(line, start)
    if fast is not None:
        return _from_training_match(line, start, fast)
    return parse_line_by_labels(line)


def _from_training_match(line: str, start: int, m: re.Match) -> MetricRecord:
    """The fast path: the same fields ``parse_line_by_labels`` reads, straight from the groups."""
    (counter, step, total, samples, consumed, batch, step_ms, model, hardware, tps, reserved, lr, grad,
     skipped, nans, wait, prep, loss, tail) = m.groups()
    consumed_tokens = float(consumed.replace(",", ""))
    batch_size = float(batch)
    extra = {"total_steps": float(total), "consumed_tokens": consumed_tokens,
             "skipped_iterations": float(skipped), "nan_iterations": float(nans)}
    consumed_samples = None
    if samples is not None:
        consumed_samples = extra["consumed_samples"] = float(samples.replace(",", ""))
    if counter != "step":
        extra["batch_size_samples"] = batch_size
    tokens = _tokens_per_step(counter, batch_size, consumed_tokens, consumed_samples)
    if wait is not None:
        extra["data_wait_ms"] = float(wait)
        extra["data_preprocessing_ms"] = float(prep)
    if len(tail) > 2:
        _tail_extras(extra, tail)
    return MetricRecord(
        step=int(step),
        loss=float(loss),
        lr=float(lr),
        tokens=tokens,
        tokens_per_s_per_device=float(tps),
        grad_norm=float(grad),
        step_time_s=float(step_ms) / 1000.0,
        model_tflops_per_device=float(model),
        hardware_tflops_per_device=float(hardware),
        memory_gib=float(reserved.replace(",", "")) / 1024.0,
        rank=find_rank(line, start),
        extra=extra,
    )


def _tail_extras(extra: dict[str, float], tail: str) -> None:
    pairs, _ = split_kv(tail)
    for label, value in pairs.items():
        if label not in _NOT_READ:
            _extra_number(extra, label, value)


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


def _extra_number(extra: dict[str, float], label: str, value: str) -> None:
    """Trailing metrics keep their label (``z_loss`` -> ``z_loss``); a unit stays in the key."""
    number, _, unit = value.partition(" ")
    try:
        parsed = to_float(number)
    except ValueError:
        return  # text-valued extras (a run name) carry no metric
    key = snake(label)
    extra[f"{key}_{snake(unit)}" if unit else key] = parsed


def may_be_non_finite(line: str) -> bool:
    """Every training line contains the label "nan iterations", so one "nan" is not a hint."""
    return "inf" in line or line.count("nan") > 1


def parse_lines(lines, source: str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return scan_lines(lines, source, MARKER, parse_line, UNITS, may_be_non_finite)


def parse(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return parse_file(path, MARKER, parse_line, UNITS, may_be_non_finite)
