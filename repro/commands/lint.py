"""repro lint: defects of the published text, or the pinned recipe against its own contract."""

from __future__ import annotations

import json

from repro import inputs
from repro.catalog import loader as catalog
from repro.lint.rules import Finding, lint
from repro.verify.claims import lint_problem

HELP = "lint recipes (default) or, with --published, the published text they were transcribed from"


def add_arguments(p) -> None:
    p.add_argument("id", nargs="?", type=inputs.nonempty, help="recipe id (default: every recipe)")
    p.add_argument("--published", action="store_true",
                   help="lint the published text (seed lines) instead of the runnable recipe")
    p.add_argument("--json", action="store_true", help="print a JSON array of findings")


def run(args) -> int:
    if args.id is not None:
        recipes, unloadable = [catalog.get(args.id)], {}
    else:
        recipes, unloadable = list(catalog.load_all().values()), catalog.broken()
    findings = [broken_file(rid, message) for rid, message in sorted(unloadable.items())]
    findings += [f for r in recipes for f in lint(r, args.published)]
    if not args.published:
        findings += [f for r in recipes for f in claims_finding(r.id)]
    if args.json:
        print(json.dumps([f.to_json() for f in findings], indent=2))
    else:
        for f in findings:
            print(f)
        what = "published text" if args.published else "recipes"
        print(f"{len(findings)} finding(s) in {len(recipes) + len(unloadable)} {what}")
    return 1 if findings else 0


def claims_finding(rid: str) -> list[Finding]:
    """expected/<id>.yaml would not load for `repro verify` (lint comes before verify, so the CLI joins them)."""
    problem = lint_problem(rid)
    if not problem:
        return []
    return [Finding("expected-claims", "error", rid, f"expected/{rid}.yaml", None, problem.partition(": ")[2] or problem)]


def broken_file(rid: str, message: str) -> Finding:
    """A recipe file that does not load is a lint error of its own; the other recipes are still linted."""
    file, _, rest = message.partition(": ")
    return Finding("recipe-loads", "error", rid, file, None, rest or message)
