"""Twins: the command is the recipe's own (shrunk as declared), the verdict can pass and fail,
goldens refuse bad provenance, equivalence holds and its negative control fails."""

import json
import math

import pytest

from repro.catalog import loader as catalog
from repro.twin import golden
from repro.twin import runner as twin
from repro.cli import main
from repro.twin.equivalence import compare, layouts
from repro.base.errors import ReproError
from repro.base.metrics import MetricRecord
from repro.base.paths import ROOT

RECIPE = "tulu3-8b-sft"


@pytest.mark.needs_torch
def test_twin_command_keeps_the_published_flags_and_launcher(tmp_path):
    run = twin.prepare(catalog.get(RECIPE), tmp_path, ["learning_rate=3e-4"])
    argv = run.argv
    assert argv[1] == "launch" and argv[argv.index("--num_processes") + 1] == "2"
    assert argv[argv.index("--num_machines") + 1] == "1" and argv[argv.index("--mixed_precision") + 1] == "no"
    assert "--use_deepspeed" not in argv  # the CPU overlay: DeepSpeed needs CUDA
    assert "--multi_gpu" in argv  # never --cpu with 2 processes: that silently runs one
    assert argv[argv.index("--model_name_or_path") + 1] == "meta-llama/Llama-3.1-8B"  # hub id resolved offline
    assert argv[argv.index("--reduce_loss") + 1] == "sum"
    assert argv[argv.index("--gradient_accumulation_steps") + 1] == "2"
    assert argv[argv.index("--learning_rate") + 1] == "3e-4"  # the user's --set wins over the twin override
    assert argv[argv.index("--output_dir") + 1] == str(tmp_path / "train" / "sft_8b")
    assert run.env["REPRO_TWIN_ASSET_MAP"] == str(tmp_path / "assets.json")
    assert set(run.asset_keys) == {"bpe-llama3-2048", "llama-3.1-8b-twin", "tulu3-sft-mixture-twin"}
    assert run.sets == [("--learning_rate", ("3e-4",))]


@pytest.mark.needs_torch
def test_set_rejects_malformed_and_unknown_flags(tmp_path):
    with pytest.raises(ReproError, match="expected KEY=VALUE"):
        twin.parse_sets(["learning_rate"])
    with pytest.raises(ReproError, match="no flag --learnin_rate"):
        twin.prepare(catalog.get(RECIPE), tmp_path, ["learnin_rate=1"])


def test_recipe_without_twin_is_refused_with_the_list():
    without = catalog.get("tulu3-8b-dpo").model_copy(update={"twin": None})  # every recipe has a twin
    with pytest.raises(ReproError, match="has no twin yet; recipes with a twin: .*tulu3-8b-sft"):
        twin.require_twin(without)


def _records(losses):
    return [MetricRecord(step=i + 1, loss=v, lr=1e-3, tokens=10) for i, v in enumerate(losses)]


METRICS = catalog.get(RECIPE).twin.golden
KEYS = {"a": "1"}


def test_golden_refuses_dirty_tree_and_non_finite_values(tmp_path):
    with pytest.raises(ReproError, match="dirty working tree"):
        golden.record(RECIPE, _records([1.0, 2.0]), METRICS, "k", KEYS, {"project_tree_dirty": True}, tmp_path)
    with pytest.raises(ReproError, match="NaN/inf"):
        golden.record(RECIPE, _records([1.0, math.nan]), METRICS, "k", KEYS, {"project_tree_dirty": False}, tmp_path)
    path = golden.record(RECIPE, _records([1.0, 2.0]), METRICS, "k", KEYS, {"project_tree_dirty": False}, tmp_path)
    data = json.loads(path.read_text())
    assert data["metrics"]["loss"]["values"] == {"1": 1.0, "2": 2.0} and data["assets"] == KEYS


def test_golden_compare_lanes_and_worst_step(tmp_path):
    ref = golden.to_golden(_records([10.0, 9.0, 8.0]), METRICS, "env-a", KEYS, {})
    same = golden.compare(_records([10.0, 9.0, 8.0]), ref, METRICS, "env-a", KEYS, "src")
    assert all(c.status == "PASS" for c in same)
    moved = golden.compare(_records([10.0, 9.5, 8.0]), ref, METRICS, "env-a", KEYS, "src")
    loss = next(c for c in moved if c.name == "loss vs golden")
    assert loss.status == "FAIL" and "worst step 2: run 9.5 vs reference 9" in loss.message
    tiny = golden.compare(_records([10.0, 9.0001, 8.0]), ref, METRICS, "env-b", KEYS, "src")  # approximate lane only
    assert next(c for c in tiny if c.name == "loss vs golden").status == "PASS"
    assert golden.compare(_records([1.0]), None, METRICS, "k", KEYS, "src")[0].status == "NOT-MEASURED"


