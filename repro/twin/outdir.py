"""One run per output folder, and no silent resume under other settings.

A run claims its --out folder with an exclusive lock for as long as it runs (a second `repro run`
into the same folder is refused, instead of interleaving two runs' steps in one metrics file). The
folder records the settings it was started with (settings.json: recipe, geometry, the trainer's
arguments, asset keys); a rerun with other settings is refused while the folder holds that run's
checkpoints or results, unless the user asks for a fresh start.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from repro.base.errors import ReproError

LOCK = ".repro.lock"
SETTINGS = "settings.json"
#: Checkpoint folder names the trainers write (open-instruct step_N/epoch_N, HF checkpoint-N, ...).
CHECKPOINT_PREFIXES = ("step_", "epoch_", "checkpoint-", "iter_")


def usable_dir(path: Path) -> Path:
    """--out must be (or become) a writable folder; a file, a device or an unwritable place is bad input."""
    if path.exists() and not path.is_dir():
        raise ReproError(f"--out {path}: exists and is not a folder; pass a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReproError(f"--out {path}: cannot create it ({exc.strerror or exc}); pass a writable folder") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ReproError(f"--out {path}: not writable; pass a writable folder")
    return path


def lock_name(node_ranks: list[int]) -> str:
    """Node group R > 0 of a multi-node twin (its own process on a shared --out) locks its own file."""
    return LOCK if not node_ranks or 0 in node_ranks else f".repro-node{min(node_ranks)}.lock"


@contextmanager
def claimed(path: Path, lock: str = LOCK) -> Iterator[Path]:
    """Hold the folder's lock for the duration of the block."""
    usable_dir(path)
    fh = open(path / lock, "a+", encoding="utf-8")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise ReproError(f"--out {path}: another repro run (pid {holder}) is using this folder; wait for "
                             "it or pass another --out") from None
        raise
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    try:
        yield path
    finally:
        fh.close()


def checkpoints(path: Path) -> list[Path]:
    train = path / "train"
    if not train.is_dir():
        return []
    return sorted(p for p in train.glob("*/*") if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIXES))


def differences(old: dict, new: dict) -> list[str]:
    """Human-readable setting differences (trainer arguments compared as flag -> values)."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key == "args":
            continue
        if old.get(key) != new.get(key):
            out.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    a, b = _flags(old.get("args", [])), _flags(new.get("args", []))
    for flag in sorted(set(a) | set(b)):
        if a.get(flag) != b.get(flag):
            out.append(f"{flag} {' '.join(a.get(flag, ['(absent)']))} -> {' '.join(b.get(flag, ['(absent)']))}")
    return out


def _flags(tokens: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    for tok in tokens:
        if tok.startswith("--"):
            current = tok.split("=", 1)[0]
            out[current] = [tok.split("=", 1)[1]] if "=" in tok else []
        elif current is not None:
            out[current].append(tok)
    return out


def reconcile(path: Path, settings: dict, fresh: bool) -> dict | None:
    """Decide what happens to what the folder already holds. Returns the resume record (or None).

    Same settings: the trainer resumes from its last checkpoint (or reruns a finished run). Other
    settings: refused while the folder holds checkpoints or results, unless fresh (then it is cleared)."""
    previous_file = path / SETTINGS
    ckpts = checkpoints(path)
    holds = ckpts or (path / "manifest.json").is_file() or any(path.glob("train/*/metrics.jsonl"))
    previous = json.loads(previous_file.read_text(encoding="utf-8")) if previous_file.is_file() else None
    if holds and fresh:
        for name in ("train", "manifest.json", "verdict.json", "report.md", "loss_curve.png", SETTINGS):
            target = path / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        ckpts, previous = [], None
    elif holds and previous is not None and previous != settings:
        diff = "; ".join(differences(previous, settings)[:4])
        raise ReproError(f"--out {path} holds a run started with other settings ({diff}); rerun with the same "
                         "settings to resume it, pass --fresh to discard it, or use another --out")
    elif holds and previous is None:
        raise ReproError(f"--out {path} holds training output of unknown settings; pass --fresh to discard it "
                         "or use another --out")
    previous_file.write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    if ckpts:
        return {"from": str(ckpts[-1].relative_to(path)), "settings": "unchanged"}
    return None
