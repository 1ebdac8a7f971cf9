"""The full-scale path CI cannot run: what it would clone, install and launch."""

import json
import sys

import pytest

from repro.catalog import loader as catalog
from repro.base.errors import ReproError
from repro.plan import fullscale
from repro.plan import rescale
from repro.plan.planner import make_plan
from repro.twin.overrides import parse_sets, with_sets


def test_checkout_fetches_exactly_the_pinned_commit(tmp_path):
    recipe = catalog.get("tulu3-8b-sft")
    steps = fullscale.checkout_steps(recipe, tmp_path)
    assert steps[1].argv[-2:] == ("https://github.com/allenai/open-instruct.git", recipe.provenance.upstream.commit)
    assert steps[2].argv[-1] == "30d11b4fb9e363f32214e484aeac86ded419a9ef"


def test_unmerged_pr_recipes_fetch_the_pr_ref(tmp_path):
    recipe = catalog.get("fms-granite4-h-tiny-cp8-ebs4-s8192-gas1")
    assert recipe.provenance.upstream.ref == "refs/pull/642/head"
    assert fullscale.checkout_steps(recipe, tmp_path)[1].argv[-1] == "refs/pull/642/head"


def test_install_list_is_the_pins_then_upstream_steps():
    steps, notes = fullscale.install_steps(catalog.get("tulu3-8b-sft"), python="py")
    assert steps[0].argv == ("py", "-m", "pip", "install", "torch==2.4.0", "deepspeed==0.15.0", "accelerate==0.31.0",
                             "transformers==4.43.4", "tokenizers==0.19.1", "flash-attn==2.6.3")
    assert [s.argv for s in steps[1:]] == [("py", "-m", "pip", "install", "-r", "requirements.txt"),
                                           ("py", "-m", "pip", "install", "-e", ".")]
    assert "vllm is unpinned upstream; pip will resolve it" in notes
    cpu_steps, cpu_notes = fullscale.install_steps(catalog.get("tulu3-8b-sft"), python="py", has_cuda=False)
    assert "flash-attn==2.6.3" not in cpu_steps[0].argv and any("flash-attn skipped" in n for n in cpu_notes)


def test_launch_is_the_rescaled_plan_with_overrides():
    recipe = with_sets(catalog.get("tulu3-8b-sft"), parse_sets(["learning_rate=1e-5"]))
    plan = make_plan(recipe, rescale.Request(8))
    step, env = fullscale.launch_steps(recipe, plan)
    argv = list(step.argv)
    assert argv[:2] == ["accelerate", "launch"] and argv[argv.index("--num_processes") + 1] == "8"
    assert argv[argv.index("--gradient_accumulation_steps") + 1] == "16"
    assert argv[argv.index("--learning_rate") + 1] == "1e-5"
    assert env == {"WANDB_MODE": "offline"} and step.cwd.endswith("allenai+open-instruct@30d11b4fb9e3")


def test_full_scale_set_replaces_a_negative_value_and_refuses_unknown_flags():
    """`--clip_grad_norm -1` + `--set clip_grad_norm=1.0` once rendered `--clip_grad_norm 1.0 -1`."""
    import pytest

    from repro.base.errors import ReproError
    from repro.catalog.schema import Arg

    base = catalog.get("tulu3-8b-sft")
    args = [*base.command.args, Arg(flag="--clip_grad_norm", values=("-1",))]
    recipe = base.model_copy(update={"command": base.command.model_copy(update={"args": args})})
    changed = with_sets(recipe, parse_sets(["clip_grad_norm=1.0"]))
    step, _ = fullscale.launch_steps(changed, make_plan(changed, rescale.Request(8)))
    argv = list(step.argv)
    i = argv.index("--clip_grad_norm")
    assert argv[i + 1:] == ["1.0"] and argv.count("--clip_grad_norm") == 1 and "-1" not in argv
    with pytest.raises(ReproError, match="has no flag --learnin_rate"):
        with_sets(recipe, parse_sets(["learnin_rate=1"]))


# ---------------------------------------------------------------------------------------------------
# out of memory at full scale: retry at half the per-device batch, effective batch unchanged


def _oom_while_over(limit: int):
    """A real training stand-in: a process that runs out of memory above `limit` sequences per device."""
    def train(plan, log):
        code = ("import sys; n = int(sys.argv[1]); "
                "print('torch.OutOfMemoryError: CUDA out of memory.' if n > %d else 'step 1 loss 2.3'); "
                "sys.exit(1 if n > %d else 0)" % (limit, limit))
        step = fullscale.Step((sys.executable, "-c", code, str(plan["per_device_batch"])), why="stand-in")
        return fullscale._train(step, {}, log)
    return train


def test_full_run_out_of_memory_retries_at_half_the_micro_batch(tmp_path, capsys):
    recipe = catalog.get("fms-llama2-7b-sft-single-gpu")  # at-most policy: 4 x 4 on its published GPU
    plan = make_plan(recipe, rescale.Request(1))
    assert (plan["per_device_batch"], plan["grad_accum"]) == (4, 4)
    assert fullscale.train_with_retry(recipe, plan, tmp_path, _oom_while_over(1)) == 0
    record = json.loads((tmp_path / "full-run.json").read_text())
    tried = [(a["per_device_batch"], a["grad_accum"], a["out_of_memory"]) for a in record["attempts"]]
    assert tried == [(4, 4, True), (2, 8, True), (1, 16, False)]
    assert {a["effective_batch"] for a in record["attempts"]} == {16}
    assert "CUDA out of memory" in (tmp_path / "train-0.log").read_text()
    assert "retrying at 2 x 8 accumulation" in capsys.readouterr().out


def test_full_run_out_of_memory_under_a_fixed_micro_batch_is_refused(tmp_path):
    recipe = catalog.get("tulu3-8b-rlvr")  # sum-style loss: the per-device batch is fixed
    plan = make_plan(recipe, rescale.Request(8))
    with pytest.raises(ReproError, match="fixes the per-device batch"):
        fullscale.train_with_retry(recipe, plan, tmp_path, _oom_while_over(0))
    assert json.loads((tmp_path / "full-run.json").read_text())["attempts"][0]["out_of_memory"] is True


def test_full_run_failure_that_is_not_memory_is_not_retried(tmp_path):
    recipe = catalog.get("fms-llama2-7b-sft-single-gpu")
    plan = make_plan(recipe, rescale.Request(1))

    def crash(plan, log):
        return fullscale._train(fullscale.Step((sys.executable, "-c", "raise SystemExit('bad flag')")), {}, log)

    with pytest.raises(ReproError, match="training exited 1"):
        fullscale.train_with_retry(recipe, plan, tmp_path, crash)
    assert len(json.loads((tmp_path / "full-run.json").read_text())["attempts"]) == 1


def test_a_per_device_cap_keeps_the_effective_batch_or_refuses():
    recipe = catalog.get("fms-llama2-7b-sft-single-gpu")
    g = rescale.plan_geometry(recipe, rescale.Request(1, max_per_device=3))
    assert (g.per_device, g.grad_accum, g.effective) == (2, 8, 16)  # largest divisor of 16 under the cap
    with pytest.raises(ReproError, match="fixed by the loss reduction"):
        rescale.plan_geometry(catalog.get("tulu3-8b-rlvr"), rescale.Request(8, max_per_device=1))
    with pytest.raises(ReproError, match="at least 1"):
        rescale.plan_geometry(recipe, rescale.Request(1, max_per_device=0))
