"""Tulu 3 DPO and reward-model twins end to end: step-1 sanity, cached vs live reference, the golden
catching a changed beta or loss type, the flag sets of the two DPO scripts, the RM filter quirk."""

from __future__ import annotations

import json
import math
import subprocess

import pytest

pytest.importorskip("torch", reason="the DPO/RM twins need the twin extra (torch, transformers, accelerate)")

from repro.base.paths import ROOT  # noqa: E402
from repro.catalog import loader as catalog  # noqa: E402
from repro.lint import chain_paths  # noqa: E402
from repro.catalog.schema import Arg  # noqa: E402
from repro.cli import main  # noqa: E402
from repro.base.errors import ReproError  # noqa: E402
from repro.base.metrics import read_jsonl  # noqa: E402
from repro.twin import session  # noqa: E402

PREFERENCE_TWINS = sorted(r.id for r in catalog.load_all().values()
                          if r.twin is not None and r.task in ("dpo", "rm") and r.family == "tulu3")


def test_every_preference_recipe_has_its_twin():
    assert PREFERENCE_TWINS == ["tulu3-70b-dpo", "tulu3-8b-dpo", "tulu3-8b-rm"]
    runners = {catalog.get(i).twin.runner for i in PREFERENCE_TWINS}
    assert runners == {"harness/open_instruct/dpo_tune.py", "harness/open_instruct/dpo_tune_cache.py",
                       "harness/open_instruct/reward_modeling.py"}


def test_each_dpo_script_accepts_exactly_its_own_flags():
    from harness.open_instruct import dpo_tune

    base = ["--model_name_or_path", "m", "--train_file", "x.jsonl", "--push_to_hub", "False",
            "--try_launch_beaker_eval_jobs", "False"]
    with pytest.raises(ReproError, match="unrecognized arguments: --concatenated_forward"):
        dpo_tune.parse_args([*base, "--concatenated_forward", "False"], cache=False)
    args = dpo_tune.parse_args([*base, "--concatenated_forward", "False", "--fused_optimizer", "False"], cache=True)
    assert args.concatenated_forward is False and args.fused_optimizer is False and args.dpo_loss_type == "dpo"
    with pytest.raises(ReproError, match="invalid choice: 'ipo'"):
        dpo_tune.parse_args([*base, "--dpo_loss_type", "ipo"], cache=False)
    with pytest.raises(ReproError, match="without pushing to the Hub"):
        dpo_tune.parse_args(base[:-2], cache=False)


def test_rm_cli_defaults_are_upstreams():
    from harness.open_instruct import reward_modeling as rmt

    args, dcfg, mcfg = rmt.parse_args(["--dataset_mixer", '{"a": 1.0}', "--model_name_or_path", "m",
                                       "--output_dir", "o"])
    assert (args.seed, args.eps, args.gradient_accumulation_steps, args.num_evals) == (1, 1e-5, 8, 1)
    assert dcfg.chat_template == "simple_chat" and args.push_to_hub is True
    with pytest.raises(ReproError, match="not JSON"):
        rmt.parse_args(["--dataset_mixer", "{a", "--model_name_or_path", "m", "--output_dir", "o"])


def _run_twin(rid, tmp_path, sets=(), env=None):
    code = main(["run", rid, "--scale", "twin", "--out", str(tmp_path), "--quiet",
                 *[x for s in sets for x in ("--set", s)]])
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    return code, {c["name"]: c for c in verdict["checks"]}, verdict


