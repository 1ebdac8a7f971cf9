"""Exact batch rescaling: processes x per-device x accumulation == the published effective batch.

`solve` is a pure function from (recipe, request) to a Geometry or a Refusal; `plan_geometry` turns a
refusal into a one-line error that names the nearest GPU counts and effective batches that do work.
Nothing is ever floored: if the target cannot be met exactly, there is no plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from repro.base.errors import ReproError
from repro.catalog.schema import Recipe


@dataclass(frozen=True)
class Request:
    gpus: int  # GPUs in total, over all nodes
    nodes: int = 1
    gpu_mem_gib: float | None = None
    max_per_device: int | None = None  # a cap found by running (an out-of-memory retry), not published


@dataclass(frozen=True)
class Geometry:
    gpus: int  # GPUs the plan uses (may be fewer than requested for single-GPU recipes)
    nodes: int
    processes: int  # training world size (launcher processes / ray actors)
    dp: int
    cp: int
    tp: int
    ep: int
    per_device: int
    grad_accum: int
    effective: int
    reserved_gpus: int  # e.g. vLLM engines
    ranks_per_node: tuple[int, ...]  # training ranks on each node
    per_rank_totals: dict[str, int] = field(default_factory=dict)  # flag -> per-rank value
    notes: tuple[str, ...] = ()

    @property
    def local_batch(self) -> int:
        return self.per_device * self.grad_accum


@dataclass(frozen=True)
class Refusal:
    reason: str
    divisibility: bool = False  # True: only the batch arithmetic failed (nearest batches are meaningful)
    dp: int | None = None


def solve(recipe: Recipe, req: Request) -> Geometry | Refusal:
    """The unique plan this suite uses for `req`, or why there is none."""
    par, batch, topo = recipe.parallel, recipe.batch, recipe.topology
    if req.gpus < 1 or req.nodes < 1:
        return Refusal("--gpus and --nodes must be at least 1")
    if req.nodes > req.gpus:
        return Refusal(f"{req.nodes} nodes cannot hold only {req.gpus} GPUs")
    # documents say "80GB" for cards that report 79.x GiB: allow the 5% that decimal units and
    # driver reservations take away
    if topo.min_gpu_mem_gib and req.gpu_mem_gib is not None and req.gpu_mem_gib < 0.95 * topo.min_gpu_mem_gib:
        return Refusal(f"needs at least {topo.min_gpu_mem_gib:g} GiB per GPU, got {req.gpu_mem_gib:g}")

    gpus, notes = req.gpus, []
    exact = par.world.get("exact")
    if exact is not None and par.may_use_subset and gpus > exact and req.nodes == 1:
        notes.append(f"single-process recipe: uses {exact} of the {gpus} GPUs")
        gpus = exact
    reserved = par.reserved_gpus
    if reserved == 0 and gpus % req.nodes:
        return Refusal(f"{gpus} GPUs do not split evenly over {req.nodes} nodes")
    capacity = math.ceil(gpus / req.nodes)
    if reserved and par.reserved_tp > capacity:
        return Refusal(f"a {par.reserved_tp}-GPU inference engine does not fit on a node of {capacity} GPUs")
    train = gpus - reserved
    if train < 1:
        return Refusal(f"{gpus} GPUs leave none for training after {reserved} reserved for inference")
    for bound, ok in (("exact", lambda w, b: w == b), ("min", lambda w, b: w >= b), ("max", lambda w, b: w <= b)):
        if bound in par.world and not ok(train, par.world[bound]):
            alt = f"; use recipe {par.alternative}" if par.alternative else ""
            return Refusal(f"the recipe needs a training world size {bound} {par.world[bound]}, got {train}{alt}")
    group = par.cp * par.tp
    if train % group:
        return Refusal(f"{train} training GPUs are not a multiple of cp x tp = {group}")
    if train % par.ep:
        return Refusal(f"expert-parallel degree {par.ep} does not divide the world size {train}")
    dp = train // group

    cap = batch.per_device
    if req.gpu_mem_gib is not None and topo.gpu_mem_gib and req.gpu_mem_gib < topo.gpu_mem_gib:
        cap = max(1, math.floor(batch.per_device * req.gpu_mem_gib / topo.gpu_mem_gib))
        if batch.per_device_policy == "fixed" and cap < batch.per_device:
            return Refusal(
                f"per-device batch {batch.per_device} is fixed by the loss reduction and was measured on "
                f"{topo.gpu_mem_gib:g} GiB GPUs; {req.gpu_mem_gib:g} GiB is not enough"
            )
    if req.max_per_device is not None and req.max_per_device < cap:
        if batch.per_device_policy == "fixed":
            return Refusal(f"per-device batch {batch.per_device} is fixed by the loss reduction; it cannot go "
                           f"down to {req.max_per_device}")
        cap = req.max_per_device
    if batch.effective % dp:
        return Refusal(f"effective batch {batch.effective} is not divisible by {dp} data-parallel ranks",
                       divisibility=True, dp=dp)
    per_rank = batch.effective // dp
    per_device = _per_device(per_rank, batch.per_device, cap, batch.per_device_policy)
    if per_device is None:
        return Refusal(
            f"{per_rank} sequences per rank is not a multiple of the fixed per-device batch {batch.per_device}",
            divisibility=True, dp=dp)
    totals = {}
    for flag, total in batch.flags.per_rank_totals.items():
        if total % dp:
            return Refusal(f"{flag} total {total} is not divisible by {dp} ranks", divisibility=True, dp=dp)
        totals[flag] = total // dp
    if per_device != batch.per_device:
        notes.append(f"per-device batch {batch.per_device} -> {per_device} (policy: at most the published value)")
    return Geometry(
        gpus=gpus, nodes=req.nodes, processes=train, dp=dp, cp=par.cp, tp=par.tp, ep=par.ep,
        per_device=per_device, grad_accum=per_rank // per_device, effective=batch.effective,
        reserved_gpus=reserved, ranks_per_node=_ranks_per_node(train, req.nodes, capacity),
        per_rank_totals=totals, notes=tuple(notes),
    )


def _per_device(per_rank: int, published: int, cap: int, policy: str) -> int | None:
    """Fixed: the published value or nothing. At most: the largest divisor of per_rank <= cap."""
    if policy == "fixed":
        return published if per_rank % published == 0 else None
    return max(d for d in range(1, min(cap, per_rank) + 1) if per_rank % d == 0)


def _ranks_per_node(train: int, nodes: int, capacity: int) -> tuple[int, ...]:
    """Training ranks fill nodes in order; reserved engines take what is left on the last ones."""
    ranks, left = [], train
    for _ in range(nodes):
        take = min(capacity, left)
        ranks.append(take)
        left -= take
    return tuple(r for r in ranks if r) or (0,)


def feasible_gpu_counts(recipe: Recipe, req: Request, limit: int = 1024) -> list[int]:
    """GPU totals (multiples of the node count) for which an exact plan exists."""
    top = min(limit, max(4 * req.gpus, 2 * recipe.topology.gpus, 16))
    key = (recipe.id, id(recipe), req.nodes, req.gpu_mem_gib, top)
    if key not in _FEASIBLE:  # refusals in a sweep ask the same question many times
        _FEASIBLE[key] = [n for n in range(req.nodes, top + 1, req.nodes)
                          if isinstance(solve(recipe, Request(n, req.nodes, req.gpu_mem_gib)), Geometry)]
    return _FEASIBLE[key]


_FEASIBLE: dict[tuple, list[int]] = {}


def nearest(values: list[int], target: int) -> list[int]:
    """The closest value below and above target (each if it exists)."""
    below = [v for v in values if v < target]
    above = [v for v in values if v > target]
    return ([max(below)] if below else []) + ([min(above)] if above else [])


def nearest_batches(recipe: Recipe, dp: int) -> list[int]:
    """Effective batches an exact plan could reach with this many data-parallel ranks."""
    step = dp * (recipe.batch.per_device if recipe.batch.per_device_policy == "fixed" else 1)
    e = recipe.batch.effective
    lo, hi = (e // step) * step, (e // step + 1) * step
    return [b for b in (lo, hi) if b > 0 and b != e]


def check_request(req: Request) -> Request:
    """The one rule for the hardware a user asks for, whichever command asked: counts >= 1 and a
    finite, positive memory size (NaN or inf would otherwise reach the plan's JSON)."""
    for flag, value in (("--gpus", req.gpus), ("--nodes", req.nodes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ReproError(f"{flag} {value!r}: must be a whole number of at least 1")
    mem = req.gpu_mem_gib
    if mem is not None and (isinstance(mem, bool) or not isinstance(mem, (int, float))
                            or not math.isfinite(mem) or mem <= 0):
        raise ReproError(f"--gpu-mem {mem!r}: must be a finite number of GiB greater than 0")
    cap = req.max_per_device
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ReproError(f"max per-device batch {cap!r}: must be a whole number of at least 1")
    return req


def plan_geometry(recipe: Recipe, req: Request) -> Geometry:
    """solve(), or a one-line refusal (exit 2) naming what would work instead."""
    check_request(req)
    result = solve(recipe, req)
    if isinstance(result, Geometry):
        return result
    where = f"{req.gpus} GPU{'s' if req.gpus != 1 else ''}" + (f" on {req.nodes} nodes" if req.nodes > 1 else "")
    parts = [f"{recipe.id}: no exact plan for {where}: {result.reason}"]
    counts = nearest(feasible_gpu_counts(recipe, req), req.gpus)
    if counts:
        parts.append(f"GPU counts that work: {', '.join(map(str, counts))}")
    if result.divisibility and result.dp:
        batches = nearest_batches(recipe, result.dp)
        if batches:
            parts.append(
                f"nearest effective batches on this hardware: {', '.join(map(str, batches))} "
                f"(not the published {recipe.batch.effective})")
    raise ReproError("; ".join(parts))
