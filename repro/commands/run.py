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
from repro.errors import EXIT_FAILED, ReproError
from repro.twin import chain
from repro.plan.planner import make_plan
from repro.report.twin import write_outputs
from repro.twin.overrides import parse_sets, with_sets
from repro.twin.verdict import evaluate

HELP = "run a recipe: --scale twin (CPU-sized twin, verdict + report) or full (the pinned upstream on GPUs)"


def add_arguments(p) -> None:
    p.add_argument("id", help="recipe id (repro list)")
    p.add_argument("--scale", choices=["auto", "twin", "full", "upstream"], default="auto",
                   help="auto: the twin when no GPU is found, otherwise the plan for the GPUs found; upstream: the "
                        "real pinned upstream at twin scale in its own environment (its reference for the twin)")
    p.add_argument("--upstream-source", metavar="PATH",
                   help="upstream/full: the pinned source from a local snapshot (a folder of snapshots, a `git "
                        "archive` tarball, a git dir or checkout), verified against the pin; default "
                        "$REPRO_UPSTREAM_SOURCE, else GitHub")
    p.add_argument("--gpus", type=int, help="GPUs to plan the full run for (default: the ones found)")
    p.add_argument("--nodes", type=int, default=1,
                   help="nodes: of the full run's plan, or of the twin (M node groups; all on this host over "
                        "loopback unless --node-rank picks one)")
    p.add_argument("--node-rank", type=int, help="twin only: run just this node group (one per Slurm node)")
    p.add_argument("--main-addr", help="twin only: node 0's address for --node-rank (default 127.0.0.1)")
    p.add_argument("--main-port", type=int, help="twin only: the port every node group meets on (with --node-rank)")
    p.add_argument("--geometry", metavar="PxBxA",
                   help="twin only: run at another layout its equivalence block declares (processes x per-device "
                        "x accumulation, same effective batch), e.g. 1x1x4 on one GPU")
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
    if args.scale == "upstream":
        from repro.commands.upstream import run_upstream

        return run_upstream(recipe, _out(args, "upstream"), args.upstream_source, echo=args.log, quiet=args.quiet)
    local = device.detect()
    if args.scale == "twin" or (args.scale == "auto" and local.count == 0):
        if recipe.twin is None:
            if args.scale == "twin":
                twin.require_twin(recipe)
            return _no_gpu_plan(recipe)
        groups = _groups(args)
        if args.geometry and groups is not None:
            raise ReproError("--geometry is for a single-node twin; a multi-node twin runs the twin block's geometry")
        return run_twin(recipe, _out(args, "twin"), args.set, echo=args.log, fresh=args.fresh, quiet=args.quiet,
                        rebuild_chain=args.chain, node_groups=groups,
                        geometry=layout(recipe, args.geometry) if args.geometry else None)
    if args.geometry:
        raise ReproError("--geometry goes with the twin (--scale twin); the full run's layout comes from the plan")
    count = args.gpus or local.count
    recipe = with_sets(recipe, parse_sets(args.set))  # --set replaces values, unknown flags are refused
    plan = make_plan(recipe, rescale.Request(count, args.nodes, local.mem_gib if not args.gpus else None))
    print(human(plan))
    if args.scale != "full":
        print(f"(plan only: pass --scale full to launch it on these {count} GPUs)")
        return 0
    from repro.plan import fullscale

    return fullscale.launch(recipe, plan, _out(args, "full"), args.upstream_source)


