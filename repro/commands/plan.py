"""repro plan: how to run a recipe on the GPUs you have, with the effective batch kept exact."""

from __future__ import annotations

import json

from repro import inputs
from repro.catalog import loader as catalog
from repro.plan import rescale
from repro.plan.planner import make_plan
from repro.twin.chain import chain_of, describe

HELP = "plan a recipe for N GPUs on M nodes: exact batch rescaling, rendered commands and configs"


def add_arguments(p) -> None:
    p.add_argument("id", type=inputs.nonempty, help="recipe id (repro list)")
    p.add_argument("--gpus", type=inputs.count, required=True, help="GPUs in total, over all nodes")
    p.add_argument("--nodes", type=inputs.count, default=1, help="machines the GPUs are spread over (default 1)")
    p.add_argument("--gpu-mem", type=inputs.positive_number, dest="gpu_mem", help="GiB of memory per GPU")
    p.add_argument("--main-addr", type=inputs.host, dest="main_addr",
                   help="address of node 0 (multi-node): every launcher's rendezvous uses it")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args) -> int:
    recipe = catalog.get(args.id)
    plan = make_plan(recipe, rescale.Request(args.gpus, args.nodes, args.gpu_mem), args.main_addr)
    if recipe.needs is not None or recipe.depends_on:
        plan["chain"] = {"stages": [r.id for r in chain_of(recipe)], "lines": describe(recipe)}
    if args.json:
        print(json.dumps(plan, indent=2))
        return 0
    print(human(plan))
    return 0


def human(plan: dict) -> str:
    pub = plan["published"]
    lines = [
        f"{plan['recipe']}: {plan['gpus']} GPU(s) on {plan['nodes']} node(s)",
        f"  effective batch {plan['effective_batch']} = {plan['dp']} data-parallel x "
        f"{plan['per_device_batch']} per device x {plan['grad_accum']} accumulation"
        + (f" (cp {plan['cp']})" if plan["cp"] > 1 else "")
        + (f" + {plan['reserved_gpus']} inference GPU(s)" if plan["reserved_gpus"] else ""),
        f"  published: {pub['gpus']} GPUs, {pub['per_device_batch']} per device x {pub['grad_accum']} accumulation",
    ]
    for c in plan["changes"]:
        lines.append(f"  changed {c['flag']}: {c['from']} -> {c['to']}")
    for n in plan["notes"]:
        lines.append(f"  note: {n}")
    for path, content in plan["files"].items():
        lines.append(f"  write {path}:")
        lines.extend("    " + ln for ln in content.rstrip("\n").split("\n"))
    for line in plan.get("chain", {}).get("lines", []):
        lines.append("  " + line + (" (run the earlier stages first; `repro run ID` builds their twins)"
                                    if line.startswith("chain:") else ""))
    for node in plan["commands"]:
        if len(plan["commands"]) > 1:
            lines.append(f"  node {node['node_rank']}:")
        lines.extend("    " + ln for ln in node["shell"].split("\n"))
    return "\n".join(lines)
