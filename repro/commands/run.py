"""repro run: run a recipe — its scaled-down twin here, or the full recipe on the GPUs there are.
Parses and prints; the run itself is repro.twin.session (twin) or repro.plan.fullscale (full)."""

from __future__ import annotations

import time
from pathlib import Path

from repro.base import device
from repro.base.errors import EXIT_FAILED, ReproError
from repro.catalog import loader as catalog
from repro.commands.plan import human
from repro.plan import fullscale, rescale
from repro.plan.planner import make_plan
from repro.twin import nodes, session
from repro.twin.command import require_twin
from repro.twin.overrides import parse_sets, with_sets

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
    local = device.detect()
    if args.scale == "twin" or (args.scale == "auto" and local.count == 0):
        if recipe.twin is None:
            if args.scale == "twin":
                require_twin(recipe)
            return _no_gpu_plan(recipe)
        groups = _groups(args)
        if args.geometry and groups is not None:
            raise ReproError("--geometry is for a single-node twin; a multi-node twin runs the twin block's geometry")
        outcome = session.run_twin(recipe, _out(args, "twin"), args.set, echo=args.log, fresh=args.fresh,
                                   quiet=args.quiet, rebuild_chain=args.chain, node_groups=groups,
                                   geometry=session.layout(recipe, args.geometry) if args.geometry else None,
                                   printer=report)
        return 0 if outcome is None or outcome.passed else EXIT_FAILED
    if args.geometry:
        raise ReproError("--geometry goes with the twin (--scale twin); the full run's layout comes from the plan")
    count = args.gpus or local.count
    recipe = with_sets(recipe, parse_sets(args.set))  # --set replaces values, unknown flags are refused
    plan = make_plan(recipe, rescale.Request(count, args.nodes, local.mem_gib if not args.gpus else None))
    print(human(plan))
    if args.scale != "full":
        print(f"(plan only: pass --scale full to launch it on these {count} GPUs)")
        return 0
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


def report(outcome: session.Outcome) -> None:
    """A finished twin (the run's own or a stage built on the way): its checks and the one-line verdict."""
    recipe, out, manifest = outcome.recipe, outcome.out, outcome.manifest
    for c in outcome.verdict["checks"]:
        print(f"  [{c['status']}] {c['name']}: {c['message']}")
    top = recipe.topology
    print(f"{recipe.id}: twin {'PASSED' if outcome.passed else 'FAILED'} in {manifest['wall_s']} s "
          f"({manifest['plan']['nodes']} node(s), {manifest['plan']['processes']} processes x "
          f"{manifest['plan']['per_device_batch']} x {manifest['plan']['grad_accum']}); report: {out / 'report.md'}")
    print(f"  This was the twin. The full run needs {top.gpus} x {top.gpu}: repro plan {recipe.id} --gpus N")