def _out(args, scale: str) -> Path:
    if args.out:
        return Path(args.out).resolve()
    return (Path.cwd() / "runs" / f"{args.id}-{scale}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()


def layout(recipe, name: str):
    """The twin geometry `name` names: the twin block's own or one of its equivalence layouts (the suite shows
    those train the same curve), never an arbitrary split."""
    twin.require_twin(recipe)
    own = recipe.twin.geometry
    known = [own] + [g for g in (recipe.twin.equivalence.layouts if recipe.twin.equivalence else [])
                     if g.effective == own.effective]
    for g in known:
        if g.name == name:
            return g
    names = list(dict.fromkeys(g.name for g in known))
    raise ReproError(f"{recipe.id}: --geometry {name} is not a layout of this twin; of the same effective batch "
                     f"({own.effective}) its twin block and equivalence block declare {', '.join(names)}")


def _no_gpu_plan(recipe) -> int:
    topo = recipe.topology
    print(f"{recipe.id}: no GPU on this machine and this recipe has no twin yet.")
    print(f"The full run needs {topo.gpus} x {topo.gpu} on {topo.nodes} node(s); its plan at that topology:")
    print(human(make_plan(recipe, rescale.Request(topo.gpus, topo.nodes))))
    return 0


def _groups(args) -> list | None:
    """The node groups this invocation runs: None for the plain single-node twin."""
    from repro.twin import nodes

    if args.node_rank is None:
        if args.main_addr or args.main_port:
            raise ReproError("--main-addr/--main-port go with --node-rank (one node group of a multi-node twin)")
        return nodes.groups(args.nodes) if args.nodes > 1 else None
    if not args.main_port:
        raise ReproError("--node-rank needs --main-port: every node group must meet on the same port")
    every = nodes.groups(args.nodes, args.main_addr or nodes.LOOPBACK, args.main_port)
    if not 0 <= args.node_rank < args.nodes:
        raise ReproError(f"--node-rank {args.node_rank} is outside 0..{args.nodes - 1}")
    return [every[args.node_rank]]


def ensure_upstream(recipe, rebuild: bool, echo: bool, quiet: bool, memo: dict | None = None,
                    built: set | None = None) -> list:
    """Every stage `recipe` starts from (one per `needs` entry), each built first when missing
    (recursively) or reused when cached; [] for a recipe that needs none. `built`: the stages this
    invocation already (re)built, so a stage two others need (--chain) is rebuilt once."""
    memo = {} if memo is None else memo
    built = set() if built is None else built
    out = []
    for needs in recipe.needs_list:
        up = catalog.get(needs.stage)
        key = chain.stage_key(up, memo)
        run_dir = chain.stage_dir(up, key)
        if chain.is_complete(run_dir) and (not rebuild or up.id in built):
            print(f"{recipe.id} starts from {up.id}: reusing the cached stage {run_dir} (key {key[:16]} matches: "
                  "same recipe, twin assets, trainer code, packages and upstream stages)")
            out.append(chain.upstream_of(recipe, run_dir, key, reused=True, needs=needs))
            continue
        print(f"{recipe.id} starts from {up.id}: building that stage first in {run_dir}")
        ups = ensure_upstream(up, rebuild, echo, quiet, memo, built)
        code = run_twin(up, run_dir, [], echo=echo, fresh=True, quiet=quiet, rebuild_chain=False, _memo=memo,
                        _upstreams=ups)
        if not chain.is_complete(run_dir):
            raise ReproError(f"{up.id}: the upstream stage did not finish (exit {code}); see {run_dir / 'train.log'}")
        built.add(up.id)
        out.append(chain.upstream_of(recipe, run_dir, key, reused=False, needs=needs))
    for u in out:
        if u.transform_key:
            print(f"{recipe.id}: {u.needs.flag} takes {u.stage}'s output through {u.needs.then.builder} "
                  f"(cached by key {u.transform_key[:16]}): {u.input_path}")
    return out


def run_twin(recipe, out: Path, sets: list[str], echo: bool = False, fresh: bool = False, quiet: bool = True,
             rebuild_chain: bool = False, _memo: dict | None = None, node_groups: list | None = None,
             geometry=None, _upstreams: list | None = None) -> int:
    upstreams = _upstreams if _upstreams is not None else ensure_upstream(recipe, rebuild_chain, echo, quiet, _memo)
    if node_groups is not None:
        return run_node_groups(recipe, out, sets, node_groups, fresh, quiet or echo, echo, upstreams)
    with outdir.claimed(out):
        run_ = twin.prepare(recipe, out, sets, geometry=geometry, fresh=fresh, upstreams=upstreams)
        for u in upstreams:
            named = f" ({u.needs.path})" if u.needs is not None and u.needs.find == "published_model" else ""
            print(f"{recipe.id}: {u.needs.flag}{named} <- {u.input_path}")
        print(f"{recipe.id}: running the scaled-down twin in {out}"
              + (f" (resuming from {run_.resumed['from']})" if run_.resumed else ""))
        with progress.tracking(f"{recipe.id} twin", {"": out}, progress.expected_steps(recipe.id),
                               quiet=quiet or echo):
            run_ = execute_with_retry(run_, sets, echo, upstreams)
        manifest = twin.manifest(run_)
        twin.write_json(out / "manifest.json", manifest)
        key = manifest["env_key"]
        ref = golden.find(recipe.id, key)
        checks = evaluate(run_, ref, key)
        result = write_outputs(run_, checks, manifest, ref)
    return report(recipe, out, manifest, result)


def report(recipe, out: Path, manifest: dict, result: dict) -> int:
    for c in result["checks"]:
        print(f"  [{c['status']}] {c['name']}: {c['message']}")
    top = recipe.topology
    print(f"{recipe.id}: twin {'PASSED' if result['passed'] else 'FAILED'} in {manifest['wall_s']} s "
          f"({manifest['plan']['nodes']} node(s), {manifest['plan']['processes']} processes x "
          f"{manifest['plan']['per_device_batch']} x {manifest['plan']['grad_accum']}); report: {out / 'report.md'}")
    print(f"  This was the twin. The full run needs {top.gpus} x {top.gpu}: repro plan {recipe.id} --gpus N")
    return 0 if result["passed"] else EXIT_FAILED


def run_node_groups(recipe, out: Path, sets: list[str], node_groups: list, fresh: bool, quiet: bool,
                    echo: bool, upstreams: list | None = None) -> int:
    """Several node groups of one twin (all here over loopback, or the one --node-rank names). Each
    process holds its own lock: Slurm runs one `repro run --node-rank R` per node on a shared --out."""
    from repro.twin import nodes

    ranks = [g.rank for g in node_groups]
    with outdir.claimed(out, outdir.lock_name(ranks)):
        runs = nodes.prepare(recipe, out, node_groups, sets, fresh=fresh and 0 in ranks, upstreams=upstreams)
        print(f"{recipe.id}: running node group(s) {', '.join(map(str, ranks))} of a {node_groups[0].nodes}-node "
              f"twin in {out} (main {node_groups[0].addr}:{node_groups[0].port})")
        with progress.tracking(f"{recipe.id} twin", {"": out}, progress.expected_steps(recipe.id),
                               quiet=quiet or 0 not in ranks):
            run_ = nodes.execute(runs, echo=echo)
        if run_.node.rank != 0:
            print(f"{recipe.id}: node group {run_.node.rank} finished; node 0 writes the verdict")
            return 0
        manifest = twin.manifest(run_)
        twin.write_json(out / "manifest.json", manifest)
        key = manifest["env_key"]
        ref = golden.find(recipe.id, key)
        result = write_outputs(run_, evaluate(run_, ref, key), manifest, ref)
    return report(recipe, out, manifest, result)


def execute_with_retry(run_, sets: list[str], echo: bool, upstreams=None):
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
            run_ = twin.prepare(run_.recipe, run_.out_dir, sets, geometry=smaller, fresh=True,
                                upstreams=upstreams or [])
