"""repro submit: sbatch scripts for every recipe pass bash -n and ShellCheck, every launcher takes its
node rank, main address and port from Slurm, values stay shell-quoted, bad options exit 2; the
two-node twin commands per launcher are right, and a two-node loopback twin equals the single-node one."""

import contextlib
import io
import math
import re
import shlex
import subprocess

import pytest

from repro.catalog import loader as catalog
from repro.catalog.schema import Arg
from repro.cli import main
from repro.plan import rescale, slurm
from repro.twin.command import NodeGroup, overlay
from tests import debian_tools

ALL = sorted(catalog.load_all())


def submit(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["submit", *argv, "--dry-run"])
    return rc, out.getvalue()


def published(rid: str) -> tuple[str, ...]:
    t = catalog.get(rid).topology
    return "--nodes", str(t.nodes), "--gpus-per-node", str(math.ceil(t.gpus / t.nodes)), "--gpus", str(t.gpus)


def node_lines(text: str) -> list[str]:
    return slurm.node_script(text).splitlines()


def launcher_words(text: str, word: str) -> list[str]:
    line = next(ln for ln in node_lines(text) if re.search(rf"(^|\s){word}\s", ln) and not ln.lstrip().startswith("#"))
    return shlex.split(line)


@pytest.fixture(scope="module")
def shellcheck():
    why = debian_tools.require("shellcheck")
    if why:
        pytest.skip(f"ShellCheck unavailable ({why})")
    return "shellcheck"


