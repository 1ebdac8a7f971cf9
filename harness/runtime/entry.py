"""How every twin trainer starts and ends: offline environment and the error contract."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from repro.base.contract import BAD_INPUT_ENV, BAD_INPUT_FILE, EXIT_INTERRUPTED, OFFLINE_ENV  # noqa: F401
from repro.base.errors import EXIT_BAD_INPUT, ReproError


def record_bad_input(prog: str, message: str) -> None:
    target = os.environ.get(BAD_INPUT_ENV)
    if target:
        try:
            Path(target).write_text(json.dumps({"prog": prog, "message": message}) + "\n", encoding="utf-8")
        except OSError:
            pass  # the stderr line still says it


def script_bootstrap(file: str) -> None:
    """Launchers run trainers as script paths: the script's folder must not shadow libraries and the
    repository root must be importable. Call with __file__ before importing harness/repro."""
    root = str(Path(file).resolve().parents[2])
    if sys.path and Path(sys.path[0]).resolve() == Path(file).resolve().parent:
        sys.path[0] = root
    elif root not in sys.path:
        sys.path.insert(0, root)


def set_offline_env() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def run_main(prog: str, main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a trainer's main: user-caused failures are one stderr line with exit 2, never a traceback;
    Ctrl-C is one line and 130."""
    set_offline_env()
    try:
        return main(argv)
    except ReproError as exc:
        print(f"{prog}: error: {exc.message}", file=sys.stderr)
        if (exc.exit_code or EXIT_BAD_INPUT) == EXIT_BAD_INPUT:
            record_bad_input(prog, exc.message)
        return exc.exit_code or EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
