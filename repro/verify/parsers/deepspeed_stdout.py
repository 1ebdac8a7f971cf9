"""DeepSpeed engine prints every ``steps_per_print`` steps (``deepspeed/runtime/engine.py``,
``deepspeed/utils/timer.py``).

``[Rank 0] step=N, skipped=K, lr=[1e-05, 1e-05], mom=[(0.9, 0.999), ...]`` (``_report_progress``),
then the ThroughputTimer line, in three generations:
``epoch=E/micro_step=M/global_step=N, RunningAvgSamplesPerSec=.., CurrSamplesPerSec=.., MemAllocated=..GB, MaxMemAllocated=..GB``
(2022+), ``E/M, RunningAvgSamplesPerSec=.., CurrSamplesPerSec=.., MemAllocated=..`` (2022) and
``E/M, SamplesPerSec=.., MemAllocated=..`` (2020). The older two carry no global step, so they
belong to the ``step=`` line printed just before them for the same step.

Samples/s are GLOBAL (the timer's batch size is ``train_batch_size``) and tokens/s would need the
sequence length, so they stay in ``extra`` instead of being guessed into tokens_per_s_per_device.
``MemAllocated`` is ``bytes / 1024**3`` though labelled GB, so it is GiB already.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from repro.base.metrics import MetricRecord
from repro.verify.parsers._common import ParseIssue, find_rank, put, to_float
from repro.verify.parsers._lines import parse_file, scan_lines

DESCRIPTION = "DeepSpeed stdout '[Rank 0] step=N, skipped=.., lr=[..]' and '..SamplesPerSec=..' lines"
MARKER = "="

_STEP = re.compile(r"\bstep=(\d+), skipped=(\d+), lr=\[([^\]]*)\]")
_FIELD = re.compile(r"(\w+)=([^,\s/]+)")
_SNIFF = re.compile(r"\bstep=\d+, skipped=\d+, lr=\[|SamplesPerSec=")

#: ThroughputTimer key -> (record attribute or extra key, strip suffix)
_SPEED = {
    "CurrSamplesPerSec": "extra.samples_per_s",
    "RunningAvgSamplesPerSec": "extra.samples_per_s_running_avg",
    "SamplesPerSec": "extra.samples_per_s_running_avg",
    "MemAllocated": "extra.memory_allocated_gib",
    "MaxMemAllocated": "memory_gib",
}

UNITS = {"memory_gib": "DeepSpeed 'MaxMemAllocated=..GB' is bytes/1024**3, i.e. GiB; taken as memory_gib"}


def sniff(name: str, head: str) -> float:
    """Weighted down: DeepSpeed runs underneath accelerate/HF/Megatron, so its lines also appear
    in those logs, where the framework's own lines must win."""
    return len(_SNIFF.findall(head)) / 4


def make_line_parser() -> Callable[[str], MetricRecord | None]:
    """A parser with one piece of state: the last ``step=`` seen, which old throughput lines need."""
    last_step: list[int] = []

    def parse_line(line: str) -> MetricRecord | None:
        if "SamplesPerSec=" in line:
            return _speed_record(line, last_step[-1] if last_step else None)
        found = _STEP.search(line)
        if found is None:
            return None
        rec = _step_record(line, found)
        last_step[:] = [rec.step]
        return rec

    return parse_line


def _step_record(line: str, found: re.Match) -> MetricRecord:
    """One lr per param group; the first is the schedule, the others only if they differ."""
    step, skipped, lrs = found.groups()
    rates = [to_float(x) for x in lrs.split(",") if x.strip()]
    rec = MetricRecord(step=int(step), rank=find_rank(line), extra={"skipped_steps": float(skipped)})
    if rates:
        rec.lr = rates[0]
        if any(r != rates[0] for r in rates):
            rec.extra.update({f"lr_group_{i}": r for i, r in enumerate(rates)})
    return rec


def _speed_record(line: str, last_step: int | None) -> MetricRecord:
    fields = dict(_FIELD.findall(line))
    if "global_step" in fields:
        step = int(fields["global_step"])
    elif last_step is not None:
        step = last_step
    else:
        raise ValueError("throughput line without global_step and no earlier 'step=' line")
    rec = MetricRecord(step=step, rank=find_rank(line))
    for key, target in _SPEED.items():
        if key in fields:
            put(rec, target, to_float(fields[key].removesuffix("GB")))
    if not rec.extra and rec.memory_gib is None:
        raise ValueError("no SamplesPerSec value")
    return rec


def parse_lines(lines, source: str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return scan_lines(lines, source, MARKER, make_line_parser(), UNITS)


def parse(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return parse_file(path, MARKER, make_line_parser(), UNITS)
