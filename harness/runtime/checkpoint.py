"""Checkpoint folders the way upstream names them, found only when complete, plus the kill hook.

Trainers choose their folder names (open-instruct step_N/epoch_N, HF checkpoint-N); this module
orders them by number (never as strings, where step_9 beats step_10), honours COMPLETED markers,
and saves/loads plain torch state for entry points that do not use accelerate's save_state.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from repro.base.contract import COMPLETED, KILL_AFTER_STEP_ENV  # noqa: F401  (COMPLETED: read by the trainers)
from repro.base.errors import ReproError

#: Test hook: SIGKILL the process right after this optimizer step (and its checkpoint), like a preemption.
_NUMBERED = re.compile(r"^(?P<prefix>[A-Za-z]+)[_-](?P<n>\d+)$")


def numbered_folders(output_dir: str | Path, prefixes: Sequence[str]) -> list[str]:
    """Names like step_12 / checkpoint-12 with one of the prefixes, ordered by number."""
    if not os.path.isdir(output_dir):
        return []
    hits = []
    for name in os.listdir(output_dir):
        m = _NUMBERED.match(name)
        if m and m.group("prefix") in prefixes and os.path.isdir(os.path.join(output_dir, name)):
            hits.append((int(m.group("n")), name))
    return [name for _, name in sorted(hits)]


def is_completed(folder: str | Path) -> bool:
    return os.path.exists(os.path.join(folder, COMPLETED))


def mark_completed(folder: str | Path) -> None:
    with open(os.path.join(folder, COMPLETED), "w", encoding="utf-8") as fh:
        fh.write(COMPLETED)


def latest_completed(output_dir: str | Path, prefixes: Sequence[str]) -> str | None:
    """The newest completed folder of the first prefix that has one (upstream prefers step_ to epoch_)."""
    for prefix in prefixes:
        names = [n for n in numbered_folders(output_dir, (prefix,)) if is_completed(os.path.join(output_dir, n))]
        if names:
            return os.path.join(output_dir, names[-1])
    return None


def keep_last_n(output_dir: str | Path, n: int, prefixes: Sequence[str]) -> None:
    """Delete all but the newest n; a negative n keeps all."""
    if n < 0:
        return
    folders = numbered_folders(output_dir, prefixes)
    for name in folders[: max(0, len(folders) - n)]:
        shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def save_torch_state(folder: str | Path, model, optimizer=None, scheduler=None,
                     extra: dict[str, Any] | None = None) -> None:
    """Model, optimizer, scheduler, RNG states and the trainer's own counters in one file, then the
    COMPLETED marker (rank 0 calls this; the caller barriers)."""
    import torch

    os.makedirs(folder, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
        "extra": extra or {},
    }
    torch.save(state, os.path.join(folder, "state.pt"))
    mark_completed(folder)


def load_torch_state(folder: str | Path, model, optimizer=None, scheduler=None) -> dict[str, Any]:
    import torch

    path = os.path.join(folder, "state.pt")
    try:
        state = torch.load(path, weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise ReproError(f"checkpoint {path}: cannot load ({exc})") from None
    model.load_state_dict(state["model"])
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    return state["extra"]


def maybe_die_for_test(completed_steps: int) -> None:
    """REPRO_TWIN_KILL_AFTER_STEP=N: SIGKILL this process after step N (tests of resume)."""
    target = os.environ.get(KILL_AFTER_STEP_ENV)
    if target and int(target) == completed_steps:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
