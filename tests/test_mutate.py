"""The mutant matrix (`repro mutate`): the twin block's `mutants:` schema, the matrix rules (every
mutant killed, every declared kill seen, every check kills something), and the step-for-step refusal."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from repro.catalog.schema import Mutant, Twin, TwinCheck

TWIN = {
    "runner": "harness/open_instruct/finetune.py", "assets": {},
    "geometry": {"processes": 1, "per_device": 1, "grad_accum": 1},
    "checks": [{"kind": "finite", "why": "w"},
               {"kind": "max_at_most", "metric": "extra.grad_norm_after_clip", "value": 1.0, "why": "w"}],
    "shrunk": [], "kept": [], "proves": [], "cannot_prove": [],
}


def twin(**kw) -> Twin:
    return Twin.model_validate({**TWIN, **kw})


def test_check_ids():
    assert TwinCheck(kind="finite", why="w").id == "finite:loss"
    assert TwinCheck(kind="golden", why="w").id == "golden"
    assert TwinCheck(kind="rises", metric="extra.x", name="x_rises", why="w").id == "x_rises"


def test_mutant_needs_exactly_one_of_set_or_fault():
    Mutant(name="no_clip", why="w", set=[["--clip_grad_norm", "-1"]], kills=["finite:loss"])
    Mutant(name="nan", why="w", fault="nan_loss", kills=["finite:loss"])
    for bad in ({}, {"set": [["--x", "1"]], "fault": "nan_loss"}):
        with pytest.raises(ValidationError):
            Mutant(name="m", why="w", kills=["finite:loss"], **bad)
    with pytest.raises(ValidationError):
        Mutant(name="m", why="w", fault="nan_loss", kills=[])


def test_kills_must_name_a_check_of_the_twin():
    ok = twin(mutants=[{"name": "no_clip", "why": "w", "set": [["--clip_grad_norm", "-1"]],
                        "kills": ["max_at_most:extra.grad_norm_after_clip", "no_divergence"]}])
    assert ok.mutants[0].set[0].values == ("-1",)
    with pytest.raises(ValidationError, match="is not a check of this twin"):
        twin(mutants=[{"name": "m", "why": "w", "fault": "nan_loss", "kills": ["golden"]}])


def test_duplicate_ids_and_names_are_refused_once_mutants_are_declared():
    dup = [{"kind": "finite", "why": "w"}, {"kind": "finite", "why": "w"}]
    twin(checks=dup)  # no mutants: ids are not needed
    with pytest.raises(ValidationError, match="share an id"):
        twin(checks=dup, mutants=[{"name": "m", "why": "w", "fault": "nan_loss", "kills": ["finite:loss"]}])
    m = {"name": "m", "why": "w", "fault": "nan_loss", "kills": ["finite:loss"]}
    with pytest.raises(ValidationError, match="unique"):
        twin(mutants=[m, m])


# --------------------------------------------------------------------------------------------
# step for step: a negative control or a mutant with another step count is refused


#: the two controls as they stood before issue 21 (9904e29): half the effective batch, so twice the steps; they
#: "failed to match" on the step count alone, before any tolerance was used
OLD_CONTROLS = {"toolgen-llama3-8b-memorization": {"processes": 1, "per_device": 2, "grad_accum": 2},
                "acerag-llama2-7b-pretrain": {"processes": 2, "per_device": 1, "grad_accum": 1}}


@pytest.mark.parametrize("rid", sorted(OLD_CONTROLS))
def test_step_count_negative_controls_are_refused(rid):
    from repro.base.errors import EXIT_BAD_INPUT, ReproError
    from repro.catalog import loader as catalog
    from repro.catalog.schema import NegativeControl, TwinGeometry
    from repro.twin.equivalence import layouts

    recipe = catalog.get(rid)
    layouts(recipe)  # today's control keeps the effective batch: accepted
    eq = recipe.twin.equivalence
    old = NegativeControl(geometry=TwinGeometry(**OLD_CONTROLS[rid]), why="the control before issue 21")
    assert old.geometry.effective != eq.layouts[0].effective
    then = recipe.model_copy(update={"twin": recipe.twin.model_copy(update={
        "equivalence": eq.model_copy(update={"negative_control": old})})})
    with pytest.raises(ReproError, match="step for step") as info:
        layouts(then)
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_a_control_that_ran_other_steps_is_refused_after_the_run():
    from repro.catalog import loader as catalog
    from repro.base.errors import ReproError
    from repro.twin.equivalence import layouts, same_length

    recipe = catalog.get("tulu3-8b-sft")
    plan = layouts(recipe)  # its control keeps the effective batch: accepted
    control = plan[-1]
    same_length(recipe, control, 100, 100)
    same_length(recipe, plan[1], 100, 50)  # an equivalent layout of other length just fails to match
    with pytest.raises(ReproError, match="ran 50 steps, the reference 100"):
        same_length(recipe, control, 100, 50)


# --------------------------------------------------------------------------------------------
# the matrix rules, on fabricated outcomes


def _row(name, fails=(), kills=(), steps=100, diverged=False, ids=("step_sequence", "no_divergence",
                                                                  "finite:loss", "max_at_most:extra.grad_norm_after_clip",
                                                                  "golden")):
    from repro.twin.mutate import Row

    return Row(name, "w", list(kills), steps, diverged,
               {i: {"status": "FAIL" if i in fails else "PASS", "message": "m"} for i in ids})


def _sft():
    from repro.catalog import loader as catalog

    return catalog.get("tulu3-8b-sft")


def test_matrix_passes_when_every_mutant_dies_as_declared():
    from repro.twin.mutate import matrix

    rows = [_row("no_clip", ["max_at_most:extra.grad_norm_after_clip", "golden"],
                 ["max_at_most:extra.grad_norm_after_clip", "golden"]),
            _row("mean_loss", ["golden"], ["golden"]), _row("constant_schedule", ["golden"], ["golden"]),
            _row("nan_loss", ["finite:loss", "no_divergence", "golden"], ["finite:loss", "no_divergence"], 3, True)]
    result = matrix(_sft(), _row("plain"), rows)
    assert result["passed"], result["problems"]
    assert result["mutants"][0]["cells"]["golden"] == "killed"


def test_matrix_fails_on_a_survivor_a_missed_kill_a_dead_check_and_a_failing_plain_run():
    from repro.twin.mutate import matrix

    rows = [_row("no_clip", ["golden"], ["max_at_most:extra.grad_norm_after_clip", "golden"]),
            _row("mean_loss", [], ["golden"]), _row("constant_schedule", ["golden"], ["golden"]),
            _row("nan_loss", ["no_divergence"], ["no_divergence"], 3, True)]
    problems = "\n".join(matrix(_sft(), _row("plain", ["golden"]), rows)["problems"])
    assert "the plain run fails golden" in problems
    assert "mutant mean_loss survived every check" in problems
    assert "no_clip: max_at_most:extra.grad_norm_after_clip was expected to kill it" in problems
    assert "check finite:loss kills no mutant" in problems


def test_the_upstream_reference_columns_are_checks_that_must_kill():
    """'loss vs upstream' is held to 'kills a mutant' like a declared check; 'steps vs upstream' is not (a
    mutant keeps the step count), as step_sequence is not."""
    from repro.twin.mutate import matrix

    ids = ("step_sequence", "no_divergence", "finite:loss", "max_at_most:extra.grad_norm_after_clip", "golden",
           "loss vs upstream", "steps vs upstream")
    good = [_row("no_clip", ["max_at_most:extra.grad_norm_after_clip", "golden", "loss vs upstream"],
                 ["max_at_most:extra.grad_norm_after_clip", "golden"], ids=ids),
            _row("mean_loss", ["golden"], ["golden"], ids=ids), _row("constant_schedule", ["golden"], ["golden"], ids=ids),
            _row("nan_loss", ["finite:loss", "no_divergence", "golden"], ["finite:loss", "no_divergence"], 3, True, ids=ids)]
    assert matrix(_sft(), _row("plain", ids=ids), good)["passed"]
    for r in good:  # the reference kills nothing: a check that cannot fail
        r.checks["loss vs upstream"]["status"] = "PASS"
    result = matrix(_sft(), _row("plain", ids=ids), good)
    assert result["checks_killing_nothing"] == ["loss vs upstream"]
    assert "check loss vs upstream kills no mutant" in "\n".join(result["problems"])


def test_a_mutant_that_changes_the_step_count_is_refused():
    from repro.base.errors import EXIT_BAD_INPUT, ReproError
    from repro.twin.mutate import refuse_reshaped

    refuse_reshaped(_sft(), _row("plain"), _row("nan_loss", steps=3, diverged=True))  # the divergence is the kill
    with pytest.raises(ReproError, match="step for step") as info:
        refuse_reshaped(_sft(), _row("plain"), _row("fewer_epochs", steps=50))
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_a_mutant_that_sets_a_shape_flag_is_refused_before_running():
    from repro.base.errors import EXIT_BAD_INPUT, ReproError
    from repro.twin.mutate import select

    for flag in ("--num_train_epochs", "--per_device_train_batch_size", "--gradient_accumulation_steps"):
        bad = _sft().twin.model_copy(update={"mutants": [Mutant(name="m", why="w", set=[[flag, "1"]], kills=["golden"])]})
        with pytest.raises(ReproError, match="step for step") as info:
            select(_sft().model_copy(update={"twin": bad}))
        assert info.value.exit_code == EXIT_BAD_INPUT


def test_select_refuses_unknown_names_and_faults():
    from repro.base.errors import ReproError
    from repro.twin.mutate import select

    assert [m.name for m in select(_sft(), ["no_clip"])] == ["no_clip"]
    with pytest.raises(ReproError, match="not a mutant of tulu3-8b-sft"):
        select(_sft(), ["nope"])
    bad = _sft().twin.model_copy(update={"mutants": [Mutant(name="m", why="w", fault="nope", kills=["golden"])]})
    with pytest.raises(ReproError, match="not a fault any trainer injects"):
        select(_sft().model_copy(update={"twin": bad}))
    bad = _sft().twin.model_copy(update={"mutants": [Mutant(name="m", why="w", set=[["--no_such_flag", "1"]],
                                                           kills=["golden"])]})
    with pytest.raises(ReproError, match="has no flag --no_such_flag"):
        select(_sft().model_copy(update={"twin": bad}))


# --------------------------------------------------------------------------------------------
# the per-PR mutant set (CI, `nox -s tests`): one twin, the clip and the divergence stop; the full set is
# `nox -s mutants` (every twin, every mutant)

PER_PR = ("tulu3-8b-sft", ["no_clip", "nan_loss"])


@pytest.mark.slow
def test_per_pr_mutant_set(tmp_path):
    from repro.cli import main

    rid, only = PER_PR
    argv = ["mutate", rid, "--out", str(tmp_path / "m"), "--json"] + [x for n in only for x in ("--only", n)]
    assert main(argv) == 0
    import json

    result = json.loads((tmp_path / "m" / "mutants.json").read_text())
    cells = {m["name"]: m["cells"] for m in result["mutants"]}
    assert cells["no_clip"]["max_at_most:extra.grad_norm_after_clip"] == "killed"
    assert cells["nan_loss"]["finite:loss"] == "killed" and cells["nan_loss"]["no_divergence"] == "killed"
    assert "Mutant matrix: tulu3-8b-sft" in (tmp_path / "m" / "plain" / "report.md").read_text()
    # the real upstream's curve is a column that must kill (both mutants move the loss beyond its 2e-5)
    assert cells["no_clip"]["loss vs upstream"] == "killed" and cells["nan_loss"]["loss vs upstream"] == "killed"
    # --rescore: the same matrix again from the recorded runs, without training
    assert main(["mutate", rid, "--rescore", str(tmp_path / "m"), "--json"]) == 0
    again = json.loads((tmp_path / "m" / "mutants.json").read_text())
    assert {m["name"]: m["cells"] for m in again["mutants"]} == cells and again["rescored"]["runs_commit"]


def test_rescore_needs_a_matrix(tmp_path, capsys):
    from repro.cli import main

    assert main(["mutate", "tulu3-8b-sft", "--rescore", str(tmp_path)]) == 2
    assert "mutants.json" in capsys.readouterr().err