def test_equivalence_layouts_follow_the_loss_semantics():
    lay = layouts(catalog.get(RECIPE))
    assert [(x.geometry.processes, x.geometry.per_device, x.geometry.grad_accum, x.role) for x in lay] == [
        (1, 1, 4, "reference"), (2, 1, 2, "equivalent"), (4, 1, 1, "equivalent"), (1, 4, 1, "negative control")]
    assert compare([100.0, 50.0], [100.0, 50.0000001])["max_rel"] < 1e-8
    assert compare([100.0, 50.0], [400.0, 200.0])["worst_step"] == 1


TWINS = sorted(r.id for r in catalog.load_all().values() if r.twin)
EQUIVALENCE_ALL = sorted(r.id for r in catalog.load_all().values() if r.twin and r.twin.equivalence)
#: The suite runs one equivalence set per trainer (CI time is budgeted: each set is 3-5 twin runs). Layouts
#: test how a trainer reduces its loss over processes x per-device x accumulation, which the recipes sharing
#: it share; the rows of one trainer are tied together by their goldens instead (the granite parity table,
#: Fast-LLM's two batch spellings). `repro equivalence ID` runs any of the others.
EQUIVALENCE = [
    "tulu3-8b-sft", "tulu3-8b-dpo", "tulu3-70b-dpo", "tulu3-8b-rm",
    "fastllm-mistral-7b-pretrain", "fms-llama2-7b-sft-fsdp",
    "fms-granite4-h-tiny-cp8-ebs4-s8192-gas2",  # a CP row: its control is torch's silent per-chunk attention
    "toolgen-llama3-8b-memorization", "acerag-llama2-7b-pretrain",
]


def _trainer(rid: str) -> str:
    return catalog.get(rid).twin.runner


def test_every_trainer_with_an_equivalence_set_has_one_in_the_suite():
    assert set(EQUIVALENCE) <= set(EQUIVALENCE_ALL)
    assert {_trainer(r) for r in EQUIVALENCE} == {_trainer(r) for r in EQUIVALENCE_ALL}
    assert len({_trainer(r) for r in EQUIVALENCE}) == len(EQUIVALENCE)  # one each, no more


@pytest.mark.slow
@pytest.mark.parametrize("rid", TWINS)
def test_twin_passes_against_its_golden(rid, twin_run):
    recipe = catalog.get(rid)
    code, tmp_path, stdout = twin_run(rid)
    assert code == 0, stdout[-2000:]
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    names = {c["name"] for c in verdict["checks"]}
    assert verdict["passed"] and {"step sequence", "no divergence"} <= names
    assert not recipe.twin.golden or {f"{m} vs golden" for m in recipe.twin.golden} <= names
    if (ROOT / "expected" / "upstream" / rid / "cpu.json").is_file():  # the real upstream's curve: compared, passed
        status = {c["name"]: c["status"] for c in verdict["checks"]}
        assert all(status.get(f"{m} vs upstream") == "PASS" for m in recipe.twin.upstream.tolerance), status
        assert status.get("steps vs upstream") == "PASS", status
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    g = recipe.twin.geometry
    assert manifest["plan"]["effective_batch"] == g.effective and manifest["plan"]["processes"] == g.processes
    assert set(manifest["assets"]) == set(recipe.twin.assets)
    assert (tmp_path / "report.md").read_text().count("It cannot prove") == 1
    assert not stdout or "This was the twin" in stdout  # empty: a stage a chained twin built this session


@pytest.mark.slow
def test_a_changed_knob_fails_the_verdict_naming_the_worst_step(tmp_path):
    assert main(["run", RECIPE, "--scale", "twin", "--out", str(tmp_path), "--quiet",
                 "--set", "learning_rate=2e-3"]) == 1
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    loss = next(c for c in verdict["checks"] if c["name"] == "loss vs golden")
    assert not verdict["passed"] and loss["status"] == "FAIL" and "worst step" in loss["message"]
    assert json.loads((tmp_path / "manifest.json").read_text())["overrides"] == [
        {"flag": "--learning_rate", "values": ["2e-3"]}]


