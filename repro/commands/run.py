"""repro run: run a recipe — its scaled-down twin here, or the full recipe on the GPUs there are."""

from __future__ import annotations

import time
from pathlib import Path

from repro import device
from repro.catalog import loader as catalog
from repro.twin import golden
from repro.plan import rescale
from repro.twin import outdir, progress, retry
from repro.twin import runner as twin
from repro.commands.plan import human
from repro.catalog.schema import Arg
from repro.errors import EXIT_FAILED, ReproError
from repro.twin import chain
from repro.plan.planner import make_plan
from repro.report.twin import write_outputs
from repro.twin.overrides import parse_sets, with_sets
from repro.twin.verdict import evaluate

HELP = "run a recipe: --scale twin (CPU-sized twin, verdict + report) or full (the pinned upstream on GPUs)"


def add_arguments(p) -> None:
    p.add_argument("id", help="recipe id (repro list)")
    p.add_argument("--scale", choices=["auto", "twin", "full"], default="auto",
                   help="auto: the twin when no GPU is found, otherwise the plan for the GPUs found")
    p.add_argument("--gpus", type=int, help="GPUs to plan the full run for (default: the ones found)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe argument, e.g. --set learning_rate=1e-4 (recorded in the manifest)")
    p.add_argument("--out", help="output directory (default: runs/<id>-<scale>-<time>)")
    p.add_argument("--log", action="store_true", help="stream the training log (it always goes to OUT/train.log)")
    p.add_argument("--quiet", action="store_true", help="no progress output (for scripts); results still print")
    p.add_argument("--fresh", action="store_true",
                   help="discard what --out holds (checkpoints, results) instead of resuming or refusing")
    p.add_argument("--chain", action="store_true",
                   help="rebuild every upstream stage of the recipe's chain instead of reusing cached ones")


def run(args) -> int:
    recipe = catalog.get(args.id)
    local = device.detect()
    if args.scale == "twin" or (args.scale == "auto" and local.count == 0):
        if recipe.twin is None:
            if args.scale == "twin":
                twin.require_twin(recipe)
            return _no_gpu_plan(recipe)
        return run_twin(recipe, _out(args, "twin"), args.set, echo=args.log, fresh=args.fresh, quiet=args.quiet,
                        rebuild_chain=args.chain)
    count = args.gpus or local.count
    recipe = with_sets(recipe, parse_sets(args.set))  # --set replaces values, unknown flags are refused
    plan = make_plan(recipe, rescale.Request(count, args.nodes, local.mem_gib if not args.gpus else None))
    print(human(plan))
    if args.scale != "full":
        print(f"(plan only: pass --scale full to launch it on these {count} GPUs)")
        return 0
    from repro.plan import fullscale

    return fullscale.launch(recipe, plan, _out(args, "full"))


def _out(args, scale: str) -> Path:
    if args.out:
        return Path(args.out).resolve()
    return (Path.cwd() / "runs" / f"{args.id}-{scale}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()


def _no_gpu_plan(recipe) -> int:
    topo = recipe.topology
    print(f"{recipe.id}: no GPU on this machine and this recipe has no twin yet.")
    print(f"The full run needs {topo.gpus} x {topo.gpu} on {topo.nodes} node(s); its plan at that topology:")
    print(human(make_plan(recipe, rescale.Request(topo.gpus, topo.nodes))))
    return 0


def ensure_upstream(recipe, rebuild: bool, echo: bool, quiet: bool, memo: dict | None = None):
    """The stage `recipe` starts from, built first when missing (recursively) or reused when cached."""
    if recipe.needs is None:
        return None
    memo = {} if memo is None else memo
    up = catalog.get(recipe.needs.stage)
    ensure_upstream(up, rebuild, echo, quiet, memo)
    key = chain.stage_key(up, memo)
    run_dir = chain.stage_dir(up, key)
    if chain.is_complete(run_dir) and not rebuild:
        print(f"{recipe.id} starts from {up.id}: reusing the cached stage {run_dir} (key {key[:16]} matches: "
              "same recipe, twin assets, trainer code and packages)")
        return chain.upstream_of(recipe, run_dir, key, reused=True)
    print(f"{recipe.id} starts from {up.id}: building that stage first in {run_dir}")
    code = run_twin(up, run_dir, [], echo=echo, fresh=True, quiet=quiet, rebuild_chain=False, _memo=memo)
    if not chain.is_complete(run_dir):
        raise ReproError(f"{up.id}: the upstream stage did not finish (exit {code}); see {run_dir / 'train.log'}")
    return chain.upstream_of(recipe, run_dir, key, reused=False)


def run_twin(recipe, out: Path, sets: list[str], echo: bool = False, fresh: bool = False, quiet: bool = True,
             rebuild_chain: bool = False, _memo: dict | None = None) -> int:
    upstream = ensure_upstream(recipe, rebuild_chain, echo, quiet, _memo)
    extra = [Arg(flag=recipe.needs.flag, values=(str(upstream.input_path),))] if upstream else None
    with outdir.claimed(out):
        run_ = twin.prepare(recipe, out, sets, extra=extra, fresh=fresh)
        if upstream:
            run_.upstream = upstream.as_manifest()
            print(f"{recipe.id}: {recipe.needs.flag} {upstream.input_path}")
        print(f"{recipe.id}: running the scaled-down twin in {out}"
              + (f" (resuming from {run_.resumed['from']})" if run_.resumed else ""))
        with progress.tracking(f"{recipe.id} twin", {"": out}, progress.expected_steps(recipe.id),
                               quiet=quiet or echo):
            run_ = execute_with_retry(run_, sets, echo, extra)
        manifest = twin.manifest(run_)
        twin.write_json(out / "manifest.json", manifest)
        key = manifest["env_key"]
        ref = golden.find(recipe.id, key)
        checks = evaluate(run_, ref, key)
        result = write_outputs(run_, checks, manifest, ref)
    for c in result["checks"]:
        print(f"  [{c['status']}] {c['name']}: {c['message']}")
    top = recipe.topology
    print(f"{recipe.id}: twin {'PASSED' if result['passed'] else 'FAILED'} in {manifest['wall_s']} s "
          f"({manifest['plan']['processes']} processes x {manifest['plan']['per_device_batch']} x "
          f"{manifest['plan']['grad_accum']}); report: {out / 'report.md'}")
    print(f"  This was the twin. The full run needs {top.gpus} x {top.gpu}: repro plan {recipe.id} --gpus N")
    return 0 if result["passed"] else EXIT_FAILED


def execute_with_retry(run_, sets: list[str], echo: bool, extra=None):
    """Out of memory: retry at half the per-device batch (the planner's rule decides), recorded."""
    retries = []
    while True:
        try:
            done = twin.execute(run_, echo=echo)
            done.retries = retries
            return done
        except ReproError:
            if not retry.is_oom(run_.out_dir / "train.log"):
                raise
            smaller = retry.halved(run_.recipe, run_.geometry)
            retries.append({"geometry": run_.geometry.name, "error": "out of memory", "retry_with": smaller.name})
            print(f"{run_.recipe.id}: out of memory at {run_.geometry.name}; retrying at {smaller.name} "
                  "(same effective batch)")
            upstream = run_.upstream
            run_ = twin.prepare(run_.recipe, run_.out_dir, sets, geometry=smaller, extra=extra, fresh=True)
            run_.upstream = upstream
