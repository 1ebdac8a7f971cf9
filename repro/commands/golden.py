"""repro golden (not implemented yet)."""

from repro.errors import ReproError

HELP = "golden (not implemented yet)"


def add_arguments(p) -> None:
    p.add_argument("rest", nargs="*")


def run(args) -> int:
    raise ReproError("'repro golden' is not implemented yet")
