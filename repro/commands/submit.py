"""repro submit: an sbatch script for the plan (or the twin), printed with --dry-run, else submitted."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from repro.base.paths import ROOT
from repro.catalog import loader as catalog
from repro.catalog.schema import Recipe
from repro.base.errors import EXIT_FAILED, ReproError
from repro.plan import rescale, slurm
from repro.plan.fullscale import checkout_dir
from repro.plan.render import quote
from repro.twin.overrides import parse_sets, with_sets
from repro.twin.command import NodeGroup, build, require_twin
from repro.twin import assets

HELP = "write an sbatch script that runs the plan (or --scale twin) on a Slurm cluster; --dry-run prints it"


def add_arguments(p) -> None:
    p.add_argument("id", help="recipe id (repro list)")
    p.add_argument("--nodes", type=int, default=1, help="nodes to allocate")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per node (required for --scale full; twin default 0)")
    p.add_argument("--gpus", type=int, help="GPUs to plan for in total (default nodes x gpus-per-node; "
                                            "fewer when a recipe's world does not fill the nodes)")
    p.add_argument("--partition")
    p.add_argument("--time", help="wall-clock limit in a Slurm time format (e.g. 2-00:00:00)")
    p.add_argument("--account")
    p.add_argument("--port", type=int, default=29500, help="the port every node meets node 0 on")
    p.add_argument("--scale", choices=["full", "twin"], default="full",
                   help="full: the published run, rescaled; twin: the scaled-down twin, verdict included")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe argument")
    p.add_argument("--out", help="folder for the script (and the twin's run); default runs/<id>-<scale>-slurm-<time>")
    p.add_argument("--dry-run", action="store_true", help="print the script; submit nothing")


def full_script(recipe: Recipe, o: slurm.Options, gpus: int | None, sets: list[str]) -> str:
    recipe = with_sets(recipe, parse_sets(sets))
    total = gpus or o.nodes * o.gpus_per_node
    geom = rescale.plan_geometry(recipe, rescale.Request(total, o.nodes))
    files: dict[str, str] = {}
    step = slurm.node_step(recipe, geom, files, o)
    comments = [f"repro submit {recipe.id}: the published run rescaled to {geom.gpus} GPUs on {geom.nodes} node(s): "
                f"{geom.processes} processes x {geom.per_device} per device x {geom.grad_accum} accumulation "
                f"= {geom.effective} (published {recipe.batch.effective})",
                f"runs in the pinned upstream checkout ({recipe.provenance.upstream.repo}@"
                f"{recipe.provenance.upstream.commit[:12]}), which every node must see: repro run {recipe.id} "
                "--scale full on one node clones it and installs the pins"]
    workdir = str(checkout_dir(recipe) / recipe.command.workdir)
    return slurm.script(o, step, workdir, files, comments)


def twin_line(recipe: Recipe, nodes: int, out: Path, sets: list[str]) -> str:
    """The node script's line: `repro run --scale twin` for this node group; the twin command itself is
    built on the node by repro.twin.command (same launcher and flags as `repro run --scale twin`)."""
    argv = [sys.executable, "-m", "repro", "run", recipe.id, "--scale", "twin", "--out", str(out), "--quiet"]
    for s in sets:
        argv += ["--set", s]
    words = [quote(a) for a in argv]
    if nodes > 1:
        words += ["--nodes", str(nodes), "--node-rank", '"$NODE_RANK"', "--main-addr", '"$MAIN_ADDR"',
                  "--main-port", '"$MAIN_PORT"']
    return " ".join(words)


def twin_script(recipe: Recipe, o: slurm.Options, out: Path, sets: list[str]) -> str:
    require_twin(recipe)
    g = recipe.twin.geometry
    # everything the nodes will decide, decided here first: a bad --set or geometry fails before sbatch
    build(recipe, g, out, parse_sets(sets), o.gpus_per_node > 0, node=NodeGroup(o.nodes, 0, port=o.port))
    step = slurm.NodeStep([twin_line(recipe, o.nodes, out, sets)])
    comments = [f"repro submit {recipe.id} --scale twin: the scaled-down twin as {o.nodes} node group(s), "
                f"{g.processes} processes x {g.per_device} x {g.grad_accum}; verdict in {out}/verdict.json"]
    return slurm.script(o, step, str(ROOT), {}, comments, {"PYTHONPATH": str(ROOT)})


def run(args) -> int:
    recipe = catalog.get(args.id)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"runs/{recipe.id}-{args.scale}-slurm-{stamp}").resolve()
    if args.scale == "full" and args.gpus_per_node is None:
        raise ReproError("--scale full needs --gpus-per-node")
    gpn = args.gpus_per_node or 0
    if args.scale == "twin":
        cpus = recipe.twin.geometry.processes // max(args.nodes, 1) if recipe.twin else None
        o = slurm.Options(args.nodes, gpn, args.partition, args.time, args.account, f"repro-{recipe.id}-twin",
                          cpus_per_task=cpus, output=str(out / "slurm-%j.out"), port=args.port)
        text = twin_script(recipe, o, out, args.set)
    else:
        o = slurm.Options(args.nodes, gpn, args.partition, args.time, args.account, f"repro-{recipe.id}",
                          output=str(out / "slurm-%j.out"), port=args.port)
        text = full_script(recipe, o, args.gpus, args.set)
    if args.dry_run:
        sys.stdout.write(text)
        return 0
    if shutil.which("sbatch") is None:
        raise ReproError("sbatch is not on PATH: run on a Slurm login node, or pass --dry-run to print the script")
    out.mkdir(parents=True, exist_ok=True)
    if args.scale == "twin":
        assets.write_asset_map(recipe, out / "assets.json")  # build the assets once, here, not on every node
    path = out / "job.sbatch"
    path.write_text(text, encoding="utf-8")
    done = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ReproError(f"sbatch refused {path}: {(done.stderr or done.stdout).strip()[:300]}", EXIT_FAILED)
    job = done.stdout.strip().split(";")[0]
    print(job)
    print(f"{recipe.id}: submitted job {job}; script {path}; output {out}", file=sys.stderr)
    return 0
