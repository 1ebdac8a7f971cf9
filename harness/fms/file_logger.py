"""``<output_dir>/training_logs.jsonl`` exactly as fms-hf-tuning's ``FileLoggingCallback`` writes it.

One line per HF Trainer log event that has both ``loss`` and ``epoch`` (``validation_loss`` for
``eval_loss``), rank 0 only, appended: ``{"data": {"epoch": round(epoch, 2), "step": global_step,
"timestamp": iso, "value": loss}, "name": "training_loss"}`` with sorted keys. When HF logs is decided by
``logging_strategy``: fms defaults it to ``epoch`` (one line per epoch, the mean of that epoch's step
losses); ``steps`` logs every ``logging_steps`` optimizer steps the mean since the previous log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

FILENAME = "training_logs.jsonl"


def log_line(name: str, epoch: float, step: int, value: float, timestamp: str | None = None) -> str:
    obj = {"name": name, "data": {"epoch": round(epoch, 2), "step": int(step), "value": value,
                                  "timestamp": timestamp or datetime.isoformat(datetime.now())}}
    return json.dumps(obj, sort_keys=True) + "\n"


def append(output_dir: str | Path, line: str, filename: str = FILENAME) -> None:
    with open(Path(output_dir) / filename, "a", encoding="utf-8") as f:
        f.write(line)


@dataclass
class LossLogger:
    """HF Trainer's loss accounting between logs (``tr_loss`` and ``_globalstep_last_logged``)."""

    strategy: str  # "steps" | "epoch" | "no"
    logging_steps: float = 500
    max_steps: int = 0
    total: float = 0.0
    last_logged: int = 0
    events: list[tuple[int, float, float]] = field(default_factory=list)  # (step, epoch, loss)

    def every(self) -> int:
        # HF: a float logging_steps < 1 is a ratio of max_steps
        s = self.logging_steps
        return max(1, int(-(-s * self.max_steps // 1))) if s < 1 else int(s)

    def add(self, step_loss: float) -> None:
        self.total += step_loss

    def _emit(self, step: int, epoch: float) -> tuple[int, float, float]:
        # transformers 4.55 _maybe_log_save_evaluate: logs["loss"] = round(tr_loss / steps since the last log, 4)
        value = round(self.total / (step - self.last_logged), 4)
        self.total, self.last_logged = 0.0, step
        event = (step, epoch, value)
        self.events.append(event)
        return event

    def on_step_end(self, step: int, epoch: float) -> tuple[int, float, float] | None:
        if self.strategy == "steps" and step % self.every() == 0 and step > self.last_logged:
            return self._emit(step, epoch)
        return None

    def on_epoch_end(self, step: int, epoch: float) -> tuple[int, float, float] | None:
        if self.strategy == "epoch" and step > self.last_logged:
            return self._emit(step, epoch)
        return None
