"""The upstream run's CLI side: run it, judge it against its committed reference, print the one-line result."""

from __future__ import annotations

from pathlib import Path

from repro.base.errors import EXIT_FAILED


def run_upstream(recipe, out: Path, source: str | None, echo: bool = False, quiet: bool = False) -> int:
    from repro.report.upstream import write_outputs  # lazy: a later stage or a heavy import, only when this runs
    from repro.twin import outdir  # lazy: a later stage or a heavy import, only when this runs
    from repro.upstream import run as upstream  # lazy: a later stage or a heavy import, only when this runs

    with outdir.claimed(out):
        manifest = upstream.run(recipe, out, source, echo=echo, quiet=quiet)
        result = write_outputs(recipe, out, manifest, upstream.read_records(out))
    for c in result["checks"]:
        print(f"  [{c['status']}] {c['name']}: {c['message']}")
    print(f"{recipe.id}: upstream {manifest['upstream']['commit'][:12]} ran {manifest['steps']} steps in "
          f"{manifest['wall_s']} s (env lock {manifest['environment']['lock_sha256'][:16]}); "
          f"{'PASSED' if result['passed'] else 'FAILED'}; report: {out / 'report.md'}")
    return 0 if result["passed"] else EXIT_FAILED
