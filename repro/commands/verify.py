"""repro verify (not implemented yet)."""

from repro.errors import ReproError

HELP = "verify (not implemented yet)"


def add_arguments(p) -> None:
    p.add_argument("rest", nargs="*")


def run(args) -> int:
    raise ReproError("'repro verify' is not implemented yet")