@pytest.mark.slow
@pytest.mark.parametrize("rid", PREFERENCE_TWINS)
def test_twin_passes_its_checks(rid, twin_run):
    code, tmp_path, _ = twin_run(rid)
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    checks = {c["name"]: c for c in verdict["checks"]}
    assert verdict["passed"] and code == 0, [c for c in checks.values() if c["status"] != "PASS"]
    assert checks["golden curve" if "golden curve" in checks else "loss vs golden"]["status"] == "PASS"
    if rid.endswith("-rm"):
        log = (tmp_path / "train.log").read_text()
        assert "128 kept, 4 filtered" in log  # the 4 long prompts go; the 2 long chosen turns stay (quirk)
        assert "longest chosen kept 10" in log
        assert any((tmp_path / "train").glob("*/runs/*/events.out.tfevents.*"))  # TensorBoard, by episode
    else:
        assert "128 kept, 4 dropped" in (tmp_path / "train.log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("knob", ["dpo_beta=2.5", "dpo_loss_type=dpo"])
def test_a_changed_beta_or_loss_type_fails_the_golden(knob, tmp_path):
    code, checks, verdict = _run_twin("tulu3-8b-dpo", tmp_path, [knob])
    assert code == 1 and not verdict["passed"]
    assert checks["loss vs golden"]["status"] == "FAIL" and "worst step" in checks["loss vs golden"]["message"]
    assert checks["value_at_step loss @ step 1"]["status"] == "PASS"  # both still start at ln 2: the golden decides


@pytest.mark.slow
def test_a_reference_unlike_the_policy_fails_the_ln2_check(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_TWIN_BREAK_REFERENCE", "0.5")
    code, checks, _ = _run_twin("tulu3-8b-dpo", tmp_path)
    assert code == 1 and checks["value_at_step loss @ step 1"]["status"] == "FAIL"


@pytest.mark.slow
def test_cached_reference_gives_the_live_reference_curve(tmp_path):
    """dpo_tune_cache.py (one reference pass before step 1) vs dpo_tune.py (a live reference model), same
    data, geometry and (unfused) optimizer: the same curve."""
    recipe = catalog.get("tulu3-8b-dpo")
    curves = {}
    for mode in ("live", "cache"):
        out = tmp_path / mode
        run = session.prepare(recipe, out, extra=[Arg(flag="--max_train_steps", values=("10",))])
        argv = list(run.argv)
        if mode == "cache":
            argv[argv.index(str(ROOT / recipe.twin.runner))] = str(ROOT / "harness/open_instruct/dpo_tune_cache.py")
            argv += ["--fused_optimizer", "False"]
        proc = subprocess.run(argv, env=run.env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        if mode == "cache":
            assert "cached reference log-probs: 64 pairs per process" in proc.stdout
        records = read_jsonl(next((out / "train").glob("*/metrics.jsonl")))
        curves[mode] = [(r.loss, r.extra["rewards/margin"], r.extra["logps/chosen"]) for r in records]
    assert len(curves["live"]) == len(curves["cache"]) == 10
    for a, b in zip(curves["live"], curves["cache"]):
        assert all(math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-7) for x, y in zip(a, b)), (a, b)


# ------------------------------------------------------------------ the chain: DPO/RM start from the SFT twin


def test_dpo_and_rm_needs_name_the_sft_published_model():
    from repro.twin import chain

    for rid, sft in (("tulu3-8b-dpo", "tulu3-8b-sft"), ("tulu3-70b-dpo", "tulu3-70b-sft"), ("tulu3-8b-rm", "tulu3-8b-sft")):
        recipe = catalog.get(rid)
        (needs,) = recipe.needs_list
        assert (needs.stage, needs.find, needs.flag) == (sft, "published_model", "--model_name_or_path")
        assert chain_paths.check_paths(recipe) == []
        assert [r.id for r in chain.chain_of(recipe)] == [sft, rid]
        # no stand-in start model is bundled any more: the hub id can only resolve to the SFT stage's output
        assert not any(needs.path in a.stands_for for a in recipe.twin.assets.values())


def test_chain_path_lint_checks_the_hub_id_the_flag_carries():

    recipe = catalog.get("tulu3-8b-dpo")
    wrong_id = recipe.needs.model_copy(update={"path": "allenai/Llama-3.1-Tulu-3-70B-SFT"})
    problems = chain_paths.check_paths(recipe.model_copy(update={"needs": wrong_id}))
    assert any("--model_name_or_path is 'allenai/Llama-3.1-Tulu-3-8B-SFT' in the command" in p for p in problems)
    assert any("not tulu3-8b-sft's published output" in p for p in problems)
    wrong_flag = recipe.needs.model_copy(update={"flag": "--reward_model_path"})
    assert chain_paths.check_paths(recipe.model_copy(update={"needs": wrong_flag}))


def test_needs_schema_single_or_list_and_hub_ids_only():
    from pydantic import ValidationError

    from repro.catalog.schema import Needs

    with pytest.raises(ValidationError, match="takes a hub id"):
        Needs(stage="x", flag="--m", path="data/outputs/sft_8b", find="published_model", source="s")
    recipe = catalog.get("tulu3-8b-dpo")
    as_list = recipe.model_validate({**recipe.model_dump(), "needs": [recipe.needs.model_dump()]})
    assert as_list.needs_list == recipe.needs_list
    with pytest.raises(ValidationError, match="two stages feed the same flag"):
        recipe.model_validate({**recipe.model_dump(), "needs": [recipe.needs.model_dump()] * 2})


@pytest.mark.slow
def test_dpo_twin_records_the_sft_stage_and_a_second_run_reuses_it(twin_run, tmp_path, capsys):
    from pathlib import Path

    from repro.twin import chain

    code, out, stdout = twin_run("tulu3-8b-dpo")
    # empty stdout: the RLVR twins built this DPO run as their stage earlier in the session (conftest)
    assert code == 0 and (not stdout or "tulu3-8b-dpo starts from tulu3-8b-sft" in stdout)
    sft = catalog.get("tulu3-8b-sft")
    up = json.loads((out / "manifest.json").read_text())["upstream"]
    key = chain.stage_key(sft)
    assert (up["stage"], up["key"], up["hub_id"], up["find"]) == ("tulu3-8b-sft", key,
                                                                   "allenai/Llama-3.1-Tulu-3-8B-SFT", "published_model")
    stage = Path(up["run_dir"])
    assert stage.parent == chain.stage_dir(sft, key) and up["manifest_sha256"] == chain.manifest_sha256(stage)
    assert Path(up["input"]) == stage / "train" / "sft_8b" and (Path(up["input"]) / "config.json").is_file()
    hub = json.loads((out / "assets.json").read_text())["models"]
    assert hub["allenai/Llama-3.1-Tulu-3-8B-SFT"] == up["input"]  # model and tokenizer flags both resolve to it
    # a second run (two steps are enough to see what it starts from) reuses the cached stage and says so
    capsys.readouterr()
    main(["run", "tulu3-8b-dpo", "--scale", "twin", "--out", str(tmp_path / "again"), "--quiet",
          "--set", "max_train_steps=2"])
    said = capsys.readouterr().out
    assert f"reusing the cached stage {stage} (key {key[:16]} matches" in said
    again = json.loads((tmp_path / "again" / "manifest.json").read_text())["upstream"]
    assert again["reused"] is True and (again["key"], again["manifest_sha256"]) == (key, up["manifest_sha256"])
