"""The claims registry: every recipe has a valid expected file, every claim a source, and bad
files fail with one line naming the file and the field."""

from __future__ import annotations

import copy
import math
import re

import pytest
import yaml

from repro.base.paths import EXPECTED_DIR
from repro.catalog import loader as catalog
from repro.verify.claims import PaperSource, RepoSource, list_expected, load_expected, parse_expected
from repro.base.errors import ReproError

RECIPE_IDS = sorted(catalog.load_all())  # test_catalog pins this list to the 32 published results

# Full commits the research files establish; a claim citing any other commit was typed by hand.
KNOWN_COMMITS = {
    "30d11b4fb9e363f32214e484aeac86ded419a9ef", "3dd7a07da07e78550e7be48a7d317ec3d9c9cd6d",
    "1aa60404d9183bdc1735358a9479e33d3fbfd533", "ac1447d95518afbaf49b5db071c0875aff8bb269",
    "ce52c35ff4160fcaa4f211723df23736becf5065", "80d25b9374ab237891db15b2fdbf174275bc8131",
    "d3c30a035ff2ca9b95f35e432c33793028c3ee84", "6839374a255810efe69deea4056eec5c55e25802",
    "bce608d15cf7a9fc9447f54dbf044db0c25254a3", "6f4bf8c193b669a84f5e6437e2364c27dd6ad2eb",
    "ad0c026b38208b51eb6533aa08c5a4797533303f",
}


def test_every_recipe_has_an_expected_file():
    assert sorted(list_expected()) == sorted(RECIPE_IDS)


@pytest.mark.parametrize("recipe_id", RECIPE_IDS)
def test_expected_file_loads_and_every_claim_has_a_source(recipe_id):
    expected = load_expected(recipe_id)
    assert expected.recipe == recipe_id
    for claim in expected.claims:
        src = claim.source
        assert isinstance(src, (RepoSource, PaperSource))
        if isinstance(src, RepoSource):
            assert src.commit is None or src.commit in KNOWN_COMMITS, (claim.id, src.commit)
            if src.commit is None:
                assert claim.secondary and src.note, claim.id
        if claim.kind != "none":
            assert claim.tolerance is not None and len(claim.tolerance.rationale) >= 10


@pytest.mark.parametrize("recipe_id", RECIPE_IDS)
def test_each_file_states_no_published_loss_or_has_a_loss_claim(recipe_id):
    """ToolGen/AceRAG/Tulu/Fast-LLM publish no loss: that must be said plainly, not left out."""
    claims = load_expected(recipe_id).claims
    assert any(c.metric == "loss" for c in claims)
    assert any(c.metric in ("tokens_per_s_per_device", "model_tflops_per_device") for c in claims)


def _pretrain_throughput():
    return {c.id: c for c in load_expected("fastllm-mistral-7b-pretrain").claims if c.metric == "tokens_per_s_per_device"}


def test_fast_llm_records_all_four_conflicting_throughput_claims():
    claims = _pretrain_throughput()
    values = sorted(c.value for c in claims.values())
    assert values == [9000, 9000, 9800, 10350]
    commits = {c.source.commit[:7] + ":" + c.source.path for c in claims.values()}
    assert commits == {"1aa6040:docs/tutorial/prepare_training.md", "1aa6040:docs/index.md",
                       "ac1447d:README.md", "ce52c35:docs/index.md"}
    verdict = [c for c in claims.values() if c.used_by_verdict]
    assert [c.id for c in verdict] == ["tokens-per-s-seed"]
    for claim in claims.values():
        assert set(claim.conflicts_with) == set(claims) - {claim.id}


def test_fast_llm_440_tflops_and_recompute_table_recorded():
    pre = load_expected("fastllm-mistral-7b-pretrain")
    assert pre.claim("model-tflops-seed").value == 440
    table = {"none": (36515, 4234.09, 202.88), "activation": (29346, 4218.63, 202.14), "full": (15010, 3804.49, 182.29)}
    for level, (mem, tps, tflops) in table.items():
        exp = load_expected(f"fastllm-mistral-7b-recompute-{level}")
        assert exp.claim("activation-memory").value == mem
        assert exp.claim("tokens-per-s").value == tps
        assert exp.claim("model-tflops").value == tflops
        assert exp.claim("tokens-per-s").hardware.gpu == "A100"
        assert exp.claim("tokens-per-s").hardware.count == 4


def test_granite_ablations_exactly_as_published():
    published = {
        "cp8-ebs4-s8192-gas1": (0.8059140625, 973.6), "cp8-ebs4-s8192-gas1-ep8": (0.80224609375, 2367.6),
        "cp8-ebs4-s8192-gas2": (0.8059765625, None), "cp4-dp2-ebs4-s8192-gas1": (0.802953125, 953.4),
        "cp1-dp4-ep4-ebs4-s8192-gas1": (0.7967056884765625, 2576),
    }
    for setting, (loss, tps) in published.items():
        exp = load_expected(f"fms-granite4-h-tiny-{setting}")
        assert exp.claim("loss").value == loss
        assert "does not say how" in exp.claim("loss").definition
        if tps is None:
            assert exp.claim("no-published-throughput").kind == "none"
        else:
            assert exp.claim("tokens-per-s").value == tps
    tiny = load_expected("fms-granite4-h-tiny-cp8-ebs1-s131072-gas1-ep8")
    small = load_expected("fms-granite4-h-small-cp8-ebs1-s131072-gas1-ep8")
    assert (tiny.claim("tokens-per-s").value, tiny.claim("gpu-memory-ratio").value) == (1462.8, 0.5140136719)
    assert (small.claim("tokens-per-s").value, small.claim("gpu-memory-ratio").value) == (682.7, 0.9887207031)


