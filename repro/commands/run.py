"""repro run (not implemented yet)."""

from repro.errors import ReproError

HELP = "run (not implemented yet)"


def add_arguments(p) -> None:
    p.add_argument("rest", nargs="*")


def run(args) -> int:
    raise ReproError("'repro run' is not implemented yet")
