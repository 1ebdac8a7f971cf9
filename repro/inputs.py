"""Every value and file a user hands to repro passes one of these checks, shared by all commands.

Each check turns a whole class of bad input into one ReproError line that names the option or
file and the value: numbers that are zero, negative, NaN or infinite; host names with spaces or
shell syntax; files that are directories, devices, FIFOs, not UTF-8 or named longer than the file
system allows. Commands use them as argparse `type=` functions (argparse reports the option name)
or call read_text() instead of Path.read_text().
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import stat
from pathlib import Path

from repro.base.errors import ReproError

#: What a file may hold at most before we refuse to read it whole (recipes, expected tables, configs).
MAX_TEXT_BYTES = 64 * 1024 * 1024

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_]([A-Za-z0-9_.\-]*[A-Za-z0-9_])?|[0-9A-Fa-f:.]+)$")


def count(text: str) -> int:
    """argparse type for GPU and node counts: a whole number >= 1."""
    try:
        value = int(str(text).strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (expected 1 or more)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def positive_number(text: str) -> float:
    """argparse type for sizes such as --gpu-mem: finite and > 0 (nan/inf would end up as bad JSON)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number greater than 0")
    return value


def host(text: str) -> str:
    """argparse type for --main-addr: a host name, IPv4 or IPv6 address, nothing a shell would split."""
    if not _HOST.match(text or "") or len(text) > 253:
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or IP address")
    return text


def nonempty(text: str) -> str:
    """argparse type for ids and names: not empty, no control characters."""
    if not text or not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} contains control characters")
    return text


def shell_words(text: str, what: str) -> tuple[str, ...]:
    """A value given as shell words (--set KEY=VALUE): quotes must close, and no control characters
    (a newline, NUL or escape would reach a trainer's argv or a rendered command as something else)."""
    bad = next((c for c in text if (ord(c) < 32 and c != "\t") or ord(c) == 127), None)
    if bad is not None:
        raise ReproError(f"{what}: the value contains the control character {bad!r}; pass plain text")
    try:
        import shlex

        return tuple(shlex.split(text))
    except ValueError as exc:
        raise ReproError(f"{what}: the value is not a valid shell word list ({exc}); close the quote or "
                         "escape it") from None


def os_error(exc: OSError, what: str | Path | None = None) -> ReproError:
    """An OSError as one line naming the path and the reason (ENAMETOOLONG, EACCES, ELOOP, ...)."""
    name = what if what is not None else (exc.filename or "")
    reason = exc.strerror or str(exc)
    hint = {
        errno.ENAMETOOLONG: "use a shorter name",
        errno.EACCES: "check the permissions",
        errno.EPERM: "check the permissions",
        errno.ENOENT: "check the path",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "pass a file, not a folder",
        errno.ELOOP: "the path has a symlink loop",
        errno.ENOSPC: "the disk is full",
        errno.EROFS: "the file system is read-only",
    }.get(exc.errno or -1, "check the path")
    return ReproError(f"{_short(name)}: {reason}; {hint}")


def _short(name) -> str:
    """Paths as the user typed them, but never a 5000-character line."""
    text = str(name)
    return text if len(text) <= 160 else f"{text[:80]}...{text[-40:]} ({len(text)} characters)"


def regular_file(path: str | Path, what: str = "") -> Path:
    """The path must name an existing regular file (not a folder, a device or a FIFO, which could block)."""
    path = Path(path)
    label = f"{what} {_short(path)}" if what else _short(path)
    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise ReproError(f"{label}: no such file") from None
        raise os_error(exc, label) from None
    if stat.S_ISDIR(st.st_mode):
        raise ReproError(f"{label}: is a folder; pass a file")
    if not stat.S_ISREG(st.st_mode):
        raise ReproError(f"{label}: not a regular file (a device, FIFO or socket); pass a file")
    if st.st_size > MAX_TEXT_BYTES:
        raise ReproError(f"{label}: {st.st_size} bytes is too large for this kind of file")
    return path


def read_text(path: str | Path, what: str = "") -> str:
    """A regular file's text as UTF-8, or one line naming the file and the first undecodable byte."""
    path = regular_file(path, what)
    label = f"{what} {_short(path)}" if what else _short(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise os_error(exc, label) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ReproError(f"{label}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                         "save it as UTF-8") from None


def readable_input(path: str | Path, what: str = "") -> Path:
    """A log given to parse/verify: a regular file or a folder (TensorBoard); never a device or FIFO."""
    path = Path(path)
    label = f"{what} {_short(path)}" if what else _short(path)
    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise ReproError(f"{label}: no such file or directory") from None
        raise os_error(exc, label) from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise ReproError(f"{label}: not a regular file (a device, FIFO or socket); pass a log file")
    if not os.access(path, os.R_OK):
        raise ReproError(f"{label}: not readable; check the permissions")
    return path
