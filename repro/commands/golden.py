"""repro golden record ID: run the twin and store its curve as the golden for this environment
(repro.twin.session.record_golden does it; this module parses and prints)."""

from __future__ import annotations

from pathlib import Path

from repro.catalog import loader as catalog
from repro.twin import session

HELP = "record a twin's reference curve under expected/golden/, keyed by environment (refuses a dirty tree)"


def add_arguments(p) -> None:
    p.add_argument("action", choices=["record"], help="record: run the twin (or read --from) and store it")
    p.add_argument("id", help="recipe id")
    p.add_argument("--from", dest="source", help="a finished twin run directory to record instead of running")
    p.add_argument("--out", help="where to run the twin (default: runs/<id>-golden)")
    p.add_argument("--quiet", action="store_true", help="no progress output (for scripts)")


def run(args) -> int:
    recipe = catalog.get(args.id)
    path, steps, key = session.record_golden(recipe, Path(args.source) if args.source else None,
                                             Path(args.out).resolve() if args.out else None, quiet=args.quiet)
    print(f"{recipe.id}: recorded {steps} steps for environment {key} -> {path}")
    return 0
