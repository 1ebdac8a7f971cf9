"""Atomic file writes for every file the trainer and the CLI exchange (refusal file, settings, manifests,
verdicts, goldens): a reader sees the old file or the whole new one, never an empty or half-written one.

Why: a rank stopped mid-write once left an empty refusal file, and the CLI then crashed reading it.
This module imports nothing of the project, so the base layer (and harness/) can take it as is.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temp file in the same folder, fsync it, then os.replace it over `path`.

    The temp file is removed when anything fails (a full disk leaves no `.name.tmp*` behind), and the
    OSError keeps the target path as its filename so the caller's error line can name it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not exc.filename:
            exc.filename = str(path)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 1, sort_keys: bool = False) -> Path:
    return write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n")
