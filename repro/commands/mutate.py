"""repro mutate ID: the twin and each mutant its block declares; the mutant x check matrix."""

from __future__ import annotations

import json
import time
from pathlib import Path

from repro.base.errors import EXIT_FAILED
from repro.catalog import loader as catalog
from repro.twin import outdir, session

HELP = "run the twin and each declared mutant (a semantic fault); every mutant must be killed by a check"


def add_arguments(p) -> None:
    p.add_argument("id", help="recipe id (one whose twin block declares mutants)")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this mutant (repeatable)")
    p.add_argument("--out", help="output directory (default: runs/<id>-mutate-<time>)")
    p.add_argument("--json", action="store_true", help="print the matrix as JSON")
    p.add_argument("--rescore", metavar="DIR", help="no training: the matrix again over the runs an earlier "
                   "repro mutate left in DIR, with today's checks and upstream reference")


def run(args) -> int:
    recipe = catalog.get(args.id)
    if args.rescore:
        out = Path(args.rescore).resolve()
        with outdir.claimed(out):
            result = session.rescore(recipe, out)
    else:
        out = Path(args.out or f"runs/{recipe.id}-mutate-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
        with outdir.claimed(out):
            result = session.mutants(recipe, out, args.only)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print((out / "mutants.md").read_text(encoding="utf-8"))
        print(f"{recipe.id}: mutant matrix {'PASSED' if result['passed'] else 'FAILED'} "
              f"({len(result['mutants'])} mutants x {len(result['checks'])} checks) in {result['wall_s']} s; "
              f"{out / 'mutants.json'}")
    return 0 if result["passed"] else EXIT_FAILED
