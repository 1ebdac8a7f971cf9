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
from repro.twin import runner
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
    assert "rope_scaling" not in out  # a default rope has nothing to scale
    llama3 = {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    out = export_config({"rope_parameters": llama3})
    # transformers 4.x reads the llama3 scaling from rope_scaling (ignoring it is a silent misread: plain rope)
    assert out["rope_theta"] == 500000.0
    assert out["rope_scaling"] == {k: v for k, v in llama3.items() if k != "rope_theta"}
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


def test_the_mxfp4_hook_goes_first_on_the_child_path(tmp_path):
    """transformers 4.55.4 dequantizes MXFP4 to bf16 whatever the dtype: the declared hook mxfp4_dequant_fp32 (one
    mechanism for every change inside the upstream's processes: harness/upstream_hooks/sitecustomize.py) goes first
    on the child's path, and the manifest records the hooks with the sha256 of that file."""
    import hashlib

    from repro.catalog.upstream_env import load_envs
    from repro.twin.guard import CHILD_PYTHONPATH
    from repro.upstream import run

    recipe = catalog.get("fms-gpt-oss-120b-lora-mxfp4")
    assert run.hooks(recipe) == ["mxfp4_dequant_fp32"]
    cmd = run.build(recipe, tmp_path, tmp_path / "env", tmp_path / "src", load_envs()["fms-hf-tuning-3.2.2"], {})
    first = Path(cmd.env[CHILD_PYTHONPATH].split(os.pathsep)[0])
    assert first == run.HOOKS_DIR and cmd.env[run.HOOKS_ENV] == "mxfp4_dequant_fp32"
    assert "convert_moe_packed_tensors" in (first / "sitecustomize.py").read_text()
    assert "--main_process_port" in cmd.argv and "--multi_gpu" in cmd.argv and "--config_file" not in cmd.argv
    sha = hashlib.sha256((run.HOOKS_DIR / "sitecustomize.py").read_bytes()).hexdigest()
    assert run._hooks_record(recipe) == {"names": ["mxfp4_dequant_fp32"],
                                         "sitecustomize": "harness/upstream_hooks/sitecustomize.py", "sha256": sha}
    assert run._hooks_record(catalog.get(FMS)) is None  # nothing ran inside: nothing recorded


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
    from repro.upstream import run

    spec = run.environment(catalog.get(rid))
    pin = f"{spec.repo.replace('/', '+')}@{spec.commit}"
    if not any(p.name.startswith(pin) for p in _snapshots().iterdir()):
        # ToolGen has no license: never in ../shared/upstream; a developer who holds it points REPRO_UPSTREAM_SOURCE
        # at a folder with every snapshot
        pytest.skip(f"{pin} is not among the snapshots in {_snapshots()} (set REPRO_UPSTREAM_SOURCE)")
    proc = subprocess.run([sys.executable, "-m", "repro", "run", rid, "--scale", "upstream", "--upstream-source",
                           str(_snapshots()), "--out", str(tmp_path / "up"), "--quiet"],
                          capture_output=True, text=True, timeout=3600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads((tmp_path / "up" / "verdict.json").read_text())["passed"]
    recipe = catalog.get(rid)
    if recipe.needs_list:  # a chained stage started from the twin's own stage: the cache version its key names
        from repro.twin import chain

        manifest = json.loads((tmp_path / "up" / "manifest.json").read_text())
        assert [(u["stage"], u["key"]) for u in manifest["upstreams"]] == [
            (n.stage, chain.stage_key(catalog.get(n.stage))) for n in recipe.needs_list]


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


# --- chained stages: the upstream starts from the checkpoint the twin starts from ---------------------------------

ACERAG_MT = "acerag-llama2-7b-multitask"


def _stage_output(tmp_path: Path) -> Path:
    """A stand-in for the LongAlpaca twin stage's output: two checkpoints, the newer by `sort -V` (10 > 9) holding
    a transformers-5 encoder config (rope_parameters only)."""
    base = tmp_path / "stage" / "train" / "acerag-llama2-longalpaca"
    for n in (9, 10):
        enc = base / f"checkpoint-{n}" / "compressive_encoder"
        enc.mkdir(parents=True)
        (enc / "config.json").write_text(json.dumps({"model_type": "llama", "rope_parameters": {
            "rope_theta": 123.0 + n, "rope_type": "default"}}))
        (enc / "model.safetensors").write_bytes(b"weights %d" % n)
    return tmp_path / "stage"


def test_chained_upstream_command_starts_from_the_twins_stage_exported(tmp_path):
    """--encoder_name_or_path is the stage's newest checkpoint-*/compressive_encoder (the twin's rule, the twin's
    flag), exported so transformers 4.57 reads rope_theta; the rest of the command is the twin's."""
    from repro.catalog.upstream_env import load_envs
    from repro.twin import chain
    from repro.upstream import run

    recipe = catalog.get(ACERAG_MT)
    stage = _stage_output(tmp_path)
    up = chain.Upstream("acerag-llama2-7b-longalpaca", "k" * 64, stage,
                        chain.resolve_input(recipe, stage / "train" / "acerag-llama2-longalpaca"),
                        "0" * 64, True, recipe.needs_list[0])
    hub, extra = run.stage_inputs(recipe, [up], tmp_path / "out" / "inputs")
    assert hub == {} and [a.flag for a in extra] == ["--encoder_name_or_path"]
    given = Path(extra[0].values[0])
    assert given.parent == tmp_path / "out" / "inputs" / "acerag-llama2-7b-longalpaca"
    assert json.loads((given / "config.json").read_text())["rope_theta"] == 133.0  # checkpoint-10's, exported
    assert (given / "model.safetensors").read_bytes() == b"weights 10"
    twin_hub, twin_extra = runner.inputs(recipe, [up])  # the twin gets the same checkpoint, unexported
    assert twin_hub == {} and twin_extra[0].values == (str(up.input_path),)
    env = load_envs()["lightrag-bce608d"]
    cmd = run.build(recipe, tmp_path / "out", tmp_path / "env", tmp_path / "src", env, {}, tmp_path / "work", extra)
    a = cmd.argv
    assert a[a.index("--encoder_name_or_path") + 1] == str(given)
    assert "$ENCODER_PATH" not in a and a.count("--encoder_name_or_path") == 1


def test_chained_upstream_hub_id_input_maps_to_the_stage_folder(tmp_path):
    """A published_model input (Tulu DPO starts from the SFT stage's --output_dir) reaches the upstream through the
    hub id it names, as the twin's asset map does."""
    from repro.twin import chain
    from repro.upstream import run

    recipe = catalog.get("tulu3-8b-dpo")
    folder = tmp_path / "sft_8b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}}))
    up = chain.Upstream("tulu3-8b-sft", "k" * 64, tmp_path, folder, "0" * 64, True, recipe.needs_list[0])
    hub, extra = run.stage_inputs(recipe, [up], tmp_path / "inputs")
    assert extra == [] and list(hub) == ["allenai/Llama-3.1-Tulu-3-8B-SFT"]
    assert json.loads((Path(hub["allenai/Llama-3.1-Tulu-3-8B-SFT"]) / "config.json").read_text())["rope_theta"] == 5e5


def test_upstream_run_resolves_stages_through_the_orchestrator(monkeypatch, tmp_path):
    """No copy of the chain plumbing: run() asks repro.twin.session.upstreams (the stage cache, leased for the run)
    and hands what it returns to the launch; a recipe without `needs` asks nothing."""
    from repro.twin import session
    from repro.upstream import run

    asked = []

    def fake_upstreams(recipe, **kw):
        asked.append((recipe.id, kw.get("held") is not None))
        return ["the stage"]

    monkeypatch.setattr(session, "upstreams", fake_upstreams)
    monkeypatch.setattr(run, "_run", lambda recipe, out, source, echo, quiet, ups: {"ups": ups})
    assert run.run(catalog.get(ACERAG_MT), tmp_path)["ups"] == ["the stage"]
    assert asked == [(ACERAG_MT, True)]
    assert run.run(catalog.get(FMS), tmp_path)["ups"] == [] and len(asked) == 1


def test_reference_of_a_chained_stage_names_what_it_started_from():
    """The provenance says which twin stage (and cache key) the upstream started from."""
    recipe = catalog.get(ACERAG_MT)
    manifest = {"upstream": {"repo": "r", "commit": "c"}, "cpu_changes": [], "command": "x", "plan": {}, "wall_s": 1,
                "environment": {"name": "e", "lock_sha256": "0" * 64, "exclude_newer": "d"}, "assets": {},
                "upstreams": [{"stage": "acerag-llama2-7b-longalpaca", "key": "k" * 64, "flag": "--encoder_name_or_path",
                               "input": "/x/compressive_encoder", "run_dir": "/x", "reused": True}]}
    ref = reference.to_reference(recipe, [MetricRecord(step=1, loss=2.0)], manifest, "sha")
    assert ref["provenance"]["started_from"] == [{"stage": "acerag-llama2-7b-longalpaca", "key": "k" * 64,
                                                  "flag": "--encoder_name_or_path", "input": "/x/compressive_encoder"}]


def test_asset_names_are_substituted_inside_a_json_mixer_value():
    """reward_modeling.py takes --dataset_mixer '{"hub/id": 1.0}': the hub id is replaced inside the JSON (left as
    is, the upstream asks the hub for it: measured, 'Couldn't reach ... (OfflineModeIsEnabled)')."""
    from repro.catalog.schema import Arg
    from repro.upstream.run import substitute

    paths = {"allenai/pref": "/a/pref.jsonl", "tok": "/a/tok"}
    out = substitute([Arg(flag="--dataset_mixer", values=('{"allenai/pref": 1.0}',)),
                      Arg(flag="--tokenizer", values=("tok",)), Arg(flag="--other", values=('{"x": 1}', "{bad"))], paths)
    assert json.loads(out[0].values[0]) == {"/a/pref.jsonl": 1.0}
    assert out[1].values == ("/a/tok",) and out[2].values == ('{"x": 1}', "{bad")


def test_cwd_run_keeps_relative_writes_out_of_the_checkout(tmp_path):
    """reward_modeling.py writes runs/<name>/ under its cwd: with cwd 'run' that is the run folder (the shared,
    verified checkout stays clean; measured: the events landed in the checkout and the log glob found nothing),
    and the script is named by its checkout path."""
    from repro.catalog.upstream_env import load_envs
    from repro.upstream import run

    recipe = catalog.get("tulu3-8b-rm")
    assert recipe.twin.upstream.cwd == "run"
    cmd = run.build(recipe, tmp_path / "out", tmp_path / "env", tmp_path / "src", load_envs()["open-instruct-30d11b4"], {},
                    extra=[])
    assert cmd.cwd == tmp_path / "out"
    assert str(tmp_path / "src" / "open_instruct" / "reward_modeling.py") in cmd.argv


def test_a_log_stepped_by_samples_is_read_in_optimizer_steps():
    """reward_modeling.py writes TensorBoard scalars at step=episode: 4, 8, ... at the twin's effective batch 4
    (measured: read as optimizer steps they failed the step sequence and every curve)."""
    from repro.base.errors import ReproError
    from repro.base.metrics import MetricRecord
    from repro.upstream.run import samples_to_steps

    recipe = catalog.get("tulu3-8b-rm")
    assert recipe.twin.upstream.log_step == "samples"
    got = samples_to_steps(recipe, [MetricRecord(step=4 * s, loss=1.0 / s) for s in (1, 2, 3)])
    assert [(r.step, r.loss) for r in got] == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]
    with pytest.raises(ReproError, match="not a multiple of the effective batch 4"):
        samples_to_steps(recipe, [MetricRecord(step=6, loss=1.0)])


def test_the_seeding_hook_goes_first_on_the_upstream_path_beside_other_hooks(tmp_path):
    """AceRAG's map_shard_seed is a named hook like every other: first on the path, never repro's packages, and it
    combines with another hook in the one sitecustomize (the two former mechanisms excluded each other)."""
    from repro.catalog.twin_schema import UpstreamCpuChange
    from repro.catalog.upstream_env import load_envs
    from repro.twin.guard import CHILD_PYTHONPATH
    from repro.upstream import run

    recipe = catalog.get(ACERAG_MT)
    env = load_envs()["lightrag-bce608d"]
    cmd = run.build(recipe, tmp_path, tmp_path / "env", tmp_path / "src", env, {}, tmp_path / "work")
    path = cmd.env[CHILD_PYTHONPATH].split(os.pathsep)
    assert path[0] == str(run.HOOKS_DIR) and str(tmp_path / "src" / "AceRAG") in path
    assert cmd.env[run.HOOKS_ENV] == "map_shard_seed"
    assert str(ROOT) not in path  # the hooks' folder, never repro's packages
    declared = {h for r in catalog.load_all().values() if r.twin and r.twin.upstream for h in run.hooks(r)}
    assert {"map_shard_seed", "mxfp4_dequant_fp32"} <= declared
    both = recipe.twin.upstream.model_copy(update={"cpu_changes": [
        *recipe.twin.upstream.cpu_changes, UpstreamCpuChange(what="x", why="y", hooks=["fp32_weights"])]})
    cmd = run.build(recipe.model_copy(update={"twin": recipe.twin.model_copy(update={"upstream": both})}), tmp_path,
                    tmp_path / "env", tmp_path / "src", env, {}, tmp_path / "work")
    assert cmd.env[run.HOOKS_ENV] == "map_shard_seed,fp32_weights"
    assert cmd.env[CHILD_PYTHONPATH].split(os.pathsep).count(str(run.HOOKS_DIR)) == 1


_SHARDED_DRAWS = """
import json, random, sys
import datasets
random.seed(42)
ds = datasets.Dataset.from_list([{"x": i} for i in range(int(sys.argv[1]))])
out = ds.map(lambda b: {"r": [random.choice([1, 2, 4, 8]) + random.random() for _ in b["x"]]}, batched=True,
             batch_size=32, num_proc=32)
print(json.dumps(list(out["r"])))
"""


@pytest.mark.needs_torch
@pytest.mark.parametrize("rows", [5, 40])
def test_map_shard_seed_hook_makes_forked_draws_the_twins(rows, tmp_path):
    """Without the hook, datasets' forked workers draw from os.urandom (two runs differ); with it, each shard draws
    what the twin's forked_map draws for it, run after run."""
    pytest.importorskip("datasets")
    import random

    from harness.acerag.train import MAP_NUM_PROC, forked_map
    from repro.upstream import run

    def draws(hook: bool) -> list[float]:
        env = {k: v for k, v in os.environ.items() if k != run.HOOKS_ENV}
        env.update({"PYTHONPATH": str(run.HOOKS_DIR) if hook else "", "HF_DATASETS_CACHE": str(tmp_path),
                    "TOKENIZERS_PARALLELISM": "false"})
        if hook:
            env[run.HOOKS_ENV] = "map_shard_seed"
        proc = subprocess.run([sys.executable, "-c", _SHARDED_DRAWS, str(rows)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert ("[repro upstream hook map_shard_seed]" in proc.stderr) == hook
        return json.loads(proc.stdout.strip().splitlines()[-1])

    twin = forked_map(list(range(rows)), lambda _: random.choice([1, 2, 4, 8]) + random.random(), MAP_NUM_PROC)
    assert draws(True) == twin == draws(True)
    assert draws(False) != draws(False)  # the published behaviour: unseeded
