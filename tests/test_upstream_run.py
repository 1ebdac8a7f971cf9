"""The upstream run at twin scale: the export old library versions read, the command (the env's interpreter, the
checkout, the declared CPU changes, never repro's packages), the reference check (shown failing on a mutant), and,
in CI, the real fms 3.2.2 end to end from the snapshot against its committed reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from repro import ROOT
from repro.catalog import loader as catalog
from repro.base.metrics import MetricRecord
from repro.twin import upstream_ref as reference
from repro.verify.checks import FAIL, NOT_MEASURED, PASS

FMS = "fms-llama2-7b-sft-single-gpu"


def _snapshots() -> Path | None:
    """../shared/upstream beside the checkout (a worktree one level deeper), or REPRO_UPSTREAM_SOURCE."""
    for p in (os.environ.get("REPRO_UPSTREAM_SOURCE"), ROOT.parent / "shared" / "upstream",
              ROOT.parent.parent / "shared" / "upstream"):
        if p and Path(p).is_dir():
            return Path(p)
    return None


# --- the transformers-4 export --------------------------------------------------------------------------------

def test_export_config_writes_rope_theta_and_keeps_every_other_key():
    from harness.assets.export import export_config

    cfg = {"hidden_size": 64, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}, "dtype": "float32"}
    out = export_config(cfg)
    assert out["rope_theta"] == 500000.0 and out["torch_dtype"] == "float32"
    assert {k: out[k] for k in cfg} == cfg  # nothing the new versions read changes
    assert "rope_scaling" not in out
    yarn = {"rope_theta": 150000.0, "rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096,
            "truncate": False}
    scaled = export_config({"rope_parameters": yarn})  # gpt-oss: 4.x reads a scaled rope from rope_scaling
    assert scaled["rope_theta"] == 150000.0
    assert scaled["rope_scaling"] == {k: v for k, v in yarn.items() if k != "rope_theta"}


def test_a_data_config_names_its_data_by_the_asset_path(tmp_path):
    """fms's --data_config_path file names its data set by hub id; the upstream reads a copy naming the asset."""
    from repro.catalog.schema import Arg
    from repro.plan.render import find
    from repro.upstream import run

    recipe = catalog.get("fms-gpt-oss-120b-lora-mxfp4")
    stored = str(catalog.config_file_path(recipe.id, "configs/gpt-oss-data_config.yaml"))
    written: dict[str, str] = {}
    args = run.data_configs(recipe, [Arg(flag="--data_config_path", values=(stored,))],
                            {"HuggingFaceH4/Multilingual-Thinking": "/x/train.jsonl"}, tmp_path, written)
    path = find(args, "--data_config_path").values[0]
    assert path != stored and Path(path).parent == tmp_path / "upstream-configs"
    data = yaml.safe_load(written[path])
    assert data["datasets"][0]["data_paths"] == ["/x/train.jsonl"]
    assert data["datasets"][0]["data_handlers"][0]["name"] == "tokenize_and_apply_chat_template_with_masking"


def test_a_declared_sitecustomize_goes_alone_first_on_the_child_path(tmp_path):
    from repro.catalog.upstream_env import load_envs
    from repro.twin.guard import CHILD_PYTHONPATH
    from repro.upstream import run

    recipe = catalog.get("fms-gpt-oss-120b-lora-mxfp4")
    cmd = run.build(recipe, tmp_path, tmp_path / "env", tmp_path / "src", load_envs()["fms-hf-tuning-3.2.2"], {})
    shim = tmp_path / "upstream-shim"
    assert cmd.env[CHILD_PYTHONPATH].split(os.pathsep)[0] == str(shim)
    assert "convert_moe_packed_tensors" in cmd.files[str(shim / "sitecustomize.py")]
    assert "--main_process_port" in cmd.argv and "--multi_gpu" in cmd.argv and "--config_file" not in cmd.argv
    from repro.catalog.twin_schema import TwinUpstream

    with pytest.raises(ValueError, match="upstream_shims"):
        TwinUpstream.model_validate({"logs": ["x"], "sitecustomize": "repro/cli.py"})


