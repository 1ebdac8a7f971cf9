"""Rendering: launcher topology flags, rewritten configs, and shell strings that round-trip."""

import shlex

import yaml

from repro.catalog import loader as catalog
from repro.plan import rescale
from repro.plan.planner import make_plan
from repro.plan.render import quote, rewrite_accelerate_yaml


def plan(rid, gpus, nodes=1, **kw):
    return make_plan(catalog.get(rid), rescale.Request(gpus, nodes), **kw)


def test_multi_node_accelerate_gets_one_command_per_node_with_its_rank():
    p = plan("tulu3-8b-sft", 16, 2, main_addr="10.0.0.1")
    assert [c["node_rank"] for c in p["commands"]] == [0, 1]
    for c in p["commands"]:
        argv = c["argv"]
        assert argv[argv.index("--machine_rank") + 1] == str(c["node_rank"])
        assert argv[argv.index("--num_processes") + 1] == "16"
        assert argv[argv.index("--main_process_ip") + 1] == "10.0.0.1"
        assert argv[argv.index("--gradient_accumulation_steps") + 1] == "8"


def test_shell_string_round_trips_through_shlex():
    p = plan("tulu3-8b-sft", 8)
    node = p["commands"][0]
    words = shlex.split(node["shell"])
    env = [w for w in words if w.startswith("WANDB_MODE=")]
    assert words[len(env):] == node["argv"]


def test_variables_stay_expandable_but_nothing_else_is():
    assert quote("$ENCODER_PATH") == '"$ENCODER_PATH"'
    assert quote("data/${NAME}/x") == '"data/${NAME}/x"'
    assert quote("$(rm -rf /)") == "'$(rm -rf /)'"
    assert quote('a "b" $C') == shlex.quote('a "b" $C')


def test_accelerate_yaml_rewrite_keeps_layout_and_changes_topology_only():
    text = "num_processes: 8 # all\nnum_machines: 1\nparallelism_config_cp_size: 2\nmixed_precision: bf16\n"
    geom = rescale.Geometry(gpus=4, nodes=1, processes=4, dp=2, cp=2, tp=1, ep=1, per_device=1, grad_accum=1,
                            effective=2, reserved_gpus=0, ranks_per_node=(4,))
    out = rewrite_accelerate_yaml(text, geom)
    assert out == "num_processes: 4 # all\nnum_machines: 1\nparallelism_config_cp_size: 2\nmixed_precision: bf16\n"
    assert yaml.safe_load(out)["num_processes"] == 4
