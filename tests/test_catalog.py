"""The catalog: every published result, valid, and character-for-character what the seeds print."""

import json

import pytest

from repro.catalog import loader as catalog
from repro.catalog import derive
from repro.catalog import seeds
from repro.cli import main
from repro.base.errors import ReproError
from repro.base.paths import ROOT

EXPECTED_IDS = {
    "toolgen-llama3-8b-memorization", "toolgen-llama3-8b-retrieval", "toolgen-llama3-8b-e2e",
    "tulu3-8b-sft", "tulu3-70b-sft", "tulu3-8b-dpo", "tulu3-70b-dpo", "tulu3-8b-rm", "tulu3-8b-rlvr",
    "tulu3-70b-rlvr",
    "acerag-llama2-7b-pretrain", "acerag-llama2-7b-longalpaca", "acerag-llama2-7b-multitask",
    "acerag-qwen3-8b-pretrain", "acerag-qwen3-8b-longalpaca", "acerag-qwen3-8b-multitask",
    "fastllm-mistral-7b-pretrain", "fastllm-mistral-7b-pretrain-small-cluster",
    "fastllm-mistral-7b-recompute-none", "fastllm-mistral-7b-recompute-activation",
    "fastllm-mistral-7b-recompute-full",
    "fms-llama2-7b-sft-single-gpu", "fms-llama2-7b-sft-single-gpu-formatter", "fms-llama2-7b-sft-fsdp",
    "fms-gpt-oss-120b-lora-mxfp4",
    "fms-granite4-h-tiny-cp8-ebs4-s8192-gas1", "fms-granite4-h-tiny-cp8-ebs4-s8192-gas1-ep8",
    "fms-granite4-h-tiny-cp8-ebs4-s8192-gas2", "fms-granite4-h-tiny-cp4-dp2-ebs4-s8192-gas1",
    "fms-granite4-h-tiny-cp1-dp4-ep4-ebs4-s8192-gas1", "fms-granite4-h-tiny-cp8-ebs1-s131072-gas1-ep8",
    "fms-granite4-h-small-cp8-ebs1-s131072-gas1-ep8",
}


def test_every_published_result_has_exactly_one_recipe(recipes):
    assert set(recipes) == EXPECTED_IDS


@pytest.mark.skipif(not seeds.seeds_dir().is_dir(), reason="the seed documents are not beside this checkout")
@pytest.mark.parametrize("rid", sorted(EXPECTED_IDS))
def test_published_text_is_the_seed_character_for_character(recipes, rid):
    assert seeds.compare(recipes[rid]) == []


def test_seed_comparison_can_fail(recipes, tmp_path):
    recipe = recipes["tulu3-8b-sft"]
    text = (seeds.seeds_dir() / recipe.provenance.seed_file)
    if not text.is_file():
        pytest.skip("no seeds")
    altered = text.read_text().replace("--num_processes 64 \\", "--num_processes 64 \\ ", 1)
    (tmp_path / recipe.provenance.seed_file).write_text(altered)
    assert seeds.compare(recipe, tmp_path)


@pytest.mark.parametrize("rid", sorted(EXPECTED_IDS))
def test_derived_quantities_recompute(recipes, rid):
    assert derive.mismatches(recipes[rid]) == []


def test_tulu_sft_derived_numbers_match_the_research(recipes):
    d = derive.derive(recipes["tulu3-8b-sft"])
    assert (d["steps_per_epoch"], d["optimizer_steps"], d["warmup_steps"]) == (7339, 14678, 440)


def test_list_json_contract(capsys):
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["id"] for r in rows} == EXPECTED_IDS
    assert all({"id", "family"} <= r.keys() for r in rows)


def test_bad_recipe_file_is_one_line_naming_file_and_field(tmp_path):
    src = catalog.recipe_path("tulu3-8b-sft")
    bad_dir = tmp_path / "tulu3"
    bad_dir.mkdir()
    bad = bad_dir / "tulu3-8b-sft.yaml"
    bad.write_text(src.read_text().replace("commit: 30d11b4fb9e363f32214e484aeac86ded419a9ef", "commit: 30d11b4"))
    with pytest.raises(ReproError) as err:
        catalog.load_recipe_file(bad)
    assert "\n" not in err.value.message
    assert str(bad) in err.value.message and "provenance.upstream.commit" in err.value.message


def test_broken_yaml_names_the_line(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("id: a\nfamily: [unclosed\n")
    with pytest.raises(ReproError) as err:
        catalog.read_yaml(bad)
    assert f"{bad}:" in err.value.message and "invalid YAML" in err.value.message


def test_every_recipe_has_its_nox_session_and_nothing_else():
    """`nox -s repro-<id>` for each recipe id; family defaults (_twin.yaml) are not recipes."""
    import subprocess
    import sys

    code = "import noxfile; print('\\n'.join(noxfile._recipe_ids()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == sorted(catalog.load_all())