@pytest.mark.parametrize("rid", ALL)
def test_every_recipe_script_passes_bash_n_and_shellcheck(rid, shellcheck, tmp_path):
    rc, text = submit(rid, *published(rid), "--time", "1-00:00:00", "--partition", "gpu")
    assert rc == 0 and text.startswith("#!/bin/bash\n#SBATCH")
    node = slurm.node_script(text)
    assert node, "the node script is missing"
    (tmp_path / "job.sbatch").write_text(text)
    (tmp_path / "node.sh").write_text(node)
    for path in ("job.sbatch", "node.sh"):
        syntax = subprocess.run(["bash", "-n", path], cwd=tmp_path, capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr
        check = subprocess.run([shellcheck, "-s", "bash", path], cwd=tmp_path, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
    nodes = catalog.get(rid).topology.nodes
    assert f"#SBATCH --nodes={nodes}" in text and f"srun --nodes={nodes} --ntasks={nodes}" in text
    assert "#SBATCH --time=1-00:00:00" in text and "#SBATCH --partition=gpu" in text


def test_shellcheck_can_fail(shellcheck, tmp_path):
    (tmp_path / "bad.sh").write_text("#!/bin/bash\nrm -rf $DIR/x\n")
    assert subprocess.run([shellcheck, str(tmp_path / "bad.sh")], capture_output=True).returncode != 0


def test_accelerate_nodes_take_rank_address_and_port_from_slurm():
    _, text = submit("tulu3-8b-sft", "--nodes", "8", "--gpus-per-node", "8")
    assert 'MAIN_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"' in text
    assert 'export NODE_RANK="$SLURM_NODEID"' in node_lines(text)
    line = next(ln for ln in node_lines(text) if "accelerate launch" in ln)
    assert '--machine_rank "$NODE_RANK" --main_process_ip "$MAIN_ADDR" --main_process_port "$MAIN_PORT"' in line
    assert "--num_machines 8 --num_processes 64" in line
    # half the nodes: the plan doubles accumulation, the ranks still come from Slurm
    _, half = submit("tulu3-8b-sft", "--nodes", "4", "--gpus-per-node", "8")
    words = launcher_words(half, "accelerate")
    assert words[words.index("--num_machines") + 1] == "4" and words[words.index("--gradient_accumulation_steps") + 1] == "4"


def test_torchrun_and_fast_llm_use_c10d_rendezvous_at_the_first_host():
    _, text = submit("fastllm-mistral-7b-pretrain", "--nodes", "16", "--gpus-per-node", "8")
    line = next(ln for ln in node_lines(text) if ln.startswith("torchrun"))
    assert '--nnodes 16 --rdzv-backend c10d --rdzv-endpoint "$MAIN_ADDR:$MAIN_PORT" --rdzv-id "$SLURM_JOB_ID"' in line
    assert "--nproc-per-node=8" in line and "--node-rank" not in line  # the recipe's spelling, no static rank
    _, acerag = submit("acerag-llama2-7b-pretrain", "--nodes", "2", "--gpus-per-node", "4")
    words = launcher_words(acerag, "torchrun")
    assert words[words.index("--rdzv_endpoint") + 1] == "$MAIN_ADDR:$MAIN_PORT"
    assert words[words.index("--nproc_per_node") + 1] == "4" and words[words.index("--nnodes") + 1] == "2"


def test_deepspeed_builds_its_hostfile_from_the_node_list():
    _, text = submit("toolgen-llama3-8b-e2e", "--nodes", "2", "--gpus-per-node", "4")
    lines = node_lines(text)
    assert any(ln.startswith('scontrol show hostnames "$SLURM_JOB_NODELIST"') and "slots=4" in ln for ln in lines)
    words = launcher_words(text, "deepspeed")
    assert "--no_ssh" in words and words[words.index("--node_rank") + 1] == "$NODE_RANK"
    assert words[words.index("--master_addr") + 1] == "$MAIN_ADDR" and "--include" not in words
    assert "srun --nodes=2" in text
    # a recipe naming DeepSpeed's own multi-node launcher: run it once, on the first node, no srun
    recipe = catalog.get("toolgen-llama3-8b-e2e")
    launcher = recipe.command.launcher.model_copy(update={"args": (*recipe.command.launcher.args,
                                                                   Arg(flag="--launcher", values=("pdsh",)))})
    ssh = recipe.model_copy(update={"command": recipe.command.model_copy(update={"launcher": launcher})})
    geom = rescale.plan_geometry(ssh, rescale.Request(8, 2))
    step = slurm.node_step(ssh, geom, {}, slurm.Options(2, 4))
    assert not step.lines and any("--launcher pdsh" in ln and "--no_ssh" not in ln for ln in step.batch_lines)
    script = slurm.script(slurm.Options(2, 4), step, "/w", {}, [])
    assert "srun" not in script and "slots=4" in script


def test_rlvr_starts_the_ray_head_on_the_first_node_and_workers_join_it():
    _, text = submit("tulu3-70b-rlvr", *published("tulu3-70b-rlvr"))
    node = slurm.node_script(text)
    assert 'if [ "$NODE_RANK" -eq 0 ]; then' in node
    assert 'ray start --head --node-ip-address="$MAIN_ADDR" --port=6379' in node
    assert 'ray start --address="$MAIN_ADDR:6379"' in node and '[ "$alive" -ge 6 ]' in node
    assert "ray_node_setup.sh" not in node and "BEAKER_REPLICA_RANK" not in node  # Beaker's bring-up replaced
    assert node.index("ppo_vllm_thread_ray_gtrl.py") < node.index("ray stop")


def test_values_are_shell_quoted_not_pasted(tmp_path):
    nasty = "a b'c $(touch PWNED) \"d\""
    rc, text = submit("tulu3-8b-sft", "--nodes", "1", "--gpus-per-node", "8", "--set", f"exp_name={shlex.quote(nasty)}")
    assert rc == 0
    words = launcher_words(text, "accelerate")
    assert words[words.index("--exp_name") + 1] == nasty  # one word, exactly the value
    (tmp_path / "node.sh").write_text(slurm.node_script(text))
    assert subprocess.run(["bash", "-n", "node.sh"], cwd=tmp_path).returncode == 0
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("flag,value", [("--partition", "gpu; rm -rf /"), ("--time", "tomorrow"),
                                        ("--account", "a b")])
def test_bad_slurm_options_are_one_line_exit_2(flag, value, capsys):
    rc, _ = submit("tulu3-8b-sft", "--nodes", "1", "--gpus-per-node", "8", flag, value)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and value in err


def test_infeasible_or_incomplete_requests_exit_2(capsys):
    assert submit("tulu3-8b-sft", "--nodes", "1", "--gpus-per-node", "7")[0] == 2
    assert "no exact plan for 7 GPUs" in capsys.readouterr().err
    assert submit("tulu3-8b-sft", "--nodes", "2")[0] == 2
    assert "--gpus-per-node" in capsys.readouterr().err
    assert submit("fms-llama2-7b-sft-single-gpu", "--nodes", "2", "--gpus-per-node", "1", "--gpus", "2")[0] == 2


def test_twin_script_runs_repro_run_per_node_group(tmp_path):
    rc, one = submit("tulu3-8b-sft", "--scale", "twin", "--out", str(tmp_path))
    assert rc == 0 and "#SBATCH --cpus-per-task=2" in one and "--gpus-per-node" not in one
    words = launcher_words(one, "-m")
    assert words[words.index("run") + 1:words.index("run") + 4] == ["tulu3-8b-sft", "--scale", "twin"]
    assert words[words.index("--out") + 1] == str(tmp_path) and "--node-rank" not in words
    rc, two = submit("tulu3-8b-sft", "--scale", "twin", "--nodes", "2", "--out", str(tmp_path))
    words = launcher_words(two, "-m")
    assert words[words.index("--node-rank") + 1] == "$NODE_RANK" and words[words.index("--main-addr") + 1] == "$MAIN_ADDR"
    assert "#SBATCH --cpus-per-task=1" in two
    assert submit("tulu3-8b-sft", "--scale", "twin", "--nodes", "3")[0] == 2  # 2 processes do not split over 3


def test_twin_without_a_twin_is_refused(capsys, monkeypatch):
    real = catalog.get  # every recipe has a twin: hide one
    monkeypatch.setattr(catalog, "get", lambda rid: real(rid).model_copy(update={"twin": None}))
    without = catalog.get("tulu3-8b-dpo")
    assert submit(without.id, "--scale", "twin")[0] == 2
    assert "has no twin yet" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# two-node twin commands, per launcher (pure)


def test_two_node_twin_overlays_per_launcher(tmp_path):
    node1 = NodeGroup(nodes=2, rank=1, addr="127.0.0.1", port=29611)
    written: dict[str, str] = {}
    tr = overlay("torchrun", [Arg(flag="--nproc_per_node", values=("8",)), Arg(flag="--master_addr", values=("h",))],
                 4, False, tmp_path, written, node1)
    flags = {a.flag: a.values for a in tr}
    assert flags["--nnodes"] == ("2",) and flags["--nproc_per_node"] == ("2",)
    assert flags["--rdzv_backend"] == ("c10d",) and flags["--rdzv_endpoint"] == ("127.0.0.1:29611",)
    assert "--standalone" not in flags and "--master_addr" not in flags
    dash = overlay("fast-llm", [Arg(flag="--nproc-per-node", values=("8",))], 2, False, tmp_path, {}, node1)
    assert [a.flag for a in dash][:3] == ["--nnodes", "--rdzv-backend", "--rdzv-endpoint"]
    ds = overlay("deepspeed", [Arg(flag="--include", values=("localhost:0,1",))], 4, False, tmp_path, written, node1)
    flags = {a.flag: a.values for a in ds}
    assert flags["--node_rank"] == ("1",) and "--no_ssh" in flags and "--include" not in flags
    assert flags["--master_addr"] == ("127.0.0.1",) and flags["--master_port"] == ("29611",)
    assert written[flags["--hostfile"][0]] == "node-0 slots=2\nnode-1 slots=2\n"
    acc = overlay("accelerate", [Arg(flag="--machine_rank", values=("1",)), Arg(flag="--main_process_ip", values=("x",))],
                  2, False, tmp_path, {}, node1)
    flags = {a.flag: a.values for a in acc}
    assert flags["--main_process_ip"] == ("127.0.0.1",) and flags["--main_process_port"] == ("29611",)
    assert "--multi_gpu" in flags  # 2 processes in all, even though this node holds one


def test_two_node_twin_command_for_accelerate(tmp_path):
    from repro.twin import runner as twin

    recipe = catalog.get("tulu3-8b-sft")
    runs = [twin.prepare(recipe, tmp_path, node=NodeGroup(2, r, "127.0.0.1", 29612)) for r in (0, 1)]
    for rank, run in enumerate(runs):
        a = run.argv
        assert a[a.index("--num_machines") + 1] == "2" and a[a.index("--machine_rank") + 1] == str(rank)
        assert a[a.index("--num_processes") + 1] == "2" and a[a.index("--main_process_port") + 1] == "29612"
    with pytest.raises(Exception, match="do not split over 3 nodes"):
        twin.prepare(recipe, tmp_path, node=NodeGroup(3, 0, "127.0.0.1", 1))


@pytest.mark.slow
def test_two_node_loopback_twin_equals_the_single_node_curve(tmp_path, capsys):
    """Two accelerate node groups (machine ranks 0 and 1) on loopback train exactly like one node."""
    import json

    from repro.twin import golden
    from repro.twin import runner as twin
    from repro.twin.equivalence import compare

    rid = "tulu3-8b-sft"
    assert main(["run", rid, "--scale", "twin", "--nodes", "2", "--out", str(tmp_path / "two"), "--quiet"]) == 0
    assert "--machine_rank 1" in (tmp_path / "two" / "train-node1.log").read_text().splitlines()[0]
    two = golden.curve(list(twin.read_jsonl(tmp_path / "two" / "train" / "sft_8b" / "metrics.jsonl")), "loss")[1]
    ref = golden.find(rid, twin.env_key())
    if ref is not None:  # the recorded single-node curve of this environment
        one = [v for _, v in sorted((int(s), v) for s, v in ref["metrics"]["loss"]["values"].items())]
    else:
        assert main(["run", rid, "--scale", "twin", "--out", str(tmp_path / "one"), "--quiet"]) in (0, 1)
        one = golden.curve(list(twin.read_jsonl(tmp_path / "one" / "train" / "sft_8b" / "metrics.jsonl")), "loss")[1]
    stats = compare(one, two)
    assert stats["steps"] == 100 and stats["max_rel"] <= 1e-5, stats
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["plan"]["nodes"] == 2
