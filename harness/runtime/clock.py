"""Step wall times, and the cumulative time that throughput figures divide by."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class StepClock:
    start: float = field(default_factory=time.time)
    last: float = field(default_factory=time.time)
    offset_s: float = 0.0  # time a resumed run had already spent

    def tick(self) -> tuple[float, float]:
        """(this step's seconds, seconds since the run began including before a resume)."""
        now = time.time()
        step_time, self.last = now - self.last, now
        return step_time, now - self.start + self.offset_s

    def elapsed(self) -> float:
        return time.time() - self.start + self.offset_s
