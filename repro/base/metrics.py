"""The one normalized metrics record that every log format is parsed into and every twin writes.

A twin appends one JSON object per optimizer step to ``metrics.jsonl``; every parser in
``repro.verify.parsers`` returns the same record, so checks never care where a number came from.
Units are fixed here and nowhere else: seconds, tokens, FLOP/s as TFLOP/s per device.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

#: Fields with a fixed meaning; anything else a format logs goes into ``extra`` under its own name.
CORE_FIELDS = (
    "step",  # optimizer step, 1-based
    "loss",  # the training loss exactly as the framework defines it (see the recipe's loss_reduction)
    "lr",
    "tokens",  # tokens consumed in this step, all devices (non-pad where the format knows)
    "tokens_per_s_per_device",
    "grad_norm",
    "step_time_s",
    "model_tflops_per_device",
    "hardware_tflops_per_device",
    "memory_gib",  # peak GPU memory per device as the format reports it: reserved (Fast-LLM,
    # torchtitan) or allocated (DeepSpeed, Megatron) — compare like with like
)


@dataclass
class MetricRecord:
    step: int
    loss: float | None = None
    lr: float | None = None
    tokens: float | None = None
    tokens_per_s_per_device: float | None = None
    grad_norm: float | None = None
    step_time_s: float | None = None
    model_tflops_per_device: float | None = None
    hardware_tflops_per_device: float | None = None
    memory_gib: float | None = None
    phase: str = "train"  # train | eval | eval/<dataset> when a format logs several validation sets
    rank: int | None = None
    source: str | None = None  # "file:line" the value came from
    extra: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict: NaN/inf become strings so the file stays valid JSON."""
        out = {k: _json_safe(v) for k, v in asdict(self).items() if v is not None and v != {}}
        if self.extra:
            out["extra"] = {k: _json_safe(v) for k, v in self.extra.items()}
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "MetricRecord":
        known = {k: obj[k] for k in obj if k in cls.__dataclass_fields__ and k != "extra"}
        extra = dict(obj.get("extra") or {})
        extra.update({k: v for k, v in obj.items() if k not in cls.__dataclass_fields__})
        rec = cls(**known)
        rec.extra = {k: _from_json_number(v) for k, v in extra.items() if _is_number(v)}
        for name in CORE_FIELDS[1:]:
            value = getattr(rec, name)
            if value is not None:
                setattr(rec, name, _from_json_number(value))
        rec.step = int(rec.step)
        return rec


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf"
    return value


def json_safe(value: Any) -> Any:
    """Recursively spell NaN/inf as strings: JSON has no NaN, and a NaN loss must survive."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return _json_safe(value)


def _from_json_number(value: Any) -> float:
    return float(value)  # float("nan") / float("inf") accept the strings written above


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and value.lower() in {"nan", "inf", "-inf", "+inf"}


def write_jsonl(path: Path, records: Iterable[MetricRecord]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec.to_json(), sort_keys=True) + "\n")


def append_jsonl(path: Path, record: MetricRecord) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record.to_json(), sort_keys=True) + "\n")
        fh.flush()


def read_jsonl(path: Path) -> Iterator[MetricRecord]:
    """Strict reader for the suite's own files (the lenient one lives in repro.verify.parsers)."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                rec = MetricRecord.from_json(json.loads(line))
                rec.source = rec.source or f"{path}:{lineno}"
                yield rec
