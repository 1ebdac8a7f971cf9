"""Per-asset content keys: one builder's change moves only its asset's key, and a golden that names
other keys is reported stale instead of being compared."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the twin assets need the twin extra (torch, transformers, tokenizers)")

from harness.assets.cache import AssetSpec, asset_key, build_all, order  # noqa: E402
from repro import catalog  # noqa: E402
from repro.base.errors import ReproError  # noqa: E402
from repro.twin import assets as twin_assets  # noqa: E402
from repro.twin.golden import compare, stale_assets  # noqa: E402

TWINS = sorted(r.id for r in catalog.load_all().values() if r.twin)


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_assets_are_byte_identical_across_builds_and_cached(tmp_path):
    recipe = catalog.get("tulu3-8b-sft")
    first = twin_assets.build(recipe, tmp_path / "a")
    second = twin_assets.build(recipe, tmp_path / "b")
    for name in first:
        assert first[name].key == second[name].key
        assert tree_digest(first[name].root) == tree_digest(second[name].root), name
    start = time.perf_counter()
    again = twin_assets.build(recipe, tmp_path / "b")
    assert {n: b.root for n, b in again.items()} == {n: b.root for n, b in second.items()}
    assert time.perf_counter() - start < 1.0  # a cache hit builds nothing


def test_one_builder_change_moves_only_its_own_key_and_its_dependents():
    recipe = catalog.get("tulu3-8b-sft")
    specs = twin_assets.specs(recipe)
    keys = {}
    for name in order(specs):
        keys[name] = asset_key(specs[name], {d: keys[d] for d in specs[name].deps})
    data = specs["tulu3-sft-mixture-twin"]
    changed = AssetSpec(data.name, data.kind, data.builder, {**data.params, "rows_per_source": 65},
                        data.stands_for, data.deps)
    assert asset_key(changed, {}) != keys[data.name]
    tok = specs["bpe-llama3-2048"]
    bigger = AssetSpec(tok.name, tok.kind, tok.builder, {"vocab": 4096}, tok.stands_for, tok.deps)
    model = specs["llama-3.1-8b-twin"]
    # a model's key follows its tokenizer's key: a new tokenizer makes a new model
    assert asset_key(model, {tok.name: asset_key(bigger, {})}) != keys[model.name]
    assert asset_key(model, {tok.name: keys[tok.name]}) == keys[model.name]


def test_dependency_cycles_and_unknown_builders_are_bad_input(tmp_path):
    a = AssetSpec("a", "other", "harness.assets.models:from_config", deps=("b",))
    b = AssetSpec("b", "other", "harness.assets.models:from_config", deps=("a",))
    with pytest.raises(ReproError, match="cycle"):
        order({"a": a, "b": b})
    with pytest.raises(ReproError, match="no function"):
        build_all({"x": AssetSpec("x", "other", "harness.assets.models:nope")}, tmp_path)


def test_stale_golden_is_reported_never_compared():
    recipe = catalog.get("tulu3-8b-sft")
    golden = {"env_key": "k", "assets": {"bpe-llama3-2048": "old"}, "metrics": {}}
    assert stale_assets(golden, {"bpe-llama3-2048": "new"}) == ["bpe-llama3-2048"]
    assert stale_assets({"metrics": {}}, {"x": "1"})  # a golden without asset keys is stale too
    [result] = compare([], golden, recipe.twin.golden, "k", {"bpe-llama3-2048": "new"}, "src")
    assert result.status == "NOT-MEASURED" and "stale golden" in result.message


@pytest.mark.parametrize("rid", TWINS)
def test_every_golden_names_the_current_asset_keys(rid, tmp_path):
    """A golden on disk that no longer matches its recipe's assets would be silently useless."""
    from repro.twin.golden import GOLDEN_DIR
    import json

    recipe = catalog.get(rid)
    paths = sorted((GOLDEN_DIR / rid).glob("*.json"))
    if not paths:
        pytest.skip(f"{rid} has no golden yet")
    keys = {n: b.key for n, b in twin_assets.build(recipe, tmp_path).items()}
    for path in paths:
        assert not stale_assets(json.loads(path.read_text()), keys), f"{path} is stale: re-record it"