@pytest.mark.slow
@pytest.mark.parametrize("rid", EQUIVALENCE)
def test_equivalence_passes_and_its_negative_control_fails(rid, tmp_path):
    spec = catalog.get(rid).twin.equivalence
    assert main(["equivalence", rid, "--out", str(tmp_path), "--quiet"]) == 0
    result = json.loads((tmp_path / "equivalence.json").read_text())
    rows = {r["role"]: r for r in result["layouts"]}
    assert all(r["max_rel"] <= spec.max_rel for r in result["layouts"] if r["role"] != "negative control")
    assert rows["negative control"]["max_rel"] > spec.max_rel  # shown able to fail


def test_plain_run_without_gpu_or_twin_prints_the_plan(capsys, monkeypatch):
    monkeypatch.setenv("REPRO_FORCE_CPU", "1")
    real = catalog.get  # every recipe has a twin: hide one
    monkeypatch.setattr(catalog, "get", lambda rid: real(rid).model_copy(update={"twin": None}))
    without = catalog.get("tulu3-8b-dpo")
    assert main(["run", without.id]) == 0
    out = capsys.readouterr().out
    assert "no GPU on this machine" in out and f"{without.topology.gpus} x {without.topology.gpu}" in out


def test_cpu_overlays_start_real_processes_per_launcher(tmp_path):
    """accelerate: --multi_gpu (never --cpu for N > 1); torchrun: --standalone; deepspeed: a hostfile
    `localhost slots=N` with --no_ssh, since the CPU accelerator reports one device."""
    from repro.catalog.schema import Arg
    from repro.twin.command import overlay

    written: dict[str, str] = {}
    acc = overlay("accelerate", [Arg(flag="--use_deepspeed"), Arg(flag="--num_processes", values=("2",))], 2,
                  False, tmp_path, written)
    assert [a.flag for a in acc][-1] == "--multi_gpu" and "--use_deepspeed" not in [a.flag for a in acc]
    assert overlay("accelerate", [], 1, False, tmp_path, written)[-1].flag == "--cpu"
    tr = overlay("torchrun", [Arg(flag="--nnodes", values=("2",)), Arg(flag="--nproc_per_node", values=("8",)),
                              Arg(flag="--rdzv_endpoint", values=("h:1",))], 4, False, tmp_path, written)
    assert [a.flag for a in tr] == ["--standalone", "--nproc_per_node"] and tr[1].values == ("4",)
    ds = overlay("deepspeed", [Arg(flag="--include", values=("localhost:0,1,2,3",))], 2, False, tmp_path, written)
    flags = {a.flag: a.values for a in ds}
    assert flags["--include"] == ("localhost:0,1",) and "--no_ssh" in flags
    assert written[flags["--hostfile"][0]] == "localhost slots=2\n"
    gpu = overlay("deepspeed", [], 2, True, tmp_path, {})
    assert "--hostfile" not in {a.flag for a in gpu}


@pytest.mark.slow
def test_twin_clips_like_the_published_run_and_removing_the_clip_is_caught(tmp_path, twin_run):
    """The published run clipped at 1.0 through DeepSpeed's gradient_clipping "auto"; the CPU twin must
    too (config_effects -> --clip_grad_norm 1.0). Without the clip the check and the golden both fail."""
    code, clip, _ = twin_run(RECIPE)
    assert code == 0
    records = [json.loads(x) for x in (clip / "train" / "sft_8b" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["grad_norm"] for r in records) > 1.0  # the clip is not vacuous: raw norms exceed it
    assert max(r["extra"]["grad_norm_after_clip"] for r in records) <= 1.0 + 1e-4
    assert "--clip_grad_norm 1.0" in (clip / "manifest.json").read_text()
    assert main(["run", RECIPE, "--scale", "twin", "--out", str(tmp_path / "noclip"), "--quiet",
                 "--set", "clip_grad_norm=-1"]) == 1
    checks = {c["name"]: c for c in json.loads((tmp_path / "noclip" / "verdict.json").read_text())["checks"]}
    assert checks["max_at_most extra.grad_norm_after_clip"]["status"] == "FAIL"
    assert checks["loss vs golden"]["status"] == "FAIL"


@pytest.mark.slow
def test_a_value_the_trainer_refuses_is_its_own_message_and_exit_2_through_torchrun(tmp_path, capsys):
    """torchrun turns a child's exit 2 into 1; the trainer's recorded refusal keeps the contract."""
    rid = "fastllm-mistral-7b-pretrain-small-cluster"
    assert catalog.get(rid).command.launcher.kind == "torchrun"
    assert main(["run", rid, "--scale", "twin", "--out", str(tmp_path), "--quiet", "--set", "window_size=128"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the trainer refused its input: --window_size=128 is larger" in err[0]
    assert "torchrun" not in err[0] and "exited 1" not in err[0]
