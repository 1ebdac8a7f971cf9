"""Tulu 3 RLVR twins: the derived batch quantities of the published commands, a broken verifiable
reward failing the verdict, and bit-identical reruns (the reason layouts are not compared: each learner
samples and whitens its own rollout batch)."""

from __future__ import annotations

import json
import subprocess

import pytest

pytest.importorskip("torch", reason="the RLVR twins need the twin extra (torch, transformers)")

from harness.open_instruct import ppo  # noqa: E402
from harness.open_instruct import ppo_vllm_thread_ray_gtrl as rlvr  # noqa: E402
from repro.catalog import loader as catalog  # noqa: E402
from repro.lint import chain_paths  # noqa: E402
from repro.catalog.schema import Arg  # noqa: E402
from repro.cli import main  # noqa: E402
from repro.base.errors import ReproError  # noqa: E402
from repro.base.metrics import read_jsonl  # noqa: E402
from repro.twin import session  # noqa: E402

RLVR = sorted(r.id for r in catalog.load_all().values() if r.task == "rlvr" and r.family == "tulu3")
TWINS = [i for i in RLVR if catalog.get(i).twin is not None]


def published_argv(rid: str) -> list[str]:
    return [t for a in catalog.get(rid).command.args for t in (a.flag, *a.values)]


@pytest.mark.parametrize("rid", RLVR)
def test_published_command_derives_the_recipes_step_count(rid):
    args, _, _ = rlvr.parse_args(published_argv(rid))
    sizes = ppo.runtime_batch(args.per_device_train_batch_size, args.local_mini_batch_size,
                              args.local_rollout_batch_size, args.actor_num_gpus_per_node, args.total_episodes,
                              args.number_samples_per_prompt, args.num_evals)
    recipe = catalog.get(rid)
    assert sizes.num_training_steps == recipe.derived.optimizer_steps
    assert sizes.rollout_batch_size == recipe.batch.effective
    assert args.apply_verifiable_reward is True and args.reward_model_multiplier == 0.0
    assert isinstance(args.actor_num_gpus_per_node[0], int)  # list[int] items are converted, as upstream


def test_bad_rlvr_flags_are_one_line_errors():
    with pytest.raises(ReproError, match="invalid choice: 'kl4'"):
        rlvr.parse_args(["--dataset_mixer", "{}", "--model_name_or_path", "m", "--output_dir", "o",
                         "--kl_estimator", "kl4"])
    with pytest.raises(ReproError, match="not a JSON object"):
        rlvr.parse_args(["--dataset_mixer", "[1]", "--model_name_or_path", "m", "--output_dir", "o"])


@pytest.mark.slow
@pytest.mark.parametrize("rid", TWINS[-1:])  # one trainer for both: the 8B twin (the cheaper) carries the control
def test_twin_passes_and_a_broken_reward_fails(rid, tmp_path, monkeypatch, twin_run):
    assert twin_run(rid)[0] == 0
    monkeypatch.setenv("REPRO_TWIN_BREAK_REWARD", "1")  # every verifiable reward 0
    assert main(["run", rid, "--scale", "twin", "--out", str(tmp_path / "broken"), "--quiet"]) == 1
    checks = {c["name"]: c for c in json.loads((tmp_path / "broken" / "verdict.json").read_text())["checks"]}
    assert checks["rises extra.objective/verifiable_correct_rate"]["status"] == "FAIL"
    assert checks["value_at_step extra.objective/kl @ step 1"]["status"] == "PASS"  # only the reward broke


@pytest.mark.slow
def test_reruns_are_bit_identical(tmp_path):
    recipe = catalog.get(TWINS[0])
    runs = []
    for name in ("a", "b"):
        run = session.prepare(recipe, tmp_path / name, extra=[Arg(flag="--total_episodes", values=("64",))])
        proc = subprocess.run(run.argv, env=run.env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        records = read_jsonl(next((tmp_path / name / "train").glob("*/metrics.jsonl")))
        runs.append([(r.step, r.loss, r.lr, r.tokens,
                      {k: v for k, v in r.extra.items() if not k.startswith("time/")}) for r in records])
    assert len(runs[0]) == 4 and runs[0] == runs[1]


# ------------------------------------------------------------------ the chain: RLVR starts from DPO and RM


@pytest.mark.parametrize("rid", TWINS)
def test_rlvr_needs_the_dpo_policy_and_the_rm(rid):
    from repro.twin import chain

    recipe = catalog.get(rid)
    dpo, rm = recipe.needs_list
    assert (dpo.flag, rm.flag) == ("--model_name_or_path", "--reward_model_path")
    assert dpo.stage == rid.replace("-rlvr", "-dpo") and rm.stage == "tulu3-8b-rm"  # the 70B recipe uses the 8B RM
    assert dpo.then.builder == "harness.open_instruct.rlvr_data:warm_started_policy" and rm.then is None
    assert chain_paths.check_paths(recipe) == []
    stages = [r.id for r in chain.chain_of(recipe)]
    assert stages[-1] == rid and set(stages) >= {dpo.stage, rm.stage, "tulu3-8b-sft"}
    assert stages.index(dpo.stage) > stages.index(rid.replace("-rlvr", "-sft"))


def test_warm_start_key_hashes_the_prompt_set_and_what_encodes_it():
    from pathlib import Path

    from harness import chat_templates
    from harness.open_instruct import encoding, pref_data, rlvr_data

    hashed = {Path(p).resolve() for p in rlvr_data.ASSET_INPUTS}
    for module in (pref_data, encoding, chat_templates):  # rlvr_prompts / warm_start_conversations, template
        assert Path(module.__file__).resolve() in hashed, module.__name__


@pytest.mark.slow
def test_rlvr_twin_records_both_upstreams(twin_run):
    from pathlib import Path

    from repro.twin import chain

    code, out, stdout = twin_run("tulu3-8b-rlvr")  # the 70B twin is chained the same way (to the 8B RM)
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    dpo, rm = manifest["upstreams"]
    assert (dpo["stage"], rm["stage"]) == ("tulu3-8b-dpo", "tulu3-8b-rm") and "upstream" not in manifest
    for u in (dpo, rm):
        recipe = catalog.get(u["stage"])
        assert u["key"] == chain.stage_key(recipe) and u["manifest_sha256"] == chain.manifest_sha256(Path(u["run_dir"]))
        # each stage in turn started from the SFT stage
        assert json.loads((Path(u["run_dir"]) / "manifest.json").read_text())["upstream"]["stage"] == "tulu3-8b-sft"
    assert Path(rm["input"]) == Path(rm["run_dir"]) / "train" / "rm_8b"
    assert dpo["then"]["from"] == str(Path(dpo["run_dir"]) / "train" / "dpo_8b") and dpo["input"] != dpo["then"]["from"]
    hub = json.loads((out / "assets.json").read_text())["models"]
    assert hub["allenai/Llama-3.1-Tulu-3-8B-DPO"] == dpo["input"] and hub["allenai/Llama-3.1-Tulu-3-8B-RM"] == rm["input"]
    assert "tulu3-8b-rlvr starts from tulu3-8b-dpo" in stdout and "tulu3-8b-rlvr starts from tulu3-8b-rm" in stdout
