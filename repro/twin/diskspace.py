"""A full disk (or any write error the OS reports without a file name) as one line naming the folder.

Why: a write through an open file reports ENOSPC with no file name, so the CLI printed
"repro: error: : No space left on device". The run knows the folders it writes to (--out, the cache);
the error names the one on the fullest file system and says what to do.
"""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from repro.base.errors import ReproError
from repro.inputs import os_error

FULL = (errno.ENOSPC, errno.EDQUOT)


def _free(path: Path) -> int:
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return 1 << 62


def named(exc: OSError, places: dict[str, Path]) -> ReproError:
    """The error as one line: its own file name when it has one, else the place with the least free space."""
    if exc.filename:
        err = os_error(exc)
        if exc.errno in FULL:
            return ReproError(f"{err.message}: free space there (or pass another --out), then rerun")
        return err
    label, path = min(places.items(), key=lambda kv: _free(kv[1])) if places else ("", Path("."))
    reason = exc.strerror or str(exc)
    hint = ("the disk is full: free space there (or pass another --out / REPRO_CACHE), then rerun"
            if exc.errno in FULL else "check the folder")
    return ReproError(f"{label} {path}: {reason}; {hint}".strip())


@contextmanager
def paths_named(places: dict[str, Path]) -> Iterator[None]:
    """Turn an OSError raised inside the block into one line naming a path (see named()); places maps
    what the user set (--out, REPRO_CACHE) to the folder."""
    try:
        yield
    except OSError as exc:
        raise named(exc, places) from None
