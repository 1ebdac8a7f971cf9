"""The rank-0 writer of the normalized metrics record (repro.metrics.MetricRecord), one per step."""

from __future__ import annotations

from pathlib import Path

from repro.base.contract import METRICS_FILE
from repro.base.metrics import MetricRecord, append_jsonl, read_jsonl, write_jsonl


class MetricsWriter:
    """Fresh run: an empty file. Resumed run: keep exactly the steps the checkpoint covers, so the
    file never holds a step twice. Non-main ranks write nothing."""

    def __init__(self, output_dir: str | Path, is_main: bool, resume_step: int = 0) -> None:
        self.path = Path(output_dir) / METRICS_FILE
        self.is_main = is_main
        if is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kept = [r for r in read_jsonl(self.path) if r.step <= resume_step] \
                if resume_step and self.path.exists() else []
            for rec in kept:
                rec.source = None
            write_jsonl(self.path, kept)

    def write(self, record: MetricRecord) -> None:
        if self.is_main:
            append_jsonl(self.path, record)