def test_tulu_sanity_claims_hold_for_any_correct_run():
    for rid in ("tulu3-8b-dpo", "tulu3-70b-dpo"):
        claim = load_expected(rid).claim("dpo-loss-step1")
        assert claim.kind == "sanity" and math.isclose(claim.value, math.log(2), abs_tol=1e-6)
        assert claim.window.steps == (1, 1)
    assert load_expected("tulu3-8b-rm").claim("rm-accuracy-start").value == 0.5
    for rid in ("tulu3-8b-rlvr", "tulu3-70b-rlvr"):
        assert load_expected(rid).claim("kl-start").value == 0.0


def test_tulu_derived_quantities_follow_from_hyperparameters():
    sft = load_expected("tulu3-8b-sft")
    rows, ebs = sft.claim("dataset-rows").value, sft.claim("effective-batch").value
    assert sft.claim("optimizer-steps").value == 2 * math.ceil(rows / ebs)
    assert sft.claim("warmup-steps").value == int(0.03 * sft.claim("optimizer-steps").value)
    evals = [c for c in sft.claims if c.kind == "evaluation"]
    assert evals and all(c.measure is None for c in evals)


def test_secondary_sources_are_marked():
    for rid in ("toolgen-llama3-8b-retrieval", "toolgen-llama3-8b-e2e"):
        evals = [c for c in load_expected(rid).claims if c.kind == "evaluation"]
        assert evals and all(c.secondary for c in evals)


# --------------------------------------------------------------------------------------------
# Bad files fail with one line naming file and field
# --------------------------------------------------------------------------------------------


@pytest.fixture
def raw():
    return yaml.safe_load((EXPECTED_DIR / "fastllm-mistral-7b-pretrain.yaml").read_text())


def _error(raw_doc) -> str:
    with pytest.raises(ReproError) as info:
        parse_expected(raw_doc, "expected/x.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_short_commit_is_rejected_with_field_path(raw):
    raw["claims"][3]["source"]["commit"] = "ac1447d9"
    assert _error(raw) == "expected/x.yaml: claims[3].source.commit: must be 40 hex characters"


def test_unknown_field_is_rejected(raw):
    raw["claims"][0]["tolerence"] = {"rel": 0.1}
    assert _error(raw) == "expected/x.yaml: claims[0].tolerence: unknown field"


def test_null_commit_only_on_secondary_claims(raw):
    raw["claims"][0]["source"]["commit"] = None
    assert "claims[0]: source.commit may be null only on a secondary claim" in _error(raw)
    fixed = copy.deepcopy(raw)
    fixed["claims"][0]["secondary"] = True
    parse_expected(fixed, "expected/x.yaml")


def test_paper_source_needs_a_table_or_section(raw):
    raw["claims"][0]["source"] = {"paper": "Some paper"}
    assert _error(raw) == "expected/x.yaml: claims[0].source: a paper source needs a table or a section"


def test_tolerance_needs_a_rationale_and_a_size(raw):
    raw["claims"][0]["tolerance"] = {"two_sided": True, "rationale": "because we said so"}
    assert "claims[0].tolerance: give rel or abs" in _error(raw)


def test_none_claim_cannot_carry_a_value(raw):
    none = next(i for i, c in enumerate(raw["claims"]) if c["kind"] == "none")
    raw["claims"][none]["value"] = 1.0
    assert f"claims[{none}]: a 'none' claim records that nothing was published" in _error(raw)


def test_conflicts_with_must_name_existing_claims(raw):
    raw["claims"][0]["conflicts_with"] = ["no-such-claim"]
    assert "conflicts_with unknown ids: no-such-claim" in _error(raw)


def test_unknown_gpu_and_model_are_rejected(raw, tmp_path):
    bad_gpu = copy.deepcopy(raw)
    bad_gpu["claims"][0]["hardware"]["gpu"] = "Z9000"
    assert re.search(r"claims\[0\]\.hardware\.gpu: unknown GPU 'Z9000'", _error(bad_gpu))
    bad_model = copy.deepcopy(raw)
    bad_model["claims"][0]["config"]["model"] = "gpt-5"
    (tmp_path / "fastllm-mistral-7b-pretrain.yaml").write_text(yaml.safe_dump(bad_model))
    with pytest.raises(ReproError, match=r"claims\[0\]\.config\.model: unknown model 'gpt-5'"):
        load_expected("fastllm-mistral-7b-pretrain", root=tmp_path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ReproError, match="no expected file for recipe 'nope'"):
        load_expected("nope", root=tmp_path)
    (tmp_path / "broken.yaml").write_text("recipe: broken\nclaims: [\n")
    with pytest.raises(ReproError, match=r"expected/broken\.yaml: line \d+: not valid YAML"):
        load_expected("broken", root=tmp_path)
    (tmp_path / "other.yaml").write_text((EXPECTED_DIR / "tulu3-8b-rm.yaml").read_text())
    with pytest.raises(ReproError, match="recipe: 'tulu3-8b-rm' does not match the file name"):
        load_expected("other", root=tmp_path)
