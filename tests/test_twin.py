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
from repro.errors import ReproError
from repro.metrics import MetricRecord

RECIPE = "tulu3-8b-sft"


def test_twin_command_keeps_the_published_flags_and_launcher(tmp_path):
    run = twin.prepare(catalog.get(RECIPE), tmp_path, ["learning_rate=3e-4"])
    argv = run.argv
    assert argv[1:3] == ["launch", "--num_processes"] and argv[3] == "2"
    assert "--multi_gpu" in argv  # never --cpu with 2 processes: that silently runs one
    assert argv[argv.index("--model_name_or_path") + 1] == "meta-llama/Llama-3.1-8B"  # hub id resolved offline
    assert argv[argv.index("--reduce_loss") + 1] == "sum"
    assert argv[argv.index("--gradient_accumulation_steps") + 1] == "2"
    assert argv[argv.index("--learning_rate") + 1] == "3e-4"  # the user's --set wins over the twin override
    assert argv[argv.index("--output_dir") + 1] == str(tmp_path / "train" / "sft_8b")
    assert run.env["REPRO_TWIN_ASSET_MAP"].endswith("asset_map.json")
    assert run.sets == [("--learning_rate", ("3e-4",))]


def test_set_rejects_malformed_and_unknown_flags(tmp_path):
    with pytest.raises(ReproError, match="expected KEY=VALUE"):
        twin.parse_sets(["learning_rate"])
    with pytest.raises(ReproError, match="no flag --learnin_rate"):
        twin.prepare(catalog.get(RECIPE), tmp_path, ["learnin_rate=1"])


def test_recipe_without_twin_is_refused_with_the_list():
    with pytest.raises(ReproError, match="has no twin yet; recipes with a twin: tulu3-70b-sft, tulu3-8b-sft"):
        twin.require_twin(catalog.get("tulu3-8b-dpo"))


def _records(losses):
    return [MetricRecord(step=i + 1, loss=v, lr=1e-3, tokens=10) for i, v in enumerate(losses)]


def test_golden_refuses_dirty_tree_and_non_finite_values(tmp_path):
    with pytest.raises(ReproError, match="dirty working tree"):
        golden.record(RECIPE, _records([1.0, 2.0]), "k", {"project_tree_dirty": True}, tmp_path)
    with pytest.raises(ReproError, match="NaN/inf"):
        golden.record(RECIPE, _records([1.0, math.nan]), "k", {"project_tree_dirty": False}, tmp_path)
    path = golden.record(RECIPE, _records([1.0, 2.0]), "k", {"project_tree_dirty": False}, tmp_path)
    assert json.loads(path.read_text())["metrics"]["loss"]["values"] == {"1": 1.0, "2": 2.0}


def test_golden_compare_lanes_and_worst_step(tmp_path):
    ref = golden.to_golden(_records([10.0, 9.0, 8.0]), "env-a", {})
    same = golden.compare(_records([10.0, 9.0, 8.0]), ref, "env-a", "src")
    assert all(c.status == "PASS" for c in same)
    moved = golden.compare(_records([10.0, 9.5, 8.0]), ref, "env-a", "src")
    loss = next(c for c in moved if c.name == "loss vs golden")
    assert loss.status == "FAIL" and "worst step 2: run 9.5 vs reference 9" in loss.message
    tiny = golden.compare(_records([10.0, 9.0001, 8.0]), ref, "env-b", "src")  # other env: approximate lane only
    assert next(c for c in tiny if c.name == "loss vs golden").status == "PASS"
    assert golden.compare(_records([1.0]), None, "k", "src")[0].status == "NOT-MEASURED"


def test_equivalence_layouts_follow_the_loss_semantics():
    lay = layouts(catalog.get(RECIPE))
    assert [(x.geometry.processes, x.geometry.per_device, x.geometry.grad_accum, x.role) for x in lay] == [
        (1, 1, 4, "reference"), (2, 1, 2, "equivalent"), (4, 1, 1, "equivalent"), (1, 4, 1, "negative control")]
    assert compare([100.0, 50.0], [100.0, 50.0000001])["max_rel"] < 1e-8
    assert compare([100.0, 50.0], [400.0, 200.0])["worst_step"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("rid", ["tulu3-8b-sft", "tulu3-70b-sft"])
def test_twin_passes_against_its_golden(rid, tmp_path, capsys):
    assert main(["run", rid, "--scale", "twin", "--out", str(tmp_path), "--quiet"]) == 0
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["passed"] and {c["name"] for c in verdict["checks"]} >= {"loss vs golden", "finite loss"}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["plan"]["effective_batch"] == 4 and manifest["plan"]["processes"] == 2
    assert (tmp_path / "report.md").read_text().count("It cannot prove") == 1
    assert "This was the twin" in capsys.readouterr().out


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
def test_equivalence_passes_and_its_negative_control_fails(tmp_path):
    assert main(["equivalence", RECIPE, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "equivalence.json").read_text())
    rows = {r["role"]: r for r in result["layouts"]}
    assert all(r["max_rel"] <= 1e-5 for r in result["layouts"] if r["role"] != "negative control")
    assert rows["negative control"]["max_rel"] > 1e-2  # shown able to fail


def test_plain_run_without_gpu_or_twin_prints_the_plan(capsys, monkeypatch):
    monkeypatch.setattr(twin, "cuda_available", lambda: False)
    assert main(["run", "fastllm-mistral-7b-pretrain"]) == 0
    out = capsys.readouterr().out
    assert "no GPU on this machine" in out and "128 x H100" in out
