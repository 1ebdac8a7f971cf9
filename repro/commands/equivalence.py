"""repro equivalence ID: layouts that must train identically do; the negative control does not."""

from __future__ import annotations

import json
import time
from pathlib import Path

from repro.catalog import loader as catalog
from repro.twin import outdir
from repro.twin import session
from repro.base.errors import EXIT_FAILED

HELP = "train the twin under several layouts of the same effective batch and a negative control; compare"


def add_arguments(p) -> None:
    p.add_argument("id", help="recipe id (one with a twin)")
    p.add_argument("--out", help="output directory (default: runs/<id>-equivalence-<time>)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output (for scripts)")


def run(args) -> int:
    recipe = catalog.get(args.id)
    out = Path(args.out or f"runs/{recipe.id}-equivalence-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    with outdir.claimed(out):
        result = session.equivalence(recipe, out, quiet=args.quiet or args.json)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{recipe.id}: equivalence against layout {result['reference']} "
              f"(max |delta|/|ref| <= {result['tolerance']['max_rel']:g}, mean drift <= {result['tolerance']['mean_rel']:g})")
        for row in result["layouts"]:
            verdict = "ok" if row["passed"] else "WRONG"
            print(f"  [{verdict}] {row['layout']:>8} {row['role']:<17} max rel {row['max_rel']:.2e}, "
                  f"mean drift {row['mean_rel']:.2e}, worst step {row['worst_step']} "
                  f"({row.get('ref_at_worst', float('nan')):.6g} vs {row.get('run_at_worst', float('nan')):.6g}) — {row['why']}")
        print(f"{recipe.id}: equivalence {'PASSED' if result['passed'] else 'FAILED'} in {result['wall_s']} s; "
              f"{out / 'equivalence.json'}")
    return 0 if result["passed"] else EXIT_FAILED
