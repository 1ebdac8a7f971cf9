"""Did the run end in a crash? Find the first traceback or fatal line of a stdout log.

A log that ends in ``Traceback (most recent call last)`` parses like a short healthy run; the
verifier must say the run crashed and after which step. The search is a byte search over the
mapped file (C speed, no per-line Python), so it costs nothing next to parsing.
"""

from __future__ import annotations

import mmap
import re
from dataclasses import dataclass
from pathlib import Path

#: Byte markers of a run's end by failure, earliest in the file wins.
MARKERS = (
    b"Traceback (most recent call last)",
    b"torch.distributed.elastic.multiprocessing.errors.ChildFailedError",
    b"CUDA out of memory",
    b"torch.OutOfMemoryError",
    b"Segmentation fault",
    b"srun: error: ",
    b"NCCL error",
    b"FATAL ERROR",
)
#: A rank or launcher prefix before the text: ``[rank3]: ``, ``0: ``, ``[default0]:``.
_PREFIX = re.compile(r"^\s*(?:\[[^\]]*\]:?\s*|\d+:\s)")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)\b.*")
_TAIL_LINES = 400  # the exception line is within this many lines after the traceback header


@dataclass(frozen=True)
class Crash:
    line: int  # 1-based line of the marker
    what: str  # the exception line (or the fatal line itself), one line, trimmed


def find_crash(path: Path | str) -> Crash | None:
    try:
        with open(path, "rb") as fh:
            try:
                data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # an empty file cannot be mapped
                return None
            with data:
                hits = [at for at in (data.find(m) for m in MARKERS) if at >= 0]
                if not hits:
                    return None
                at = min(hits)
                line = data[:at].count(b"\n") + 1
                start = data.rfind(b"\n", 0, at) + 1
                tail = data[start:start + 200_000].decode("utf-8", errors="replace").splitlines()[:_TAIL_LINES]
    except OSError:
        return None
    return Crash(line, _describe(tail))


def _describe(tail: list[str]) -> str:
    """The exception line that closes the traceback, else the marker line itself."""
    first = _PREFIX.sub("", tail[0]).strip() if tail else ""
    if "Traceback" in first:
        for raw in tail[1:]:
            text = _PREFIX.sub("", raw).rstrip()
            if text and not text[0].isspace() and _EXCEPTION.match(text):
                return text[:200]
    return first[:200]
