"""repro parse (not implemented yet)."""

from repro.errors import ReproError

HELP = "parse (not implemented yet)"


def add_arguments(p) -> None:
    p.add_argument("rest", nargs="*")


def run(args) -> int:
    raise ReproError("'repro parse' is not implemented yet")
