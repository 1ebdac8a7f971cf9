"""Start a twin's training processes: one helper for run, golden recording and equivalence."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from repro import ROOT


def start(argv: list[str], env: dict[str, str], log_path: Path,
          cwd: Path | None = None) -> tuple[subprocess.Popen, IO[str]]:
    """Launch with stdout+stderr piped (no shell); the log starts with the exact command."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w", encoding="utf-8")
    log.write("$ " + shlex.join(argv) + "\n")
    log.flush()
    proc = subprocess.Popen(argv, env=env, cwd=cwd or ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, errors="replace")
    return proc, log


def stream(proc: subprocess.Popen, log: IO[str], echo: bool) -> int:
    """Copy the child's output to the log (and the console) until it exits."""
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            log.write(line)
            if echo:
                sys.stdout.write(line)
        return proc.wait()
    finally:
        log.close()


def run(argv: list[str], env: dict[str, str], log_path: Path, echo: bool = True,
        cwd: Path | None = None) -> tuple[int, float]:
    t0 = time.perf_counter()
    proc, log = start(argv, env, log_path, cwd)
    return stream(proc, log, echo), time.perf_counter() - t0


def last_error_line(log_path: Path) -> str | None:
    """The trainer's own message when it failed (a "prog: error: ..." line), else the last line."""
    lines = [ln.strip() for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ": error: " in ln]
    return (errors or lines[-1:] or [None])[-1]
