"""A plan: the exact geometry for the requested hardware plus the rendered commands and files."""

from __future__ import annotations

from typing import Any

from repro.plan import rescale
from repro.plan.render import render
from repro.catalog.schema import Recipe


def make_plan(recipe: Recipe, req: rescale.Request, main_addr: str | None = None) -> dict[str, Any]:
    """The JSON-able plan `repro plan` prints; raises ReproError (exit 2) when no exact plan exists."""
    geom = rescale.plan_geometry(recipe, req)
    addr = main_addr or ("localhost" if req.nodes == 1 else "MAIN_NODE_ADDR")
    rendered = render(recipe, geom, addr)
    batch = recipe.batch
    notes = list(geom.notes) + rendered.notes
    if req.nodes > 1 and main_addr is None:
        notes.append("pass --main-addr HOST: node 0's address is left as MAIN_NODE_ADDR")
    if not recipe.runnable:
        notes.append("this recipe is not runnable as pinned: " + "; ".join(recipe.notes[:1]))
    return {
        "recipe": recipe.id,
        "request": {"gpus": req.gpus, "nodes": req.nodes, "gpu_mem_gib": req.gpu_mem_gib,
                    **({"max_per_device": req.max_per_device} if req.max_per_device else {})},
        "gpus": geom.gpus,
        "nodes": geom.nodes,
        "processes": geom.processes,
        "dp": geom.dp,
        "cp": geom.cp,
        "tp": geom.tp,
        "ep": geom.ep,
        "reserved_gpus": geom.reserved_gpus,
        "ranks_per_node": list(geom.ranks_per_node),
        "per_device_batch": geom.per_device,
        "grad_accum": geom.grad_accum,
        "effective_batch": geom.effective,
        "published": {
            "gpus": recipe.topology.gpus,
            "per_device_batch": batch.per_device,
            "grad_accum": batch.grad_accum,
            "effective_batch": batch.effective,
        },
        "max_tokens_per_step": geom.effective * batch.seq_len,
        "loss_reduction": batch.loss_reduction,
        "changes": rendered.changes,
        "notes": notes,
        "command": rendered.nodes[0].shell,
        "commands": [n.to_json() for n in rendered.nodes],
        "files": rendered.files,
    }
