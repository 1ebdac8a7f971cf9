"""repro equivalence (not implemented yet)."""

from repro.errors import ReproError

HELP = "equivalence (not implemented yet)"


def add_arguments(p) -> None:
    p.add_argument("rest", nargs="*")


def run(args) -> int:
    raise ReproError("'repro equivalence' is not implemented yet")
