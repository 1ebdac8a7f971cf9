"""torchtitan step lines (``torchtitan/components/metrics.py::MetricsProcessor.log``).

``[rank0]:[titan] <asctime> - root - INFO - step: 10  loss:  7.12345  grad_norm:  1.2345
memory: 12.34GiB(15.60%)  tps: 12,345  tflops: 123.45  mfu: 12.48%`` with an ANSI colour code
before every label (unless ``--metrics.disable_color_printing``). ``mfu`` is ``N/A`` when FP8/MX
quantisation is on; 2024 versions print ``wps`` instead of ``tps`` and no ``grad_norm``.
Validation: ``validate step: 10  loss: ..  memory: ..  tps: ..``.

Units already match repro.metrics: ``tps`` is tokens/s per device (divided by the non-data-
parallel degree), ``tflops`` is model TFLOP/s per device, memory is the peak *reserved* GiB.
"""

from __future__ import annotations

import re
from pathlib import Path

from repro.base.metrics import MetricRecord
from repro.verify.parsers._common import ParseIssue, find_rank, strip_ansi, to_float
from repro.verify.parsers._files import parse_file
from repro.verify.parsers._lines import scan_lines

DESCRIPTION = "torchtitan stdout 'step: N  loss: X  grad_norm: ..  memory: ..GiB(..%)  tps: ..  tflops: ..  mfu: ..%'"
MARKER = "step:"

_HEAD = re.compile(r"(validate )?step:\s*(\d+)\s+loss:")
_PAIR = re.compile(r"(\w+):\s*(\S+)")
_MEMORY = re.compile(r"([^G\s]+)GiB\(([^%]+)%\)")
_SNIFF = re.compile(r"step:\s*\d+\s+(?:\x1b\[[0-9;]*m)?loss:\s*\S+\s+(?:\x1b\[[0-9;]*m)?(?:grad_norm|memory):")

_CORE = {
    "loss": "loss",
    "grad_norm": "grad_norm",
    "tps": "tokens_per_s_per_device",
    "wps": "tokens_per_s_per_device",
    "tflops": "model_tflops_per_device",
}


def sniff(name: str, head: str) -> int:
    return len(_SNIFF.findall(head))


def parse_line(line: str) -> MetricRecord | None:
    text = strip_ansi(line)
    head = _HEAD.search(text)
    if head is None:
        return None
    rec = MetricRecord(step=int(head.group(2)), phase="eval" if head.group(1) else "train", rank=find_rank(text))
    for label, value in _PAIR.findall(text, head.end(2)):
        _assign(rec, label, value)
    if rec.loss is None:
        raise ValueError("no loss value")
    if "memory:" in text and rec.memory_gib is None:
        raise ValueError("memory field does not read 'X.XXGiB(Y.YY%)'")
    return rec


def _assign(rec: MetricRecord, label: str, value: str) -> None:
    """``mfu: N/A`` (quantised runs) means "not computed", not a corrupt line."""
    core = _CORE.get(label)
    if core is not None:
        setattr(rec, core, to_float(value))
    elif label == "memory":
        memory = _MEMORY.match(value)
        if memory is not None:
            rec.memory_gib = to_float(memory.group(1))
            rec.extra["memory_pct"] = to_float(memory.group(2))
    elif label == "mfu":
        if value != "N/A":
            rec.extra["mfu_pct"] = to_float(value)
    else:
        rec.extra[label] = to_float(value)


def parse_lines(lines, source: str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return scan_lines(lines, source, MARKER, parse_line)


def parse(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return parse_file(path, MARKER, parse_line)
