"""Hypothesis fuzzing of the CLI argument space and of mutated recipe, expected and log files.

Default lane: 150 command lines + 60 recipe files + 40 expected files + 60 log files = 310 generated
cases, derandomized so a failure reproduces. Every case must keep the contract (tests/badinput.py):
no traceback, exit 0/1/2, an error is one line.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from badinput import argv_for, mutate_text, outcome, sample_logs
from repro.catalog import loader as catalog
from repro.base.errors import ReproError

def fuzz(n: int) -> settings:
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    out = {"a_file": root / "a_file"}
    out["a_file"].write_text("not a folder\n")
    for i, (name, text) in enumerate(sample_logs().items()):
        path = root / name
        path.write_text(text)
        out[f"log{i}"] = path
    rng = random.Random(7)
    for i, (name, text) in enumerate(sample_logs().items()):
        path = root / f"mutant-{i}-{name}"
        path.write_bytes(mutate_text(rng, text))
        out[f"log-mutant{i}"] = path
    out["log-empty"] = root / "empty.log"
    out["log-empty"].write_text("")
    out["log-device"] = Path("/dev/null")
    return out


@fuzz(150)
@given(rng=st.randoms(use_true_random=False))
def test_cli_argument_space(files, rng):
    argv = argv_for(rng, files)
    problems = outcome(argv).problems()
    assert not problems, (argv, problems)


RECIPE_SOURCES = ["tulu3-8b-sft", "fastllm-mistral-7b-pretrain", "toolgen-llama3-8b-e2e"]


@fuzz(60)
@given(rng=st.randoms(use_true_random=False), which=st.sampled_from(RECIPE_SOURCES))
def test_mutated_recipe_files(tmp_path_factory, rng, which):
    """A hand-edited recipe either loads (and then lints without crashing) or is one ReproError line."""
    from repro.lint.rules import lint

    src = catalog.recipe_path(which)
    folder = tmp_path_factory.mktemp("recipe") / src.parent.name
    folder.mkdir()
    path = folder / src.name
    path.write_bytes(mutate_text(rng, src.read_text(encoding="utf-8")))
    try:
        recipe = catalog.load_recipe_file(path)
    except ReproError as exc:
        assert "\n" not in exc.message and exc.exit_code == 2
        return
    try:
        lint(recipe, False)
    except ReproError as exc:
        assert "\n" not in exc.message


EXPECTED_SOURCES = ["tulu3-8b-sft", "fastllm-mistral-7b-pretrain", "fms-granite4-h-tiny-cp8-ebs4-s8192-gas1"]


@fuzz(40)
@given(rng=st.randoms(use_true_random=False), which=st.sampled_from(EXPECTED_SOURCES))
def test_mutated_expected_files(tmp_path_factory, rng, which):
    """A hand-edited expected table either loads (and then verifies a small run) or is one line."""
    from repro.base.paths import EXPECTED_DIR
    from repro.base.metrics import MetricRecord
    from repro.verify.claims import load_expected
    from repro.verify.verifier import verify_expected

    root = tmp_path_factory.mktemp("expected")
    (root / f"{which}.yaml").write_bytes(mutate_text(rng, (EXPECTED_DIR / f"{which}.yaml").read_text()))
    try:
        expected = load_expected(which, root=root)
    except ReproError as exc:
        assert "\n" not in exc.message
        return
    records = [MetricRecord(step=s, loss=2.0 - s / 100, lr=1e-5) for s in range(1, 30)]
    verify_expected(expected, [records])


@fuzz(60)
@given(rng=st.randoms(use_true_random=False), which=st.sampled_from(sorted(sample_logs())))
def test_mutated_logs_through_verify(files, tmp_path_factory, rng, which):
    path = tmp_path_factory.mktemp("log") / which
    path.write_bytes(mutate_text(rng, sample_logs()[which]))
    for argv in (["parse", str(path)], ["verify", "tulu3-8b-sft", str(path)]):
        problems = outcome(argv).problems()
        assert not problems, (argv, path.read_bytes()[:300], problems)
