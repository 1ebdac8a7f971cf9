"""The Granite-4.0-H PR #642 twins: trainer rules (fast), twin commands, and the parity table over the goldens.

The ablation table is a parity experiment: cp8 / cp8-ep8 / cp8-gas2 / cp4-dp2 / cp1-dp4-ep4 train the same
4 sequences per step and should land at the same loss. The twins share model, data and effective batch, so
their recorded golden curves must agree with each other to float tolerance (``test_parity_rows_agree``);
``repro equivalence`` proves the same per row, with a negative control that must fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from repro import catalog  # noqa: E402
from repro.base.errors import ReproError  # noqa: E402

RUNNER = "harness/granite_cp/sft_trainer.py"
GRANITE = sorted(r.id for r in catalog.load_all().values() if r.twin and r.twin.runner == RUNNER)
PARITY = [i for i in GRANITE if "ebs4" in i]


def test_all_seven_rows_have_a_twin():
    ids = sorted(r.id for r in catalog.load_all().values() if r.id.startswith("fms-granite4-h-"))
    assert len(ids) == 7 and ids == GRANITE
    assert len(PARITY) == 5


@pytest.mark.parametrize("rid", GRANITE)
def test_twin_keeps_the_row_structure(rid):
    r = catalog.get(rid)
    g = r.twin.geometry
    world, cp = r.topology.gpus, r.parallel.cp or 1
    assert (g.cp > 1) == (cp > 1), "a CP row keeps context parallelism, cp1 stays without"
    assert (g.dp > 1) == (world // cp > 1), "data parallel rows keep data parallelism"
    assert g.effective == r.batch.effective, "the published effective batch is kept"
    assert g.grad_accum == r.batch.grad_accum and g.processes <= 4
    assert r.twin.cp_flags == ["--mcp"]
    if (r.parallel.ep or 1) > 1:
        assert any(o.flag == "--fast_moe" for o in r.twin.overrides)


@pytest.mark.parametrize("rid", GRANITE)
def test_twin_command_rewrites_the_cp_degree_everywhere(rid, tmp_path):
    from repro.twin.command import build

    r = catalog.get(rid)
    cmd = build(r, r.twin.geometry, tmp_path, [], on_gpu=False)
    [config] = [v for v in cmd.files.values() if "parallelism_config" in v]
    data = yaml.safe_load(config)
    assert data["parallelism_config"] == {"parallelism_config_cp_size": r.twin.geometry.cp,
                                          "parallelism_config_dp_shard_size": r.twin.geometry.dp}
    assert data["num_processes"] == r.twin.geometry.processes and data["fsdp_config"]["fsdp_version"] == "2"
    argv = cmd.argv
    if r.twin.geometry.cp > 1:
        assert argv[argv.index("--mcp") + 1] == str(r.twin.geometry.cp)
    else:
        assert "--mcp" not in argv  # upstream refuses --mcp 1
    assert argv[argv.index("--use_flash_attn") + 1] == "False"


def test_published_flat_parallelism_keys_are_refused_by_accelerate(tmp_path):
    """The seed's block puts parallelism_config_* at the top level; accelerate's config loader rejects that."""
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import load_config_from_file

    r = catalog.get(GRANITE[0])
    published = tmp_path / "published.yaml"
    published.write_text(r.published.blocks[0].text)
    with pytest.raises(ValueError, match="unknown keys"):
        load_config_from_file(str(published))
    stored = catalog.config_file_path(r.id, r.config_files[0].file)
    assert load_config_from_file(str(stored)).parallelism_config["parallelism_config_cp_size"] == 8


# ---------------------------------------------------------------------------------------------------
# trainer rules (pure)

st = pytest.importorskip("harness.granite_cp.sft_trainer", reason="the trainer imports the fms twin")
from harness.granite_cp.layout import make_layout  # noqa: E402


def test_twin_only_flag_is_stripped_before_the_upstream_parse():
    assert st.split_twin_flags(["--a", "1", "--twin_cp_attention", "local", "--b"]) == (["--a", "1", "--b"], "local")
    assert st.split_twin_flags(["--twin_cp_attention=ring"]) == ([], "ring")
    with pytest.raises(ReproError, match="expected ring or local"):
        st.split_twin_flags(["--twin_cp_attention", "zigzag"])


def test_mcp_is_positional_with_plugin_defaults():
    assert st.parse_mcp(["8"]) == st.MCP(8, "allgather", False)
    assert st.parse_mcp(["4", "serial", "True"]) == st.MCP(4, "serial", True)
    assert st.parse_mcp(None) is None
    with pytest.raises(ReproError, match="can't be one"):
        st.parse_mcp(["1"])
    with pytest.raises(ReproError, match="must be an integer"):
        st.parse_mcp(["x"])


def test_parallelism_from_the_launcher_environment():
    env = {"ACCELERATE_USE_PARALLELISM_CONFIG": "true", "PARALLELISM_CONFIG_CP_SIZE": "2",
           "PARALLELISM_CONFIG_DP_SHARD_SIZE": "2"}
    lay = st.parallelism_from_env(env, 4)
    assert (lay.cp, lay.dp) == (2, 2)
    assert st.parallelism_from_env({}, 4).cp == 1
    with pytest.raises(ReproError, match="does not equal the world size 2"):
        st.parallelism_from_env(env, 2)


@pytest.mark.parametrize(
    "mcp,cp,mamba,fsdp,needle",
    [(None, 2, True, "2", "--mcp is not set"), (st.MCP(2), 1, True, "2", "without parallelism_config_cp_size"),
     (st.MCP(4), 2, True, "2", "differ"), (st.MCP(2), 2, True, "1", "needs FSDP2"), (st.MCP(2), 2, True, None, "needs FSDP2")],
)
def test_cp_flag_rules_are_one_line_errors(mcp, cp, mamba, fsdp, needle):
    with pytest.raises(ReproError, match=needle) as err:
        st.check_cp_flags(mcp, make_layout(2, cp), mamba, True, fsdp)
    assert "\n" not in str(err.value)


def test_cp_flag_rules_accept_the_published_combinations():
    st.check_cp_flags(st.MCP(2), make_layout(2, 2), True, True, "2")
    st.check_cp_flags(None, make_layout(2, 1), True, True, "2")  # cp1-dp4-ep4: no --mcp


class _Tok:
    eos_token = "</s>"

    def __call__(self, text, max_length=None, truncation=False):
        ids = [1] + [len(w) for w in text.split()]
        return type("E", (), {"input_ids": ids[:max_length] if truncation else ids})()


def test_default_input_output_format_masks_the_input():
    ex = st.input_output_example(_Tok(), {"input": "a bb", "output": "ccc"}, 16, "f")
    assert ex["input_ids"] == [1, 1, 2, 7]  # "a bb ccc</s>": the joining space, eos glued to the output
    assert ex["labels"] == [-100, -100, -100, 7]
    with pytest.raises(ReproError, match="should contain input and output"):
        st.input_output_example(_Tok(), {"text": "x"}, 16, "f")


# ---------------------------------------------------------------------------------------------------
# the parity table, over the recorded goldens


def _golden_loss(rid: str) -> dict[str, float]:
    from repro.twin.golden import GOLDEN_DIR

    files = sorted((GOLDEN_DIR / rid).glob("*.json"))
    assert files, f"{rid}: no golden recorded (repro golden record {rid})"
    return json.loads(files[0].read_text())["metrics"]["loss"]["values"]


def test_parity_rows_agree():
    """cp8, cp8-ep8, cp8-gas2, cp4-dp2 and cp1-dp4-ep4 twins: one curve, to float tolerance."""
    curves = {rid: _golden_loss(rid) for rid in PARITY}
    ref = curves[next(i for i in PARITY if "cp1-" in i)]
    for rid, values in curves.items():
        assert values.keys() == ref.keys()
        worst = max(abs(values[s] - ref[s]) / abs(ref[s]) for s in ref)
        assert worst < 1e-4, f"{rid} departs from the cp1 row by {worst:.2e}"
    first, last = ref[min(ref, key=int)], ref[max(ref, key=int)]
    assert last < first  # the curve moves, so agreement is not agreement of constants


# ---------------------------------------------------------------------------------------------------
# one-line refusals through the real launcher


@pytest.mark.slow
def test_mismatched_mcp_degree_is_refused_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "repro", "run", GRANITE[-1], "--scale", "twin", "--out",
                           str(tmp_path / "run"), "--set", "mcp=4"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode != 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert "--mcp 4 and parallelism_config_cp_size 2 differ" in log
    assert "Traceback" not in log.split("--mcp 4 and")[0].splitlines()[-1]
