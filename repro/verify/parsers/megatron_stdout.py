"""Megatron-LM ``training_log`` stdout (``megatron/training/training.py``).

Train: `` [date] iteration N/ M | consumed samples: .. | elapsed time per iteration (ms): .. |
throughput per GPU (TFLOP/s/GPU): .. | learning rate: .. | global batch size: .. | lm loss: .. |
loss scale: .. | grad norm: .. | number of skipped iterations: .. | number of nan iterations: .. |``
Eval: `` validation[-<set>] loss at iteration N [on validation set|on test set] | lm loss value: .. |
lm loss PPL: .. |``.

Megatron-DeepSpeed and GPT-NeoX print the same ``iteration N/ M |`` line: Megatron-DeepSpeed adds
``consumed tokens``, ``tokens per gpu per second (tgs)`` and ``TFLOPs``; GPT-NeoX starts the line with
``samples/sec: .. |``, spells the loss ``lm_loss`` and has no ``consumed samples``. Their TFLOP/s
figures count recomputation (hardware FLOPs), so they stay in ``extra``, not in the model TFLOP/s.

Megatron prints a loss only when its average is >= 0, so a NaN loss silently disappears from
the line; when ``number of nan iterations`` is positive and ``lm loss`` is missing, the loss is
recorded as NaN so the verifier still sees the divergence.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from repro.base.metrics import MetricRecord
from repro.verify.parsers._common import ParseIssue, find_rank, snake, split_kv, to_float
from repro.verify.parsers._files import parse_file
from repro.verify.parsers._lines import scan_lines

DESCRIPTION = "Megatron-LM stdout ' iteration N/ M | consumed samples: ... | lm loss: ... |'"
MARKER = "iteration"

_TRAIN = re.compile(r" iteration\s+(\d+)/\s*(\d+) \|")
_EVAL = re.compile(r"validation(?:-(\S+))? loss at iteration (\d+)( on test set)?[^|]*\|")
_SNIFF = re.compile(r" iteration\s+\d+/\s*\d+ \|[^\n]*?\b(?:lm[ _]loss|learning rate|consumed samples):")

#: label -> (record attribute, divisor to the unit repro.metrics documents). Dividing by 1000
#: (not multiplying by 1e-3) keeps 6038.1 ms exactly 6.0381 s.
_CORE = {
    "lm loss": ("loss", 1.0),
    "lm_loss": ("loss", 1.0),  # GPT-NeoX
    "tokens per gpu per second (tgs)": ("tokens_per_s_per_device", 1.0),  # Megatron-DeepSpeed
    "learning rate": ("lr", 1.0),
    "grad norm": ("grad_norm", 1.0),
    "elapsed time per iteration (ms)": ("step_time_s", 1000.0),
    "throughput per GPU (TFLOP/s/GPU)": ("model_tflops_per_device", 1.0),
}

UNITS = {"step_time_s": "Megatron 'elapsed time per iteration (ms)' converted to step_time_s in seconds"}


def sniff(name: str, head: str) -> int:
    return len(_SNIFF.findall(head))


def parse_line(line: str) -> MetricRecord | None:
    train = _TRAIN.search(line)
    if train is not None:
        return _train_record(line, train)
    if "validation" in line:
        found = _EVAL.search(line)
        if found is not None:
            return _eval_record(line, found)
    return None


def _train_record(line: str, head: re.Match) -> MetricRecord:
    body = line[head.end():].rstrip()
    if not body.endswith("|"):
        raise ValueError("Megatron lines end with '|'; this one is cut")
    rec = MetricRecord(step=int(head.group(1)), rank=find_rank(line))
    rec.extra["total_steps"] = float(head.group(2))
    pairs, _ = split_kv(line[:head.start()] + " |" + body, sep="|")  # GPT-NeoX puts samples/sec first
    for label, value in pairs.items():
        label = label.split("] ")[-1].strip()  # a timestamp/rank prefix before the first field
        core = _CORE.get(label)
        if core is not None:
            setattr(rec, core[0], to_float(value) / core[1])
        else:
            _extra(rec, label, value)
    if rec.loss is None and rec.extra.get("number_of_nan_iterations", 0) > 0:
        rec.loss = math.nan  # Megatron drops a NaN average from the line; keep the divergence visible
    return rec


def _eval_record(line: str, head: re.Match) -> MetricRecord:
    """``lm loss value`` is the eval loss; ``... PPL`` and other losses go to extra. Named
    validation sets (``validation-<name>``) and the test set get their own phase, so they do
    not overwrite each other at the same step."""
    name, step, test = head.groups()
    phase = "eval/test" if test else (f"eval/{name}" if name else "eval")
    rec = MetricRecord(step=int(step), phase=phase, rank=find_rank(line))
    pairs, _ = split_kv(line[head.end():].rstrip("\n"), sep="|")
    for label, value in pairs.items():
        if label == "lm loss value":
            rec.loss = to_float(value)
        else:
            _extra(rec, label, value)
    if rec.loss is None and not rec.extra:
        raise ValueError("validation line without values")
    return rec


def _extra(rec: MetricRecord, label: str, value: str) -> None:
    """Newer Megatron versions append text fields (packing info); only numbers are metrics."""
    if value.upper().endswith("TFLOPS"):  # GPT-NeoX: 'approx flops per GPU: 120.3TFLOPS'
        label, value = label.replace("flops", "tflops"), value[: -len("TFLOPS")]
    try:
        rec.extra[snake(label)] = to_float(value)
    except ValueError:
        pass


def parse_lines(lines, source: str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return scan_lines(lines, source, MARKER, parse_line, UNITS)


def parse(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return parse_file(path, MARKER, parse_line, UNITS)
