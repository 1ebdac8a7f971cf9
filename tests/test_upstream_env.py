"""Pinned upstream environments: the schema refuses what it must, each recipe finds its environment, and
the builder installs only into the environment it builds (never repro's own)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from repro.catalog import upstream_env as ue
from repro.base.errors import ReproError
from repro.plan import upstream_envs as envs

GOOD = {"name": "x", "repo": "o/r", "commit": "a" * 40, "commit_date": "2024-11-20", "exclude_newer": "2024-11-21",
        "packages": ["torch==2.4.0", "datasets", "deepspeed>=0.14.0"]}


def _write(tmp_path: Path, data: dict) -> Path:
    d = tmp_path / ue.ENV_DIR
    d.mkdir(exist_ok=True)
    p = d / f"{data['name']}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_every_declared_environment_loads():
    envs_ = ue.load_envs()
    assert {"fms-hf-tuning-3.2.2", "open-instruct-30d11b4", "toolgen-6839374", "lightrag-bce608d"} <= set(envs_)


@pytest.mark.parametrize("field,value,needle", [
    ("commit", "abc123", "40-hex"),
    ("exclude_newer", "2024-01-01", "before the commit date"),
    ("packages", ["torch 2.4"], "not a requirement"),
    ("device", "cuda-only", "cuda_reason"),
    ("name", "y", "must equal the file name"),
])
def test_schema_refuses_in_one_line(tmp_path, field, value, needle):
    data = dict(GOOD)
    p = _write(tmp_path, data)
    data[field] = value
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ReproError) as exc:
        ue.load_env(p)
    assert needle in str(exc.value) and str(p) in str(exc.value) and "\n" not in str(exc.value)


def test_every_recipe_with_a_cpu_upstream_finds_exactly_one_environment(recipes):
    declared = {(e.repo, e.commit) for e in ue.load_envs().values()}
    for r in recipes.values():
        up = r.provenance.upstream
        if (up.repo, up.commit) in declared:
            assert ue.env_for(up.repo, up.commit).commit == up.commit


def test_env_for_refuses_an_unknown_pin_and_a_mismatched_name():
    with pytest.raises(ReproError, match="declare one"):
        ue.env_for("o/r", "b" * 40)
    with pytest.raises(ReproError, match="not the recipe's"):
        ue.env_for("o/r", "b" * 40, name="fms-hf-tuning-3.2.2")


def test_builder_targets_only_its_own_environment(tmp_path):
    env = ue.load_envs()["fms-hf-tuning-3.2.2"]
    root = tmp_path / "env"
    steps = envs.install_argv(env, root, tmp_path / "lock.txt")
    flat = [w for argv in steps for w in argv]
    assert sys.executable not in flat and sys.prefix not in flat
    assert steps[1][steps[1].index("--python") + 1] == str(root / "bin" / "python")
    assert str(env.exclude_newer) in envs.compile_argv(env, tmp_path / "l")


def test_lock_hash_names_the_environment_and_changes_with_the_lock():
    a, b = envs.lock_sha256("torch==2.4.0\n"), envs.lock_sha256("torch==2.4.1\n")
    assert a != b and envs.env_dir(a) != envs.env_dir(b)
    spec = ue.UpstreamEnv.model_validate(GOOD)
    other = spec.model_copy(update={"exclude_newer": spec.exclude_newer.replace(day=22)})
    assert envs.spec_sha256(spec) != envs.spec_sha256(other)


def test_an_incomplete_environment_is_not_reused(tmp_path):
    root = tmp_path / "e"
    root.mkdir()
    assert not envs.is_complete(root, "f" * 64)  # no stamp: an interrupted build
    (root / envs.STAMP).write_text('{"lock_sha256": "%s"}' % ("e" * 64))
    assert not envs.is_complete(root, "f" * 64)
    assert envs.is_complete(root, "e" * 64)
