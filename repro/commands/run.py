"""repro run: run a recipe — its scaled-down twin here, or the full recipe on the GPUs there are."""

from __future__ import annotations

from repro import catalog, gpus, rescale
from repro.commands.plan import human
from repro.errors import ReproError
from repro.plan import make_plan

HELP = "run a recipe: --scale twin (CPU-sized twin) or full (the pinned upstream on real GPUs)"


def add_arguments(p) -> None:
    p.add_argument("id", help="recipe id (repro list)")
    p.add_argument("--scale", choices=["auto", "twin", "full"], default="auto",
                   help="auto: twin without GPUs, a plan for the GPUs found otherwise")
    p.add_argument("--gpus", type=int, help="GPUs to plan the full run for (default: the ones found)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe argument")
    p.add_argument("--out", help="output directory")


def run(args) -> int:
    recipe = catalog.get(args.id)
    local = gpus.detect()
    if args.scale == "twin" or (args.scale == "auto" and local.count == 0 and recipe.twin is not None):
        raise ReproError(f"{recipe.id}: the twin runtime is not available yet")
    topo = recipe.topology
    need = f"{topo.gpus} x {topo.gpu} on {topo.nodes} node(s)"
    count = args.gpus or local.count
    if count == 0:
        print(f"{recipe.id}: no GPU found on this machine and no twin for this recipe yet.")
        print(f"The full run needs {need}; this is its plan at the published topology:")
        print(human(make_plan(recipe, rescale.Request(topo.gpus, topo.nodes))))
        return 0
    plan = make_plan(recipe, rescale.Request(count, args.nodes, local.mem_gib))
    print(human(plan))
    if args.scale != "full":
        print(f"(plan only; pass --scale full to launch it. Published: {need})")
        return 0
    raise ReproError(f"{recipe.id}: launching the full run is not available yet; run the command above")
