"""Start a twin's training processes: one helper for run, golden recording and equivalence.

Every launch goes through repro.twin.guard, so the training processes live in a process group that
dies with this CLI: Ctrl-C, SIGTERM or SIGKILL of `repro` never leaves ranks training orphaned.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

from repro.base.paths import ROOT
from repro.base.errors import ReproError

EXIT_INTERRUPTED = 130


@dataclass
class Launched:
    proc: subprocess.Popen
    log: IO[str]
    lifeline: int  # write end of the guard's pipe: closing it stops the training processes
    lines: list[str] = field(default_factory=list)

    def stop(self) -> None:
        """Close the lifeline (the guard kills the group) and wait for the guard."""
        if self.lifeline >= 0:
            os.close(self.lifeline)
            self.lifeline = -1
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


_ACTIVE: list[Launched] = []


def start(argv: list[str], env: dict[str, str], log_path: Path, pipe: bool = True,
          cwd: Path | None = None) -> Launched:
    """Launch under the guard (no shell); the log starts with the exact command. pipe=False sends the
    output straight to the log (several runs at once must not block on full pipes)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w", encoding="utf-8")
    log.write("$ " + shlex.join(argv) + "\n")
    log.flush()
    read_fd, write_fd = os.pipe()
    os.set_inheritable(read_fd, True)
    guard = [sys.executable, "-m", "repro.twin.guard", str(read_fd), "--", *argv]
    proc = subprocess.Popen(guard, env=env, cwd=cwd or ROOT, stdout=subprocess.PIPE if pipe else log,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, errors="replace", pass_fds=(read_fd,))
    os.close(read_fd)
    launched = Launched(proc, log, write_fd)
    _ACTIVE.append(launched)
    return launched


def stream(launched: Launched, echo: bool) -> int:
    """Copy the child's output to the log (and the console) until it exits."""
    proc, log = launched.proc, launched.log
    try:
        for line in proc.stdout or ():
            log.write(line)
            if echo:
                sys.stdout.write(line)
        return proc.wait()
    finally:
        log.close()
        launched.stop()
        if launched in _ACTIVE:
            _ACTIVE.remove(launched)


def stop_all() -> None:
    for launched in list(_ACTIVE):
        launched.stop()
        launched.log.close()
        _ACTIVE.remove(launched)


@contextmanager
def supervised() -> Iterator[None]:
    """While training runs: Ctrl-C or SIGTERM stops every launched process and becomes one line, exit 130."""
    def on_term(signum, frame):
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()  # handlers are the main thread's alone
    previous = signal.signal(signal.SIGTERM, on_term) if main else None
    try:
        yield
    except KeyboardInterrupt:
        stop_all()
        raise ReproError("interrupted: every training process was stopped", EXIT_INTERRUPTED) from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def run(argv: list[str], env: dict[str, str], log_path: Path, echo: bool = True,
        cwd: Path | None = None) -> tuple[int, float]:
    t0 = time.perf_counter()
    with supervised():
        return stream(start(argv, env, log_path, cwd=cwd), echo), time.perf_counter() - t0


def last_error_line(log_path: Path) -> str | None:
    """The trainer's own message when it failed (a "prog: error: ..." line), else the last line."""
    lines = [ln.strip() for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ": error: " in ln]
    return (errors or lines[-1:] or [None])[-1]
