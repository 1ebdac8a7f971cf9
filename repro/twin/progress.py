"""Progress of running twins, on stderr: a rich bar on a terminal, a line every PERIOD_S otherwise,
nothing with --quiet. Steps are counted from each run's metrics.jsonl, so any trainer shows up."""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from repro.twin import golden

PERIOD_S = 15.0


def steps_done(out_dir: Path) -> int:
    hits = list(out_dir.glob("train/*/metrics.jsonl"))
    try:
        return sum(1 for _ in open(hits[0], encoding="utf-8")) if hits else 0
    except OSError:
        return 0


def expected_steps(recipe_id: str) -> int | None:
    """The golden's step count, when one is recorded (else the bar has no total)."""
    ref = golden.find_any(recipe_id)
    return max((m["end_step"] for m in ref["metrics"].values()), default=None) if ref else None


@contextmanager
def tracking(label: str, runs: dict[str, Path], total: int | None, quiet: bool = False) -> Iterator[None]:
    """Show the step count of each run (name -> out dir) while the block runs."""
    if quiet:
        yield
        return
    stop = threading.Event()
    target = _bar if sys.stderr.isatty() else _lines
    thread = threading.Thread(target=target, args=(label, runs, total, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _lines(label: str, runs: dict[str, Path], total: int | None, stop: threading.Event) -> None:
    start = time.monotonic()
    while not stop.wait(PERIOD_S):
        done = ", ".join(f"{name} {steps_done(out)}/{total or '?'}" for name, out in runs.items())
        print(f"{label}: {time.monotonic() - start:.0f} s, steps {done}", file=sys.stderr, flush=True)


def _bar(label: str, runs: dict[str, Path], total: int | None, stop: threading.Event) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        tasks = {name: bar.add_task(f"{label} {name}", total=total) for name in runs}
        while not stop.wait(0.5):
            for name, out in runs.items():
                bar.update(tasks[name], completed=steps_done(out))
