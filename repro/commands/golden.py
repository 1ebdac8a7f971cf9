"""repro golden record ID: run the twin and store its curve as the golden for this environment."""

from __future__ import annotations

from pathlib import Path

from repro.catalog import loader as catalog
from repro.twin import golden
from repro.twin import outdir, progress
from repro.twin import runner as twin
from repro.errors import ReproError
from repro.metrics import read_jsonl

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
    sha, dirty = twin.git_state()
    if dirty:  # refuse before spending the run
        raise ReproError("refusing to record golden values from a dirty working tree (or outside git): "
                         "commit your changes first, so the golden names the code that made it")
    if args.from_upstream:
        return _record_upstream(recipe, args, sha)
    if args.source:
        src = Path(args.source)
        manifest_path = src / "manifest.json"
        if not manifest_path.is_file():
            raise ReproError(f"{src}: not a twin run directory (no manifest.json)")
        import json

        manifest = json.loads(manifest_path.read_text())
        if manifest.get("recipe") != recipe.id or manifest.get("overrides"):
            raise ReproError(f"{src}: a golden must come from a plain twin run of {recipe.id} (no --set overrides)")
        twin.require_twin(recipe)
        g, plan = recipe.twin.geometry, manifest.get("plan", {})
        ran = (plan.get("processes"), plan.get("per_device_batch"), plan.get("grad_accum"))
        if ran != (g.processes, g.per_device, g.grad_accum):
            raise ReproError(f"{src}: ran at {'x'.join(map(str, ran))}, not the twin block's {g.name}: a golden is "
                             "recorded at the twin's own geometry (another layout, --geometry, is compared with it)")
        records = list(read_jsonl(next(src.glob("train/*/metrics.jsonl"))))
        key, assets = manifest["env_key"], manifest.get("assets", {})
    else:
        out = Path(args.out or f"runs/{recipe.id}-golden").resolve()
        with outdir.claimed(out), progress.tracking(f"{recipe.id} golden", {"": out},
                                                    progress.expected_steps(recipe.id), quiet=args.quiet):
            run_ = twin.execute(twin.prepare(recipe, out, [], fresh=True), echo=False)
        manifest = twin.manifest(run_)
        records, key, assets = run_.records, manifest["env_key"], manifest["assets"]
    provenance = {k: manifest[k] for k in ("project_git_sha", "project_tree_dirty", "packages", "hardware",
                                           "plan", "command", "wall_s")}
    provenance["project_git_sha"], provenance["project_tree_dirty"] = sha, dirty
    twin.require_twin(recipe)
    path = golden.record(recipe.id, records, recipe.twin.golden, key, assets, provenance)
    print(f"{recipe.id}: recorded {len(records)} steps for environment {key} -> {path}")
    return 0


def _record_upstream(recipe, args, sha: str) -> int:
    """Run (or read --from) the upstream at twin scale and store its curve with its provenance."""
    import json

    from repro.upstream import reference
    from repro.upstream import run as upstream

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
