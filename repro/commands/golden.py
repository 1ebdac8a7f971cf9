"""repro golden record ID: run the twin and store its curve as the golden for this environment
(repro.twin.session.record_golden does it; this module parses and prints)."""

from __future__ import annotations

from pathlib import Path

from repro.catalog import loader as catalog
from repro.base.errors import ReproError
from repro.twin import session

HELP = "record a twin's reference curve under expected/golden/, keyed by environment (refuses a dirty tree)"


def add_arguments(p) -> None:
    p.add_argument("action", choices=["record"], help="record: run the twin (or read --from) and store it")
    p.add_argument("id", help="recipe id")
    p.add_argument("--from", dest="source", help="a finished twin run directory to record instead of running")
    p.add_argument("--out", help="where to run the twin (default: runs/<id>-golden)")
    p.add_argument("--quiet", action="store_true", help="no progress output (for scripts)")
    p.add_argument("--from-upstream", action="store_true",
                   help="record the real upstream's curve at twin scale (repro run ID --scale upstream, or the run "
                        "folder --from names) as the twin's upstream reference under expected/upstream/")
    p.add_argument("--upstream-source", metavar="PATH", help="with --from-upstream: a local snapshot of the pin")


def run(args) -> int:
    recipe = catalog.get(args.id)
    if args.from_upstream:
        return _record_upstream(recipe, args)
    path, steps, key = session.record_golden(recipe, Path(args.source) if args.source else None,
                                             Path(args.out).resolve() if args.out else None, quiet=args.quiet)
    print(f"{recipe.id}: recorded {steps} steps for environment {key} -> {path}")
    return 0


def _record_upstream(recipe, args) -> int:
    """Run (or read --from) the upstream at twin scale and store its curve with its provenance (clean tree only)."""
    import json

    from repro.twin import outdir  # lazy: a later stage or a heavy import, only when this runs
    from repro.twin.runner import git_state  # lazy: a later stage or a heavy import, only when this runs
    from repro.twin import upstream_ref as reference  # lazy: a later stage or a heavy import, only when this runs
    from repro.upstream import run as upstream  # lazy: a later stage or a heavy import, only when this runs

    sha, dirty = git_state()
    if dirty:  # refuse before spending the run
        raise ReproError("refusing to record an upstream reference from a dirty working tree (or outside git): "
                         "commit your changes first, so the reference names the code that made it")
    upstream.require(recipe)
    if args.source:
        out = Path(args.source)
        if not (out / "manifest.json").is_file() or not (out / upstream.METRICS).is_file():
            raise ReproError(f"{out}: not an upstream run folder (no manifest.json / {upstream.METRICS})")
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("scale") != "upstream" or manifest.get("recipe") != recipe.id:
            raise ReproError(f"{out}: an upstream reference comes from `repro run {recipe.id} --scale upstream`")
    else:
        out = Path(args.out or f"runs/{recipe.id}-upstream-ref").resolve()
        with outdir.claimed(out):
            manifest = upstream.run(recipe, out, args.upstream_source, quiet=args.quiet)
    path = reference.record(recipe, upstream.read_records(out), manifest, sha)
    print(f"{recipe.id}: recorded the upstream's {manifest['steps']} steps "
          f"({manifest['upstream']['repo']}@{manifest['upstream']['commit'][:12]}, env lock "
          f"{manifest['environment']['lock_sha256'][:16]}) -> {path}")
    return 0
