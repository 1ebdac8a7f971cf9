"""The one rule for "is there a GPU here", used by nox, the CLI, the twin command and the trainers.

Standard library only, so noxfile.py can import it before any environment exists. REPRO_FORCE_CPU=1
wins over everything: a machine with an nvidia-smi on PATH then plans, builds and trains as a CPU
machine (CI on a GPU host, or a user who wants the CPU lane).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from repro.base.contract import FORCE_CPU_ENV  # noqa: F401  (re-exported: the old name)


@dataclass(frozen=True)
class LocalGPUs:
    count: int
    name: str | None = None
    mem_gib: float | None = None


def force_cpu() -> bool:
    return os.environ.get(FORCE_CPU_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def has_nvidia_gpu() -> bool:
    """Cheap (no CUDA import): an nvidia-smi on PATH and not forced onto the CPU."""
    return not force_cpu() and shutil.which("nvidia-smi") is not None


def parse_nvidia_smi(text: str) -> LocalGPUs:
    """`name, memory.total` CSV rows (MiB) -> LocalGPUs; anything unexpected counts as no GPU.

    Every row must be a name and a finite, positive size: a driver error message, an "[N/A]"
    memory, a header or a half-printed row means we cannot trust the count, so none is used."""
    rows = [[c.strip() for c in r.split(",")] for r in text.strip().splitlines() if r.strip()]
    sizes = []
    for row in rows:
        if len(row) != 2 or not row[0] or not row[0].isprintable():
            return LocalGPUs(0)
        try:
            mem = float(row[1]) / 1024
        except ValueError:
            return LocalGPUs(0)
        if not (mem > 0 and mem != float("inf")):
            return LocalGPUs(0)
        sizes.append(mem)
    if not rows:
        return LocalGPUs(0)
    return LocalGPUs(len(rows), rows[0][0], round(min(sizes), 1))


def detect() -> LocalGPUs:
    """The GPUs nvidia-smi reports; none when forced onto the CPU or when nvidia-smi fails."""
    if not has_nvidia_gpu():
        return LocalGPUs(0)
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError, UnicodeDecodeError):
        return LocalGPUs(0)
    return parse_nvidia_smi(out)


def cuda_usable() -> bool:
    """What a trainer may use: CUDA that torch can drive, unless forced onto the CPU."""
    if force_cpu():
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def is_cpu(name: str | None) -> bool:
    """A device name that is a CPU: 'cpu', 'CPU', 'cpu-x86_64' (a twin manifest's device, a golden's lane)."""
    return bool(name) and name.strip().casefold().split("-")[0] == "cpu"
