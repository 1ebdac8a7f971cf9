"""Property tests: every plan multiplies out to the published effective batch and honours the
recipe's constraints; every refusal is a case where no exact plan exists (checked by brute force)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repro.catalog import loader as catalog
from repro.plan import rescale
from repro.base.errors import ReproError

RECIPES = sorted(catalog.load_all())


def brute_force_exists(recipe, gpus: int, nodes: int) -> bool:
    """An independent oracle: enumerate every (world, per-device, accumulation) the rules allow."""
    par, batch = recipe.parallel, recipe.batch
    exact = par.world.get("exact")
    candidates = [gpus]
    if exact is not None and par.may_use_subset and gpus > exact and nodes == 1:
        candidates = [exact]
    for used in candidates:
        if nodes > gpus or (par.reserved_gpus == 0 and used % nodes):
            continue
        if par.reserved_gpus and par.reserved_tp > -(-used // nodes):
            continue
        world = used - par.reserved_gpus
        if world < 1 or world % (par.cp * par.tp) or world % par.ep:
            continue
        if not (par.world.get("exact", world) == world and par.world.get("min", 0) <= world <= par.world.get("max", 10**9)):
            continue
        dp = world // (par.cp * par.tp)
        pds = [batch.per_device] if batch.per_device_policy == "fixed" else range(1, batch.per_device + 1)
        for pd in pds:
            if batch.effective % (dp * pd) == 0 and all(t % dp == 0 for t in batch.flags.per_rank_totals.values()):
                return True
    return False


@settings(max_examples=400, deadline=None)
@given(rid=st.sampled_from(RECIPES), gpus=st.integers(1, 160), nodes=st.sampled_from([1, 1, 1, 2, 4, 8, 16]))
def test_plan_is_exact_or_refused(rid, gpus, nodes):
    recipe = catalog.get(rid)
    result = rescale.solve(recipe, rescale.Request(gpus, nodes))
    if isinstance(result, rescale.Refusal):
        assert not brute_force_exists(recipe, gpus, nodes), result.reason
        return
    g, batch, par = result, recipe.batch, recipe.parallel
    assert g.dp * g.per_device * g.grad_accum == batch.effective  # exactly the target
    assert g.processes + g.reserved_gpus == g.gpus and g.processes == g.dp * g.cp * g.tp
    assert g.processes % g.ep == 0 and g.cp == par.cp
    assert par.world.get("min", 0) <= g.processes <= par.world.get("max", 10**9)
    assert par.world.get("exact", g.processes) == g.processes
    assert sum(g.ranks_per_node) == g.processes
    assert g.per_device == batch.per_device if batch.per_device_policy == "fixed" else g.per_device <= batch.per_device
    for flag, total in batch.flags.per_rank_totals.items():
        assert g.per_rank_totals[flag] * g.dp == total
    assert brute_force_exists(recipe, gpus, nodes)


@pytest.mark.parametrize("rid", RECIPES)
def test_published_topology_plans_to_itself(rid):
    r = catalog.get(rid)
    g = rescale.plan_geometry(r, rescale.Request(r.topology.gpus, r.topology.nodes))
    assert (g.per_device, g.grad_accum, g.effective) == (r.batch.per_device, r.batch.grad_accum, r.batch.effective)


def test_tulu_sft_on_8_gpus_is_ga_16_not_the_documents_64():
    g = rescale.plan_geometry(catalog.get("tulu3-8b-sft"), rescale.Request(8))
    assert (g.processes, g.per_device, g.grad_accum) == (8, 1, 16)


def test_refusal_is_one_line_with_nearest_counts_and_batches():
    with pytest.raises(ReproError) as err:
        rescale.plan_geometry(catalog.get("tulu3-8b-sft"), rescale.Request(7))
    msg = err.value.message
    assert err.value.exit_code == 2 and "\n" not in msg
    assert "GPU counts that work: 4, 8" in msg and "126, 133" in msg


def test_sum_loss_never_changes_the_per_device_batch():
    recipe = catalog.get("tulu3-8b-sft")
    for gpus in (1, 2, 4, 8, 16, 32, 64, 128):
        assert rescale.plan_geometry(recipe, rescale.Request(gpus)).per_device == 1
    assert isinstance(rescale.solve(recipe, rescale.Request(256)), rescale.Refusal)  # 128 / 256 is not whole


def test_smaller_gpus_shrink_an_adjustable_per_device_batch():
    base = next(r for r in catalog.load_all().values()
                if r.batch.per_device_policy == "at_most" and r.batch.per_device > 1)
    recipe = base.model_copy(update={"topology": base.topology.model_copy(update={"gpu_mem_gib": 80.0})})
    g = rescale.plan_geometry(recipe, rescale.Request(recipe.topology.gpus, recipe.topology.nodes,
                                                      recipe.topology.gpu_mem_gib / 2))
    assert g.per_device < recipe.batch.per_device and g.dp * g.per_device * g.grad_accum == recipe.batch.effective


def test_a_fixed_per_device_batch_refuses_smaller_gpus():
    base = next(r for r in catalog.load_all().values()
                if r.batch.per_device_policy == "fixed" and r.batch.per_device > 1)
    recipe = base.model_copy(update={"topology": base.topology.model_copy(update={"gpu_mem_gib": 80.0})})
    topo = recipe.topology
    assert rescale.plan_geometry(recipe, rescale.Request(topo.gpus, topo.nodes, 80.0))
    with pytest.raises(ReproError, match="fixed by the loss reduction"):
        rescale.plan_geometry(recipe, rescale.Request(topo.gpus, topo.nodes, 40.0))
