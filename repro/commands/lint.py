"""repro lint (not implemented yet)."""

from repro.errors import ReproError

HELP = "lint (not implemented yet)"


def add_arguments(p) -> None:
    p.add_argument("rest", nargs="*")


def run(args) -> int:
    raise ReproError("'repro lint' is not implemented yet")
