"""Declared launcher-side hooks of the upstream run (harness/upstream_hooks/sitecustomize.py) and the typed upstream
tolerance (a declared band after a step, a declared logging offset): each shown doing its one change and nothing
when not declared, and each part of the tolerance shown able to fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing

import pytest
from pydantic import ValidationError

from repro import ROOT
from repro.base.curves import FAIL, PASS
from repro.base.metrics import MetricRecord
from repro.catalog import loader as catalog
from repro.catalog.twin_schema import TwinUpstream, UpstreamCpuChange, UpstreamHook
from repro.twin import upstream_ref as reference

HOOKS_DIR = ROOT / "harness" / "upstream_hooks"
MEM = "toolgen-llama3-8b-memorization"

_PROBE = """
import json, sys, torch, transformers
cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
torch.manual_seed(0)
transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(sys.argv[1])
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.bfloat16)
dtype = str(m.dtype)
rows = []
for other in (1, 2):  # the RNG in two different states before the resize, as two unseeded upstream runs
    torch.manual_seed(other)
    m2 = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])
    m2.resize_token_embeddings(70)
    rows.append(m2.get_output_embeddings().weight[64:].float().sum().item())
print(json.dumps({"dtype": dtype, "rows": rows}))
"""


def _probe(tmp_path, hooks: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("REPRO_UPSTREAM_HOOKS", "REPRO_UPSTREAM_SEED")}
    env["PYTHONPATH"] = os.pathsep.join([str(HOOKS_DIR), env.get("PYTHONPATH", "")])
    if hooks is not None:
        env.update({"REPRO_UPSTREAM_HOOKS": hooks, "REPRO_UPSTREAM_SEED": "42"})
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "m")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}


@pytest.mark.needs_torch
def test_hooks_load_fp32_and_seed_the_resize_only_when_declared(tmp_path):
    plain = _probe(tmp_path / "a", None)
    assert plain["dtype"] == "torch.bfloat16"  # the upstream's hard-coded dtype, untouched without the hook
    assert plain["rows"][0] != plain["rows"][1]  # unseeded: every run draws other new rows
    hooked = _probe(tmp_path / "b", "fp32_weights,seed_before_resize")
    assert hooked["dtype"] == "torch.float32"
    assert hooked["rows"][0] == hooked["rows"][1]  # seeded right before the resize: the same draw
    assert "[repro upstream hook fp32_weights]" in hooked["stderr"]
    assert "[repro upstream hook seed_before_resize]" in hooked["stderr"]
    only_fp32 = _probe(tmp_path / "c", "fp32_weights")
    assert only_fp32["dtype"] == "torch.float32" and only_fp32["rows"][0] != only_fp32["rows"][1]


def test_an_unknown_hook_stops_the_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(HOOKS_DIR), "REPRO_UPSTREAM_HOOKS": "fp33_weights"}
    proc = subprocess.run([sys.executable, "-c", "print('ran')"], capture_output=True, text=True, env=env)
    assert "ran" not in proc.stdout and "unknown hook 'fp33_weights'" in proc.stderr


def test_the_schema_names_exactly_the_hooks_the_sitecustomize_defines():
    spec = __import__("importlib.util").util.spec_from_file_location("hooks_probe", HOOKS_DIR / "sitecustomize.py")
    module = __import__("importlib.util").util.module_from_spec(spec)
    os.environ.pop("REPRO_UPSTREAM_HOOKS", None)
    spec.loader.exec_module(module)
    assert set(module.HOOKS) == set(typing.get_args(UpstreamHook))
    assert sorted(p.name for p in HOOKS_DIR.iterdir() if p.suffix == ".py") == ["sitecustomize.py"]  # nothing else


def test_schema_refuses_an_unknown_hook_and_an_unseeded_seed_hook():
    with pytest.raises(ValidationError):
        UpstreamCpuChange.model_validate({"what": "x", "why": "y", "hooks": ["fp33_weights"]})
    with pytest.raises(ValidationError, match="REPRO_UPSTREAM_SEED"):
        UpstreamCpuChange.model_validate({"what": "x", "why": "y", "hooks": ["seed_before_resize"]})


def test_upstream_command_puts_the_hooks_first_only_when_declared(tmp_path):
    from repro.catalog.upstream_env import load_envs
    from repro.twin.guard import CHILD_PYTHONPATH
    from repro.upstream import run

    recipe = catalog.get(MEM)
    env = load_envs()["toolgen-6839374"]
    cmd = run.build(recipe, tmp_path, tmp_path / "env", tmp_path / "src", env, {}, tmp_path / "work")
    assert cmd.env[CHILD_PYTHONPATH].split(os.pathsep) == [str(HOOKS_DIR), str(tmp_path / "src")]
    assert cmd.env["REPRO_UPSTREAM_HOOKS"] == "fp32_weights,seed_before_resize"
    assert cmd.env["REPRO_UPSTREAM_SEED"] == "42" and cmd.cwd == tmp_path / "work"
    assert str(tmp_path / "src" / "training" / "train.py") in cmd.argv  # by its path: it runs from the data folder
    bare = recipe.model_copy(update={"twin": recipe.twin.model_copy(update={"upstream": TwinUpstream.model_validate(
        {"cwd": "twin_workdir", "logs": ["x"]})})})
    cmd = run.build(bare, tmp_path, tmp_path / "env", tmp_path / "src", env, {}, tmp_path / "work")
    assert "REPRO_UPSTREAM_HOOKS" not in cmd.env and str(HOOKS_DIR) not in cmd.env[CHILD_PYTHONPATH]


# --- the typed tolerance: strict to a step, a declared band after, a declared offset ---------------------------

def _recipe(tolerance: dict):
    recipe = catalog.get(MEM)
    up = recipe.twin.upstream.model_copy(update={"tolerance": TwinUpstream.model_validate(
        {"logs": ["x"], "tolerance": tolerance}).tolerance})
    return recipe.model_copy(update={"twin": recipe.twin.model_copy(update={"upstream": up})})


def _ref(loss: dict[int, float], lr: dict[int, float] | None = None) -> dict:
    metrics = {"loss": {"values": {str(s): v for s, v in loss.items()}}}
    if lr:
        metrics["lr"] = {"values": {str(s): v for s, v in lr.items()}}
    return {"assets": {"a": "k"}, "metrics": metrics}


def _check(recipe, ref, records, name="loss vs upstream"):
    return next(c for c in reference.compare(recipe, records, {"a": "k"}, ref=ref) if c.name == name)


BAND = {"loss": {"rtol": 1e-4, "why": "rounding", "after": {"after_step": 5, "rtol": 0.05, "why": "chaos"}}}


def test_band_after_a_step_passes_its_measured_drift_and_each_part_can_fail():
    recipe = _recipe(BAND)
    ref = _ref({s: 2.0 for s in range(1, 11)})
    same = [MetricRecord(step=s, loss=2.0 * (1 + (0.03 if s > 5 else 5e-5))) for s in range(1, 11)]
    assert _check(recipe, ref, same).status == PASS
    early = [MetricRecord(step=s, loss=2.0 * (1 + (1e-3 if s == 3 else 0))) for s in range(1, 11)]
    bad = _check(recipe, ref, early)
    assert bad.status == FAIL and "steps 1..5" in bad.message and "worst step 3" in bad.message
    late = [MetricRecord(step=s, loss=2.0 * (1 + (0.08 if s == 9 else 0))) for s in range(1, 11)]
    bad = _check(recipe, ref, late)
    assert bad.status == FAIL and "worst step 9" in bad.message
    plain = _recipe({"loss": {"rtol": 1e-4, "why": "rounding"}})  # no band declared: the drift fails
    assert _check(plain, ref, same).status == FAIL


def test_declared_offset_compares_the_same_scheduler_tick_and_fails_without_it():
    lr = {s: 0.01 * s / 10 for s in range(1, 11)}  # the upstream logs the lr after the scheduler step
    twin = [MetricRecord(step=s, loss=2.0, lr=lr[s - 1] if s > 1 else 0.0) for s in range(1, 11)]
    loss = {"rtol": 1e-4, "why": "rounding"}
    shifted = _recipe({"loss": loss, "lr": {"rtol": 1e-6, "why": "arithmetic", "offset": 1,
                                            "offset_why": "4.48.3 logs after the scheduler step"}})
    ref = _ref({s: 2.0 for s in range(1, 11)}, lr)
    assert _check(shifted, ref, twin, "lr vs upstream").status == PASS
    plain = _recipe({"loss": loss, "lr": {"rtol": 1e-6, "why": "arithmetic"}})
    assert _check(plain, ref, twin, "lr vs upstream").status == FAIL
    wrong = [MetricRecord(step=s, loss=2.0, lr=lr[s]) for s in range(1, 11)]  # a twin one tick late is caught
    assert _check(shifted, ref, wrong, "lr vs upstream").status == FAIL


def test_schema_refuses_an_undeclared_offset_and_a_band_tighter_than_the_strict_part():
    with pytest.raises(ValidationError, match="offset_why"):
        TwinUpstream.model_validate({"logs": ["x"], "tolerance": {"lr": {"rtol": 0, "why": "w", "offset": 1}}})
    with pytest.raises(ValidationError, match="widens"):
        TwinUpstream.model_validate({"logs": ["x"], "tolerance": {"loss": {"rtol": 0.1, "why": "w", "after": {
            "after_step": 3, "rtol": 0.01, "why": "w"}}}})


def test_one_mechanism_every_hook_combines_and_the_old_shims_field_is_refused():
    """Every change inside the upstream's processes is a named hook in the one sitecustomize: hooks of several CPU
    changes combine; a separate sitecustomize (the former twin.upstream.shims) is no field any more."""
    changes = [{"what": "x", "why": "y", "hooks": ["fp32_weights"]},
               {"what": "z", "why": "w", "hooks": ["map_shard_seed"]}]
    both = TwinUpstream.model_validate({"logs": ["x"], "cpu_changes": changes})
    assert [h for c in both.cpu_changes for h in c.hooks] == ["fp32_weights", "map_shard_seed"]
    with pytest.raises(ValidationError, match="shims"):
        TwinUpstream.model_validate({"logs": ["x"], "shims": ["map_shard_seed"]})
    assert not (ROOT / "repro" / "upstream" / "shims").exists()


_MXFP4 = """
import torch
import transformers.integrations.mxfp4 as m
blocks = torch.full((1, 2, 1, 16), 0x21, dtype=torch.uint8)  # E2M1 nibbles 1 and 2: 0.5 and 1.0
scales = torch.full((1, 2, 1), 127, dtype=torch.uint8)  # 2^0
out = m.convert_moe_packed_tensors(blocks, scales)  # the call as transformers 4.55.4 makes it: no dtype
print(out.dtype, out.flatten()[:4].tolist())
"""


@pytest.mark.needs_torch
def test_mxfp4_hook_dequantizes_to_float32_only_when_declared():
    """convert_moe_packed_tensors defaults to bfloat16 (4.55.4 keeps it for the experts); the hook gives float32,
    the same decoded values."""
    pytest.importorskip("transformers.integrations.mxfp4")
    env = {k: v for k, v in os.environ.items() if k != "REPRO_UPSTREAM_HOOKS"}
    env["PYTHONPATH"] = str(HOOKS_DIR)

    def probe(hooks: str | None) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-c", _MXFP4], capture_output=True, text=True, timeout=300,
                              env={**env, **({"REPRO_UPSTREAM_HOOKS": hooks} if hooks else {})})
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    plain, hooked = probe(None), probe("mxfp4_dequant_fp32")
    assert plain.stdout.split()[0] == "torch.bfloat16" and hooked.stdout.split()[0] == "torch.float32"
    assert plain.stdout.split(maxsplit=1)[1] == hooked.stdout.split(maxsplit=1)[1] == "[0.5, 0.5, 1.0, 1.0]\n"
    assert "[repro upstream hook mxfp4_dequant_fp32]" in hooked.stderr
    assert "mxfp4_dequant_fp32" not in probe("fp32_weights").stderr  # another hook leaves the dequant alone


def test_coverage_row_of_a_banded_tolerance_shows_both_parts_each_within_its_own():
    """README's coverage table must not print a banded curve's whole-run maximum beside its strict rtol."""
    from repro.report.upstream import coverage, coverage_markdown

    rows = {r["recipe"]: r for r in coverage()}
    mem = rows[MEM]
    assert mem["ran"] and mem["band"]["after_step"] == 29
    assert mem["max_rel"] <= mem["tolerance"] and mem["band"]["max_rel"] <= mem["band"]["rtol"]
    assert mem["band"]["max_rel"] > mem["tolerance"]  # the drift after the spike is what the band declares
    line = next(line for line in coverage_markdown(list(rows.values())).splitlines() if f"| {MEM} |" in line)
    assert "to step 29" in line and "after step 29:" in line
    for rid in ("toolgen-llama3-8b-retrieval", "toolgen-llama3-8b-e2e"):
        assert rows[rid]["ran"] and "band" not in rows[rid] and rows[rid]["max_rel"] <= rows[rid]["tolerance"]
