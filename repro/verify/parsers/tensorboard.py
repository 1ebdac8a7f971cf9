"""TensorBoard event files (``events.out.tfevents.*``), read with tensorboard's own record loader.

Scalar tags from the frameworks the suite meets map onto core fields: HF/TRL ``train/loss``,
Megatron ``lm loss`` / ``iteration-time`` (s) / ``mem-max-allocated-bytes``, torchtitan
``loss_metrics/global_avg_loss`` / ``throughput(tps)`` / ``tflops`` / ``memory/max_reserved(GiB)``,
open-instruct ``train_loss`` / ``learning_rate``. Any other scalar goes to ``extra`` under its tag.
Megatron's ``... vs samples`` / ``... vs tokens`` tags use another x-axis and are skipped.

Values are float32 on disk; each is returned as the shortest decimal that round-trips to the
stored float32 (2.3, not 2.299999952316284), i.e. the number the training script logged.
A record's ``source`` is ``file:<event number>``: event files have no lines.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from repro.base.metrics import MetricRecord
from repro.verify.parsers._common import IssueLog, NonFiniteTally, ParseIssue, float32_to_decimal, has, put

DESCRIPTION = "TensorBoard event files (events.out.tfevents.*; a directory is searched for them)"

#: tag -> (phase, record attribute or extra key, divisor to the unit of repro.metrics)
TAGS: dict[str, tuple[str, str, float]] = {
    **{t: ("train", "loss", 1.0) for t in (
        "train/loss", "lm loss", "train_loss", "loss_metrics/global_avg_loss", "loss", "train/rm/loss",
        "training_loss")},
    **{t: ("train", "lr", 1.0) for t in (
        "learning_rate", "learning-rate", "lr", "train/learning_rate", "train/lr", "train/rm/lr")},
    **{t: ("train", "grad_norm", 1.0) for t in ("grad_norm", "grad-norm", "train/grad_norm")},
    **{t: ("train", "step_time_s", 1.0) for t in ("iteration-time", "time_metrics/end_to_end(s)")},
    "throughput(tps)": ("train", "tokens_per_s_per_device", 1.0),
    "tflops": ("train", "model_tflops_per_device", 1.0),
    "memory/max_reserved(GiB)": ("train", "memory_gib", 1.0),
    "mem-max-allocated-bytes": ("train", "memory_gib", float(2**30)),
    **{t: ("eval", "loss", 1.0) for t in (
        "eval/loss", "eval_loss", "validation_metrics/loss", "lm loss validation", "validation_loss")},
}
UNITS = {"mem-max-allocated-bytes": "Megatron 'mem-max-allocated-bytes' converted to memory_gib (bytes / 2**30)"}
_OTHER_AXIS = (" vs samples", " vs tokens")
_FRAME = 16  # TFRecord framing: u64 length + u32 length crc + u32 data crc


def sniff(name: str, head: str) -> int:
    return 100 if "tfevents" in name else 0


def event_files(directory: Path) -> list[Path]:
    """Event files under a run directory, in name order (the name embeds the creation time)."""
    found = [Path(root) / f for root, _, files in os.walk(directory) for f in files if "tfevents" in f]
    return sorted(found)


def parse(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    source = str(path)
    issues = IssueLog(source)
    records: list[MetricRecord] = []
    open_records: dict[tuple[str, int], MetricRecord] = {}
    skipped: set[str] = set()
    units_used: set[str] = set()
    tally = NonFiniteTally()
    for number, step, tag, value in _scalars(Path(path), issues):
        if tag.endswith(_OTHER_AXIS):
            skipped.add(tag)
            continue
        phase, target, divisor = _target(tag)
        if divisor != 1.0:
            units_used.add(tag)
        rec = open_records.get((phase, step))
        if rec is None or has(rec, target):
            rec = MetricRecord(step=step, phase=phase, source=f"{source}:{number}")  # new, or a replayed step
            open_records[(phase, step)] = rec
            records.append(rec)
        put(rec, target, value / divisor)
    for rec in records:
        tally.check(rec, int(rec.source.rpartition(":")[2]))
    tally.report(issues)
    if skipped:
        issues.add(None, "skipped", f"tags on another x-axis ignored: {', '.join(sorted(skipped))}")
    for tag in sorted(units_used):
        issues.add(None, "unit", UNITS.get(tag, f"{tag} rescaled"))
    return records, issues.done()


def _scalars(path: Path, issues: IssueLog) -> Iterator[tuple[int, int, str, float]]:
    """(event number, step, tag, value) for every scalar; unread bytes at the end are reported."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    consumed = 0
    number = 0
    for number, raw in enumerate(RawEventFileLoader(str(path)).Load(), 1):
        consumed += len(raw) + _FRAME
        try:
            event = event_pb2.Event.FromString(raw)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError has no stable import path
            issues.add(number, "corrupt", f"event {number} does not decode ({exc}); dropped")
            continue
        for value in event.summary.value:
            scalar = _scalar_value(value)
            if scalar is not None:
                yield number, int(event.step), value.tag, scalar
    size = path.stat().st_size
    if consumed < size:
        issues.add(number + 1, "truncated",
                   f"{size - consumed} bytes after event {number} are cut or corrupt (bad length/CRC); ignored")


def _scalar_value(value: Any) -> float | None:
    """A scalar from either encoding: ``simple_value`` (torch/TF1) or a 0-d ``tensor`` (TF2)."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float32_to_decimal(value.simple_value)
    if kind != "tensor":
        return None
    from tensorboard.util import tensor_util

    try:
        array = tensor_util.make_ndarray(value.tensor)
    except Exception:  # noqa: BLE001 - unsupported dtype (strings, resources): not a scalar metric
        return None
    if array.ndim != 0 or array.dtype.kind not in "fiu":
        return None
    number = float(array.item())
    return float32_to_decimal(number) if array.dtype.itemsize == 4 and array.dtype.kind == "f" else number


def _target(tag: str) -> tuple[str, str, float]:
    known = TAGS.get(tag)
    if known is not None:
        return known
    if tag.startswith(("eval/", "eval_", "validation")):
        return "eval", f"extra.{tag}", 1.0
    return "train", f"extra.{tag}", 1.0

