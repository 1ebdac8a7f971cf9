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
from repro.catalog.schema import Arg  # noqa: E402
from repro.cli import main  # noqa: E402
from repro.errors import ReproError  # noqa: E402
from repro.metrics import read_jsonl  # noqa: E402
from repro.twin import runner as twin  # noqa: E402

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
@pytest.mark.parametrize("rid", TWINS)
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
        run = twin.prepare(recipe, tmp_path / name, extra=[Arg(flag="--total_episodes", values=("64",))])
        proc = subprocess.run(run.argv, env=run.env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        records = read_jsonl(next((tmp_path / name / "train").glob("*/metrics.jsonl")))
        runs.append([(r.step, r.loss, r.lr, r.tokens,
                      {k: v for k, v in r.extra.items() if not k.startswith("time/")}) for r in records])
    assert len(runs[0]) == 4 and runs[0] == runs[1]
