"""repro run: run a recipe — its scaled-down twin here, or the full recipe on the GPUs there are."""

from __future__ import annotations

import time
from pathlib import Path

from repro import device
from repro.catalog import loader as catalog
from repro.twin import golden
from repro.plan import rescale
from repro.twin import runner as twin
from repro.commands.plan import human
from repro.errors import EXIT_FAILED, ReproError
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
    p.add_argument("--nodes", type=int, default=1,
                   help="nodes: of the full run's plan, or of the twin (M node groups; all on this host over "
                        "loopback unless --node-rank picks one)")
    p.add_argument("--node-rank", type=int, help="twin only: run just this node group (one per Slurm node)")
    p.add_argument("--main-addr", help="twin only: node 0's address for --node-rank (default 127.0.0.1)")
    p.add_argument("--main-port", type=int, help="twin only: the port every node group meets on (with --node-rank)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe argument, e.g. --set learning_rate=1e-4 (recorded in the manifest)")
    p.add_argument("--out", help="output directory (default: runs/<id>-<scale>-<time>)")
    p.add_argument("--quiet", action="store_true", help="do not echo the training log")


def run(args) -> int:
    recipe = catalog.get(args.id)
    local = device.detect()
    if args.scale == "twin" or (args.scale == "auto" and local.count == 0):
        if recipe.twin is None:
            if args.scale == "twin":
                twin.require_twin(recipe)
            return _no_gpu_plan(recipe)
        return run_twin(recipe, _out(args, "twin"), args.set, echo=not args.quiet, node_groups=_groups(args))
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


def run_twin(recipe, out: Path, sets: list[str], echo: bool = True, node_groups: list | None = None) -> int:
    from repro.twin import nodes

    if node_groups is None:
        run_ = twin.prepare(recipe, out, sets)
        print(f"{recipe.id}: running the scaled-down twin in {out}")
        twin.execute(run_, echo=echo)
    else:
        runs = nodes.prepare(recipe, out, node_groups, sets)
        where = ", ".join(str(g.rank) for g in node_groups)
        print(f"{recipe.id}: running node group(s) {where} of a {node_groups[0].nodes}-node twin in {out} "
              f"(main {node_groups[0].addr}:{node_groups[0].port})")
        run_ = nodes.execute(runs, echo=echo)
        if run_.node.rank != 0:
            print(f"{recipe.id}: node group {run_.node.rank} finished; node 0 writes the verdict")
            return 0
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
          f"({manifest['plan']['nodes']} node(s), {manifest['plan']['processes']} processes x {manifest['plan']['per_device_batch']} x "
          f"{manifest['plan']['grad_accum']}); report: {out / 'report.md'}")
    print(f"  This was the twin. The full run needs {top.gpus} x {top.gpu}: repro plan {recipe.id} --gpus N")
    return 0 if result["passed"] else EXIT_FAILED
