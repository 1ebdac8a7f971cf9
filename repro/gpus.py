"""What accelerators this machine has, asked of nvidia-smi (no CUDA import needed)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class LocalGPUs:
    count: int
    name: str | None = None
    mem_gib: float | None = None


def detect() -> LocalGPUs:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return LocalGPUs(0)
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return LocalGPUs(0)
    rows = [r.split(",") for r in out.strip().splitlines() if r.strip()]
    if not rows:
        return LocalGPUs(0)
    name, mem = rows[0][0].strip(), float(rows[0][1]) / 1024
    return LocalGPUs(len(rows), name, round(mem, 1))