def test_export_tokenizer_config_names_a_class_old_versions_know():
    from harness.assets.export import export_tokenizer_config

    out = export_tokenizer_config({"tokenizer_class": "TokenizersBackend", "backend": "tokenizers", "is_local": True,
                                   "local_files_only": False, "bos_token": "<s>"})
    assert out == {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>"}


@pytest.mark.needs_torch
def test_exported_tokenizer_gives_the_same_ids(tmp_path):
    """tokenizers reads both merge spellings: the ids of the twin's own data must not change."""
    from tokenizers import Tokenizer

    from harness.assets.export import export
    from repro.twin import assets

    built = assets.build(catalog.get(FMS))
    model = built["llama-2-7b-twin"].root
    out = export(model, tmp_path)
    merges = json.loads((out / "tokenizer.json").read_text())["model"]["merges"]
    assert isinstance(merges[0], str) and " " in merges[0]
    old, new = Tokenizer.from_file(str(model / "tokenizer.json")), Tokenizer.from_file(str(out / "tokenizer.json"))
    rows = json.loads(Path(built["twitter-output-twin"].entries["twitter_complaints.json"]).read_text())
    texts = [r["output"] for r in (rows if isinstance(rows, list) else rows["rows"])][:200]
    assert texts and all(old.encode(t).ids == new.encode(t).ids for t in texts)
    cfg_old, cfg_new = (json.loads((p / "config.json").read_text()) for p in (model, out))
    assert cfg_new["rope_theta"] == cfg_old["rope_parameters"]["rope_theta"]
    assert (out / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()


# --- the command ------------------------------------------------------------------------------------------------

def test_upstream_command_uses_the_env_the_checkout_and_the_declared_cpu_changes(tmp_path):
    from repro.catalog.upstream_env import load_envs
    from repro.twin.guard import CHILD_PYTHONPATH
    from repro.upstream import run

    recipe = catalog.get(FMS)
    env = load_envs()["fms-hf-tuning-3.2.2"]
    paths = {"meta-llama/Llama-2-7b-hf": "/m4", "twitter_complaints.json": "/d.json"}
    cmd = run.build(recipe, tmp_path, tmp_path / "env", tmp_path / "src", env, paths)
    assert cmd.argv[:2] == [str(tmp_path / "env" / "bin" / "python"), "tuning/sft_trainer.py"]
    assert sys.executable not in cmd.argv and cmd.cwd == tmp_path / "src"
    a = cmd.argv
    assert a[a.index("--model_name_or_path") + 1] == "/m4" and a[a.index("--training_data_path") + 1] == "/d.json"
    assert a[a.index("--use_flash_attn") + 1] == "False" and a[a.index("--torch_dtype") + 1] == "float32"
    assert cmd.env[CHILD_PYTHONPATH] == "" and cmd.env["WANDB_MODE"] == "disabled"  # repro's packages off its path
    # JIT-built ops are per torch: never the folder repro's own torch builds into (an undefined symbol otherwise)
    from repro.twin.command import scratch_env

    assert cmd.env["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "env.torch_extensions")
    assert cmd.env["TORCH_EXTENSIONS_DIR"] != scratch_env(tmp_path)["TORCH_EXTENSIONS_DIR"]


def test_guard_gives_the_child_only_the_declared_pythonpath():
    from repro.twin.guard import CHILD_PYTHONPATH, child_env

    assert "PYTHONPATH" not in child_env({"PYTHONPATH": str(ROOT), CHILD_PYTHONPATH: ""})
    assert child_env({"PYTHONPATH": str(ROOT), CHILD_PYTHONPATH: "/src"})["PYTHONPATH"] == "/src"
    assert child_env({"PYTHONPATH": str(ROOT)})["PYTHONPATH"] == str(ROOT)  # twins keep theirs


def test_full_path_never_installs_into_this_environment():
    from repro.base.errors import ReproError
    from repro.plan import fullscale

    with pytest.raises(ReproError, match="repro's own environment"):
        fullscale.install_steps(catalog.get("tulu3-8b-sft"), python=sys.executable)


# --- the reference check ---------------------------------------------------------------------------------------

def _records(ref: dict, scale: float = 1.0, upto: int | None = None) -> list[MetricRecord]:
    values = ref["metrics"]["loss"]["values"]
    return [MetricRecord(step=int(s), loss=v * scale) for s, v in values.items() if upto is None or int(s) <= upto]


def test_reference_check_passes_on_the_reference_and_bites_on_mutants():
    recipe = catalog.get(FMS)
    ref = reference.load(FMS)
    assert ref is not None, "the committed upstream reference of fms single-GPU"
    assets = ref["assets"]
    assert all(c.status == PASS for c in reference.compare(recipe, _records(ref), assets))
    # a 1e-4 relative shift (a changed lr, mask or reduction moves it by far more) is outside the 2e-5 tolerance
    shifted = reference.compare(recipe, _records(ref, 1 + 1e-4), assets)
    assert any(c.status == FAIL and c.name == "loss vs upstream" for c in shifted)
    short = reference.compare(recipe, _records(ref, upto=39), assets)
    assert any(c.status == FAIL and c.name == "steps vs upstream" for c in short)
    stale = reference.compare(recipe, _records(ref), {**assets, "llama2-sp-1024": "0" * 64})
    assert [c.status for c in stale] == [NOT_MEASURED] and "stale" in stale[0].message


def test_reference_records_its_provenance():
    ref = reference.load(FMS)
    prov = ref["provenance"]
    assert prov["upstream"]["commit"] == catalog.get(FMS).provenance.upstream.commit
    assert len(prov["environment"]["lock_sha256"]) == 64 and prov["cpu_changes"] and prov["repro_commit"]


# --- the real thing (CI: fms 3.2.2, the cheapest upstream; ~6.7 GB env, 0:23 to build with a warm uv cache) ------

def _needs_lane():
    from repro.base.errors import ReproError
    from repro.plan.upstream_envs import uv

    try:
        uv()
    except ReproError as exc:
        pytest.skip(str(exc))
    if _snapshots() is None:
        pytest.skip("no ../shared/upstream snapshots beside this checkout (set REPRO_UPSTREAM_SOURCE)")


@pytest.mark.slow
def test_full_path_prepares_source_and_isolated_env_for_real_and_launches_from_it():
    """`repro run --scale full`'s clone/env/launch steps against the snapshot: the entry point starts in the
    isolated environment from the verified checkout (--help: the full run itself needs the GPUs and the hub)."""
    _needs_lane()
    from repro.plan import fullscale
    from repro.plan.planner import make_plan
    from repro.plan.rescale import Request

    recipe = catalog.get(FMS)
    built, src = fullscale.prepare(recipe, str(_snapshots()), cuda=False)
    assert src.commit == recipe.provenance.upstream.commit and "pax header" in src.verified_by
    assert Path(sys.prefix).resolve() not in built.python.resolve().parents
    step, env = fullscale.launch_steps(recipe, make_plan(recipe, Request(1)), built.root, src.root)
    assert step.argv[0] == str(built.root / "bin" / "python") and step.cwd == str(src.root / recipe.command.workdir)
    proc = subprocess.run([*step.argv[:2], "--help"], cwd=step.cwd, env={**os.environ, **env, "PYTHONPATH": ""},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "--use_flash_attn" in proc.stdout


@pytest.mark.slow
def test_fms_upstream_runs_end_to_end_and_matches_its_reference(tmp_path):
    _needs_lane()
    proc = subprocess.run([sys.executable, "-m", "repro", "run", FMS, "--scale", "upstream", "--upstream-source",
                           str(_snapshots()), "--out", str(tmp_path / "up"), "--quiet"],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    verdict = json.loads((tmp_path / "up" / "verdict.json").read_text())
    assert verdict["passed"] and any(c["name"] == "loss vs upstream" and c["status"] == PASS
                                     for c in verdict["checks"])
    manifest = json.loads((tmp_path / "up" / "manifest.json").read_text())
    assert manifest["environment"]["lock_sha256"] == reference.load(FMS)["provenance"]["environment"]["lock_sha256"]


def _lane_ids() -> list[str]:
    return sorted(r.id for r in catalog.load_all().values()
                  if r.twin and r.twin.upstream and reference.load(r.id) is not None and r.id != FMS)


@pytest.mark.upstream
@pytest.mark.parametrize("rid", _lane_ids())
def test_upstream_lane_matches_its_reference(rid, tmp_path):
    """The developer lane (-m upstream): every other recipe with a committed reference, end to end. Each builds its
    environment once (5-7 GB; 20 GB for all with the shared uv cache) and runs 1-10 min on 2 cores."""
    _needs_lane()
    proc = subprocess.run([sys.executable, "-m", "repro", "run", rid, "--scale", "upstream", "--upstream-source",
                           str(_snapshots()), "--out", str(tmp_path / "up"), "--quiet"],
                          capture_output=True, text=True, timeout=3600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads((tmp_path / "up" / "verdict.json").read_text())["passed"]


def test_declared_launcher_args_replace_the_twin_overlay(tmp_path):
    """open-instruct's DPO runs only under DeepSpeed: the recipe can keep its published launcher flags."""
    from repro.catalog.schema import Arg
    from repro.catalog.upstream_env import load_envs
    from repro.upstream import run

    recipe = catalog.get("tulu3-8b-sft")
    block = {"logs": ["train.log"], "launcher_args": [["--num_processes", "2"], ["--use_deepspeed"]]}
    from repro.catalog.twin_schema import TwinUpstream

    twin = recipe.twin.model_copy(update={"upstream": TwinUpstream.model_validate(block)})
    recipe = recipe.model_copy(update={"twin": twin})
    env = load_envs()["open-instruct-30d11b4"]
    cmd = run.build(recipe, tmp_path, tmp_path / "env", tmp_path / "src", env, {})
    assert cmd.argv[:4] == [str(tmp_path / "env" / "bin" / "accelerate"), "launch", "--num_processes", "2"]
    assert cmd.argv[4] == "--use_deepspeed" and "--multi_gpu" not in cmd.argv
    assert isinstance(recipe.twin.upstream.launcher_args[0], Arg)


_PROBE = """
import json, sys
from transformers import AutoConfig, AutoTokenizer
model, texts = sys.argv[1], json.loads(sys.argv[2])
cfg = AutoConfig.from_pretrained(model)
tok = AutoTokenizer.from_pretrained(model)
print(json.dumps({"rope_theta": getattr(cfg, "rope_theta", None), "head_dim": getattr(cfg, "head_dim", None),
                  "ids": [tok(t)["input_ids"] for t in texts]}))
"""


@pytest.mark.upstream
@pytest.mark.parametrize("rid", ["fms-llama2-7b-sft-single-gpu", "acerag-llama2-7b-pretrain", "tulu3-8b-sft",
                                 "toolgen-llama3-8b-memorization"])
def test_exported_assets_load_the_same_under_each_pinned_environment(rid):
    """Each model asset's transformers-4 export, loaded by the recipe's own pinned transformers/tokenizers: rope
    theta as configured and the same token ids as repro's transformers 5 gives for the original."""
    _needs_lane()
    from transformers import AutoTokenizer

    from harness.assets.export import export
    from repro.twin import assets
    from repro.plan import upstream_envs as envs
    from repro.upstream import run

    recipe = catalog.get(rid)
    built = envs.ensure(run.environment(recipe), quiet=True)
    texts = ["Hello world", "### Response: yes\n", "tokens, numbers 12345 and ümlauts"]
    for b in assets.build(recipe).values():
        if b.spec.kind != "model":
            continue
        out = export(b.root, assets.CACHE_DIR.resolve() / "exports")
        proc = subprocess.run([str(built.python), "-c", _PROBE, str(out), json.dumps(texts)], capture_output=True,
                              text=True, timeout=900, env={**os.environ, "PYTHONPATH": ""})
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        cfg = json.loads((b.root / "config.json").read_text())
        want_theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta"))
        assert got["rope_theta"] == want_theta
        ours = AutoTokenizer.from_pretrained(b.root)
        assert got["ids"] == [ours(t)["input_ids"] for t in texts]
