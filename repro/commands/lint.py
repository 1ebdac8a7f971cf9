"""repro lint: defects of the published text, or the pinned recipe against its own contract."""

from __future__ import annotations

import json

from repro.catalog import loader as catalog
from repro.lint.rules import lint

HELP = "lint recipes (default) or, with --published, the published text they were transcribed from"


def add_arguments(p) -> None:
    p.add_argument("id", nargs="?", help="recipe id (default: every recipe)")
    p.add_argument("--published", action="store_true",
                   help="lint the published text (seed lines) instead of the runnable recipe")
    p.add_argument("--json", action="store_true", help="print a JSON array of findings")


def run(args) -> int:
    recipes = [catalog.get(args.id)] if args.id else list(catalog.load_all().values())
    findings = [f for r in recipes for f in lint(r, args.published)]
    if args.json:
        print(json.dumps([f.to_json() for f in findings], indent=2))
    else:
        for f in findings:
            print(f)
        what = "published text" if args.published else "recipes"
        print(f"{len(findings)} finding(s) in {len(recipes)} {what}")
    return 1 if findings else 0
