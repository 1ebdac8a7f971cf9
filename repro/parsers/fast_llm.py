"""Fast-LLM rank-0 logs (``logs_rank_000.txt`` / stdout) in all three schema eras.

v0.1-v0.3: ``Training @ iteration N/M | consumed samples: .. | consumed tokens: .. | batch size: ..
| step time: .. ms | throughput: X tflop/s (model) | Y tflop/s (hardware) | Z tokens/s/gpu | Memory
allocated .. MiB | .. | learning rate: .. | grad norm: .. | .. | language model loss: ..`` (the
loss label became ``lm_head_loss`` in April 2025; on Python >= 3.12 the 2024 code may print the
phase as ``PhaseType.training``). v0.4: ``training @ step N/M``, no consumed samples, and
``batch size`` is counted in TOKENS rather than samples.

Units: step time ms -> s; memory MiB -> GiB (``memory_gib`` is the peak *reserved* memory, as
torchtitan reports it; the other memory figures stay in ``extra`` in MiB). TFLOP/s and
tokens/s/gpu are already per device. ``tokens`` per step is exact in every era: v0.4 prints it,
older eras print samples and consumed_tokens = consumed_samples * sequence_length.
"""

from __future__ import annotations

import re
from pathlib import Path

from repro.metrics import MetricRecord
from repro.parsers._common import ParseIssue, find_rank, first_token, snake, split_kv, to_float
from repro.parsers._lines import parse_file, scan_lines

DESCRIPTION = "Fast-LLM logs, v0.1-v0.4 ('Training @ iteration N/M | ...', 'training @ step N/M | ...')"
MARKER = " @ "

_HEAD = re.compile(r"(?:PhaseType\.)?([A-Za-z]+)(?:/(\S+))? @ (iteration|step)\s+(\d+)/\s*(\d+)")
_SNIFF = re.compile(r" @ (?:iteration|step)\s+\d+/\s*\d+ \| ")
_PHASES = {"training": "train", "validation": "eval", "test": "eval", "inference": "eval"}
_LOSS_LABELS = frozenset({"language model loss", "lm_head_loss", "lm loss", "loss"})
_SKIP = frozenset({"remaining", "completion"})

#: label -> (record attribute or "extra.<key>", factor). One table instead of one branch per field.
_KEYED = {
    "consumed samples": ("extra.consumed_samples", 1.0),
    "consumed tokens": ("extra.consumed_tokens", 1.0),
    "step time": ("step_time_s", 1e-3),
    "throughput": ("model_tflops_per_device", 1.0),
    "learning rate": ("lr", 1.0),
    "grad norm": ("grad_norm", 1.0),
}

UNITS = {
    "step_time_s": "Fast-LLM 'step time' is in ms; converted to step_time_s in seconds",
    "memory_gib": "Fast-LLM memory is in MiB; 'max reserved' converted to memory_gib (GiB = MiB / 1024)",
}


def sniff(name: str, head: str) -> int:
    return len(_SNIFF.findall(head))


def parse_line(line: str) -> MetricRecord | None:
    """Fields are located by label, not position, because each era adds or drops some."""
    head = _HEAD.search(line)
    if head is None or head.group(1).lower() not in _PHASES:
        return None
    phase_word, dataset, counter, step, total = head.groups()
    rec = MetricRecord(step=int(step), phase=_phase(phase_word, dataset), rank=find_rank(line))
    extra = rec.extra
    extra["total_steps"] = float(total)
    pairs, bare = split_kv(line[head.end():].rstrip("\n"))
    loss_seen = False
    for label, value in pairs.items():
        target = _KEYED.get(label)
        if target is not None:
            _assign(rec, target[0], to_float(first_token(value)) * target[1])
        elif label in _LOSS_LABELS:
            rec.loss = to_float(value)
            loss_seen = True
        elif label == "batch size":
            _batch_size(rec, to_float(value), counter)
        else:
            _extra_number(extra, label, value)
    for field in bare:
        _bare_field(rec, field)
    if not loss_seen:
        raise ValueError("no loss field ('language model loss' / 'lm_head_loss')")
    if rec.tokens is None and "batch_size_samples" in extra:
        rec.tokens = _tokens_from_samples(extra)
    return rec


def _phase(word: str, dataset: str | None) -> str:
    """Several validation datasets (v0.3+) log at the same step; keep them apart by name."""
    phase = _PHASES[word.lower()]
    if phase == "eval" and dataset and dataset != "validation":
        return f"eval/{dataset}"
    return phase


def _batch_size(rec: MetricRecord, value: float, counter: str) -> None:
    """v0.4 (``@ step``) counts the batch in tokens; earlier eras count samples."""
    if counter == "step":
        rec.tokens = value
    else:
        rec.extra["batch_size_samples"] = value


def _tokens_from_samples(extra: dict[str, float]) -> float | None:
    """Tokens per step = batch (samples) x sequence length, and sequence length is exactly
    consumed_tokens / consumed_samples in v0.1-v0.3."""
    samples = extra.get("consumed_samples")
    tokens = extra.get("consumed_tokens")
    if not samples or tokens is None:
        return None
    return extra["batch_size_samples"] * tokens / samples


def _bare_field(rec: MetricRecord, field: str) -> None:
    """The fields printed without ``label:``, recognised by their unit."""
    if field.endswith(" MiB"):
        label, _, number = field[:-4].rpartition(" ")
        key = snake(label).removeprefix("memory_")
        value = to_float(number)
        rec.extra[f"memory_{key}_mib"] = value
        if key == "max_reserved":
            rec.memory_gib = value / 1024.0
    elif field.endswith("tokens/s/gpu"):
        rec.tokens_per_s_per_device = to_float(first_token(field))
    elif field.endswith("(hardware)"):
        rec.hardware_tflops_per_device = to_float(first_token(field))
    elif field.startswith("average step time"):
        rec.extra["average_step_time_s"] = to_float(first_token(field[18:])) * 1e-3
    # "remaining 1 day, 2:03:04" and "completion <date> (x %)" are forecasts, not measurements.


def _extra_number(extra: dict[str, float], label: str, value: str) -> None:
    """Everything else numeric keeps its label (``nan iterations`` -> ``nan_iterations``);
    values with a unit (``data wait: 1.2 ms``) keep the unit in the key."""
    number, _, unit = value.partition(" ")
    try:
        parsed = to_float(number)
    except ValueError:
        return  # text-valued extras (a run name) carry no metric
    key = snake(label)
    extra[f"{key}_{snake(unit)}" if unit else key] = parsed


def _assign(rec: MetricRecord, target: str, value: float) -> None:
    if target.startswith("extra."):
        rec.extra[target[6:]] = value
    else:
        setattr(rec, target, value)


def parse_lines(lines, source: str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return scan_lines(lines, source, MARKER, parse_line, UNITS)


def parse(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return parse_file(path, MARKER, parse_line, UNITS)
