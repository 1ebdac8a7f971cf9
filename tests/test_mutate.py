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
